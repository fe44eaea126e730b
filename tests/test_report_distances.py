"""Tests for the minimal-perturbation section of the report (ctrobust.report.distances) on hand-made outcomes.

The toy run: the 8 examples of tests/test_report.py (2 classes x 4), S = s0..s3 the selection half and
R = r0..r3 the report half of the split (seed 0), betas 0.8 / 0.9 / 1.0, Linf, eps 8/255. Distances
(min_norm) in units of 1/255 (0: misclassified clean, inf: never broken):

    beta 1.0   S 1, 2, 3, 4     R 1, 2, 3, inf      all: 1 1 2 2 3 3 4 inf       median 2.5
    beta 0.9   S 5, 6, 7, 7.5   R 1, 2, 3, inf      all: 1 2 3 5 6 7 7.5 inf     median 5.5   S 6.5  R 2.5
    beta 0.8   S 1, 2, 3, 0     R 10, 12, inf, inf  all: 0 1 2 3 10 12 inf inf   median 6.5   S 1.5  R inf

Oracle (largest median on all points): 0.8 (6.5 > 5.5 > 2.5). Held-out: 0.9 on S (6.5 > 2.5 > 1.5),
reported on R: median 2.5, the same as beta 1 there (nothing grew, no difference to test).
Against beta = 1 on all points:
    0.9  grew on S (4 of 8), shrank on none; d = +4, +4, +4, +3.5 (ties: normal approximation), n = 4
    0.8  grew on r0, r1, r2 (r3: inf vs inf is not growth): 3/8, shrank on s3: 1/8.
         d = -4 (s3), +9, +10, +inf: ranks 1, 2, 3, 4 -> W- = 1, W+ = 9; exact P(T <= 1) = 2/16, p = 0.25.
Robust at 8/255 by the curve (distance > eps): 1.0: r3 (1/8); 0.9: r3 (1/8); 0.8: r0..r3 (4/8, Wilson lower
bound 21.5 %). The bounded suite's flags are set per test: 1/8 at 0.8 makes the curve's lower bound lie above
it (the minimum-norm attack was weaker), 2/8 (25 %) does not.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ctrobust import report, stats
from ctrobust.config import RunConfig
from ctrobust.report import summary as S
from ctrobust.report.distances import summarize_distances

IDS = np.array([11, 12, 13, 14, 21, 22, 23, 24])
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
INF = np.inf
EPS = 8 / 255
U = 1 / 255

# distances in units of 1/255 of S (s0..s3) and R (r0..r3), per beta
DIST = {1.0: ([1, 2, 3, 4], [1, 2, 3, INF]),
        0.9: ([5, 6, 7, 7.5], [1, 2, 3, INF]),
        0.8: ([1, 2, 3, 0], [10, 12, INF, INF])}


def _halves():
    sel, _ = stats.stratified_split(IDS, LABELS, 0)
    return sorted(IDS[sel].tolist()), sorted(IDS[~sel].tolist())


def _toy_outcomes(dist=DIST, bounded_robust=None, seeds=(42,)):
    """Outcome columns as the store writes them: min_norm float32; ``robust`` from the bounded suite
    (``bounded_robust``: {beta: set of robust ids}) or, as in a min-norm-only run, from the distances."""
    s, r = _halves()
    cols = {k: [] for k in ("id", "label", "beta", "seed", "clean_correct", "robust", "broken_by", "min_norm")}
    for seed in seeds:
        for beta, (ds, dr) in dist.items():
            by_id = dict(zip(s + r, [x * U for x in ds + dr]))
            for i, lab in zip(IDS, LABELS):
                d = by_id[int(i)]
                robust = (int(i) in bounded_robust[beta]) if bounded_robust else bool(d > EPS)
                cols["id"].append(i)
                cols["label"].append(lab)
                cols["beta"].append(beta)
                cols["seed"].append(seed)
                cols["clean_correct"].append(d > 0)
                cols["robust"].append(robust)
                cols["broken_by"].append("" if robust else ("clean" if d == 0 else "apgd-ce"))
                cols["min_norm"].append(d)
    out = {k: np.asarray(v) for k, v in cols.items()}
    out["min_norm"] = out["min_norm"].astype(np.float32)
    return out


def _bounded(at_08):
    """Bounded-suite robust flags: r3 at 1.0 and 0.9 (1/8, as the curve), ``at_08`` at 0.8."""
    r3 = _halves()[1][3]
    return {1.0: {r3}, 0.9: {r3}, 0.8: set(at_08)}


MIN_NORM_ONLY = RunConfig(model="toynet", dataset="cifar10", threat="Linf", eps=EPS, attack_names=())
WITH_AA = {"model": "toynet", "dataset": "cifar10", "threat": "Linf", "eps": EPS, "n_examples": 8,
           "seeds": [42], "betas": [1.0, 0.9, 0.8], "attacks": "standard", "engine": "fast"}


def _row(ds, beta):
    return next(r for r in ds.per_beta if r.beta == beta)


def test_medians_growth_and_wilcoxon_against_hand_values():
    d = summarize_distances(_toy_outcomes(), MIN_NORM_ONLY, n_boot=300)
    assert isinstance(d, S.DistanceSummary) and d.threat == "Linf" and d.bounded_attacks == ()
    (ds,) = d.per_seed
    assert (ds.seed, ds.n, ds.dropped) == (42, 8, 0)
    assert [r.beta for r in ds.per_beta] == [0.8, 0.9, 1.0]
    base, b09, b08 = _row(ds, 1.0), _row(ds, 0.9), _row(ds, 0.8)
    assert base.median_dist == pytest.approx(2.5 * U) and b09.median_dist == pytest.approx(5.5 * U)
    assert b08.median_dist == pytest.approx(6.5 * U) and b08.base_median_dist == pytest.approx(2.5 * U)
    assert (b09.grew_frac, b09.shrank_frac) == (0.5, 0.0)
    assert (b08.grew_frac, b08.shrank_frac) == (3 / 8, 1 / 8)  # r3: inf vs inf is not growth
    assert (b08.never_broken_frac, base.never_broken_frac) == (0.25, 0.125)
    assert (b08.wilcoxon_n, b08.wilcoxon_statistic, b08.wilcoxon_p, b08.wilcoxon_method) == (4, 1.0, 0.25, "exact")
    assert (b09.wilcoxon_n, b09.wilcoxon_statistic, b09.wilcoxon_method) == (4, 0.0, "approx")
    assert (base.wilcoxon_n, base.wilcoxon_p, base.grew_frac) == (0, 1.0, 0.0)
    # the median interval is the stats function on the same points, and holds the median
    lo, hi = b08.median_dist_ci
    assert lo <= b08.median_dist <= hi and hi == INF
    # no bounded suite: the robust flags are the curve's, nothing to compare
    assert all(r.at_eps is None for r in ds.per_beta)


def test_oracle_and_heldout_choice_by_median_distance():
    d = summarize_distances(_toy_outcomes(), MIN_NORM_ONLY, n_boot=100)
    (ds,) = d.per_seed
    o, h = ds.oracle, ds.heldout
    assert (o.beta, o.select_n) == (0.8, 8) and o.select_median_dist == pytest.approx(6.5 * U)
    assert o.report == _row(ds, 0.8)
    assert (h.beta, h.select_n) == (0.9, 4) and h.select_median_dist == pytest.approx(6.5 * U)
    r = h.report
    assert r.n == 4 and r.median_dist == pytest.approx(2.5 * U) and r.base_median_dist == pytest.approx(2.5 * U)
    assert (r.grew_frac, r.shrank_frac, r.wilcoxon_n, r.wilcoxon_p) == (0.0, 0.0, 0, 1.0)
    assert d.split_seed == 0
    # oracle only: no split
    same = summarize_distances(_toy_outcomes(), MIN_NORM_ONLY, select_on="same", n_boot=0)
    assert same.per_seed[0].heldout is None and same.split_seed is None
    assert math.isnan(same.per_seed[0].per_beta[0].median_dist_ci[0])  # no bootstrap: no interval


@pytest.mark.parametrize("tie_break, expected", [("closest_to_one", 0.9), ("smallest", 0.8)])
def test_tied_medians_follow_the_report_tie_break(tie_break, expected):
    # 0.9 and 0.8 never broken anywhere: both medians are inf
    dist = {**DIST, 0.9: ([INF] * 4, [INF] * 4), 0.8: ([INF] * 4, [INF] * 4)}
    d = summarize_distances(_toy_outcomes(dist), MIN_NORM_ONLY, tie_break=tie_break, n_boot=50)
    (ds,) = d.per_seed
    assert ds.oracle.beta == expected and ds.oracle.select_median_dist == INF
    assert ds.heldout.beta == expected


def test_min_norm_weaker_flag_fires_only_above_the_bounded_accuracy():
    s, r = _halves()
    # AutoAttack robust on r0 only at 0.8 (1/8 = 12.5 %): the curve's 4/8 has Wilson lower bound 21.5 % > 12.5 %
    weak = summarize_distances(_toy_outcomes(bounded_robust=_bounded({r[0]})), WITH_AA, n_boot=0)
    assert weak.bounded_attacks == ("apgd-ce", "apgd-t", "fab-t", "square") and weak.eps == EPS
    (ds,) = weak.per_seed
    e = _row(ds, 0.8).at_eps
    assert (e.n, e.bounded_robust_acc_pct, e.curve_robust_acc_pct) == (8, 12.5, 50.0)
    lo, hi = stats.wilson_interval(4, 8)
    assert e.curve_ci_pct == pytest.approx((100 * lo, 100 * hi)) and 100 * lo > 12.5
    assert e.bounded_ci_pct == pytest.approx(tuple(100 * x for x in stats.wilson_interval(1, 8)))
    assert e.min_norm_weaker is True
    # the same accuracy both ways (1/8): no flag
    assert _row(ds, 0.9).at_eps.min_norm_weaker is False and _row(ds, 1.0).at_eps.min_norm_weaker is False
    # AutoAttack at 2/8 = 25 %, above the curve's lower bound 21.5 %: no flag
    ok = summarize_distances(_toy_outcomes(bounded_robust=_bounded({r[0], r[1]})), WITH_AA, n_boot=0)
    assert not any(row.at_eps.min_norm_weaker for row in ok.per_seed[0].per_beta)
    # AutoAttack finds more robust points than the curve (a stronger min-norm attack): never flagged
    strong = summarize_distances(_toy_outcomes(bounded_robust=_bounded(set(s) | set(r))), WITH_AA, n_boot=0)
    assert _row(strong.per_seed[0], 0.8).at_eps.min_norm_weaker is False


def test_points_without_a_distance_are_left_out_with_a_warning():
    out = _toy_outcomes(seeds=(42, 43))
    s, _ = _halves()
    out["min_norm"][(out["seed"] == 43) & (out["id"] == s[0]) & (out["beta"] == 0.9)] = np.nan
    d = summarize_distances(out, MIN_NORM_ONLY, n_boot=0)
    assert [(ds.seed, ds.n, ds.dropped) for ds in d.per_seed] == [(42, 8, 0), (43, 7, 1)]
    assert any("seed 43: 1 example(s) without a distance" in w for w in d.warnings)
    # a seed with no distance at all (a bounded-only seed) is left out, not an error
    out["min_norm"][out["seed"] == 43] = np.nan
    d = summarize_distances(out, MIN_NORM_ONLY, n_boot=0)
    assert [ds.seed for ds in d.per_seed] == [42] and any("seed 43: no example" in w for w in d.warnings)
    with pytest.raises(KeyError, match="min_norm"):
        summarize_distances({k: v for k, v in out.items() if k != "min_norm"}, MIN_NORM_ONLY)


def test_run_summary_has_distances_only_when_the_outcomes_do():
    s = report.summarize_run(_toy_outcomes(), MIN_NORM_ONLY, n_boot=50, name="mn")
    assert isinstance(s.distances, S.DistanceSummary) and s.distances.boot_seed == s.boot_seed
    plain = {k: v for k, v in _toy_outcomes().items() if k != "min_norm"}
    assert report.summarize_run(plain, MIN_NORM_ONLY, n_boot=50).distances is None
    nan = dict(_toy_outcomes(), min_norm=np.full(24, np.nan, np.float32))  # a bounded-only run
    assert report.summarize_run(nan, MIN_NORM_ONLY, n_boot=50).distances is None
    md = report.report_from_summaries([report.summarize_run(plain, MIN_NORM_ONLY, n_boot=50)])
    assert "Minimal perturbations" not in md


def test_markdown_section():
    r = _halves()[1]
    s = report.summarize_run(_toy_outcomes(bounded_robust=_bounded({r[0]})), WITH_AA, n_boot=200, name="mn")
    lines = report.report_from_summaries([s]).split("\n")
    assert "### Minimal perturbations (minimum-norm attack)" in lines
    header = next(ln for ln in lines if ln.startswith("| seed | beta | points | median distance"))
    assert header.endswith("| robust at eps, apgd-ce, apgd-t, fab-t, square (%) | robust at eps, curve (%) "
                           "| min-norm weaker |")
    row08 = next(ln for ln in lines if ln.startswith("| 42 | 0.80 | 8 | 6.50/255 | ["))
    assert row08.endswith("| 37.5 / 12.5 | 0.25 (exact, n 4) | 25.0 | 12.50 [2.24, 47.09] | 50.00 [21.52, 78.48] "
                          "| YES |")
    assert any(ln.startswith("| 42 | 1.00 | 8 | 2.50/255 |") and ln.endswith("| no |") for ln in lines)
    assert any(ln.startswith("| 42 | oracle | all 8 | 0.80 | 6.50/255 |") for ln in lines)
    assert any(ln.startswith("| 42 | held-out | report 4 (selected on 4) | 0.90 | 2.50/255 |")
               and ln.endswith("| 2.50/255 | 0.0 / 0.0 | — (no difference) |") for ln in lines)
    assert any(ln.startswith("**The minimum-norm attack was weaker than apgd-ce, apgd-t, fab-t, square at eps "
                             "8/255** (seed 42 β 0.80)") for ln in lines)
    # a min-norm-only run: no comparison columns, no flag line
    only = report.report_from_summaries([report.summarize_run(_toy_outcomes(), MIN_NORM_ONLY, n_boot=50)])
    assert "robust at eps, curve" not in only and "weaker than" not in only
    assert "| 42 | 0.80 | 8 | 6.50/255 |" in only


def test_json_round_trips_with_infinite_distances():
    r = _halves()[1]
    s = report.summarize_run(_toy_outcomes(bounded_robust=_bounded({r[0]})), WITH_AA, n_boot=200, name="mn")
    text = report.report_from_summaries([s], fmt="json")
    assert "Infinity" in text and '"inf"' not in text  # inf is a number, written as the NaN of the report is
    data = json.loads(text)
    dist = data["runs"][0]["distances"]
    b08 = next(r for r in dist["per_seed"][0]["per_beta"] if r["beta"] == 0.8)
    assert b08["median_dist_ci"][1] == INF and b08["at_eps"]["min_norm_weaker"] is True
    assert dist["per_seed"][0]["heldout"]["beta"] == 0.9
    back = report.Report.from_dict(data)
    d = back.runs[0].distances
    assert isinstance(d, S.DistanceSummary) and isinstance(d.per_seed[0].oracle.report.at_eps, S.EpsComparison)
    assert d == s.distances
    assert report.render_json(back) == text
    assert report.render_markdown(back) == report.report_from_summaries([s])
