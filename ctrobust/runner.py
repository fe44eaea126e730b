"""The unit runner: prepare a process (model, data, CT), plan work units, and run them with an engine.

A work unit is (beta, seed, example chunk). Units are independent and idempotent: each finished unit is
written atomically into the run dir under a key that hashes everything determining it, and a re-run
skips finished units. Units of one (seed, chunk) form a *work item*: they share the beta = 1 adversarial
examples (replayed against every CT model by the transfer diagnostic), and an engine that batches betas
(``engine.batches_betas``) attacks all of them in one call.

:func:`run_worker` is the loop every executor runs (in this process, in worker processes, in Slurm
jobs): claim an item (``RunDir.claim``), run its missing units, record failures and retry them. This
module imports no executor and no orchestrator; they import it.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ctrobust.config import SweepConfig
from ctrobust.errors import ConfigError
from ctrobust.progress import reporting, row_budget
from ctrobust.protocols import attack_space, check_model, get_protocol
from ctrobust.store import PlanEntry, RunDir, load_sweep_config
from ctrobust.threat import CORRUPTIONS

__all__ = ["Unit", "WorkItem", "Prepared", "resolve_device", "prepare", "plan_units", "plan_items", "run_units",
           "run_worker", "worker_main"]


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

    @property
    def item(self) -> str:
        """Name of the work item (the units of one seed and chunk)."""
        return f"item-s{self.seed}-c{self.chunk}"

    def plan_entry(self) -> PlanEntry:
        return PlanEntry(self.key, float(self.beta), int(self.seed), int(self.chunk), int(len(self.pos)), self.item)


@dataclass
class WorkItem:
    """The units of one (seed, chunk): a beta block run by one worker."""

    seed: int
    chunk: int
    units: list

    @property
    def name(self) -> str:
        return f"item-s{self.seed}-c{self.chunk}"


@dataclass
class Prepared:
    """Everything loaded once per process: config, run dir, data, model, CT model, coverage."""

    cfg: SweepConfig
    run: RunDir
    evalset: object
    model: torch.nn.Module
    ct_model: torch.nn.Module
    coverage: object
    device: torch.device
    space: object = None  # protocols.AttackSpace: where the engine attacks (pixel or normalized inputs)


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
            raise ConfigError(f"--device {spec}: CUDA is not available on this machine; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                  and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {spec}: MPS (Apple GPU) is not available on this machine; "
                          "use --device cpu or auto")
    return dev


def log(cfg: SweepConfig, msg: str) -> None:
    if not cfg.quiet:
        print(msg, file=sys.stderr, flush=True)


def prepare(cfg: SweepConfig, device: torch.device | None = None) -> Prepared:
    """Validate the run dir, load data and model, check CT coverage; writes only ``config.yaml``.

    A model given as code or checkpoint (``ctrobust.models.keyed_by_weights``) enters the experiment with the
    hash of its weights (``model_weights``), so a different model never reuses this run dir's units.
    Under ``cfg.ct_scope == "modules"`` the ReLU calls the scope leaves as ReLUs (functional calls, ReLU
    modules built inside ``forward``) are expected and logged; ReLU calls CT *missed* are refused either way.
    """
    from ctrobust.ct import CTCoverageError, apply_ct, ct_coverage
    from ctrobust.data import load_eval_set, num_classes
    from ctrobust.models import check_logits, keyed_by_weights, load_model, weights_fingerprint

    device = device or resolve_device(cfg.device)
    # cheap pre-check of the determining settings before any loading (a mismatch touches nothing)
    RunDir(cfg.run_dir, cfg, data_hash=None).check(settings_only=True)
    model = load_model(cfg.model, dataset=cfg.dataset, threat=cfg.threat, model_dir=cfg.model_dir,
                       device=str(device), checkpoint=cfg.checkpoint)
    protocol = get_protocol(cfg.protocol)
    try:
        check_model(protocol, model)
    except ValueError as exc:  # the reference protocol on a model whose normalization is unknown
        raise ConfigError(f"model {cfg.model!r}: {exc}") from None
    weights = weights_fingerprint(model) if keyed_by_weights(cfg.model, cfg.checkpoint) else None
    if cfg.threat == CORRUPTIONS:
        from ctrobust.corruptions import load_corruption_eval_set

        evalset = load_corruption_eval_set(cfg.dataset, cfg.corruptions, cfg.severities, cfg.n_examples,
                                           cfg.data_dir)
    else:
        evalset = load_eval_set(cfg.dataset, cfg.n_examples, subset=cfg.subset, data=cfg.data,
                                data_dir=cfg.data_dir)
    run = RunDir(cfg.run_dir, cfg, evalset.content_hash, model_weights=weights)
    run.check()
    x1 = evalset.x[:1].to(device)
    check_logits(model, x1, num_classes(cfg.dataset), cfg.model)
    coverage = ct_coverage(model, x1, scope=cfg.ct_scope)
    if coverage.tuned == 0:
        found = ", ".join(f"{k} x {v}" for k, v in coverage.unsupported.items()) or "no activation"
        if coverage.untouched:
            raise CTCoverageError(f"model {cfg.model!r}: --ct-scope {cfg.ct_scope} tunes none of its "
                                  f"{coverage.untouched} ReLU call(s) (none is an nn.ReLU submodule); "
                                  + ("the reference protocol cannot tune it" if cfg.protocol == "reference"
                                     else "use --ct-scope all"))
        raise CTCoverageError(f"model {cfg.model!r}: no ReLU to tune: found {found}; CT does not apply")
    if coverage.missed:
        raise CTCoverageError(f"model {cfg.model!r}: CT would miss {coverage.missed} ReLU call(s); "
                              "refusing to report CT results for a partially tuned network")
    if coverage.untouched:
        log(cfg, f"note: --ct-scope {cfg.ct_scope} tunes {coverage.tuned} ReLU call(s) and leaves "
                 f"{coverage.untouched} as ReLUs (functional calls and ReLU modules built inside forward), as "
                 "the CT reference code does (recorded as ct_untouched)")
    if coverage.unsupported:
        other = ", ".join(f"{k} x {v}" for k, v in coverage.unsupported.items())
        log(cfg, f"warning: model {cfg.model!r} also computes activations CT does not tune ({other}); "
                 "results describe a partially tuned network (recorded as ct_unsupported)")
    ct_model = apply_ct(model, 1.0, cfg.coeff, scope=cfg.ct_scope).eval()
    space = attack_space(protocol, ct_model)
    run.create()
    run.clean_stale_tmp()
    return Prepared(cfg, run, evalset, model, ct_model, coverage, device, space)


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


def plan_items(units) -> list[WorkItem]:
    """Group units into work items (one per seed and chunk), in plan order."""
    items: dict[tuple, WorkItem] = {}
    for u in units:
        items.setdefault(u.group, WorkItem(u.seed, u.chunk, [])).units.append(u)
    return list(items.values())


def _engine_call(engine, prep: Prepared, pos: np.ndarray, betas: list[float], seed: int):
    """One engine call on the rows ``pos`` at every beta of ``betas``.

    Returns:
        ``(outcome, x_adv, seconds)``: the engine's outcome as it made it, its points mapped back from the
        protocol's space (``prep.space``) to [0, 1] pixel space (rows not broken keep their clean image
        exactly), and the call's wall time.
    """
    cfg, ev = prep.cfg, prep.evalset
    space = prep.space
    reps = len(betas)
    x = ev.x[pos].repeat(reps, 1, 1, 1)
    y = ev.y[pos].repeat(reps)
    ids = ev.ids[pos].repeat(reps)
    row_betas = torch.tensor(np.repeat(np.asarray(betas, dtype=np.float64), len(pos)))
    t0 = time.perf_counter()
    out = engine.run(space.model, space.to_space(x), y, ids=ids, betas=row_betas, seed=seed, threat=cfg.threat,
                     eps=cfg.eps, suite=cfg.suite, batch_size=cfg.batch_size, device=prep.device,
                     constraint=space.constraint)
    secs = time.perf_counter() - t0
    broken = torch.as_tensor(out.clean_correct & ~out.robust)
    x_adv = x.clone()
    x_adv[broken] = space.to_pixel(out.x_adv[broken]).to(x.dtype)
    return out, x_adv, secs


def precision(device: torch.device) -> str:
    """The arithmetic the attacks ran in: float32, and on CUDA whether TF32 was allowed (torch's defaults:
    on for cuDNN convolutions, off for matmuls; pyautoattack and both engines change neither)."""
    if device.type != "cuda":
        return "fp32"
    return (f"fp32; cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
            f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}")


def _pixel_perturbation(x: torch.Tensor, x_adv: torch.Tensor, threat: str, eps: float):
    """Per row: max |x_adv - x| and ||x_adv - x||_2 in [0, 1] pixel units, and whether x_adv is in the stated
    ball (the threat's norm) and [0, 1]. Both norms are kept whatever the threat, so that an L2 run of the
    reference protocol shows the pixel-space L2 perturbation it actually applied."""
    from ctrobust.threat import distances

    d = (x_adv - x).reshape(x.shape[0], -1).double()
    linf = d.abs().amax(1) if x.numel() else torch.zeros(x.shape[0])
    l2 = d.norm(dim=1) if x.numel() else torch.zeros(x.shape[0])
    flat = x_adv.reshape(x.shape[0], -1)
    tol = 1e-5  # as check_ball
    inside = (distances(x, x_adv, threat) <= eps + tol) & (flat.amin(1) >= -tol) & (flat.amax(1) <= 1 + tol)
    return linf.numpy().astype(np.float32), l2.numpy().astype(np.float32), inside.numpy().astype(bool)


def _check_min_norm(prep: Prepared, x: torch.Tensor, y: torch.Tensor, x_mn: torch.Tensor, dist: np.ndarray,
                    beta: float) -> None:
    """Every distance stored is of a verified point: its norm recomputed and inside [0, 1]
    (:func:`ctrobust.threat.check_distances`), and misclassified by the model at ``beta`` (one forward).

    Raises:
        DistanceCheckError: the unit is not written (the work item fails and is retried).
    """
    from ctrobust.ct import set_beta
    from ctrobust.threat import DistanceCheckError, check_distances

    check_distances(x, x_mn, dist, prep.cfg.threat)
    sel = np.flatnonzero(np.isfinite(dist) & (dist > 0))
    if sel.size == 0:
        return
    set_beta(prep.ct_model, float(beta))
    with torch.no_grad():
        pred = torch.cat([prep.ct_model(x_mn[sel[i:i + 256]].to(prep.device)).argmax(1).cpu()
                          for i in range(0, sel.size, 256)])
    still = (pred == y[torch.as_tensor(sel)]).numpy()
    if still.any():
        raise DistanceCheckError(f"beta={beta:g}: the minimum-norm points of rows {sel[still][:5].tolist()} are "
                                 "classified correctly: their distances are not stored")


def _per_beta_costs(out, n: int, n_betas: int, secs: float) -> list[dict]:
    """Measured passes of each beta's rows, and the call's seconds shared out in proportion to them."""
    if out.accounting == "call":  # the call's totals: one beta per call, or an even split
        fwd = [int(out.forward_passes) // n_betas] * n_betas
        bwd = [int(out.backward_passes) // n_betas] * n_betas
    else:
        fwd = [int(out.row_forward_passes[j * n:(j + 1) * n].sum()) for j in range(n_betas)]
        bwd = [int(out.row_backward_passes[j * n:(j + 1) * n].sum()) for j in range(n_betas)]
    total = sum(fwd) + sum(bwd)
    share = [(f + b) / total if total else 1.0 / n_betas for f, b in zip(fwd, bwd)]
    return [{"seconds": secs * s, "forward_passes": f, "backward_passes": b, "call_seconds": secs,
             "call_betas": n_betas} for f, b, s in zip(fwd, bwd, share)]


@contextmanager
def _credit(bar, planned: int):
    """Hand the row-steps credited during an engine call to ``bar``, at most ``planned``, and exactly
    ``planned`` once the call is over (an engine that reports nothing moves the bar at the end)."""
    if bar is None:  # nobody watches: the driver skips its bookkeeping (no device sync for progress)
        yield
        return
    got = [0]

    def sink(n: int) -> None:
        n = min(n, planned - got[0])
        if n > 0:
            got[0] += n
            bar.update(n)

    with reporting(sink):
        yield
    sink(planned - got[0])


def run_units(prep: Prepared, units: list[Unit], *, on_done=None, bar=None) -> int:
    """Run the given units (skipping finished ones) and write each atomically. Returns units run.

    Callers that may run concurrently with other processes hold the work item's claim
    (:func:`run_worker` does); ``bar`` is an optional shared progress bar counting row-steps
    (:mod:`ctrobust.progress`).
    """
    from ctrobust import diagnostics
    from ctrobust.ct import set_beta
    from ctrobust.engines import get_engine, get_engine_spec

    cfg, run, ev = prep.cfg, prep.run, prep.evalset
    engine = get_engine(cfg.engine)
    attacked = "accuracy" not in get_engine_spec(cfg.engine).measures
    todo = [u for u in units if not run.has_unit(u.key)]
    groups: dict[tuple, list[Unit]] = {}
    for u in todo:
        groups.setdefault(u.group, []).append(u)
    n_run = 0
    for (seed, chunk), gunits in groups.items():
        pos = gunits[0].pos
        base_key = run.unit_key(1.0, seed, ev.ids[pos].numpy())
        base = run.read_unit(base_key)
        x_adv_base = torch.from_numpy(base[0]["x_adv"]) if base is not None else None
        betas = sorted({u.beta for u in gunits}, reverse=True)
        if x_adv_base is None and 1.0 not in betas:
            betas = [1.0] + betas  # the transfer check needs the baseline's adversarial examples
        calls = [betas] if engine.batches_betas else [[b] for b in betas]
        for call_betas in calls:
            planned = len(pos) * row_budget(cfg.suite) * sum(u.beta in call_betas for u in gunits)
            with _credit(bar, planned):  # the bar counts row-steps (ctrobust.progress), not units
                out, x_adv_call, secs = _engine_call(engine, prep, pos, call_betas, seed)
            n = len(pos)
            costs = _per_beta_costs(out, n, len(call_betas), secs)
            for j, beta in enumerate(call_betas):
                sl = slice(j * n, (j + 1) * n)
                xa = x_adv_call[sl]
                if beta == 1.0:
                    x_adv_base = xa
                x = ev.x[pos]
                y = ev.y[pos]
                if attacked:
                    set_beta(prep.ct_model, float(beta))
                    gh = diagnostics.gradient_health(prep.ct_model, x.to(prep.device), y.to(prep.device))
                    tr = diagnostics.transfer_flags(prep.ct_model, x.to(prep.device), x_adv_base.to(prep.device),
                                                    y.to(prep.device))
                else:  # no attack (corruptions): no gradients to check, no adversarial point to transfer
                    gh = {"grad_zero": np.zeros(n, bool), "grad_nonfinite": np.zeros(n, bool)}
                    tr = np.zeros(n, bool)
                arrays = {"id": ev.ids[pos].numpy().astype(np.int64), "label": y.numpy().astype(np.int64),
                          "clean_correct": out.clean_correct[sl].astype(bool),
                          "robust": out.robust[sl].astype(bool),
                          "broken_by": np.asarray(out.broken_by[sl]).astype(str),
                          "grad_zero": np.asarray(gh["grad_zero"], bool),
                          "grad_nonfinite": np.asarray(gh["grad_nonfinite"], bool),
                          "transfer_broken": np.asarray(tr, bool)}
                if attacked:
                    arrays["pixel_linf"], arrays["pixel_l2"], arrays["in_ball"] = _pixel_perturbation(
                        x, xa, cfg.threat, cfg.eps)
                else:
                    arrays["pixel_linf"], arrays["in_ball"] = np.zeros(n, np.float32), np.ones(n, bool)
                    arrays["pixel_l2"] = np.zeros(n, np.float32)
                if hasattr(ev, "columns"):  # the eval set's own per-row columns (corruption, severity)
                    arrays.update(ev.columns(pos))
                adv_arrays = None
                if out.min_norm is not None:
                    dist, x_mn = out.min_norm[sl], out.x_min_norm[sl]
                    _check_min_norm(prep, x, y, x_mn, dist, beta)
                    arrays["min_norm"] = dist.astype(np.float32)
                    arrays["min_norm_by"] = np.asarray(out.min_norm_by[sl]).astype(str)
                    if cfg.save_adv:
                        adv_arrays = {"id": arrays["id"], "x_adv": x_mn.numpy().astype(np.float32),
                                      "min_norm": arrays["min_norm"]}
                if beta == 1.0:
                    arrays["x_adv"] = xa.numpy().astype(np.float32)
                meta = {"beta": float(beta), "seed": int(seed), "chunk": int(chunk), "n": int(n),
                        **costs[j], "device": str(prep.device), "batch_size": int(out.batch_size),
                        "peak_mem_mb": out.peak_mem_mb, "precision": precision(prep.device),
                        "engine": engine.name, "warnings": list(out.warnings)}
                key = run.unit_key(beta, seed, ev.ids[pos].numpy())
                if not run.has_unit(key):
                    if adv_arrays is not None:  # before the unit: a finished unit always has its points
                        run.write_adv(key, adv_arrays)
                    run.write_unit(key, arrays, meta)
                    n_run += 1
                    if on_done is not None:
                        on_done(beta, seed)
    return n_run


def run_worker(prep: Prepared, units, *, poll: float = 0.5, wait: bool = True, bar=None, on_done=None) -> int:
    """The worker loop: claim items, run their missing units, retry failures; returns units run here.

    Args:
        prep: this worker's :class:`Prepared` (config, run dir, data, model on its device).
        units: all planned units.
        wait: after the last free item, wait for items claimed by other workers; take them over if their
            worker dies.

    Raises:
        RuntimeError: some item failed more than ``max_retries + 1`` times (named in the message).
    """
    run = prep.run
    max_retries = prep.cfg.max_retries
    n_run = 0
    items = plan_items(units)
    while True:
        pending = [it for it in items if not all(run.has_unit(u.key) for u in it.units)]
        runnable = [it for it in pending if run.failure(it.name).attempts <= max_retries]
        if not runnable:
            break
        progressed = False
        for it in runnable:
            with run.claim(it.name) as mine:
                if not mine:
                    continue
                progressed = True
                try:
                    n_run += run_units(prep, it.units, bar=bar, on_done=on_done)
                except (KeyboardInterrupt, ConfigError):
                    raise
                except Exception as exc:  # noqa: BLE001 - recorded and re-queued
                    f = run.record_failure(it.name, exc)
                    print(f"ctrobust: {it.name} failed (attempt {f.attempts}/{max_retries + 1}): {exc}",
                          file=sys.stderr)
        if not progressed:
            if not wait:
                break
            time.sleep(poll)  # every remaining item is held by another live worker
    failed = [it.name for it in items if run.failure(it.name).attempts > max_retries
              and not all(run.has_unit(u.key) for u in it.units)]
    if failed:
        raise RuntimeError(f"{len(failed)} work item(s) failed {max_retries + 1} times "
                           f"(see {run.units_dir}/*.failed): {', '.join(failed[:5])}")
    return n_run


def worker_main(run_dir: str, device: str | None = None, quiet: bool = True) -> int:
    """Run as a worker on an existing run dir (its config.yaml decides everything but the device)."""
    cfg = load_sweep_config(run_dir).replace(out=str(run_dir), quiet=quiet, **({"device": device} if device else {}))
    prep = prepare(cfg, resolve_device(cfg.device))
    units = plan_units(cfg, prep.run, prep.evalset.ids.numpy())
    return run_worker(prep, units)


def _main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m ctrobust.runner")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="run as a sweep worker on an existing run dir")
    w.add_argument("run_dir", type=Path)
    w.add_argument("--device")
    a = p.parse_args(argv)
    worker_main(str(a.run_dir), a.device)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
