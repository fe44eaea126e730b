"""What a new user runs into (issue 18): file modes, one-line errors for foreseeable conditions, damaged
units, study dirs read as run dirs, missing inputs listed at once, progress, help texts."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ctrobust.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

BUNDLED = ["--model", "bundled/resnet18-cifar10", "--data", "bundled", "--subset", "first", "--device", "cpu",
           "--quiet"]
TINY = BUNDLED + ["--n-examples", "4", "--betas", "0.8", "--attacks", "apgd-ce", "--eps", "2/255",
                  "--seeds", "0", "--batch-size", "8"]
ROOT = Path(__file__).resolve().parents[1]


def _snapshot(d: Path) -> dict:
    import hashlib
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["sweep", *TINY, "--out", str(out)]) == 0
    return out


# -- 1. file modes ---------------------------------------------------------------------------------------


def test_result_files_get_the_mode_a_plain_write_gives_under_umask_022(tmp_path):
    out, report = tmp_path / "run", tmp_path / "report.md"
    code = ("import os, sys, torch; os.umask(0o022); torch.set_num_threads(1); from ctrobust.cli import main; "
            f"sys.exit(main(['sweep', *{TINY!r}, '--out', {str(out)!r}]) "
            f"or main(['report', {str(out)!r}, '--out', {str(report)!r}]))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    files = [p for p in out.rglob("*") if p.is_file() and p.suffix != ".lock"] + [report]
    names = {p.name for p in files}
    assert {"config.yaml", "plan.json", "results.csv", "results.json", "outcomes.npz", "report.md"} <= names
    assert any(p.parent.name == "units" and p.suffix == ".npz" for p in files)
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
