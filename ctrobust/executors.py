"""Executors: strategies that run a planned sweep's work items in this process, in one worker process per
GPU, or as a Slurm job array (submitit).

An executor only decides *where* the worker loop runs; the orchestrator (:func:`ctrobust.sweep.run_sweep`)
prepares the run dir and the plan before, merges the results after, and hands every strategy the worker
functions it may call (``run_worker`` in this process, ``worker_main`` in a job), so this module imports
nothing of the sweep and the config can read the executor names from here. Every executor shares the run dir on a filesystem all workers see:

* units of one (seed, example chunk) form a *work item* (its beta block), because they share the beta = 1
  adversarial examples and a beta-batching engine attacks all their betas in one call;
* a worker **claims** an item with an exclusive, non-blocking ``flock`` (``RunDir.claim``): two workers
  never run the same item, and the kernel releases the claim when a worker dies (even by SIGKILL), so its
  item is simply picked up again;
* after claiming, the worker re-checks which units are finished and runs only the missing ones; each
  unit is written atomically, so a killed worker leaves no partial result;
* a failing item is recorded (``RunDir.record_failure``) and re-queued up to ``max_retries`` times.

Results do not depend on the split of work: the fast engine's randomness is a function of (seed,
example, beta, attack, iteration), and the reference engine always sees the same chunks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Callable

from ctrobust._registry import did_you_mean

__all__ = ["EXECUTORS", "get_executor", "run_local", "run_gpus", "run_slurm"]


def run_local(prep, units, *, run_worker: Callable, bar=None, on_done=None, **_) -> int:
    """Run every item in this process (other processes on the same run dir may share the work).

    Args:
        prep: the orchestrator's ``runner.Prepared``.
        units: every planned ``runner.Unit``.
        run_worker: ``runner.run_worker``.

    Returns:
        The number of units this process ran.
    """
    return run_worker(prep, units, bar=bar, on_done=on_done)


def _gpu_workers(cfg) -> list[str | None]:
    import torch

    n_gpu = torch.cuda.device_count()
    if n_gpu and cfg.device in ("auto", "cuda"):
        return [f"cuda:{i % n_gpu}" for i in range(cfg.workers or n_gpu)]
    return [cfg.device if cfg.device != "auto" else "cpu"] * (cfg.workers or 2)


def run_gpus(prep, units, **_) -> None:
    """One worker process per visible GPU (or ``workers`` CPU processes), all on this machine."""
    cfg = prep.cfg
    devices = _gpu_workers(cfg)
    procs = []
    for dev in devices:
        cmd = [sys.executable, "-m", "ctrobust.runner", "worker", str(prep.run.path)]
        if dev:
            cmd += ["--device", dev]
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(devices))))
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        print(f"ctrobust: worker exit codes {codes}; finishing what is missing in this process", file=sys.stderr)


def run_slurm(prep, units, *, worker_main: Callable, **_) -> None:
    """A submitit job array; each job runs the worker loop on the shared run dir.

    ``slurm_cluster`` (config) overrides submitit's cluster detection: ``local`` or ``debug`` run the jobs
    on this machine (for trying a Slurm config without a cluster).
    """
    import submitit

    cfg, run_dir = prep.cfg, prep.run.path
    ex = submitit.AutoExecutor(folder=run_dir / "slurm" / "%j", cluster=cfg.slurm_cluster)
    params = {"timeout_min": cfg.slurm_time, "slurm_array_parallelism": cfg.slurm_array_parallelism,
              "name": f"ctrobust-{cfg.model}"}
    if ex.cluster == "slurm":
        params.update(slurm_partition=cfg.slurm_partition, gpus_per_node=cfg.slurm_gpus_per_task,
                      slurm_additional_parameters=dict(kv.split("=", 1) for kv in cfg.slurm_extra or []))
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    n_items = len({(u.seed, u.chunk) for u in units})
    n_jobs = cfg.workers or min(n_items, cfg.slurm_array_parallelism)
    device = None if ex.cluster == "slurm" else cfg.device
    jobs = ex.map_array(worker_main, [str(run_dir)] * n_jobs, [device] * n_jobs)
    if not cfg.quiet:
        print(f"ctrobust: submitted {n_jobs} job(s) ({ex.cluster}); logs in {run_dir / 'slurm'}; "
              f"`ctrobust status {run_dir}` shows progress", file=sys.stderr)
    for j in jobs:
        try:
            j.result()
        except Exception as exc:  # noqa: BLE001 - a dead job's items are finished by the orchestrator
            print(f"ctrobust: job {j.job_id} failed: {str(exc).splitlines()[-1] if str(exc) else exc}",
                  file=sys.stderr)


#: executor name -> (strategy, runs in this process). A strategy returns the units it ran itself, or None
#: when they ran elsewhere (then the orchestrator counts the units finished meanwhile). A strategy that runs elsewhere gets a model
#: prepared on the CPU (only to validate and plan); the workers load their own on their device.
EXECUTORS: dict[str, tuple[Callable, bool]] = {"local": (run_local, True), "gpus": (run_gpus, False),
                                              "slurm": (run_slurm, False)}


def get_executor(name: str) -> tuple[Callable, bool]:
    try:
        return EXECUTORS[name]
    except KeyError:
        raise did_you_mean("executor", name, EXECUTORS) from None
