"""One run's minimal perturbations: per seed and beta, from the minimum-norm attack's per-example distances
(:func:`summarize_distances` -> :class:`~ctrobust.report.summary.DistanceSummary`).

A ``min-norm`` run stores per row (example x beta x seed) the smallest perturbation its attacks found
(``min_norm``: the threat's norm, [0, 1] pixel units; ``0`` misclassified clean, ``inf`` never broken, NaN
not measured). Per seed and beta this module gives

- the median distance with a percentile bootstrap interval over the points
  (:func:`ctrobust.stats.median_interval`), and the share of points never broken;
- against beta = 1 on the same points (paired by example id): the Wilcoxon signed-rank test
  (:func:`ctrobust.stats.wilcoxon_signed_rank`) and the shares of points whose distance grew / shrank;
- the beta with the largest median distance, chosen on all points (oracle) and on the selection half of the
  report's split (held-out, reported on the other half), ties as :func:`ctrobust.stats.select_beta`;
- where a bounded suite also ran at the run's eps, its robust accuracy beside the curve's
  (``curves.robust_at(distance, eps)``), each with a Wilson interval, flagged where the curve's lower bound
  lies above the bounded accuracy: the minimum-norm attack was the weaker attack there.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ctrobust import stats
from ctrobust.config import RunConfig
from ctrobust.curves import robust_at
from ctrobust.report._util import opt_float, pct
from ctrobust.report.selection import select_index
from ctrobust.report.summary import DistanceRow, DistanceSeed, DistanceSelection, DistanceSummary, EpsComparison
from ctrobust.report.tables import SeedTable, pivot_outcomes

__all__ = ["summarize_distances", "distance_matrix"]

# which points a median interval resamples: part of its bootstrap seed, so every interval has its own stream
_ALL, _REPORT = 0, 1


def distance_matrix(outcomes: Mapping[str, Any], sd: SeedTable) -> np.ndarray:
    """The ``min_norm`` column of one seed pivoted like its :class:`SeedTable`.

    Args:
        outcomes: the store's outcome columns with ``min_norm``.
        sd: the seed's table (:func:`ctrobust.report.tables.pivot_outcomes`) of the same outcomes.

    Returns:
        ``(B, N)`` float64 distances, rows ``sd.betas``, columns ``sd.ids`` (NaN where not measured).
    """
    seeds = np.asarray(outcomes["seed"]).astype(np.int64)
    rows = np.flatnonzero(seeds == sd.seed)
    ids = np.asarray(outcomes["id"]).astype(np.int64)[rows]
    betas = np.round(np.asarray(outcomes["beta"], dtype=np.float64)[rows], 6)
    dist = np.asarray(outcomes["min_norm"], dtype=np.float64)[rows]
    keep = np.isin(ids, sd.ids) & np.isin(betas, sd.betas)
    out = np.full((sd.betas.size, sd.ids.size), np.nan)
    out[np.searchsorted(sd.betas, betas[keep]), np.searchsorted(sd.ids, ids[keep])] = dist[keep]
    return out


def _boot_seed(boot_seed: int, seed: int, beta: float, part: int) -> list[int]:
    """Entropy of one median interval's generator: the run's bootstrap seed, the attack seed, the beta and
    the points, so an interval does not depend on which other intervals were computed before it."""
    return [int(boot_seed), int(seed), int(round(float(beta) * 1e6)), part]


def _at_eps(dist: np.ndarray, robust: np.ndarray, eps: float, conf: float) -> EpsComparison:
    n = int(dist.size)
    k_bounded = int(robust.sum())
    k_curve = int(robust_at(dist, eps).sum())
    b_ci = stats.wilson_interval(k_bounded, n, conf)
    c_ci = stats.wilson_interval(k_curve, n, conf)
    bounded_acc = k_bounded / n if n else float("nan")
    return EpsComparison(eps=float(eps), n=n, bounded_robust_acc_pct=pct(bounded_acc),
                         bounded_ci_pct=(pct(b_ci.lo), pct(b_ci.hi)),
                         curve_robust_acc_pct=pct(k_curve / n) if n else float("nan"),
                         curve_ci_pct=(pct(c_ci.lo), pct(c_ci.hi)),
                         min_norm_weaker=bool(n and c_ci.lo > bounded_acc))


def _row(beta: float, dist: np.ndarray, base: np.ndarray, robust: np.ndarray | None, eps: float | None,
         conf: float, n_boot: int, rng_seed: list[int]) -> DistanceRow:
    """``beta``'s distances against beta = 1's on the same points (``dist``, ``base``: ``(N,)``, no NaN)."""
    med = stats.median_interval(dist, n_boot, rng_seed, conf)
    test = stats.wilcoxon_signed_rank(dist, base)
    n = int(dist.size)
    frac = (lambda mask: float(mask.mean())) if n else (lambda mask: float("nan"))
    at_eps = _at_eps(dist, robust, eps, conf) if robust is not None and eps is not None else None
    return DistanceRow(beta=float(beta), n=n, median_dist=med.median, median_dist_ci=(med.lo, med.hi),
                       base_median_dist=stats.median_interval(base, 0, 0).median,
                       never_broken_frac=frac(np.isinf(dist)), grew_frac=frac(dist > base),
                       shrank_frac=frac(dist < base), wilcoxon_n=test.n, wilcoxon_statistic=test.statistic,
                       wilcoxon_p=test.p_value, wilcoxon_method=test.method, at_eps=at_eps)


def _medians(dist: np.ndarray) -> np.ndarray:
    """Median of every row of ``(B, N)`` distances (inf-safe, no bootstrap)."""
    return np.array([stats.median_interval(d, 0, 0).median for d in dist])


def _seed(sd: SeedTable, dist: np.ndarray, *, bounded: bool, eps: float | None, select_on: str, split_seed: int,
          conf: float, tie_break: str, n_boot: int, boot_seed: int) -> DistanceSeed | None:
    """One seed; ``dist`` ``(B, N)`` over ``sd``'s points. ``None`` when no point has every distance."""
    complete = ~np.isnan(dist).any(axis=0)
    if not complete.any():
        return None
    dist, ids, labels = dist[:, complete], sd.ids[complete], sd.labels[complete]
    robust = sd.robust[:, complete] if bounded else None
    k1 = sd.index(1.0)

    def row(kb: int, cols, part: int) -> DistanceRow:
        return _row(sd.betas[kb], dist[kb, cols], dist[k1, cols], None if robust is None else robust[kb, cols],
                    eps, conf, n_boot, _boot_seed(boot_seed, sd.seed, sd.betas[kb], part))

    everything = np.ones(ids.size, bool)
    per_beta = tuple(row(kb, everything, _ALL) for kb in range(sd.betas.size))
    med_all = np.array([r.median_dist for r in per_beta])
    ko = select_index(med_all, sd.betas, tie_break)
    oracle = DistanceSelection(beta=float(sd.betas[ko]), select_n=int(ids.size),
                               select_median_dist=float(med_all[ko]), report=per_beta[ko])
    heldout = None
    if select_on == "half":
        # the report's split, on the points that have distances (all of them, unless some were not measured)
        sel, rep = stats.stratified_split(ids, labels, split_seed)
        if sel.any() and rep.any():
            med_sel = _medians(dist[:, sel])
            kh = select_index(med_sel, sd.betas, tie_break)
            heldout = DistanceSelection(beta=float(sd.betas[kh]), select_n=int(sel.sum()),
                                        select_median_dist=float(med_sel[kh]), report=row(kh, rep, _REPORT))
    return DistanceSeed(seed=sd.seed, n=int(ids.size), dropped=int((~complete).sum()), per_beta=per_beta,
                        oracle=oracle, heldout=heldout)


def summarize_distances(outcomes: Mapping[str, Any], config=None, *, select_on: str = "half", split_seed: int = 0,
                        conf: float = 0.95, tie_break: str = "closest_to_one", n_boot: int = 2000,
                        boot_seed: int = 0) -> DistanceSummary:
    """The minimal-perturbation section of one run's report, from per-example outcomes.

    Args:
        outcomes: columns of the store contract (``ctrobust.store.load_outcomes``) with ``min_norm``
            (:func:`ctrobust.curves.has_distances` true); ``robust`` is the bounded suite's flag when one ran.
        config: the run's config (``RunConfig``, ``SweepConfig``, mapping or ``None``): ``threat``, ``eps``
            and ``attack_names`` (the bounded attacks; empty or ``None`` when only the minimum-norm attack ran).
        select_on: ``"half"`` (oracle and held-out beta) or ``"same"`` (oracle only).
        split_seed: seed of the class-stratified selection/report split (the report's).
        conf: confidence level of every interval.
        tie_break: beta tie-break (:func:`ctrobust.stats.select_beta`) among equal medians.
        n_boot: bootstrap replicates of each median interval (0: none).
        boot_seed: the run's bootstrap seed.

    Returns:
        The :class:`~ctrobust.report.summary.DistanceSummary` (distances in the threat's norm, accuracies in
        percent).

    Raises:
        KeyError: no ``min_norm`` column.

    Example:
        >>> d = summarize_distances(load_outcomes("runs/mn"), load_config("runs/mn"))  # doctest: +SKIP
        >>> d.per_seed[0].heldout.beta, d.per_seed[0].per_beta[-1].median_dist  # doctest: +SKIP
    """
    if "min_norm" not in outcomes:
        raise KeyError("outcomes lack the 'min_norm' column: the run has no minimum-norm distances")
    rc = RunConfig.of(config)
    bounded = tuple(rc.attack_names or ())
    eps = opt_float(rc.eps)
    tables, _ = pivot_outcomes(outcomes)  # its warnings (partial runs) are the run summary's already
    warnings = []
    per_seed = []
    for sd in tables:
        ds = _seed(sd, distance_matrix(outcomes, sd), bounded=bool(bounded), eps=eps, select_on=select_on,
                   split_seed=split_seed, conf=conf, tie_break=tie_break, n_boot=n_boot, boot_seed=boot_seed)
        if ds is None:
            warnings.append(f"seed {sd.seed}: no example has a distance at every beta; left out")
            continue
        if ds.dropped:
            warnings.append(f"seed {sd.seed}: {ds.dropped} example(s) without a distance at every beta left out "
                            "of the distances")
        if select_on == "half" and ds.heldout is None:
            warnings.append(f"seed {sd.seed}: held-out selection by distance skipped: a split half is empty")
        per_seed.append(ds)
    if bounded and eps is None:
        warnings.append("the run records no eps: the bounded suite and the curve are not compared")
    return DistanceSummary(threat=rc.threat, eps=eps, bounded_attacks=bounded, conf=conf, n_boot=int(n_boot),
                           boot_seed=int(boot_seed), split_seed=split_seed if select_on == "half" else None,
                           per_seed=tuple(per_seed), warnings=tuple(warnings))
