"""Result rows: finished units -> one row per (beta, seed) with accuracies, intervals and costs.

The one place that turns per-example outcomes into the columns of ``results.csv`` / ``results.json``
(the store only reads and writes the files). Accuracies are fractions in [0, 1] with 95 % Wilson
intervals; ``broken_<attack>`` counts the rows each attack broke first.

Costs: ``forward_passes`` / ``backward_passes`` are example passes measured for this beta (engines that
count per row; the reference engine runs one beta per call, so its call totals are per beta).
``seconds`` is wall time of this beta's share: measured directly when the engine ran one beta per call;
when one beta-batched call served several betas, the call's seconds are shared out in proportion to each
beta's measured passes. ``call_seconds`` and ``call_betas`` are the raw measurement: the wall time of the
engine call(s) that computed the row and how many betas shared them.

Threat model: ``protocol`` and ``threat_note`` (empty for the stated threat model; the ``reference``
protocol says its points are not in the stated eps-ball), ``pixel_linf_max`` (largest max |x_adv - x| in
[0, 1] pixel units) and ``in_ball_frac`` (fraction of rows whose point lies in the stated ball).

Distances (a run with minimum-norm attacks): ``median_min_norm`` with its 95 % interval ``median_min_norm_lo``
/ ``median_min_norm_hi`` (percentile bootstrap over examples; ``inf`` when more than half the points were never
broken), and ``curves.csv``: one row per (beta, seed, eps) with ``beta, seed, threat, eps, n, robust_acc,
robust_lo, robust_hi`` (fractions, Wilson intervals) on the ``curve_eps`` grid, robust-at-eps by
:func:`ctrobust.curves.robust_at`.

Corruptions (``--threat corruptions``, no attack): ``corruption_acc`` (mean accuracy over the evaluated
(corruption, severity) pairs; every pair has the same images count, so it is the pooled accuracy) with its Wilson
interval ``corruption_lo`` / ``corruption_hi``; ``clean_acc`` and ``robust_acc`` hold the same number (accuracy on
the corrupted images). ``corruptions.csv``: one row per (beta, seed, corruption, severity) with ``n, acc,
acc_lo, acc_hi``.

Arithmetic: ``precision`` (float32; on CUDA whether TF32 was allowed for convolutions and matmuls) and
``peak_mem_mb`` (the accelerator's peak memory during the engine calls; empty on the CPU).
"""

from __future__ import annotations

import zlib

import numpy as np

from ctrobust.curves import default_curve_eps, has_distances, robust_at
from ctrobust.data import TIMING_NOTE
from ctrobust.protocols import get_protocol
from ctrobust.stats import median_interval, wilson_interval
from ctrobust.store import RunDir, merge_units
from ctrobust.threat import CORRUPTIONS

__all__ = ["result_rows", "curve_rows", "corruption_rows", "write_results", "CURVE_FIELDS", "CORRUPTION_FIELDS",
           "MEDIAN_BOOT"]

#: the columns of ``corruptions.csv`` (a contract).
CORRUPTION_FIELDS = ("beta", "seed", "corruption", "severity", "n", "acc", "acc_lo", "acc_hi")

#: the columns of ``curves.csv`` (a contract).
CURVE_FIELDS = ("beta", "seed", "threat", "eps", "n", "robust_acc", "robust_lo", "robust_hi")
#: bootstrap replicates of the median minimal perturbation's interval.
MEDIAN_BOOT = 1000


def _boot_seed(seed: int, beta: float) -> int:
    """A fixed bootstrap seed per (seed, beta): the interval does not change when other rows are added."""
    return zlib.crc32(f"{int(seed)}|{float(beta):.6f}".encode())


def result_rows(run: RunDir, outcomes: dict, metas: list[dict], coverage) -> list[dict]:
    """One row per (seed, beta) of the run's grid that has finished units.

    Args:
        run: the run dir (its config gives the grid and the constant columns).
        outcomes: merged per-example outcomes (:func:`ctrobust.store.merge_units`).
        metas: the finished units' metadata.
        coverage: the model's :class:`ctrobust.ct.Coverage` under the run's CT scope (written as ``ct_*``
            columns: the counts, ``ct_unsupported``, ``ct_untouched`` and ``ct_scope``).
    """
    cfg = run.cfg
    cov = coverage.to_dict()
    rows = []
    for seed in cfg.seeds:
        for beta in cfg.betas:
            m = (outcomes["seed"] == seed) & (outcomes["beta"] == beta)
            n = int(m.sum())
            if n == 0:
                continue
            um = [u for u in metas if u["seed"] == seed and u["beta"] == beta]
            k_clean, k_rob = int(outcomes["clean_correct"][m].sum()), int(outcomes["robust"][m].sum())
            clo, chi = wilson_interval(k_clean, n)
            rlo, rhi = wilson_interval(k_rob, n)
            row = {"model": cfg.model, "dataset": cfg.dataset, "threat": cfg.threat, "eps": cfg.eps,
                   "beta": beta, "coeff": cfg.coeff, "seed": seed, "n": n,
                   "clean_acc": k_clean / n, "clean_lo": clo, "clean_hi": chi,
                   "robust_acc": k_rob / n, "robust_lo": rlo, "robust_hi": rhi}
            # the attacks that decide robust-at-eps: the bounded ones, else the minimum-norm ones
            for a in () if cfg.threat == CORRUPTIONS else (
                    cfg.suite.attacks or tuple(sp.name for sp in cfg.suite.min_norm_specs)):
                row[f"broken_{a}"] = int((outcomes["broken_by"][m] == a).sum())
            row["grad_zero_frac"] = float(outcomes["grad_zero"][m].mean())
            row["grad_nonfinite_frac"] = float(outcomes["grad_nonfinite"][m].mean())
            row["transfer_only"] = int((outcomes["robust"][m] & outcomes["transfer_broken"][m]).sum())
            for k, v in cov.items():
                if k != "unsupported":
                    row[f"ct_{k}"] = v
            row["ct_unsupported"] = ";".join(f"{k} x {v}" for k, v in cov.get("unsupported", {}).items())
            row["ct_untouched"] = coverage.untouched  # ReLU calls the scope leaves as ReLUs by design
            row["ct_scope"] = coverage.scope
            row["seconds"] = round(sum(u["seconds"] for u in um), 3)
            row["forward_passes"] = sum(u["forward_passes"] for u in um)
            row["backward_passes"] = sum(u["backward_passes"] for u in um)
            row["device"] = ",".join(sorted({u["device"] for u in um}))
            row["batch_size"] = max(u["batch_size"] for u in um)
            row["engine"] = cfg.engine
            row["attacks"] = cfg.attacks
            row["complete"] = n == (cfg.n_examples or n)
            row["protocol"] = cfg.protocol
            row["threat_note"] = get_protocol(cfg.protocol).note
            row["pixel_linf_max"] = float(outcomes["pixel_linf"][m].max())
            if "pixel_l2" in outcomes:  # NaN for units written before it was recorded
                row["pixel_l2_max"] = float(np.max(outcomes["pixel_l2"][m]))
            row["in_ball_frac"] = float(outcomes["in_ball"][m].mean())
            peaks = [u["peak_mem_mb"] for u in um if u.get("peak_mem_mb") is not None]
            row["peak_mem_mb"] = round(max(peaks), 1) if peaks else ""
            row["precision"] = ";".join(sorted({u.get("precision", "fp32") for u in um}))
            row["call_seconds"] = round(sum(u.get("call_seconds", u["seconds"]) for u in um), 3)
            row["call_betas"] = max(int(u.get("call_betas", 1)) for u in um)
            if cfg.threat == CORRUPTIONS:
                row["corruption_acc"], row["corruption_lo"], row["corruption_hi"] = k_clean / n, clo, chi
            if cfg.suite.min_norm:
                d = np.asarray(outcomes["min_norm"][m], dtype=np.float64)
                mi = median_interval(d[~np.isnan(d)], n_boot=MEDIAN_BOOT, seed=_boot_seed(seed, beta))
                row["median_min_norm"], row["median_min_norm_lo"], row["median_min_norm_hi"] = \
                    float(mi.median), float(mi.lo), float(mi.hi)
            row["data"] = cfg.data
            warns = {w for u in um for w in u.get("warnings", [])}
            if cfg.data == "timing":  # repeated images: the accuracies measure nothing
                warns.add(TIMING_NOTE)
            row["warnings"] = sorted(warns)
            rows.append(row)
    return rows


def corruption_rows(outcomes: dict) -> list[dict]:
    """Accuracy per (beta, seed, corruption, severity) of a corruptions run (:data:`CORRUPTION_FIELDS`),
    ordered by seed, beta (descending), then the run's pair order; ``[]`` for other runs."""
    corr = np.asarray(outcomes.get("corruption", np.zeros(0)), dtype=str)
    if corr.size == 0 or not np.any(corr != ""):
        return []
    rows = []
    pairs = list(dict.fromkeys(zip(corr.tolist(), np.asarray(outcomes["severity"]).tolist())))
    for seed in np.unique(outcomes["seed"]):
        for beta in sorted(np.unique(outcomes["beta"]).tolist(), reverse=True):
            sb = (outcomes["seed"] == seed) & (outcomes["beta"] == beta)
            for c, sev in pairs:
                m = sb & (corr == c) & (outcomes["severity"] == sev)
                n = int(m.sum())
                if n == 0:
                    continue
                k = int(outcomes["clean_correct"][m].sum())
                lo, hi = wilson_interval(k, n)
                rows.append({"beta": float(beta), "seed": int(seed), "corruption": c, "severity": int(sev), "n": n,
                             "acc": k / n, "acc_lo": lo, "acc_hi": hi})
    return rows


def curve_rows(outcomes: dict, threat: str, eps_grid=None) -> list[dict]:
    """The robustness curves of a run with distances: one row per (beta, seed, eps) (:data:`CURVE_FIELDS`).

    Args:
        outcomes: merged per-example outcomes with ``min_norm``.
        threat: ``Linf`` or ``L2`` (the norm of the distances; a column).
        eps_grid: the eps values (``[0, 1]`` pixel units); None: :func:`ctrobust.curves.default_curve_eps`.

    Returns:
        Rows ordered by seed, beta (descending), eps; ``[]`` when the outcomes hold no distances.
    """
    if not has_distances(outcomes):
        return []
    grid = default_curve_eps(threat) if eps_grid is None else list(eps_grid)
    rows = []
    for seed in np.unique(outcomes["seed"]):
        for beta in sorted(np.unique(outcomes["beta"]).tolist(), reverse=True):
            m = (outcomes["seed"] == seed) & (outcomes["beta"] == beta)
            d = np.asarray(outcomes["min_norm"][m], dtype=np.float64)
            d = d[~np.isnan(d)]
            n = int(d.size)
            if n == 0:
                continue
            for eps in grid:
                k = int(robust_at(d, eps).sum())
                lo, hi = wilson_interval(k, n)
                rows.append({"beta": float(beta), "seed": int(seed), "threat": threat, "eps": float(eps), "n": n,
                             "robust_acc": k / n, "robust_lo": lo, "robust_hi": hi})
    return rows


def write_results(run: RunDir, coverage) -> list[dict]:
    """Merge all finished units of ``run`` into ``outcomes.npz``, ``results.csv`` and ``results.json``.

    Returns:
        The rows written (see :func:`result_rows`).
    """
    outcomes, metas = merge_units(run.read_units())
    run.write_outcomes(outcomes)
    rows = result_rows(run, outcomes, metas, coverage)
    run.write_results(rows, {"experiment": run.experiment, "key": run.key, "coverage": coverage.as_record()})
    if run.cfg.threat == CORRUPTIONS:
        run.write_corruptions(corruption_rows(outcomes), CORRUPTION_FIELDS)
        return rows
    curves = curve_rows(outcomes, run.cfg.threat, run.cfg.curve_eps)
    if curves:
        run.write_curves(curves, CURVE_FIELDS)
    return rows
