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


# -- 2. foreseeable conditions: one line, exit 2, the fix named, nothing damaged -----------------------------


def _raise(err: int):
    def fail(*a, **k):
        raise OSError(err, os.strerror(err), a[0] if a and isinstance(a[0], (str, Path)) else None)
    return fail


@pytest.mark.parametrize("where", ["os.replace", "tempfile.mkstemp"])
def test_rerun_on_a_read_only_out_is_one_line_and_damages_nothing(tiny_run, monkeypatch, capsys, where):
    import tempfile
    before = _snapshot(tiny_run)
    capsys.readouterr()
    mod, name = where.split(".")
    monkeypatch.setattr({"os": os, "tempfile": tempfile}[mod], name, _raise(__import__("errno").EROFS))
    assert main(["sweep", *TINY, "--out", str(tiny_run)]) == 2
    monkeypatch.undo()
    err = _one_line_error(capsys)
    assert "read-only" in err and str(tiny_run) in err and "--out" in err and ".tmp" not in err
    assert _snapshot(tiny_run) == before


def test_plot_on_a_read_only_folder_is_one_line_and_damages_nothing(tiny_run, monkeypatch, capsys):
    import errno
    import tempfile
    before = _snapshot(tiny_run)
    capsys.readouterr()
    monkeypatch.setattr(tempfile, "mkstemp", _raise(errno.EROFS))
    assert main(["plot", str(tiny_run)]) == 2
    monkeypatch.undo()
    err = _one_line_error(capsys)
    assert "read-only" in err and "sweep.png" in err and ".tmp" not in err
    assert _snapshot(tiny_run) == before


@pytest.mark.parametrize("err,needle", [("ENOSPC", "no space left"), ("EACCES", "permission denied")])
def test_report_out_on_a_full_or_forbidden_disk_names_the_file(tiny_run, tmp_path, monkeypatch, capsys, err,
                                                               needle):
    import errno
    monkeypatch.setattr(os, "replace", _raise(getattr(errno, err)))
    out = tmp_path / "report.md"
    assert main(["report", str(tiny_run), "--out", str(out)]) == 2
    monkeypatch.undo()
    line = _one_line_error(capsys)
    assert needle in line and repr(str(out)) in line and "--out" in line
    assert list(tmp_path.iterdir()) == []


def test_out_through_a_file_names_the_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine\n")
    assert main(["sweep", *TINY, "--out", str(tmp_path / "afile" / "sub")]) == 2
    err = _one_line_error(capsys)
    assert f"{str(tmp_path / 'afile')!r} is a file, not a folder" in err and "--out" in err
    assert (tmp_path / "afile").read_text() == "mine\n"


def test_device_mps_without_mps_names_the_devices_to_use(tmp_path, capsys):
    import torch
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    assert main(["sweep", *TINY, "--device", "mps", "--out", str(tmp_path / "r")]) == 2
    err = _one_line_error(capsys)
    assert "--device cpu" in err and "auto" in err
    assert not (tmp_path / "r").exists()


def test_report_into_a_closed_pipe_stops_silently(tiny_run):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "ctrobust.cli", "report", str(tiny_run)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    p.stdout.close()  # the reader is gone before the report is written (`| head` that has read enough)
    err = p.stderr.read().decode()
    assert p.wait() == 141 and err == ""


# -- 3. damaged units --------------------------------------------------------------------------------------


def _damage(unit: Path, how: str) -> None:
    import io
    import numpy as np
    if how == "garbage":
        unit.write_bytes(os.urandom(3000))
        return
    with np.load(unit, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "id"}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    unit.write_bytes(buf.getvalue())


@pytest.mark.parametrize("how,why", [("no-id", "missing field 'id'"), ("garbage", "not a readable unit file")])
def test_a_damaged_unit_is_named_by_status_and_set_aside_and_recomputed_by_the_next_sweep(
        tiny_run, tmp_path, capsys, how, why):
    import shutil

    import numpy as np

    from ctrobust.store import load_outcomes
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "outcomes.npz").unlink()  # read from the units, as while a sweep runs
    unit = sorted(p for p in (run / "units").glob("*.npz") if not p.name.endswith(".adv.npz"))[0]
    _damage(unit, how)
    damaged_bytes = unit.read_bytes()
    capsys.readouterr()
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "1 done" in out and "1 damaged" in out and f"units/{unit.name} ({why})" in out
    assert len(load_outcomes(run)["id"]) == 4  # the readers skip it, no KeyError
    assert main(["sweep", *TINY, "--out", str(run)]) == 0
    cap = capsys.readouterr()
    assert "ran 1 unit(s), 1 already done" in cap.out and "damaged unit file" in cap.err
    assert (run / "units" / "damaged" / unit.name).read_bytes() == damaged_bytes  # kept, not deleted
    want, got = load_outcomes(tiny_run), load_outcomes(run)
    for k in ("id", "beta", "clean_correct", "robust", "broken_by"):
        np.testing.assert_array_equal(got[k], want[k])
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "2 done" in out and " damaged" not in out.replace(str(run), "")


# -- 4. a study dir is a run dir to status, report and plot --------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tiny study of tests/test_study.py: a random CT-paper ResNet-18, bundled images, three cells."""
    import torch

    from ctrobust.models.ct_paper import build_resnet
    md = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    (md / "ct-paper").mkdir()
    torch.save(build_resnet("resnet18", 10).state_dict(), md / "ct-paper" / "resnet18_cifar10_epoch200.pth")
    out = tmp_path_factory.mktemp("study") / "s"
    assert main(["reproduce", "ct-paper", "--model", "resnet18", "--datasets", "cifar10", "--threat", "Linf", "--data", "bundled",
                 "--n-examples", "20", "--seeds", "42", "--betas", "0.9", "--attacks", "apgd-ce", "--device", "cpu",
                 "--quiet", "--model-dir", str(md), "--out", str(out)]) == 0
    return out


CELLS = ["cifar10-pixel", "cifar10-reference", "cifar10-valid"]


def test_status_of_a_study_dir_shows_every_cell_or_one(study, capsys):
    capsys.readouterr()
    assert main(["status", str(study)]) == 0
    out = capsys.readouterr().out
    for c in CELLS:
        assert f"{study / 'runs' / c}: 2 units - 2 done" in out
    assert main(["status", str(study), "--cell", "valid"]) == 0
    out = capsys.readouterr().out
    assert "cifar10-valid: 2 units" in out and "cifar10-pixel" not in out and "cifar10-reference" not in out


def test_report_and_plot_of_a_study_dir(study, capsys):
    capsys.readouterr()
    assert main(["report", str(study), "--cell", "cifar10-reference"]) == 0
    one = capsys.readouterr().out
    assert main(["report", str(study), "--format", "json"]) == 0
    import json
    rep = json.loads(capsys.readouterr().out)
    assert len(rep["runs"]) == 3 and "cifar10" in one
    before = _snapshot(study / "runs")
    assert main(["plot", str(study)]) == 0
    assert (study / "figures" / "sweep.png").stat().st_size > 0
    assert _snapshot(study / "runs") == before


def test_unknown_cell_or_cell_of_a_run_dir_is_one_line(study, tiny_run, capsys):
    capsys.readouterr()
    assert main(["status", str(study), "--cell", "vaild"]) == 2
    assert "did you mean 'valid'" in _one_line_error(capsys)
    assert main(["report", str(tiny_run), "--cell", "valid"]) == 2
    assert "not a study dir" in _one_line_error(capsys)


# -- 5. every missing input at once, in the flags a user types ---------------------------------------------


def test_missing_weights_data_and_device_are_listed_at_once_in_flags(tmp_path, monkeypatch, capsys):
    import torch
    monkeypatch.setenv("CTROBUST_OFFLINE", "1")
    empty = tmp_path / "empty"
    empty.mkdir()
    no_mps = not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available())
    args = ["sweep", "--model", "ct-paper/resnet18", "--model-dir", str(empty), "--data-dir", str(empty),
            "--quiet", "--out", str(tmp_path / "r"), "--device", "mps" if no_mps else "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"ctrobust: error: {2 + no_mps} inputs of this sweep are missing")
    body = "\n".join(lines[1:])
    assert "--checkpoint FILE" in body and "--data-dir DIR" in body and "--data bundled" in body
    assert "data_dir" not in body.replace("CTROBUST_DATA_DIR", "") and "data='bundled'" not in body
    if no_mps:
        assert "--device cpu" in body
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # nothing written


def test_too_many_bundled_examples_says_n_examples_all(tmp_path, capsys):
    assert main(["sweep", *BUNDLED, "--n-examples", "100", "--out", str(tmp_path / "r")]) == 2
    err = _one_line_error(capsys)
    assert "--n-examples 20 or fewer (or --n-examples all)" in err and "None" not in err
    assert not (tmp_path / "r").exists()


# -- 6. progress in rows of work ---------------------------------------------------------------------------

TEMPLATE_MODEL = '''
import torch
from torch import nn


class Templates(nn.Module):
    """Right on the 20 bundled CIFAR-10 images and robust at 1/255: a class fires when the input is close to
    one of its images (ReLU of a thresholded template match), so every row takes every attack step."""

    def __init__(self):
        super().__init__()
        from ctrobust.data import load_eval_set
        ev = load_eval_set("cifar10", 20, subset="first", data="bundled")
        t = ev.x.reshape(20, -1)
        self.register_buffer("mu", t.mean(0))
        w = t - self.mu
        g = w @ w.T
        other = (g - torch.diag(torch.full((20,), float("inf")))).max(1).values
        self.match = nn.Linear(w.shape[1], 20)
        self.match.weight.data = w.clone()
        self.match.bias.data = -(g.diag() + other) / 2
        self.head = nn.Linear(20, 10, bias=False)
        self.head.weight.data = torch.nn.functional.one_hot(ev.y, 10).T.float()

    def forward(self, x):
        f = x.flatten(1) - self.mu
        return self.head(torch.relu(self.match(f)))


def make():
    torch.manual_seed(0)
    return Templates()
'''


def test_progress_counts_rows_of_work_with_an_eta_from_the_work_left(tmp_path, monkeypatch):
    import time

    import tqdm.auto

    from ctrobust.store import RunDir
    events, units_at = [], []

    class Recorder:
        def __init__(self, total=None, **_):
            self.total, self.n, self.t0 = total, 0, time.monotonic()

        def update(self, n):
            self.n += n
            events.append((time.monotonic() - self.t0, self.n, self.total))

        def close(self):
            pass

    real_write = RunDir.write_unit

    def write_unit(self, *a, **k):
        units_at.append(len(events))
        return real_write(self, *a, **k)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    monkeypatch.setattr(RunDir, "write_unit", write_unit)
    (tmp_path / "templates.py").write_text(TEMPLATE_MODEL)
    args = ["sweep", "--model", f"{tmp_path / 'templates.py'}:make", "--data", "timing", "--n-examples", "200",
            "--subset", "first", "--betas", "0.99,0.98,0.97,0.96,0.95,0.94,0.93,0.92,0.91,0.9", "--attacks",
            "apgd-ce", "--eps", "1/255", "--seeds", "0", "--device", "cpu", "--out", str(tmp_path / "r")]
    assert main(args) == 0
    total = events[-1][2]
    assert events[-1][1] == total and units_at  # the bar ends full
    assert units_at[0] >= 10, events[:units_at[0]]  # it moved at least 10 times before the first unit
    t50, n50, _ = next(e for e in events if e[1] >= total / 2)
    eta, left = t50 * (total - n50) / n50, events[-1][0] - t50
    assert left / 2 <= eta <= 2 * left, (eta, left, events)


# -- 7. smaller --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps,warned", [("8/256", "did you mean 8/255?"), ("0.031", "did you mean 8/255?"),
                                        ("8/255", None), ("0.03", None)])
def test_eps_near_a_k_over_255_warns_on_one_line(tmp_path, capsys, eps, warned):
    from ctrobust.config import parse_eps
    # the warning comes with validation, before any work: a config that then fails on the model is enough
    assert main(["sweep", "--model", "no-such-model-xyz", "--eps", eps, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    warn = [ln for ln in err.splitlines() if "warning" in ln]
    if warned:
        assert warn == [f"ctrobust: warning: --eps {eps} = {parse_eps(eps):.6g} "
                        f"is within 2 % of 8/255 = {8 / 255:.6g} but not equal: {warned}"]
    else:
        assert warn == []


def test_duplicate_seeds_are_an_error_naming_the_seed(tmp_path, capsys):
    assert main(["sweep", *BUNDLED, "--seeds", "0,0", "--out", str(tmp_path / "r")]) == 2
    assert "seed 0 is given twice" in _one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_every_command_has_a_description_and_every_option_a_help():
    import argparse

    from ctrobust.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {a.option_strings or a.dest}" for name, p in sub.choices.items() for a in p._actions
               if not a.help]
    assert missing == []
    assert all(p.description for p in sub.choices.values())
    assert "three cells" in sub.choices["reproduce"].format_help()


def test_main_help_examples_name_files_that_exist(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for tok in out.split():
        if tok.startswith(("tests/", "configs/")):
            assert (ROOT / tok).exists(), tok


def test_study_report_labels_the_held_out_interval_as_a_gain_in_points(study):
    md = (study / "report.md").read_text()
    head = next(ln for ln in md.splitlines() if "| dataset | cell |" in ln)
    col = [c.strip() for c in head.split("|")].index("CT (held-out)")
    rows = [ln for ln in md.splitlines() if "| cifar10 |" in ln and ln.count("|") == head.count("|")]
    assert rows
    for ln in rows:
        cell = [c.strip() for c in ln.split("|")][col]
        assert "pts" not in cell or "Δ vs base: 95 % CI [" in cell, cell


def test_sweep_figure_bars_fill_one_slot_per_beta_and_the_legend_covers_no_band(tiny_run, tmp_path, monkeypatch):
    import json

    from ctrobust import plots
    run = tmp_path / "run"
    import shutil
    shutil.copytree(tiny_run, run)
    doc = json.loads((run / "results.json").read_text())  # unevenly spaced betas: 1, 0.8, 0.55
    extra = dict(doc["rows"][-1], beta=0.55)
    doc["rows"].append(extra)
    (run / "results.json").write_text(json.dumps(doc))
    figs = []
    real = plots._save

    def keep(fig, *a, **k):
        fig.canvas.draw()
        ax, axb = fig.axes[:2]
        figs.append(([p.get_x() + p.get_width() / 2 for p in axb.patches],
                     [t.get_text() for t in axb.get_xticklabels()],
                     ax.get_legend().get_window_extent(), ax.get_window_extent()))
        return real(fig, *a, **k)

    monkeypatch.setattr(plots, "_save", keep)
    plots.plot_runs([run], out_dir=tmp_path / "f")
    centers, ticks, legend, axes = figs[0]
    assert sorted(set(round(c, 6) for c in centers)) == [0, 1, 2] and ticks == ["0.55", "0.8", "1"]
    assert not legend.overlaps(axes)


def test_models_coverage_shows_per_model_progress_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(["models", "--coverage", "--only", "Standard", "bundled/resnet18-cifar10"]) == 0
    cap = capsys.readouterr()
    assert "[1/2] building Standard" in cap.err and "[2/2] building bundled/resnet18-cifar10" in cap.err
    assert "building" not in cap.out and any(ln.startswith("Standard ") for ln in cap.out.splitlines())
