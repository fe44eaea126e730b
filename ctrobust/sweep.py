"""The sweep orchestrator: one path from a validated config to results, whatever the executor.

``run_sweep(cfg)``: prepare (check the run dir, load model and data, check CT coverage) -> plan the work
units and write ``plan.json`` -> run them with the configured executor (:mod:`ctrobust.executors`:
in this process, one worker process per GPU, or Slurm) -> finish anything a dead worker left in this
process -> merge the units into results (:mod:`ctrobust.results`) and draw the figures.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ctrobust.config import SweepConfig
from ctrobust.executors import get_executor
from ctrobust.results import write_results
from ctrobust.runner import Prepared, log, plan_units, prepare, resolve_device, run_worker, worker_main

__all__ = ["run_sweep", "finalize", "SweepResult"]


@dataclass
class SweepResult:
    """What a sweep did: its run dir, the rows of ``results.csv``, and units run now / found finished."""

    run_dir: Path
    rows: list = field(default_factory=list)
    units_run: int = 0
    units_skipped: int = 0


def _progress_reporter(prep: Prepared, units):
    """``on_done(beta, seed)`` callback: print a (beta, seed)'s accuracies when its last unit lands."""
    from ctrobust.stats import wilson_interval

    cfg, run = prep.cfg, prep.run
    remaining: dict = {}
    for u in units:
        if not run.has_unit(u.key):
            remaining[(u.beta, u.seed)] = remaining.get((u.beta, u.seed), 0) + 1

    def on_done(beta, seed):
        k = (beta, seed)
        if k not in remaining:
            return
        remaining[k] -= 1
        if remaining[k] == 0:
            got = [run.read_unit(u.key)[0] for u in units if u.beta == beta and u.seed == seed]
            n = sum(len(a["id"]) for a in got)
            kc = sum(int(a["clean_correct"].sum()) for a in got)
            kr = sum(int(a["robust"].sum()) for a in got)
            lo, hi = wilson_interval(kr, n)
            log(cfg, f"beta={beta:<5g} seed={seed}: clean {kc / n:6.1%}  robust {kr / n:6.1%} "
                     f"[{lo:.1%}, {hi:.1%}]  (n={n})")

    return on_done


def run_sweep(cfg: SweepConfig, *, progress: bool = True) -> SweepResult:
    """Run (or resume) a whole sweep with ``cfg.executor`` and write results and figures.

    Args:
        cfg: a validated config (``SweepConfig.validate``).
        progress: show a progress bar and per-beta summaries (unless ``cfg.quiet``).

    Returns:
        ``SweepResult`` with the run dir and the rows of ``results.csv``.

    Raises:
        ConfigError: bad input found while preparing (nothing is written then).
        RuntimeError: a work item failed more than ``max_retries + 1`` times.
    """
    from ctrobust.data import DataUnavailableError, SubsetError
    from ctrobust.inputs import check_inputs
    from ctrobust.models import ModelLoadError, ModelUnavailableError

    execute, in_process = get_executor(cfg.executor)
    check_inputs(cfg, in_process=in_process)  # cheap unless something is already missing
    try:
        # workers elsewhere load their own model on their device: here it is only validated and planned
        prep = prepare(cfg, None if in_process else torch.device("cpu"))
    except (ModelUnavailableError, ModelLoadError, DataUnavailableError, SubsetError):
        check_inputs(cfg, in_process=in_process, load=True)  # every missing input at once, not the first
        raise
    run = prep.run
    for dest, why in run.set_aside_damaged().items():
        print(f"ctrobust: warning: damaged unit file ({why}) moved to {dest}; its unit runs again",
              file=sys.stderr)
    units = plan_units(cfg, run, prep.evalset.ids.numpy())
    n_done_before = sum(run.has_unit(u.key) for u in units)
    log(cfg, f"ctrobust: {cfg.model} on {len(prep.evalset.ids)} {cfg.dataset} examples, {cfg.threat} "
             f"{'' if cfg.eps is None else f'eps={cfg.eps:.5g}, '}{len(cfg.betas)} betas x {len(cfg.seeds)} seed(s), engine={cfg.engine}, "
             f"executor={cfg.executor}, device={prep.device if in_process else cfg.device}; "
             f"{len(units) - n_done_before}/{len(units)} units to run -> {run.path}")
    cov = prep.coverage
    log(cfg, f"CT coverage (scope {cov.scope}): {cov.relu_modules} ReLU module calls, {cov.relu_functional} "
             f"functional, {cov.leaky_relu} LeakyReLU; {cov.tuned} tuned, {cov.untouched} untouched, "
             f"{cov.missed} missed")
    run.write_plan([u.plan_entry() for u in units])
    bar = None
    if in_process and progress and not cfg.quiet:
        from tqdm.auto import tqdm

        from ctrobust.progress import row_budget
        # rows of work (clean passes and attack steps, ctrobust.progress): a work item's engine call carries
        # every beta, so counting units would sit at 0 % until the whole item is done
        work = sum(len(u.pos) for u in units if not run.has_unit(u.key)) * row_budget(cfg.suite)
        bar = tqdm(total=work, desc="row-steps", unit="", unit_scale=True, file=sys.stderr, dynamic_ncols=True)
    try:
        n_run = execute(prep, units, run_worker=run_worker, worker_main=worker_main, bar=bar,
                        on_done=_progress_reporter(prep, units))
    finally:
        if bar is not None:
            bar.close()
    if n_run is None:  # the units ran in other processes: count what is finished now
        if any(not run.has_unit(u.key) for u in units):
            # whatever a dead worker or job left undone is finished here, on this process's device
            run_worker(prepare(cfg, resolve_device(cfg.device)), units)
        n_run = sum(run.has_unit(u.key) for u in units) - n_done_before
    return SweepResult(run.path, finalize(prep), n_run, n_done_before)


def finalize(prep: Prepared) -> list[dict]:
    """Merge finished units into results files and redraw the figures."""
    from ctrobust.plots import plot_runs

    rows = write_results(prep.run, prep.coverage)
    try:
        plot_runs([prep.run.path], out_dir=prep.run.path / "figures")
    except Exception as exc:  # noqa: BLE001 - a figure must never cost the results
        log(prep.cfg, f"warning: could not draw figures: {exc}")
    return rows
