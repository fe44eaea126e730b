"""Tests for ctrobust.stats: expected values are derived by hand from the closed forms in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctrobust import stats

# z for 95 %: the 0.975 standard-normal quantile, 1.959963984540054; z^2 = 3.841458820694124.
Z = 1.959963984540054
Z2 = Z * Z


# ---------------------------------------------------------------------------------------------- Wilson
def test_z_value_95():
    assert stats.z_value(0.95) == pytest.approx(Z, abs=1e-12)


@pytest.mark.parametrize("k, n, lo, hi", [
    # k = 0: center - half = 0 exactly, hi = z^2 / (n + z^2) = 3.841459 / 13.841459 = 0.277533
    (0, 10, 0.0, 0.2775327999),
    # k = n: lo = n / (n + z^2) = 10 / 13.841459 = 0.722467, hi = 1
    (10, 10, 0.7224672001, 1.0),
    # k = 5, n = 10: center = (5 + z^2/2) / (n + z^2) = 0.5;
    # half = z / 13.841459 * sqrt(5 * 5 / 10 + z^2 / 4) = 0.141600 * sqrt(3.460365) = 0.263407
    (5, 10, 0.2365930905, 0.7634069095),
    # k = 1, n = 4: center = (1 + 1.9207294) / 7.8414588 = 0.3724727;
    # half = 1.9599640 / 7.8414588 * sqrt(1 * 3 / 4 + 0.9603647) = 0.2499483 * 1.3078091 = 0.3268855
    (1, 4, 0.0455872, 0.6993582),
])
def test_wilson_closed_form(k, n, lo, hi):
    got = stats.wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=1e-6)
    assert got[1] == pytest.approx(hi, abs=1e-6)


def test_wilson_matches_formula_at_other_conf():
    # 90 %: z = 1.6448536; k = 3, n = 20 -> center = (3 + z^2/2) / (20 + z^2), half from the closed form
    z = 1.6448536269514722
    center = (3 + z * z / 2) / (20 + z * z)
    half = z / (20 + z * z) * math.sqrt(3 * 17 / 20 + z * z / 4)
    lo, hi = stats.wilson_interval(3, 20, conf=0.90)
    assert (lo, hi) == pytest.approx((center - half, center + half), abs=1e-12)
    assert lo < 3 / 20 < hi


def test_wilson_n0_and_bad_input():
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        stats.wilson_interval(3, 2)
    with pytest.raises(ValueError):
        stats.wilson_interval(-1, 2)
    with pytest.raises(ValueError):
        stats.wilson_interval(1, 2, conf=1.5)


# --------------------------------------------------------------------------------------------- McNemar
def _pairs(b01: int, b10: int, both: int = 3, neither: int = 4):
    """a/b flags with exactly b01 (a False, b True) and b10 (a True, b False) discordant pairs."""
    a = [False] * b01 + [True] * b10 + [True] * both + [False] * neither
    b = [True] * b01 + [False] * b10 + [True] * both + [False] * neither
    return np.array(a), np.array(b)


@pytest.mark.parametrize("b01, b10, p", [
    # m = 7, k = 1: 2 * (C(7,0) + C(7,1)) / 2^7 = 2 * 8 / 128
    (6, 1, 0.125),
    # m = 5, k = 0: 2 * 1 / 32
    (0, 5, 0.0625),
    # m = 13, k = 3: 2 * (1 + 13 + 78 + 286) / 8192 = 756 / 8192
    (3, 10, 756 / 8192),
    # m = 4, k = 2: 2 * (1 + 4 + 6) / 16 = 1.375 -> capped at 1
    (2, 2, 1.0),
    # no discordant pair
    (0, 0, 1.0),
])
def test_mcnemar_exact_hand_sums(b01, b10, p):
    a, b = _pairs(b01, b10)
    res = stats.mcnemar_exact(a, b)
    assert res["b01"] == b01 and res["b10"] == b10
    assert res["p_value"] == pytest.approx(p, rel=1e-12)
    swapped = stats.mcnemar_exact(b, a)  # two-sided: symmetric
    assert (swapped["b01"], swapped["b10"]) == (b10, b01)
    assert swapped["p_value"] == pytest.approx(p, rel=1e-12)


def test_mcnemar_large_counts_do_not_overflow():
    # m = 2000 discordant pairs, all one way: p = 2 / 2^2000 underflows to 0.0, must not raise
    a, b = _pairs(2000, 0)
    assert stats.mcnemar_exact(a, b)["p_value"] == 0.0
    a, b = _pairs(1000, 1000)
    assert stats.mcnemar_exact(a, b)["p_value"] == 1.0


def test_mcnemar_length_mismatch():
    with pytest.raises(ValueError):
        stats.mcnemar_exact([True, False], [True])


# ---------------------------------------------------------------------------- paired difference interval
def test_paired_interval_no_discordant_pairs():
    # a = 5 both robust, d = 5 neither, n = 10: p1 = p2 = 0.5, D = 0.
    # B = a*d - b*c = 25 > n/2 = 5 -> phi = (25 - 5) / sqrt(5*5*5*5) = 0.8.
    # Wilson(5, 10): p - l = u - p = x = 0.2634069; lower = -sqrt(x^2 - 2*0.8*x^2 + x^2) = -x*sqrt(0.4)
    x = 0.7634069095 - 0.5
    flags = np.array([True] * 5 + [False] * 5)
    lo, hi = stats.paired_diff_interval(flags, flags)
    assert lo == pytest.approx(-x * math.sqrt(0.4), abs=1e-6)
    assert hi == pytest.approx(x * math.sqrt(0.4), abs=1e-6)


def test_paired_interval_one_sided_table():
    # ct robust on 4 points, base on none, n = 4 (a=0, b=4, c=0, d=0): p1 = 1, p2 = 0, D = 1.
    # Margins (a+b)(c+d)(a+c)(b+d) = 4*0*0*4 = 0 -> phi = 0. Wilson(4, 4) = (4/(4+z^2), 1),
    # Wilson(0, 4) = (0, z^2/(4+z^2)); lower = 1 - sqrt((1 - 4/(4+z^2))^2 + (z^2/(4+z^2))^2)
    #   = 1 - sqrt(2) * z^2/(4+z^2) = 1 - 1.41421 * 0.489890 = 0.307190; upper = 1 + 0 = 1.
    ct = np.array([True] * 4)
    base = np.array([False] * 4)
    lo, hi = stats.paired_diff_interval(ct, base)
    assert lo == pytest.approx(1 - math.sqrt(2) * Z2 / (4 + Z2), abs=1e-9)
    assert hi == pytest.approx(1.0)


def test_paired_interval_contains_estimate_and_is_antisymmetric():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.random(50) < 0.3
        b = rng.random(50) < 0.5
        lo, hi = stats.paired_diff_interval(a, b)
        assert -1 <= lo <= a.mean() - b.mean() <= hi <= 1
        lo2, hi2 = stats.paired_diff_interval(b, a)
        assert (lo2, hi2) == pytest.approx((-hi, -lo), abs=1e-12)


# ------------------------------------------------------------------------------------ stratified split
def _class_counts(mask, ids, labels):
    u = {}
    for i, l, m in zip(ids, labels, mask):
        u[(int(i), int(l))] = bool(m)
    out = {}
    for (_, l), m in u.items():
        s, r = out.get(l, (0, 0))
        out[l] = (s + m, r + (not m))
    return out


def test_split_disjoint_covering_balanced():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 7, size=301)  # uneven, some odd class sizes
    ids = rng.permutation(10_000)[:301]
    sel, rep = stats.stratified_split(ids, labels, seed=3)
    assert not np.any(sel & rep) and np.all(sel | rep)
    for cls, (s, r) in _class_counts(sel, ids, labels).items():
        assert abs(s - r) <= 1, cls
    # total selected: round(0.5 * 301) = 151
    assert sel.sum() == 151


def test_split_deterministic_and_row_order_independent():
    ids = np.arange(100) * 7 + 3
    labels = np.arange(100) % 10
    sel1, _ = stats.stratified_split(ids, labels, seed=5)
    sel2, _ = stats.stratified_split(ids.copy(), labels.copy(), seed=5)
    assert np.array_equal(sel1, sel2)
    perm = np.random.default_rng(2).permutation(100)
    sel3, _ = stats.stratified_split(ids[perm], labels[perm], seed=5)
    assert np.array_equal(sel3, sel1[perm])
    # a different split seed gives a different split (same class balance)
    sel4, _ = stats.stratified_split(ids, labels, seed=6)
    assert not np.array_equal(sel4, sel1)
    assert sel4.sum() == sel1.sum() == 50


def test_split_repeated_ids_same_side():
    # the same examples at three betas: every row of an id on the same side, split as for unique ids
    ids = np.tile(np.arange(20), 3)
    labels = np.tile(np.arange(20) % 2, 3)
    sel, rep = stats.stratified_split(ids, labels, seed=0)
    sel_u, _ = stats.stratified_split(np.arange(20), np.arange(20) % 2, seed=0)
    assert np.array_equal(sel, np.tile(sel_u, 3))
    assert sel_u.sum() == 10


def test_split_other_fraction_and_errors():
    ids = np.arange(40)
    labels = np.repeat([0, 1, 2, 3], 10)
    sel, _ = stats.stratified_split(ids, labels, seed=0, frac=0.25)
    # 0.25 * 10 = 2.5 per class -> 2 or 3 each, total round(0.25 * 40) = 10
    counts = _class_counts(sel, ids, labels)
    assert all(s in (2, 3) for s, _ in counts.values())
    assert sel.sum() == 10
    with pytest.raises(ValueError):
        stats.stratified_split([1, 1], [0, 1], seed=0)  # one id, two labels
    with pytest.raises(ValueError):
        stats.stratified_split([1, 2], [0, 1], seed=0, frac=1.0)


# ------------------------------------------------------------------------------------------- selection
def test_select_beta_argmax_and_ties():
    assert stats.select_beta({0.7: 0.1, 0.8: 0.3, 1.0: 0.2}) == 0.8
    # tie between 0.8 and 0.95: the one closest to 1 (least modification)
    assert stats.select_beta({0.8: 0.5, 0.95: 0.5, 1.0: 0.4}) == 0.95
    # a beta that only ties the base model is not credited: beta = 1 wins
    assert stats.select_beta({0.9: 0.5, 1.0: 0.5}) == 1.0
    # the CT reference code's rule (ascending grid, strict >) keeps the smallest tied beta
    assert stats.select_beta({0.9: 0.5, 1.0: 0.5}, tie_break="smallest") == 0.9
    # NaN accuracies are ignored
    assert stats.select_beta({0.9: float("nan"), 1.0: 0.1}) == 1.0
    with pytest.raises(ValueError):
        stats.select_beta({0.9: 0.5}, tie_break="largest")
    with pytest.raises(ValueError):
        stats.select_beta({})


def test_mean_std_and_relative_gain():
    # mean of 1, 2, 3 is 2; population std = sqrt(((1-2)^2 + 0 + (3-2)^2) / 3) = sqrt(2/3)
    assert stats.mean_std([1, 2, 3]) == pytest.approx((2.0, math.sqrt(2 / 3)))
    # sample std = sqrt(2 / 2) = 1
    assert stats.mean_std([1, 2, 3], ddof=1) == pytest.approx((2.0, 1.0))
    assert stats.mean_std([4.0]) == (4.0, 0.0)
    m, s = stats.mean_std([])
    assert math.isnan(m) and math.isnan(s)
    # (0.3 - 0.1) / 0.1 = 2
    assert stats.relative_gain(0.3, 0.1) == pytest.approx(2.0)
    assert stats.relative_gain(0.1, 0.0) == math.inf
    assert math.isnan(stats.relative_gain(0.0, 0.0))


# ------------------------------------------------------------------------------------------- bootstrap
def test_relative_gains_elementwise():
    # (0.3 - 0.1) / 0.1 = 2; base 0 < ct: +inf; 0 / 0: nan — as relative_gain, without warnings
    got = stats.relative_gains([0.3, 0.1, 0.0], [0.1, 0.0, 0.0])
    assert got[0] == pytest.approx(2.0) and got[1] == math.inf and math.isnan(got[2])


def test_percentile_interval_known_answer_and_undefined_replicates():
    # 0..100 at 50 %: the 25th and 75th percentiles are 25 and 75 (linear interpolation on integer ranks)
    assert stats.percentile_interval(np.arange(101.0), conf=0.5) == stats.BootstrapInterval(25.0, 75.0, 101, 0)
    # at 90 %: the 5th and 95th percentiles; non-finite replicates are left out and counted
    ci = stats.percentile_interval(np.r_[np.arange(101.0), np.inf, np.nan], conf=0.9)
    assert (ci.lo, ci.hi) == pytest.approx((5.0, 95.0)) and (ci.n_boot, ci.n_undefined) == (103, 2)
    none = stats.percentile_interval([np.nan, np.inf])
    assert math.isnan(none.lo) and math.isnan(none.hi) and none.n_undefined == 2


def test_bootstrap_weights_keep_every_stratum_size():
    labels = np.repeat([0, 1], 20)                       # 2 classes x 20
    half = np.tile([True, False], 20)                    # 10 per (class, half)
    w = stats.bootstrap_weights(labels, 50, np.random.default_rng(0), half=half)
    assert w.shape == (40, 50) and w.dtype == np.float32
    for c in (0, 1):
        for h in (True, False):
            m = (labels == c) & (half == h)
            assert np.all(w[m].sum(axis=0) == 10)      # each stratum resampled to its own size
    # deterministic in the seed (an int seed is a fresh generator)
    assert np.array_equal(w, stats.bootstrap_weights(labels, 50, 0, half=half))
    # a stratum below MIN_STRATUM: resampling falls back to the split half (20 + 20, classes mixed)
    w_small = stats.bootstrap_weights(np.repeat([0, 1, 2, 3], 10), 30, 1, half=np.tile([True, False], 20))
    halves = np.tile([True, False], 20)
    assert np.all(w_small[halves].sum(axis=0) == 20) and np.all(w_small[~halves].sum(axis=0) == 20)
    per_class = w_small[:10].sum(axis=0)
    assert not np.all(per_class == 10)  # class 0 is no longer held at 10 in every replicate


def test_bootstrap_accuracy_is_weighted_mean():
    flags = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)
    # replicate 0 draws every example once; replicate 1 draws example 0 four times
    w = np.array([[1, 4], [1, 0], [1, 0], [1, 0]], np.float32)
    acc = stats.bootstrap_accuracy(flags, w)
    assert acc.tolist() == [[0.5, 1.0], [0.25, 1.0]]
    assert stats.bootstrap_accuracy(flags[0], w).tolist() == [0.5, 1.0]


def test_bootstrap_reselect_hand_case_and_agrees_with_select_beta():
    betas = np.array([0.8, 0.9, 1.0])
    # examples 0, 1: selection half; 2, 3: report half
    sel = np.array([True, True, False, False])
    flags = np.array([[1, 0, 1, 1],     # 0.8: selection 1/2, report 2/2
                      [1, 1, 0, 0],     # 0.9: selection 2/2, report 0/2
                      [1, 0, 0, 1]], bool)  # 1.0: selection 1/2, report 1/2
    # replicate 0: every example once -> 0.9 wins the selection (2 > 1), report accuracy 0
    # replicate 1: example 0 twice, example 1 never -> all betas tie on the selection (2/2):
    #   closest to one picks 1.0 (report: example 2 once + example 3 once -> 1/2), smallest picks 0.8 (2/2)
    w = np.array([[1, 2], [1, 0], [1, 1], [1, 1]], np.float32)
    held, report = stats.bootstrap_reselect(flags, betas, w, sel)
    assert held.tolist() == [0.0, 0.5]
    assert report[2].tolist() == [0.5, 0.5]  # beta = 1 on the report half
    held_small, _ = stats.bootstrap_reselect(flags, betas, w, sel, tie_break="smallest")
    assert held_small.tolist() == [0.0, 1.0]
    # on random data, every replicate's pick is select_beta's on the resampled selection half
    rng = np.random.default_rng(3)
    flags = rng.random((5, 30)) < 0.4
    betas = np.array([0.7, 0.8, 0.9, 0.95, 1.0])
    sel = np.arange(30) % 2 == 0
    w = stats.bootstrap_weights(np.zeros(30, int), 40, 0, half=sel)
    for tie in stats.TIE_BREAKS:
        held, report = stats.bootstrap_reselect(flags, betas, w, sel, tie_break=tie)
        acc_sel = stats.bootstrap_accuracy(flags[:, sel], w[sel])
        for r in range(40):
            chosen = stats.select_beta(dict(zip(betas.tolist(), acc_sel[:, r].tolist())), tie_break=tie)
            assert held[r] == report[betas.tolist().index(chosen), r]
    with pytest.raises(ValueError):
        stats.bootstrap_reselect(flags, betas, w, np.ones(30, bool))


# --------------------------------------------------------------------------------------- Wilcoxon
def test_wilcoxon_hand_case_exact():
    # d = x - y = (+1, -2, +3, +4, 0): the zero is dropped (n = 4); ranks of |d| 1, 2, 3, 4;
    # W+ = 1 + 3 + 4 = 8, W- = 2, statistic 2. Under H0 the 16 sign patterns of ranks 1..4 give W+ = 0 (once),
    # 1 (once), 2 (once: {2}) -> P(T <= 2) = 3/16, p = 2 * 3/16 = 0.375.
    res = stats.wilcoxon_signed_rank([1.0, 0.0, 3.0, 5.0, 2.0], [0.0, 2.0, 0.0, 1.0, 2.0])
    assert res == stats.WilcoxonTest(n=4, statistic=2.0, p_value=0.375, method="exact")
    # every pattern of 1..3 but the extreme: d all positive, W- = 0, p = 2 / 8
    assert stats.wilcoxon_signed_rank([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]).p_value == 0.25
    # nothing differs: no evidence at all
    assert stats.wilcoxon_signed_rank([1.0, np.inf], [1.0, np.inf]) == (0, 0.0, 1.0, "exact")
    assert stats.wilcoxon_signed_rank([], []).p_value == 1.0


def test_wilcoxon_hand_case_approx_with_ties():
    # d = (1, 1, -1, 2, 2, 2): ties -> normal approximation. |d| ranks: the three 1s share rank 2, the three
    # 2s share rank 5. W+ = 2 + 2 + 5 + 5 + 5 = 19, W- = 2; mean n(n+1)/4 = 10.5; tie groups t = 3, 3:
    # sigma^2 = (6 * 7 * 13 - (24 + 24) / 2) / 24 = (546 - 24) / 24 = 21.75; z = 8.5 / sqrt(21.75).
    res = stats.wilcoxon_signed_rank([1.0, 1.0, 0.0, 2.0, 2.0, 2.0], [0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    z = 8.5 / math.sqrt(21.75)
    assert (res.n, res.statistic, res.method) == (6, 2.0, "approx")
    assert res.p_value == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-12)


def test_wilcoxon_infinities_are_the_largest_differences():
    # (inf, inf) -> 0, dropped; (inf, 1) -> +inf, the largest |d|: rank 3 of 3
    x = np.array([np.inf, np.inf, 0.5, 0.2])
    y = np.array([np.inf, 1.0, 0.6, 0.0])
    res = stats.wilcoxon_signed_rank(x, y)  # d = (0, +inf, -0.1, +0.2): W+ = 3 + 2 = 5, W- = 1
    assert res == (3, 1.0, 0.5, "exact")   # P(T <= 1) = 2/8
    # two infinities tie (average rank): the test switches to the normal approximation
    assert stats.wilcoxon_signed_rank([np.inf, np.inf, 1.0], [0.0, 0.0, 0.0]).method == "approx"
    with pytest.raises(ValueError, match="NaN"):
        stats.wilcoxon_signed_rank([np.nan, 1.0], [0.0, 0.0])
    with pytest.raises(ValueError):
        stats.wilcoxon_signed_rank([1.0, 2.0], [1.0])


def _scipy_d(x, y):
    """Differences as our test takes them (inf - inf = 0), for scipy, which would make them NaN."""
    with np.errstate(invalid="ignore"):
        return np.where(x == y, 0.0, x - y)


@pytest.mark.parametrize("n", [1, 3, 9, 25, 50, 51, 80, 400])
def test_wilcoxon_matches_scipy_without_ties(n):
    sp = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(n)
    for shift in (0.0, 0.4):
        x = rng.exponential(size=n)
        y = rng.exponential(size=n) + shift
        ours = stats.wilcoxon_signed_rank(x, y)
        ref = sp.wilcoxon(x, y)  # scipy defaults: zero_method="wilcox", correction=False, method="auto"
        assert ours.method == ("exact" if n <= 50 else "approx")
        assert ours.statistic == ref.statistic
        assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("n", [30, 60, 500])
def test_wilcoxon_matches_scipy_with_ties_zeros_and_infinities(n):
    sp = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(100 + n)
    # distances on a coarse grid (ties), some equal pairs (zeros), some never broken (inf, in x, y or both)
    x = rng.integers(0, 8, size=n) / 255.0
    y = rng.integers(0, 8, size=n) / 255.0
    x[rng.random(n) < 0.15] = np.inf
    y[rng.random(n) < 0.10] = np.inf
    d = _scipy_d(x, y)
    assert (d == 0).any() and np.isinf(d).any()
    ours = stats.wilcoxon_signed_rank(x, y)
    ref = sp.wilcoxon(d, method="asymptotic")  # what "approx" is (scipy's auto may pick a permutation test)
    assert ours.method == "approx" and ours.n == int((d != 0).sum())
    assert ours.statistic == ref.statistic
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)


def test_wilcoxon_exact_with_zeros_is_the_sign_flip_permutation_test():
    sp = pytest.importorskip("scipy.stats")
    # 12 pairs, 3 of them equal, no ties among the rest: scipy's "auto" runs the exact permutation test over
    # all 2**12 sign flips, which is the exact distribution of the 9 non-zero differences
    d = np.array([0.0, 0.0, 0.0, 1.5, -2.5, 3.5, 4.5, 5.5, -6.5, 7.5, 8.5, 9.5])
    ours = stats.wilcoxon_signed_rank(d, np.zeros_like(d))
    ref = sp.wilcoxon(d)
    assert ours.method == "exact" and ours.n == 9
    assert ours.statistic == ref.statistic and ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    # and it agrees with scipy's exact test on the zeros dropped
    assert ours.p_value == pytest.approx(sp.wilcoxon(d[d != 0], method="exact").pvalue, rel=1e-12)


def test_wilcoxon_exact_null_counts():
    # ranks 1..3: W+ over the 8 sign patterns is 0, 1, 2, 3, 3, 4, 5, 6
    assert stats._signed_rank_null_counts(3).tolist() == [1, 1, 1, 2, 1, 1, 1]
    counts = stats._signed_rank_null_counts(50)
    assert int(counts.sum()) == 2 ** 50 and np.array_equal(counts, counts[::-1])  # symmetric about n(n+1)/4


# ------------------------------------------------------------------------------------------ median
def _exact_bootstrap_cdf(n):
    """CDF of the exact bootstrap distribution of the median of an odd count n over the order statistics:
    P(median <= v_(j)) = P(Bin(n, (j+1)/n) >= k), k = (n+1)/2 (at least k of the n draws are <= v_(j))."""
    k = (n + 1) // 2
    return [sum(math.comb(n, i) * ((j + 1) / n) ** i * (1 - (j + 1) / n) ** (n - i) for i in range(k, n + 1))
            for j in range(n)]


def test_median_interval_finite_against_numpy():
    rng = np.random.default_rng(5)
    v = rng.exponential(size=9)
    res = stats.median_interval(v, n_boot=100_000, seed=1)
    assert res.median == np.median(v) and res.n_boot == 100_000
    # the direct computation: resample the examples, median of each resample, percentiles as order statistics
    idx = np.random.default_rng(2).integers(0, v.size, size=(100_000, v.size))
    reps = np.median(v[idx], axis=1)
    lo, hi = np.percentile(reps, [2.5, 97.5], method="inverted_cdf")
    assert (res.lo, res.hi) == (lo, hi)
    # and both are the quantiles of the exact bootstrap distribution: v_(j) for the first j with cdf >= q,
    # with the cdf at least 0.003 (> 5 Monte Carlo standard errors) away from q on both sides
    sv, cdf = np.sort(v), _exact_bootstrap_cdf(9)
    for q, got in ((0.025, res.lo), (0.975, res.hi)):
        j = next(j for j, c in enumerate(cdf) if c >= q)
        assert got == sv[j]
        assert cdf[j] - q > 0.003 and (j == 0 or q - cdf[j - 1] > 0.003)
    # an even count: the median is the midpoint of the two middle values
    assert stats.median_interval([4.0, 1.0, 3.0, 2.0], 10, 0).median == 2.5


def test_median_interval_even_count_matches_resampling():
    rng = np.random.default_rng(7)
    v = np.round(rng.exponential(size=10), 1)  # ties as well
    res = stats.median_interval(v, n_boot=100_000, seed=3)
    reps = np.median(v[np.random.default_rng(4).integers(0, 10, size=(100_000, 10))], axis=1)
    assert (res.lo, res.hi) == tuple(np.percentile(reps, [2.5, 97.5], method="inverted_cdf"))


def test_median_interval_with_infinities_is_never_nan():
    inf = np.inf
    assert stats.median_interval([inf] * 5, 200, 0) == (inf, inf, inf, 200)
    # half never broken: the median straddles 3 and inf -> inf, the lower bound finite
    half = np.r_[np.arange(1.0, 11.0), np.full(10, inf)]
    res = stats.median_interval(half, 2000, 0)
    assert res.median == inf and res.hi == inf and 1.0 <= res.lo <= 10.0
    assert not any(math.isnan(x) for x in res[:3])
    # one more finite point: the median is finite (the 11th smallest), the interval still reaches inf
    res = stats.median_interval(np.r_[half, 0.5], 2000, 0)
    assert res.median == 10.0 and res.hi == inf
    # NaN (not measured) is dropped before anything: the same as without it
    assert stats.median_interval(np.r_[half, np.nan, np.nan], 300, 9) == stats.median_interval(half, 300, 9)


def test_median_interval_deterministic_and_edge_cases():
    v = np.random.default_rng(0).exponential(size=500)
    a = stats.median_interval(v, 500, seed=11)
    assert a == stats.median_interval(v[::-1], 500, seed=11)  # values, not their order
    # the bounds are data values (order statistics), so two seeds may agree; over eight they do not all
    assert any(stats.median_interval(v, 500, seed=s) != a for s in range(12, 20))
    assert a.lo < a.median < a.hi
    none = stats.median_interval([np.nan], 100, 0)
    assert all(math.isnan(x) for x in none[:3]) and none.n_boot == 100
    no_boot = stats.median_interval([1.0, 2.0, 3.0], 0, 0)
    assert no_boot.median == 2.0 and math.isnan(no_boot.lo) and no_boot.n_boot == 0
    with pytest.raises(ValueError):
        stats.median_interval([1.0], 10, 0, conf=1.0)
