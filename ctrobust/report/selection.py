"""Beta selection per seed (oracle and held-out) and the run-level bootstrap of the selected accuracies.

- **oracle**: beta = argmax of robust accuracy over all evaluated points, reported on the same points
  (the CT paper's protocol; optimistic, the maximum of ~30 noisy accuracies on the same points);
- **held-out**: beta chosen on the selection half of a seeded class-stratified split
  (:func:`ctrobust.stats.stratified_split`), reported with the base model on the report half.

Ties go by :func:`ctrobust.stats.select_beta`'s tie-break. Per seed, with beta fixed, the gain has
Newcombe's paired interval and an exact McNemar test (:class:`~ctrobust.report.summary.BetaRow`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ctrobust import stats
from ctrobust.report._util import bkey, pct
from ctrobust.report.summary import BetaRow, BootReplicates, SeedSummary, Selection
from ctrobust.report.tables import SeedTable

__all__ = ["compare_flags", "select_index", "summarize_seed", "bootstrap_run"]


def compare_flags(beta: float, robust, base_robust, clean, base_clean, conf: float = 0.95) -> BetaRow:
    """``beta`` against beta = 1 on the same points, from their per-example flags.

    Args:
        beta: the beta of ``robust`` / ``clean``.
        robust: ``(N,)`` robust flags at ``beta``.
        base_robust: ``(N,)`` robust flags at beta = 1, same points in the same order.
        clean: ``(N,)`` clean-correct flags at ``beta``.
        base_clean: ``(N,)`` clean-correct flags at beta = 1.
        conf: confidence level of the Newcombe interval.

    Returns:
        The row, accuracies in percent.
    """
    lo, hi = stats.paired_diff_interval(robust, base_robust, conf)
    mc = stats.mcnemar_exact(base_robust, robust)
    n = int(robust.size)
    nan = float("nan")
    acc, acc0 = (float(robust.mean()) if n else nan), (float(base_robust.mean()) if n else nan)
    return BetaRow(beta=float(beta), n=n, robust_acc_pct=pct(acc),
                   clean_acc_pct=pct(clean.mean()) if n else nan,
                   base_robust_acc_pct=pct(acc0), base_clean_acc_pct=pct(base_clean.mean()) if n else nan,
                   abs_gain_pts=pct(acc - acc0), abs_gain_ci_pts=(pct(lo), pct(hi)),
                   rel_gain_pct=pct(stats.relative_gain(acc, acc0)),
                   mcnemar_b01=int(mc["b01"]), mcnemar_b10=int(mc["b10"]), mcnemar_p=float(mc["p_value"]))


def select_index(acc: np.ndarray, betas: np.ndarray, tie_break: str) -> int:
    """Row of the beta :func:`ctrobust.stats.select_beta` picks from accuracies ``acc`` over ``betas``."""
    chosen = stats.select_beta({float(b): float(a) for b, a in zip(betas, acc)}, tie_break=tie_break)
    return int(np.flatnonzero(betas == bkey(chosen))[0])


def summarize_seed(sd: SeedTable, select_on: str, conf: float, tie_break: str, split_masks) -> SeedSummary:
    """One seed's per-beta rows and its oracle and held-out selections.

    Args:
        sd: the seed's pivoted outcomes.
        select_on: ``"half"`` (also held-out) or ``"same"`` (oracle only).
        conf: confidence level.
        tie_break: beta tie-break.
        split_masks: ``(select_mask, report_mask)`` over ``sd.ids`` (used when ``select_on="half"``).
    """
    k1 = sd.index(1.0)
    n = int(sd.ids.size)
    per_beta = tuple(compare_flags(b, sd.robust[kb], sd.robust[k1], sd.clean[kb], sd.clean[k1], conf)
                     for kb, b in enumerate(sd.betas))
    acc_all = sd.robust.mean(axis=1)
    ko = select_index(acc_all, sd.betas, tie_break)
    oracle = Selection(beta=float(sd.betas[ko]), select_n=n, select_robust_acc_pct=pct(acc_all[ko]),
                       report=per_beta[ko])
    heldout = None
    if select_on == "half":
        sel, rep = split_masks
        if sel.sum() > 0 and rep.sum() > 0:
            acc_sel = sd.robust[:, sel].mean(axis=1)
            kh = select_index(acc_sel, sd.betas, tie_break)
            heldout = Selection(beta=float(sd.betas[kh]), select_n=int(sel.sum()),
                                select_robust_acc_pct=pct(acc_sel[kh]),
                                report=compare_flags(sd.betas[kh], sd.robust[kh, rep], sd.robust[k1, rep],
                                                     sd.clean[kh, rep], sd.clean[k1, rep], conf))
    return SeedSummary(seed=sd.seed, n=n, dropped_rows=sd.dropped_rows, per_beta=per_beta, oracle=oracle,
                       heldout=heldout)


def bootstrap_run(seeds: Sequence[SeedTable], oracle_betas: Sequence[float], select_on: str, split_masks,
                  n_boot: int, boot_seed: int, tie_break: str) -> BootReplicates:
    """Replicates of the run-level statistics: seed means of robust accuracies (fractions).

    Resampling is within (class, split half) strata (:func:`ctrobust.stats.bootstrap_weights`); when
    every seed has the same examples, one set of weights serves every beta and seed (paired).
    Oracle: each seed's beta is held at the one selected on the data (re-selecting the argmax of ~30
    accuracies in every replicate would bias the replicates upwards: the bootstrap of a maximum is not
    consistent). Held-out: beta is re-selected on the resampled selection half in every replicate and
    evaluated on the resampled report half (:func:`ctrobust.stats.bootstrap_reselect`), so the interval
    includes the variability of the selection; only when the seeds share their examples (one split).

    Args:
        seeds: the run's pivoted outcomes, one per seed.
        oracle_betas: the oracle beta of each seed.
        select_on: ``"half"`` or ``"same"``.
        split_masks: ``(select_mask, report_mask)`` over the first seed's ids, or ``None``.
        n_boot: replicates.
        boot_seed: seed of the resampling.
        tie_break: beta tie-break.
    """
    rng = np.random.default_rng(boot_seed)
    ref = seeds[0]
    shared = all(np.array_equal(sd.ids, ref.ids) for sd in seeds)
    sel_mask = split_masks[0] if select_on == "half" else None
    weights: dict = {}

    def w_for(sd: SeedTable):
        key = 0 if shared else sd.seed
        if key not in weights:  # drawn in seed order: the draws do not depend on anything else
            weights[key] = stats.bootstrap_weights(
                sd.labels, n_boot, rng, half=sel_mask if (shared and sel_mask is not None) else None)
        return weights[key]

    base_all, oracle_all, base_rep, held_rep = [], [], [], []
    for sd, ob in zip(seeds, oracle_betas):
        w = w_for(sd)
        acc = stats.bootstrap_accuracy(sd.robust, w)      # (B, n_boot)
        base_all.append(acc[sd.index(1.0)])
        oracle_all.append(acc[sd.index(ob)])
        if select_on == "half" and shared and sel_mask is not None and sel_mask.any() and (~sel_mask).any():
            held, report = stats.bootstrap_reselect(sd.robust, sd.betas, w, sel_mask, tie_break)
            held_rep.append(held)
            base_rep.append(report[sd.index(1.0)])
    if held_rep:
        return BootReplicates(base=np.mean(base_all, axis=0), oracle=np.mean(oracle_all, axis=0),
                              base_report=np.mean(base_rep, axis=0), heldout=np.mean(held_rep, axis=0))
    return BootReplicates(base=np.mean(base_all, axis=0), oracle=np.mean(oracle_all, axis=0))
