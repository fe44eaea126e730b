"""Executors: run a sweep's work units in this process, in one worker per GPU, or on Slurm (submitit).

Every executor runs the same worker loop over the run dir on a shared filesystem:

* the planner (``sweep.plan_units``) lists units; units of one (seed, example chunk) form a *work item*
  (its beta block), because they share the beta = 1 adversarial examples and the fast engine attacks
  all their betas in one beta-batched call;
* a worker **claims** an item with an exclusive, non-blocking ``flock`` on ``units/<item>.lock``: two
  workers never run the same item, and the kernel releases the claim when a worker dies (even by
  SIGKILL), so its item is simply picked up again;
* after claiming, the worker re-checks which units are finished (another worker may have finished them)
  and runs only the missing ones; each unit is written atomically, so a killed worker leaves no partial
  result;
* a failing item is recorded in ``units/<item>.failed`` (attempts, last error) and re-queued up to
  ``max_retries`` times;
* when no item is left, results are merged deterministically (sorted by seed, beta, example id).

Results do not depend on the split of work: the fast engine's randomness is a function of (seed,
example, beta, attack, iteration), and the reference engine always sees the same chunks.
``flock`` works on local disks and on NFSv4; on Lustre mount with ``flock``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctrobust.config import ConfigError, SweepConfig
from ctrobust.store import atomic_write_text, load_config

__all__ = ["WorkItem", "claim", "plan_items", "run_worker", "run_distributed", "run_status", "write_plan"]


@dataclass
class WorkItem:
    """The units of one (seed, chunk): a beta block run by one worker."""

    seed: int
    chunk: int
    units: list

    @property
    def name(self) -> str:
        return f"item-s{self.seed}-c{self.chunk}"


def plan_items(units) -> list[WorkItem]:
    items: dict[tuple, WorkItem] = {}
    for u in units:
        items.setdefault(u.group, WorkItem(u.seed, u.chunk, [])).units.append(u)
    return list(items.values())


@contextmanager
def claim(path: Path):
    """Try to claim a work item; yields True if this process holds it (released on exit or death)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                yield False
                return
            raise
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode())
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_claimed(path: Path) -> bool:
    """True if some live process holds the claim on ``path``."""
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _failures(run_dir: Path, item: WorkItem) -> dict:
    p = run_dir / "units" / f"{item.name}.failed"
    return json.loads(p.read_text()) if p.exists() else {"attempts": 0}


def _record_failure(run_dir: Path, item: WorkItem, exc: BaseException) -> int:
    f = _failures(run_dir, item)
    f["attempts"] = f.get("attempts", 0) + 1
    f["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    f["host"], f["pid"], f["time"] = socket.gethostname(), os.getpid(), time.time()
    atomic_write_text(run_dir / "units" / f"{item.name}.failed", json.dumps(f))
    return f["attempts"]


def write_plan(prep, units) -> None:
    """``plan.json``: every unit's key, beta, seed, chunk and size (read by ``ctrobust status``)."""
    plan = {"units": [{"key": u.key, "beta": u.beta, "seed": u.seed, "chunk": u.chunk, "n": int(len(u.pos)),
                       "item": f"item-s{u.seed}-c{u.chunk}"} for u in units]}
    atomic_write_text(prep.run.path / "plan.json", json.dumps(plan))


def run_worker(prep, units, *, poll: float = 0.5, wait: bool = True, bar=None, on_done=None) -> int:
    """The worker loop: claim items, run their missing units, retry failures; returns units run here.

    Args:
        prep: a ``sweep.Prepared`` (config, run dir, data, model) for this worker's device.
        units: all planned units.
        wait: after the last free item, wait for items claimed by other workers; take them over if their
            worker dies.
    """
    from ctrobust.sweep import run_units

    run_dir = prep.run.path
    max_retries = prep.cfg.max_retries
    n_run = 0
    items = plan_items(units)
    while True:
        pending = [it for it in items if not all(prep.run.has_unit(u.key) for u in it.units)]
        runnable = [it for it in pending if _failures(run_dir, it)["attempts"] <= max_retries]
        if not runnable:
            break
        progressed = False
        for it in runnable:
            with claim(run_dir / "units" / f"{it.name}.lock") as mine:
                if not mine:
                    continue
                progressed = True
                try:
                    n_run += run_units(prep, it.units, progress=False, bar=bar, on_done=on_done)
                except (KeyboardInterrupt, ConfigError):
                    raise
                except Exception as exc:  # noqa: BLE001 - recorded and re-queued
                    attempts = _record_failure(run_dir, it, exc)
                    print(f"ctrobust: {it.name} failed (attempt {attempts}/{max_retries + 1}): {exc}",
                          file=sys.stderr)
        if not progressed:
            if not wait:
                break
            time.sleep(poll)  # every remaining item is held by another live worker
    failed = [it.name for it in items if _failures(run_dir, it)["attempts"] > max_retries
              and not all(prep.run.has_unit(u.key) for u in it.units)]
    if failed:
        raise RuntimeError(f"{len(failed)} work item(s) failed {max_retries + 1} times "
                           f"(see {run_dir / 'units'}/*.failed): {', '.join(failed[:5])}")
    return n_run


# -------------------------------------------------------------------------------------------------
# Entry points of worker processes
# -------------------------------------------------------------------------------------------------


def _worker_main(run_dir: str, device: str | None, quiet: bool = True) -> int:
    """Run as a worker on an existing run dir (its config.yaml decides everything but the device)."""
    from ctrobust.sweep import plan_units, prepare, resolve_device

    cfg = load_config(run_dir)
    cfg.out = str(run_dir)
    cfg.quiet = quiet
    if device:
        cfg.device = device
    prep = prepare(cfg, resolve_device(cfg.device))
    units = plan_units(cfg, prep.run, prep.evalset.ids.numpy())
    return run_worker(prep, units)


def _spawn_local_workers(cfg: SweepConfig, run_dir: Path, n: int, devices: list[str | None]) -> None:
    import subprocess

    procs = []
    for i in range(n):
        cmd = [sys.executable, "-m", "ctrobust.executors", "worker", str(run_dir)]
        if devices[i]:
            cmd += ["--device", devices[i]]
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        print(f"ctrobust: worker exit codes {codes}; finishing what is missing in this process", file=sys.stderr)


def run_distributed(cfg: SweepConfig, *, submitit_cluster: str | None = None):
    """Run a sweep with ``cfg.executor`` = ``gpus`` or ``slurm``; merges results when all units are done.

    Args:
        cfg: validated config.
        submitit_cluster: override submitit's cluster (``"local"`` runs the Slurm path on this machine;
            used by the tests).

    Returns:
        ``sweep.SweepResult``.
    """
    import torch

    from ctrobust.sweep import SweepResult, finalize, plan_units, prepare

    # the parent validates everything and writes config.yaml + plan.json before any worker starts
    prep = prepare(cfg, torch.device("cpu"))
    units = plan_units(cfg, prep.run, prep.evalset.ids.numpy())
    write_plan(prep, units)
    before = sum(prep.run.has_unit(u.key) for u in units)
    run_dir = prep.run.path
    if cfg.executor == "gpus":
        n_gpu = torch.cuda.device_count()
        if n_gpu and cfg.device in ("auto", "cuda"):
            n = cfg.workers or n_gpu
            devices = [f"cuda:{i % n_gpu}" for i in range(n)]
        else:
            n = cfg.workers or 2
            devices = [cfg.device if cfg.device != "auto" else "cpu"] * n
        _spawn_local_workers(cfg, run_dir, n, devices)
    elif cfg.executor == "slurm":
        import submitit

        folder = run_dir / "slurm" / "%j"
        ex = submitit.AutoExecutor(folder=folder, cluster=submitit_cluster)
        params = {"timeout_min": cfg.slurm_time, "slurm_array_parallelism": cfg.slurm_array_parallelism,
                  "name": f"ctrobust-{cfg.model}"}
        if ex.cluster == "slurm":
            params.update(slurm_partition=cfg.slurm_partition, gpus_per_node=cfg.slurm_gpus_per_task,
                          slurm_additional_parameters=dict(kv.split("=", 1) for kv in cfg.slurm_extra or []))
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        n_jobs = cfg.workers or min(len(plan_items(units)), cfg.slurm_array_parallelism)
        device = None if ex.cluster == "slurm" else cfg.device
        jobs = ex.map_array(_worker_main, [str(run_dir)] * n_jobs, [device] * n_jobs)
        if not cfg.quiet:
            print(f"ctrobust: submitted {n_jobs} job(s) ({ex.cluster}); logs in {run_dir / 'slurm'}; "
                  f"`ctrobust status {run_dir}` shows progress", file=sys.stderr)
        for j in jobs:
            try:
                j.result()
            except Exception as exc:  # noqa: BLE001 - a dead job's items are re-run below
                print(f"ctrobust: job {j.job_id} failed: {str(exc).splitlines()[-1] if str(exc) else exc}",
                      file=sys.stderr)
    else:
        raise ConfigError(f"run_distributed: executor {cfg.executor!r} is in-process; use sweep.run_sweep")
    # anything a dead worker left undone is finished here, then the deterministic merge
    missing = [u for u in units if not prep.run.has_unit(u.key)]
    if missing:
        from ctrobust.sweep import resolve_device
        prep_local = prepare(cfg, resolve_device(cfg.device))
        run_worker(prep_local, units)
    rows = finalize(prep)
    return SweepResult(run_dir, rows, len(units) - before, before)


# -------------------------------------------------------------------------------------------------
# Status
# -------------------------------------------------------------------------------------------------


def run_status(run_dir) -> str:
    """Human-readable status of a run dir: done / running / pending / failed units, per beta, ETA."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    plan_file = run_dir / "plan.json"
    if not plan_file.exists():
        raise ConfigError(f"{run_dir}: no plan.json yet (the sweep has not started its units)")
    plan = json.loads(plan_file.read_text())["units"]
    udir = run_dir / "units"
    state = {}
    secs = []
    for u in plan:
        p = udir / f"{u['key']}.npz"
        if p.exists():
            state[u["key"]] = "done"
            try:
                with np.load(p, allow_pickle=False) as z:
                    secs.append(json.loads(str(z["meta"]))["seconds"])
            except Exception:  # noqa: BLE001 - status must not fail on one odd file
                pass
        elif is_claimed(udir / f"{u['item']}.lock"):
            state[u["key"]] = "running"
        else:
            f = udir / f"{u['item']}.failed"
            if f.exists() and json.loads(f.read_text()).get("attempts", 0) > cfg.max_retries:
                state[u["key"]] = "failed"
            else:
                state[u["key"]] = "pending"
    counts = {s: sum(1 for v in state.values() if v == s) for s in ("done", "running", "pending", "failed")}
    lines = [f"{run_dir}: {len(plan)} units - " + ", ".join(f"{v} {k}" for k, v in counts.items())]
    running_items = len({u["item"] for u in plan if state[u["key"]] == "running"})
    left = counts["running"] + counts["pending"]
    if secs and left:
        eta = np.mean(secs) * left / max(1, running_items)
        lines.append(f"ETA ~{eta / 60:.1f} min at {max(1, running_items)} worker(s) "
                     f"({np.mean(secs):.1f} s per unit so far)")
    for beta in sorted({u["beta"] for u in plan}, reverse=True):
        us = [u for u in plan if u["beta"] == beta]
        d = sum(state[u["key"]] == "done" for u in us)
        lines.append(f"  beta={beta:<6g} {d}/{len(us)} done" + ("" if d == len(us) else
                     f" ({sum(state[u['key']] == 'running' for u in us)} running)"))
    for f in sorted(udir.glob("*.failed")):
        info = json.loads(f.read_text())
        lines.append(f"  {f.stem}: {info.get('attempts')} failed attempt(s), last: {info.get('error')}")
    return "\n".join(lines)


def _main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m ctrobust.executors")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="run as a sweep worker on an existing run dir")
    w.add_argument("run_dir")
    w.add_argument("--device")
    a = p.parse_args(argv)
    _worker_main(a.run_dir, a.device)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
