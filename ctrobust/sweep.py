"""The sweep: plan work units over a beta grid, run them with an attack engine, merge the results.

A work unit is (beta, seed, example chunk). Units are independent and idempotent: each finished unit is
written atomically into the run dir under a key that hashes everything determining it, and a re-run
skips finished units. Units of one (seed, chunk) group share the beta = 1 adversarial examples, which the
transfer diagnostic replays against every CT model; the fast engine attacks all betas of a group in one
call (beta-batching), the reference engine one beta at a time.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ctrobust.config import SweepConfig
from ctrobust.store import RunDir, write_results

__all__ = ["Unit", "resolve_device", "prepare", "plan_units", "run_units", "run_sweep", "SweepResult"]


@dataclass
class Unit:
    """One work unit: example rows ``pos`` (indices into the eval set) at one (beta, seed)."""

    beta: float
    seed: int
    chunk: int
    pos: np.ndarray
    key: str

    @property
    def group(self) -> tuple[int, int]:
        return (self.seed, self.chunk)


@dataclass
class Prepared:
    """Everything loaded once per process: config, run dir, data, model, CT model, coverage."""

    cfg: SweepConfig
    run: RunDir
    evalset: object
    model: torch.nn.Module
    ct_model: torch.nn.Module
    coverage: dict
    device: torch.device


@dataclass
class SweepResult:
    run_dir: Path
    rows: list = field(default_factory=list)
    units_run: int = 0
    units_skipped: int = 0


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> cuda > mps > cpu; ``cuda:N`` checked against the visible devices."""
    spec = (spec or "auto").lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            from ctrobust.config import ConfigError
            raise ConfigError(f"--device {spec}: CUDA is not available on this machine; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            from ctrobust.config import ConfigError
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


def _log(cfg: SweepConfig, msg: str) -> None:
    if not cfg.quiet:
        print(msg, file=sys.stderr, flush=True)


def prepare(cfg: SweepConfig, device: torch.device | None = None) -> Prepared:
    """Validate the run dir, load data and model, check CT coverage; writes only ``config.yaml``."""
    from ctrobust.ct import CTCoverageError, apply_ct, ct_coverage
    from ctrobust.data import load_eval_set
    from ctrobust.models import load_model

    device = device or resolve_device(cfg.device)
    # cheap pre-check of the determining settings before any loading (a mismatch touches nothing)
    RunDir(cfg.run_dir, cfg, data_hash=None).check(settings_only=True)
    model = load_model(cfg.model, dataset=cfg.dataset, threat=cfg.threat, model_dir=cfg.model_dir,
                       device=str(device))
    evalset = load_eval_set(cfg.dataset, cfg.n_examples, subset=cfg.subset, data=cfg.data,
                            data_dir=cfg.data_dir)
    run = RunDir(cfg.run_dir, cfg, evalset.content_hash)
    run.check()
    x0 = evalset.x[:1].to(device)
    coverage = ct_coverage(model, x0)
    if coverage["relu_modules"] + coverage["relu_functional"] + coverage["leaky_relu"] == 0:
        found = ", ".join(f"{k} x {v}" for k, v in coverage["unsupported"].items()) or "no activation"
        raise CTCoverageError(f"model {cfg.model!r}: no ReLU to tune: found {found}; CT does not apply")
    if coverage["missed"]:
        raise CTCoverageError(f"model {cfg.model!r}: CT would miss {coverage['missed']} ReLU call(s); "
                              "refusing to report CT results for a partially tuned network")
    if coverage["unsupported"]:
        other = ", ".join(f"{k} x {v}" for k, v in coverage["unsupported"].items())
        _log(cfg, f"warning: model {cfg.model!r} also computes activations CT does not tune ({other}); "
                  "results describe a partially tuned network (recorded as ct_unsupported)")
    ct_model = apply_ct(model, 1.0, cfg.coeff).eval()
    run.create()
    run.clean_stale_tmp()
    return Prepared(cfg, run, evalset, model, ct_model, coverage, device)


def plan_units(cfg: SweepConfig, run: RunDir, ids: np.ndarray) -> list[Unit]:
    """All units of the sweep, baseline first within each (seed, chunk)."""
    units = []
    n = len(ids)
    for seed in cfg.seeds:
        for c, start in enumerate(range(0, n, cfg.chunk_size)):
            pos = np.arange(start, min(n, start + cfg.chunk_size))
            for beta in cfg.betas:  # descending: 1.0 first
                units.append(Unit(beta, seed, c, pos, run.unit_key(beta, seed, ids[pos])))
    return units


def _engine_call(engine, prep: Prepared, pos: np.ndarray, betas: list[float], seed: int):
    cfg, ev = prep.cfg, prep.evalset
    reps = len(betas)
    x = ev.x[pos].repeat(reps, 1, 1, 1)
    y = ev.y[pos].repeat(reps)
    ids = ev.ids[pos].repeat(reps)
    row_betas = torch.tensor(np.repeat(np.asarray(betas, dtype=np.float64), len(pos)))
    kwargs = dict(ids=ids, betas=row_betas, seed=seed, threat=cfg.threat, eps=cfg.eps,
                  attacks=cfg.attack_list, batch_size=cfg.batch_size, device=prep.device)
    if cfg.attacks == "rand":
        kwargs["rand"] = True
    t0 = time.perf_counter()
    out = engine.run(prep.ct_model, x, y, **kwargs)
    return out, time.perf_counter() - t0


def run_units(prep: Prepared, units: list[Unit], *, progress: bool = True, on_done=None, bar=None) -> int:
    """Run the given units (skipping finished ones) and write each atomically. Returns units run.

    Callers that may run concurrently with other processes hold the work item's claim
    (``executors.run_worker`` does); ``bar`` is an optional shared progress bar.
    """
    from ctrobust import diagnostics
    from ctrobust.ct import set_beta
    from ctrobust.engines import get_engine

    cfg, run, ev = prep.cfg, prep.run, prep.evalset
    engine = get_engine(cfg.engine)
    todo = [u for u in units if not run.has_unit(u.key)]
    groups: dict[tuple, list[Unit]] = {}
    for u in todo:
        groups.setdefault(u.group, []).append(u)
    own_bar = bar is None and progress and not cfg.quiet
    if own_bar:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="units", unit="unit", file=sys.stderr, dynamic_ncols=True)
    n_run = 0
    for (seed, chunk), gunits in groups.items():
        pos = gunits[0].pos
        base_key = run.unit_key(1.0, seed, ev.ids[pos].numpy())
        base = run.read_unit(base_key)
        x_adv_base = torch.from_numpy(base[0]["x_adv"]) if base is not None else None
        betas = sorted({u.beta for u in gunits}, reverse=True)
        if x_adv_base is None and 1.0 not in betas:
            betas = [1.0] + betas  # the transfer check needs the baseline's adversarial examples
        # fast engine: all betas of the group in one call (beta-batching); reference: one beta per call
        calls = [betas] if engine.name == "fast" else [[b] for b in betas]
        for call_betas in calls:
            out, secs = _engine_call(engine, prep, pos, call_betas, seed)
            n = len(pos)
            for j, beta in enumerate(call_betas):
                sl = slice(j * n, (j + 1) * n)
                xa = out.x_adv[sl]
                if beta == 1.0:
                    x_adv_base = xa
                x = ev.x[pos]
                y = ev.y[pos]
                set_beta(prep.ct_model, float(beta))
                gh = diagnostics.gradient_health(prep.ct_model, x.to(prep.device), y.to(prep.device))
                tr = diagnostics.transfer_flags(prep.ct_model, x.to(prep.device), x_adv_base.to(prep.device),
                                                y.to(prep.device))
                arrays = {"id": ev.ids[pos].numpy().astype(np.int64), "label": y.numpy().astype(np.int64),
                          "clean_correct": out.clean_correct[sl].astype(bool),
                          "robust": out.robust[sl].astype(bool),
                          "broken_by": np.asarray(out.broken_by[sl]).astype(str),
                          "grad_zero": np.asarray(gh["grad_zero"], bool),
                          "grad_nonfinite": np.asarray(gh["grad_nonfinite"], bool),
                          "transfer_broken": np.asarray(tr, bool)}
                if beta == 1.0:
                    arrays["x_adv"] = xa.numpy().astype(np.float32)
                meta = {"beta": float(beta), "seed": int(seed), "chunk": int(chunk), "n": int(n),
                        "seconds": secs / len(call_betas), "device": str(prep.device),
                        "batch_size": int(out.batch_size), "engine": engine.name,
                        "forward_passes": int(out.forward_passes) // len(call_betas),
                        "backward_passes": int(out.backward_passes) // len(call_betas),
                        "warnings": list(out.warnings)}
                key = run.unit_key(beta, seed, ev.ids[pos].numpy())
                if not run.has_unit(key):
                    run.write_unit(key, arrays, meta)
                    n_run += 1
                    if bar is not None:
                        bar.update(1)
                    if on_done is not None:
                        on_done(beta, seed)
    if own_bar:
        bar.close()
    return n_run


def run_sweep(cfg: SweepConfig, *, progress: bool = True) -> SweepResult:
    """Run (or resume) a whole sweep in this process and write results and figures.

    Returns:
        ``SweepResult`` with the run dir and the rows of ``results.csv``.
    """
    from ctrobust.stats import wilson_interval

    prep = prepare(cfg)
    ids = prep.evalset.ids.numpy()
    units = plan_units(cfg, prep.run, ids)
    n_done_before = sum(prep.run.has_unit(u.key) for u in units)
    _log(cfg, f"ctrobust: {cfg.model} on {len(ids)} {cfg.dataset} examples, {cfg.threat} eps={cfg.eps:.5g}, "
              f"{len(cfg.betas)} betas x {len(cfg.seeds)} seed(s), engine={cfg.engine}, device={prep.device}; "
              f"{len(units) - n_done_before}/{len(units)} units to run -> {prep.run.path}")
    cov = prep.coverage
    _log(cfg, f"CT coverage: {cov['relu_modules']} ReLU module calls, {cov['relu_functional']} functional, "
              f"{cov['leaky_relu']} LeakyReLU, {cov['missed']} missed")

    remaining = {}
    for u in units:
        if not prep.run.has_unit(u.key):
            remaining[(u.beta, u.seed)] = remaining.get((u.beta, u.seed), 0) + 1

    def on_done(beta, seed):
        k = (beta, seed)
        if k not in remaining:
            return
        remaining[k] -= 1
        if remaining[k] == 0:
            keys = [u.key for u in units if u.beta == beta and u.seed == seed]
            got = [prep.run.read_unit(key)[0] for key in keys]
            n = sum(len(a["id"]) for a in got)
            kc = sum(int(a["clean_correct"].sum()) for a in got)
            kr = sum(int(a["robust"].sum()) for a in got)
            lo, hi = wilson_interval(kr, n)
            _log(cfg, f"beta={beta:<5g} seed={seed}: clean {kc / n:6.1%}  robust {kr / n:6.1%} "
                      f"[{lo:.1%}, {hi:.1%}]  (n={n})")

    from ctrobust.executors import run_worker, write_plan

    write_plan(prep, units)
    bar = None
    if progress and not cfg.quiet:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(units) - n_done_before, desc="units", unit="unit", file=sys.stderr,
                   dynamic_ncols=True)
    try:
        n_run = run_worker(prep, units, bar=bar, on_done=on_done)
    finally:
        if bar is not None:
            bar.close()
    rows = finalize(prep)
    return SweepResult(prep.run.path, rows, n_run, n_done_before)


def finalize(prep: Prepared) -> list[dict]:
    """Merge finished units into results files and redraw the figures."""
    from ctrobust.plots import plot_runs

    rows = write_results(prep.run, prep.coverage)
    try:
        plot_runs([prep.run.path], out_dir=prep.run.path / "figures")
    except Exception as exc:  # a figure must never cost the results
        _log(prep.cfg, f"warning: could not draw figures: {exc}")
    return rows
