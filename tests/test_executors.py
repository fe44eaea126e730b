"""Scale-out: in-process, multi-process and submitit executors give identical results; claims survive
SIGKILL; concurrent sweeps on one run dir do every unit exactly once; ``ctrobust status``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ctrobust.cli import main
from ctrobust.config import SweepConfig
from ctrobust.cli import format_status
from ctrobust.store import is_claimed, load_outcomes, load_results, read_status
from ctrobust.sweep import run_sweep

# 4 examples in chunks of 1, baseline + one beta: 8 units in 4 work items
ARGS = ["--model", "bundled/resnet18-cifar10", "--data", "bundled", "--subset", "first", "--device", "cpu",
        "--n-examples", "4", "--betas", "0.8", "--attacks", "apgd-ce", "--eps", "2/255", "--seeds", "0",
        "--batch-size", "8", "--chunk-size", "1", "--quiet"]
N_UNITS = 8
TIMING = ("seconds", "device", "call_seconds")


def run_status(run_dir) -> str:
    return format_status(read_status(run_dir))


def _results(run_dir):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in load_results(run_dir)]


def _assert_same_run(a, b):
    oa, ob = load_outcomes(a), load_outcomes(b)
    assert set(oa) == set(ob)
    for k in oa:
        np.testing.assert_array_equal(oa[k], ob[k], err_msg=k)
    assert _results(a) == _results(b)
    assert (Path(a) / "results.csv").read_text().count("\n") == (Path(b) / "results.csv").read_text().count("\n")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("exec") / "local"
    assert main(["sweep", *ARGS, "--out", str(out)]) == 0
    return out


def test_worker_processes_match_in_process(local_run, tmp_path, capsys):
    out = tmp_path / "gpus"
    assert main(["sweep", *ARGS, "--executor", "gpus", "--workers", "2", "--out", str(out)]) == 0
    assert f"ran {N_UNITS} unit(s)" in capsys.readouterr().out
    _assert_same_run(local_run, out)


def test_submitit_local_executor_matches_in_process(local_run, tmp_path):
    out = tmp_path / "slurm"
    given = {k: v for k, v in zip(ARGS[::2], ARGS[1::2])}
    cfg = SweepConfig.from_dict({k.lstrip("-").replace("-", "_"): v for k, v in given.items()
                                 if k != "--quiet"} | {"out": str(out), "executor": "slurm", "workers": 2,
                                                        "slurm_cluster": "local", "quiet": True}).validate()
    res = run_sweep(cfg)
    assert res.units_run == N_UNITS
    assert list((out / "slurm").rglob("*_log.out"))  # submitit really ran jobs
    _assert_same_run(local_run, out)


def _spawn(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ctrobust.cli", "sweep", *ARGS, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_sigkilled_worker_leaves_no_partial_result_and_its_unit_reruns(local_run, tmp_path, capsys):
    out = tmp_path / "killed"
    proc = _spawn(out)
    locks = out / "units"
    held = None
    deadline = time.time() + 240
    while time.time() < deadline and held is None and proc.poll() is None:
        for lock in locks.glob("item-*.lock") if locks.exists() else []:
            if is_claimed(lock) and len(list(locks.glob("*.npz"))) >= 1:
                held = lock
                break
        time.sleep(0.02)
    assert held is not None, "worker never held a claim mid-sweep"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not is_claimed(held)  # the kernel released the dead worker's claim
    for p in locks.glob("*.npz"):  # every result on disk is whole
        with np.load(p) as z:
            assert "meta" in z.files
    done = len(list(locks.glob("*.npz")))
    assert done < N_UNITS
    status = run_status(out)
    assert f"{done} done" in status and "0 running" in status
    capsys.readouterr()
    assert main(["sweep", *ARGS, "--out", str(out)]) == 0
    assert f"ran {N_UNITS - done} unit(s), {done} already done" in capsys.readouterr().out
    _assert_same_run(local_run, out)
    assert f"{N_UNITS} done" in run_status(out)


def test_two_concurrent_sweeps_do_every_unit_exactly_once(local_run, tmp_path):
    out = tmp_path / "both"
    procs = [_spawn(out), _spawn(out)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    ran = [int(re.search(r"ran (\d+) unit", o[0]).group(1)) for o in outs]
    assert sum(ran) == N_UNITS, ran
    _assert_same_run(local_run, out)


def test_status_reports_progress_per_beta(local_run, capsys):
    assert main(["status", str(local_run)]) == 0
    text = capsys.readouterr().out
    assert f"{N_UNITS} units - {N_UNITS} done, 0 running, 0 pending, 0 failed" in text
    assert "beta=1" in text and "beta=0.8" in text


def test_failed_item_is_requeued_then_reported(tmp_path, monkeypatch, capsys):
    """A unit that raises is retried up to max_retries, then the sweep fails naming it (exit 1)."""
    import ctrobust.runner as sweep_mod

    calls = []
    real = sweep_mod._engine_call

    def flaky(engine, prep, pos, betas, seed):
        calls.append(int(pos[0]))
        if int(pos[0]) == 2:
            raise RuntimeError("simulated preemption")
        return real(engine, prep, pos, betas, seed)

    monkeypatch.setattr(sweep_mod, "_engine_call", flaky)
    out = tmp_path / "flaky"
    assert main(["sweep", *ARGS, "--max-retries", "1", "--out", str(out)]) == 1
    assert "failed 2 times" in capsys.readouterr().err
    assert calls.count(2) == 2  # first try + one retry
    assert "item-s0-c2: 2 failed attempt(s)" in run_status(out)
    monkeypatch.setattr(sweep_mod, "_engine_call", real)
    (out / "units" / "item-s0-c2.failed").unlink()  # the user fixed the cause: re-running completes
    assert main(["sweep", *ARGS, "--out", str(out)]) == 0
