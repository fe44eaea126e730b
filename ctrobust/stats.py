"""Statistics for honest robustness reporting: intervals, paired tests, held-out beta selection.

Everything here is pure Python + numpy (no scipy), deterministic, and works on per-example outcomes:
one boolean per example (robust / not robust), paired across betas because every beta is evaluated on
the same examples.

- :func:`wilson_interval`: Wilson score interval for one proportion (Wilson 1927).
- :func:`paired_diff_interval`: Newcombe's hybrid score interval for the difference of two *paired*
  proportions (Newcombe 1998, method 10), e.g. robust accuracy at beta vs at beta = 1 on the same points.
- :func:`mcnemar_exact`: exact (binomial) McNemar test on paired per-example booleans.
- :func:`wilcoxon_signed_rank`: two-sided Wilcoxon signed-rank test on paired per-example numbers (e.g.
  minimal perturbations at beta vs at beta = 1), exact for small samples without ties, as
  ``scipy.stats.wilcoxon``.
- :func:`median_interval`: the median of per-example numbers that may be ``inf`` (a point no attack broke)
  with a percentile bootstrap interval over examples.
- :func:`stratified_split`: seeded, class-stratified, row-order-independent split of example ids into a
  selection half and a report half (for choosing beta on one half and reporting on the other).
- :func:`select_beta`: argmax over a beta grid with a documented tie-break.
- :func:`mean_std`: mean and standard deviation across seeds.
- :func:`relative_gain`: ``(ct - base) / base`` as the Curvature Tuning paper computes it, with the
  ``base == 0`` cases made explicit; :func:`relative_gains` is the same on arrays (bootstrap replicates).
- Percentile bootstrap over examples, paired across betas (the same resampled example weights serve
  every beta): :func:`bootstrap_weights` (stratified resampling counts), :func:`bootstrap_accuracy`
  (accuracy of every beta in every replicate), :func:`bootstrap_reselect` (beta re-selected on the
  resampled selection half in every replicate, so an interval includes the selection step) and
  :func:`percentile_interval` (a :class:`BootstrapInterval`).

Results are typed: :class:`Interval` (``lo, hi``), :class:`McNemarTest` (``b01, b10, p_value``),
:class:`WilcoxonTest` (``n, statistic, p_value, method``), :class:`MedianInterval` (``median, lo, hi,
n_boot``) and :class:`MeanStd` are named tuples (they unpack as the plain tuples they replace, and ``mcnemar_exact(...)[
"p_value"]`` keeps working); :class:`BootstrapInterval` is a frozen dataclass (reports serialize it as an
object).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Iterable, Mapping, NamedTuple

import numpy as np

__all__ = [
    "Interval",
    "McNemarTest",
    "WilcoxonTest",
    "MedianInterval",
    "MeanStd",
    "wilson_interval",
    "paired_diff_interval",
    "mcnemar_exact",
    "wilcoxon_signed_rank",
    "median_interval",
    "WILCOXON_EXACT_MAX",
    "stratified_split",
    "select_beta",
    "mean_std",
    "relative_gain",
    "relative_gains",
    "z_value",
    "TIE_BREAKS",
    "BootstrapInterval",
    "MIN_STRATUM",
    "bootstrap_weights",
    "bootstrap_accuracy",
    "bootstrap_reselect",
    "percentile_interval",
]

#: Tie-break rules understood by :func:`select_beta`.
TIE_BREAKS = ("closest_to_one", "smallest")


class Interval(NamedTuple):
    """A confidence interval of fractions; unpacks and compares like the ``(lo, hi)`` tuple it is."""

    lo: float
    hi: float


class McNemarTest(NamedTuple):
    """An exact McNemar test: discordant counts and the two-sided p-value.

    ``res["p_value"]`` (the dict this function returned before) keeps working.
    """

    b01: int
    b10: int
    p_value: float

    def __getitem__(self, key):
        return getattr(self, key) if isinstance(key, str) else tuple.__getitem__(self, key)


class WilcoxonTest(NamedTuple):
    """A two-sided Wilcoxon signed-rank test (:func:`wilcoxon_signed_rank`).

    Attributes:
        n: non-zero differences the test ranks (zero differences are dropped).
        statistic: ``min(W+, W-)``, the smaller of the rank sums of the positive and negative differences
            (``scipy.stats.wilcoxon``'s two-sided statistic); half-integers with tied ranks.
        p_value: two-sided p-value in [0, 1].
        method: ``"exact"`` (the null distribution of ``W+`` enumerated) or ``"approx"`` (normal
            approximation with the tie correction).
    """

    n: int
    statistic: float
    p_value: float
    method: str


class MedianInterval(NamedTuple):
    """A median with its percentile bootstrap interval (:func:`median_interval`); may hold ``inf``.

    Attributes:
        median: the median of the values (``nan`` when there are none).
        lo: lower bound of the interval (``nan`` without values or without replicates).
        hi: upper bound (``inf`` when enough values are ``inf``).
        n_boot: replicates drawn.
    """

    median: float
    lo: float
    hi: float
    n_boot: int


class MeanStd(NamedTuple):
    """Mean and standard deviation across seeds; unpacks as ``(mean, std)``."""

    mean: float
    std: float


def z_value(conf: float = 0.95) -> float:
    """Two-sided standard-normal quantile for a confidence level.

    Args:
        conf: confidence level in (0, 1), e.g. ``0.95``.

    Returns:
        ``z`` with ``P(|Z| <= z) = conf``; ``z_value(0.95) = 1.959964...``.
    """
    if not 0.0 < conf < 1.0:
        raise ValueError(f"conf must be in (0, 1), got {conf!r}")
    return NormalDist().inv_cdf(0.5 + conf / 2.0)


def wilson_interval(k: int, n: int, conf: float = 0.95) -> Interval:
    """Wilson score interval for a binomial proportion ``k / n``.

    ``center = (k + z^2/2) / (n + z^2)``, ``half = z / (n + z^2) * sqrt(k (n - k) / n + z^2 / 4)``,
    interval ``(center - half, center + half)`` clipped to [0, 1]. Unlike the Wald interval it is never
    degenerate at ``k = 0`` or ``k = n`` (``k = 0`` gives ``(0, z^2 / (n + z^2))``).

    Args:
        k: number of successes (e.g. robust examples), ``0 <= k <= n``.
        n: number of trials (examples). ``n = 0`` returns ``(0.0, 1.0)``: no information.
        conf: confidence level.

    Returns:
        ``(lo, hi)`` as fractions in [0, 1].

    Example:
        >>> lo, hi = wilson_interval(5, 10)
        >>> round(lo, 4), round(hi, 4)
        (0.2366, 0.7634)
    """
    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Interval(0.0, 1.0)
    z = z_value(conf)
    z2 = z * z
    denom = n + z2
    center = (k + z2 / 2.0) / denom
    half = z / denom * math.sqrt(k * (n - k) / n + z2 / 4.0)
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return Interval(lo, hi)


def _as_bool(flags, name: str) -> np.ndarray:
    arr = np.asarray(flags)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.all(np.isin(arr, (0, 1))):
            raise ValueError(f"{name} must hold booleans (or 0/1)")
        arr = arr.astype(bool)
    return arr


def _paired_table(a_flags, b_flags) -> tuple[int, int, int, int]:
    a = _as_bool(a_flags, "a_flags")
    b = _as_bool(b_flags, "b_flags")
    if a.shape != b.shape:
        raise ValueError(f"paired flags must have equal length, got {a.shape[0]} and {b.shape[0]}")
    both = int(np.sum(a & b))
    a_only = int(np.sum(a & ~b))
    b_only = int(np.sum(~a & b))
    neither = int(np.sum(~a & ~b))
    return both, a_only, b_only, neither


def mcnemar_exact(a_flags, b_flags) -> McNemarTest:
    """Exact McNemar test for paired per-example booleans.

    Only discordant pairs carry information: ``b01`` = examples where ``a`` is False and ``b`` True,
    ``b10`` = ``a`` True and ``b`` False. Under H0 (equal marginal proportions) ``b01 ~ Bin(b01 + b10,
    1/2)``; the two-sided p-value is ``min(1, 2 * P(X <= min(b01, b10)))``, and 1 when there is no
    discordant pair. Computed with exact integer binomial sums (``math.comb``).

    Args:
        a_flags: ``(N,)`` bool, e.g. robust at beta = 1.
        b_flags: ``(N,)`` bool, e.g. robust at the CT beta, same examples in the same order.

    Returns:
        :class:`McNemarTest` ``(b01, b10, p_value)``.

    Example:
        >>> mcnemar_exact([False] * 6 + [True], [True] * 6 + [False])["p_value"]  # 2 * (1 + 7) / 2**7
        0.125
    """
    _, a_only, b_only, _ = _paired_table(a_flags, b_flags)
    b01, b10 = b_only, a_only
    m = b01 + b10
    if m == 0:
        return McNemarTest(0, 0, 1.0)
    k = min(b01, b10)
    tail = sum(math.comb(m, i) for i in range(k + 1))
    # int / int true division is exact up to the final rounding, with no overflow for large m
    p = min(1.0, (2 * tail) / (2 ** m))
    return McNemarTest(int(b01), int(b10), float(p))


def paired_diff_interval(ct_flags, base_flags, conf: float = 0.95) -> Interval:
    """Newcombe's hybrid score interval for ``mean(ct_flags) - mean(base_flags)`` on paired data.

    Newcombe (1998), "Improved confidence intervals for the difference between binomial proportions
    based on paired data", Stat. Med. 17:2635-2650, method 10. With the 2x2 table ``a`` (both True),
    ``b`` (ct only), ``c`` (base only), ``d`` (neither), ``p1 = (a + b)/n``, ``p2 = (a + c)/n``,
    ``D = p1 - p2`` and Wilson intervals ``(l1, u1)``, ``(l2, u2)`` for ``p1`` and ``p2``::

        lower = D - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2)
        upper = D + sqrt((p2 - l2)^2 - 2 phi (p2 - l2)(u1 - p1) + (u1 - p1)^2)

    where ``phi`` is the correlation of the paired flags with Newcombe's adjustment: with
    ``B = a d - b c``, ``phi = (B - n/2) / sqrt((a+b)(c+d)(a+c)(b+d))`` if ``B > n/2``, ``B / sqrt(...)``
    if ``B < 0``, else 0; ``phi = 0`` when a margin is 0. Chosen over a bootstrap because it is closed
    form, deterministic, and keeps good coverage for proportions near 0 (near-zero robust accuracy is
    the regime of the CT robustness claim).

    Args:
        ct_flags: ``(N,)`` bool, e.g. robust at the CT beta.
        base_flags: ``(N,)`` bool, robust at beta = 1, same examples in the same order.
        conf: confidence level.

    Returns:
        ``(lo, hi)`` for the difference of fractions, within [-1, 1]. ``N = 0`` gives ``(-1.0, 1.0)``.
    """
    a, b, c, d = _paired_table(ct_flags, base_flags)
    n = a + b + c + d
    if n == 0:
        return Interval(-1.0, 1.0)
    p1, p2 = (a + b) / n, (a + c) / n
    diff = p1 - p2
    l1, u1 = wilson_interval(a + b, n, conf)
    l2, u2 = wilson_interval(a + c, n, conf)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = 0.0
    if margins > 0:
        big_b = a * d - b * c
        if big_b > n / 2.0:
            adj = big_b - n / 2.0
        elif big_b < 0:
            adj = float(big_b)
        else:
            adj = 0.0
        phi = adj / math.sqrt(margins)
    lo_term = (p1 - l1) ** 2 - 2.0 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    hi_term = (p2 - l2) ** 2 - 2.0 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2
    lo = diff - math.sqrt(max(lo_term, 0.0))
    hi = diff + math.sqrt(max(hi_term, 0.0))
    return Interval(max(-1.0, lo), min(1.0, hi))


# --------------------------------------------------------------------------------------------------
# paired ranks and medians of per-example numbers (minimal perturbations: non-negative, may be inf)
#: largest number of non-zero differences for which :func:`wilcoxon_signed_rank` enumerates the exact null
#: distribution (scipy's ``method="auto"`` threshold).
WILCOXON_EXACT_MAX = 50


def _average_ranks(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of ``a`` (no NaN; equal values, ``inf`` included, share their average rank) and the
    size of every group of equal values."""
    order = np.argsort(a, kind="stable")
    s = a[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], s.size]
    ranks = np.empty(a.size, np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks, ends - starts


def _signed_rank_null_counts(n: int) -> np.ndarray:
    """``counts[w]``: how many of the ``2**n`` sign patterns of ranks ``1..n`` give ``W+ = w``.

    Dynamic programming over the ranks (add rank ``k`` to every pattern or not); int64 is exact for
    ``n <= 60`` (``2**n`` patterns in all).
    """
    counts = np.zeros(n * (n + 1) // 2 + 1, np.int64)
    counts[0] = 1
    for k in range(1, n + 1):
        counts[k:] = counts[k:] + counts[:-k].copy()
    return counts


def wilcoxon_signed_rank(x, y) -> WilcoxonTest:
    """Two-sided Wilcoxon signed-rank test of paired samples ``x`` and ``y`` (H0: the differences are
    symmetric about 0), e.g. per-example minimal perturbations at a CT beta vs at beta = 1.

    Differences are ``d = x - y``, with two equal infinities giving 0 (never ``inf - inf = nan``) and one
    infinity giving ``+-inf``, the largest ``|d|`` (infinities tie with each other and share their average
    rank). Zero differences are dropped (Wilcoxon's method, ``scipy.stats.wilcoxon``'s default
    ``zero_method="wilcox"``); ``n`` is the number left. With ``W+`` and ``W-`` the rank sums of the
    positive and negative differences (ranks of ``|d|``, ties averaged), the statistic is
    ``min(W+, W-)`` and the p-value

    - ``"exact"`` when ``n <= 50`` (:data:`WILCOXON_EXACT_MAX`) and no two ``|d|`` tie: ``2 P(T <=
      min(W+, W-))`` under the exact null distribution of ``T = W+`` (every sign pattern of the ranks
      ``1..n`` equally likely; enumerated by dynamic programming), capped at 1;
    - ``"approx"`` otherwise: ``z = (W+ - n(n+1)/4) / sigma`` with ``sigma^2 = (n(n+1)(2n+1) -
      sum(t^3 - t)/2) / 24`` over the tie groups of size ``t``, ``p = 2 (1 - Phi(|z|))``, no continuity
      correction.

    This is ``scipy.stats.wilcoxon(x, y)`` (scipy 1.17 defaults: ``zero_method="wilcox"``,
    ``correction=False``, ``method="auto"``) whenever there are no zero differences. With zeros, scipy's
    ``"auto"`` leaves the exact distribution (a permutation test over sign flips for <= 13 pairs, the
    normal approximation above); here the exact distribution of the non-zero differences is kept, which
    is that permutation test's p-value (flipping the sign of a dropped zero changes nothing).

    Args:
        x: ``(N,)`` numbers, e.g. distances at beta (``inf`` allowed, NaN not).
        y: ``(N,)`` numbers paired with ``x`` (same examples, same order).

    Returns:
        :class:`WilcoxonTest` ``(n, statistic, p_value, method)``; ``n = 0`` (every pair equal) gives
        ``(0, 0.0, 1.0, "exact")``.

    Raises:
        ValueError: not 1-D, different lengths, or a NaN (drop unmeasured pairs first).

    Example:
        >>> wilcoxon_signed_rank([1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0])  # W- = 0: p = 2 / 2**4
        WilcoxonTest(n=4, statistic=0.0, p_value=0.125, method='exact')
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D of equal length, got shapes {x.shape} and {y.shape}")
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("x and y must not hold NaN: drop the pairs that were not measured first")
    with np.errstate(invalid="ignore"):
        d = np.where(x == y, 0.0, x - y)  # inf == inf: a zero difference, not inf - inf = nan
    d = d[d != 0]
    n = int(d.size)
    if n == 0:
        return WilcoxonTest(0, 0.0, 1.0, "exact")
    ranks, ties = _average_ranks(np.abs(d))
    w_plus = float(ranks[d > 0].sum())
    w_minus = float(ranks[d < 0].sum())
    statistic = min(w_plus, w_minus)
    if n <= WILCOXON_EXACT_MAX and not np.any(ties > 1):
        counts = _signed_rank_null_counts(n)
        # integer ranks without ties: the statistic is an integer; exact integer tail, one rounding at the end
        tail = int(counts[: int(statistic) + 1].sum())
        return WilcoxonTest(n, statistic, min(1.0, (2 * tail) / (2 ** n)), "exact")
    t = ties.astype(np.float64)
    var = (n * (n + 1.0) * (2.0 * n + 1.0) - float(np.sum(t ** 3 - t)) / 2.0) / 24.0
    z = (w_plus - n * (n + 1.0) / 4.0) / math.sqrt(var)
    return WilcoxonTest(n, statistic, min(1.0, math.erfc(abs(z) / math.sqrt(2.0))), "approx")


def _middle(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Midpoint of two order statistics ``lo <= hi``: ``inf`` when ``hi`` is, never ``inf - inf``."""
    with np.errstate(invalid="ignore"):
        return np.where(lo == hi, lo, 0.5 * lo + 0.5 * hi)


def _order_statistic(sorted_values: np.ndarray, q: float) -> float:
    """The ``q`` quantile as numpy's ``method="inverted_cdf"`` defines it (the smallest value whose
    empirical CDF reaches ``q``): an element of ``sorted_values``, so ``inf`` stays ``inf`` (numpy's
    percentile interpolates ``a + (b - a) * 0``, which is NaN next to an ``inf``)."""
    m = sorted_values.size
    k = min(max(math.ceil(m * q) - 1, 0), m - 1)
    return float(sorted_values[k])


def median_interval(values, n_boot: int, seed, conf: float = 0.95) -> MedianInterval:
    """Median of per-example values that may be ``inf``, with a percentile bootstrap interval.

    For minimal perturbations: ``inf`` (no attack broke the example) is a value like any other, larger than
    every finite one, so the median is ``inf`` when more than half the examples were never broken. NaN
    (not measured) is dropped before anything is computed: the median is over the measured values only.

    The median of an even count is the midpoint of the two middle order statistics (``inf`` when the upper
    one is). Each replicate is the median of ``N`` values drawn with replacement, as the percentile
    bootstrap over examples resamples them, but drawn without materialising the ``N`` draws: the median
    of a resample is the ``k``-th smallest of ``N`` uniform indices into the sorted values, and the
    ``k``-th smallest of ``N`` draws ``floor(N U)`` is ``floor(N U_(k))`` with ``U_(k) ~ Beta(k, N - k +
    1)`` (the next one, for an even count, ``U_(k) + (1 - U_(k)) Beta(1, N - k)``): two variates per
    replicate instead of ``N`` (a 10 000-point median with 2000 replicates in milliseconds). The interval
    is the ``(1 - conf) / 2`` and ``(1 + conf) / 2`` quantiles of the replicate medians as order statistics
    (numpy's ``method="inverted_cdf"``), so no bound is ever interpolated between a finite value and
    ``inf``.

    Args:
        values: ``(N,)`` numbers, e.g. distances in the threat's norm (``inf`` allowed; NaN dropped).
        n_boot: replicates (``0``: no interval).
        seed: an int (a fresh ``numpy.random.default_rng(seed)``: the result depends on ``seed`` and the
            values only) or a ``numpy.random.Generator`` (advanced).
        conf: confidence level in (0, 1).

    Returns:
        :class:`MedianInterval` ``(median, lo, hi, n_boot)``; ``median``, ``lo``, ``hi`` are ``nan`` when
        no value is left, ``lo`` and ``hi`` are ``nan`` when ``n_boot = 0``.

    Example:
        >>> median_interval([1.0, 2.0, np.inf, np.inf, np.nan], n_boot=200, seed=0).median  # (2 + inf) / 2
        inf
    """
    if not 0.0 < conf < 1.0:
        raise ValueError(f"conf must be in (0, 1), got {conf!r}")
    n_boot = int(n_boot)
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = np.sort(v[~np.isnan(v)])
    n = int(v.size)
    nan = float("nan")
    if n == 0:
        return MedianInterval(nan, nan, nan, n_boot)
    k_lo, k_hi = (n - 1) // 2, n // 2
    median = float(_middle(v[k_lo], v[k_hi]))
    if n_boot == 0:
        return MedianInterval(median, nan, nan, 0)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    k = k_lo + 1  # 1-based rank of the lower middle order statistic
    u_lo = rng.beta(k, n - k + 1, size=n_boot)
    u_hi = u_lo + (1.0 - u_lo) * rng.beta(1, n - k, size=n_boot) if k_hi > k_lo else u_lo
    i_lo = np.minimum((n * u_lo).astype(np.int64), n - 1)  # a variate rounded to 1.0 is still an index
    i_hi = np.minimum((n * u_hi).astype(np.int64), n - 1)
    reps = _middle(v[i_lo], v[i_hi])
    reps.sort()
    alpha = 0.5 * (1.0 - conf)
    return MedianInterval(median, _order_statistic(reps, alpha), _order_statistic(reps, 1.0 - alpha), n_boot)


# --------------------------------------------------------------------------------------------------
# seeded, order-independent hashing (splitmix64) used by the split
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorised splitmix64 finaliser on uint64 (wrap-around arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


def _keyed_hash(values: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """Deterministic 64-bit hash of int64 ``values`` keyed by ``(seed, salt)``; platform independent."""
    v = np.asarray(values, dtype=np.int64).view(np.uint64)
    key = _splitmix64(np.array([(int(seed) * 0x100000001B3 + int(salt)) & 0xFFFFFFFFFFFFFFFF],
                               dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        return _splitmix64(_splitmix64(v ^ key) + key)


def stratified_split(ids, labels, seed: int, frac: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Seeded class-stratified split of examples into a *selection* part and a *report* part.

    Use it to choose beta on the selection part and report accuracy on the disjoint report part, so the
    reported number is not the maximum of many noisy estimates on the same points.

    Properties:
        - deterministic: depends only on the set of ``(id, label)`` pairs and ``seed`` — not on row order,
          not on numpy's RNG (a keyed splitmix64 hash of each id orders each class);
        - rows with the same id (the same example at several betas / seeds) land on the same side;
        - disjoint and covering: ``select_mask ^ report_mask`` is all True;
        - stratified: in each class, ``floor(frac * n_c)`` or ``ceil(frac * n_c)`` examples are selected,
          so with ``frac = 0.5`` the two parts differ by at most 1 per class. Classes whose share is
          fractional get the extra example by largest remainder (ties ordered by a keyed hash of the
          label) so that the total selected is ``round(frac * N)``.

    Args:
        ids: ``(M,)`` int example ids (may repeat; an id must always carry the same label).
        labels: ``(M,)`` int class labels.
        seed: split seed (independent of attack seeds).
        frac: fraction of examples in the selection part, in (0, 1).

    Returns:
        ``(select_mask, report_mask)``: ``(M,)`` bool arrays over the input rows.

    Example:
        >>> sel, rep = stratified_split([0, 1, 2, 3], [0, 0, 1, 1], seed=0)
        >>> int(sel.sum()), int(rep.sum()), bool((sel ^ rep).all())
        (2, 2, True)
    """
    ids = np.asarray(ids).astype(np.int64, copy=False).reshape(-1)
    labels = np.asarray(labels).astype(np.int64, copy=False).reshape(-1)
    if ids.shape != labels.shape:
        raise ValueError(f"ids and labels must have equal length, got {ids.shape[0]} and {labels.shape[0]}")
    if not 0.0 < frac < 1.0:
        raise ValueError(f"frac must be in (0, 1), got {frac!r}")
    if ids.size == 0:
        return np.zeros(0, bool), np.zeros(0, bool)
    pairs = np.unique(np.stack([ids, labels], axis=1), axis=0)
    uniq_ids, counts = np.unique(pairs[:, 0], return_counts=True)
    if np.any(counts > 1):
        bad = uniq_ids[counts > 1][:5].tolist()
        raise ValueError(f"ids with more than one label (e.g. {bad}): ids must identify examples")
    u_ids, u_labels = pairs[:, 0], pairs[:, 1]
    classes, n_c = np.unique(u_labels, return_counts=True)
    # how many to select per class: floor + largest remainder to hit round(frac * N)
    exact = frac * n_c
    k_c = np.floor(exact).astype(np.int64)
    target = int(math.floor(frac * u_ids.size + 0.5))
    extra = target - int(k_c.sum())
    if extra > 0:
        rem = exact - k_c
        tie = _keyed_hash(classes, seed, salt=1)
        order = np.lexsort((tie, -rem))  # largest remainder first, then keyed hash
        eligible = order[rem[order] > 0][:extra]
        k_c[eligible] += 1
    selected_ids = []
    id_hash = _keyed_hash(u_ids, seed, salt=0)
    for cls, k in zip(classes, k_c):
        in_cls = np.flatnonzero(u_labels == cls)
        order = np.lexsort((u_ids[in_cls], id_hash[in_cls]))  # hash first, id breaks (impossible) ties
        selected_ids.append(u_ids[in_cls[order[:k]]])
    selected = np.concatenate(selected_ids) if selected_ids else np.zeros(0, np.int64)
    select_mask = np.isin(ids, selected)
    return select_mask, ~select_mask


def select_beta(acc_by_beta: Mapping[float, float], tie_break: str = "closest_to_one",
                atol: float = 1e-12) -> float:
    """Pick the beta with the highest accuracy.

    Ties (accuracies within ``atol``; accuracies are counts / n so real ties are exact) are broken by
    ``tie_break``:

    - ``"closest_to_one"`` (default): the beta closest to 1, i.e. the *least* modification of the
      network (beta = 1 is the unmodified ReLU network). A beta that only ties the base model is not
      credited with a gain. Remaining ties (equal distance) go to the larger beta.
    - ``"smallest"``: the smallest beta, which is what the CT reference code does (ascending grid, strict
      ``>`` update).

    NaN accuracies are ignored.

    Args:
        acc_by_beta: ``{beta: accuracy}``.
        tie_break: one of :data:`TIE_BREAKS`.
        atol: absolute tolerance for a tie.

    Returns:
        The chosen beta (a key of ``acc_by_beta``).

    Example:
        >>> select_beta({0.8: 0.5, 0.95: 0.5, 1.0: 0.4})
        0.95
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"unknown tie_break {tie_break!r}; known: {', '.join(TIE_BREAKS)}")
    items = [(float(b), float(a)) for b, a in acc_by_beta.items() if not math.isnan(float(a))]
    if not items:
        raise ValueError("select_beta needs at least one beta with a finite accuracy")
    best = max(a for _, a in items)
    tied = [b for b, a in items if a >= best - atol]
    if tie_break == "smallest":
        return min(tied)
    return min(tied, key=lambda b: (abs(1.0 - b), -b))


def mean_std(values: Iterable[float], ddof: int = 0) -> MeanStd:
    """Mean and standard deviation across seeds.

    ``ddof = 0`` (population std) by default, as ``np.std`` in the CT reference code, so our "mean +- std"
    is comparable with the paper's.

    Args:
        values: one value per seed.
        ddof: delta degrees of freedom (``1`` for the sample std).

    Returns:
        ``(mean, std)``; ``(nan, nan)`` for no values, std ``0.0`` for a single value.
    """
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return MeanStd(float("nan"), float("nan"))
    if arr.size - ddof <= 0:
        return MeanStd(float(arr.mean()), 0.0)
    with np.errstate(invalid="ignore"):
        return MeanStd(float(arr.mean()), float(arr.std(ddof=ddof)))


def relative_gain(ct: float, base: float) -> float:
    """Relative gain ``(ct - base) / base`` as the CT paper computes it (multiply by 100 for percent).

    Args:
        ct: accuracy with CT.
        base: accuracy of the unmodified model (beta = 1).

    Returns:
        The ratio; ``+inf`` when ``base == 0 < ct`` and ``nan`` (undefined, 0/0) when
        ``base == ct == 0`` — near-zero baselines make this number explode, which is why the report puts
        the absolute gain with its interval next to it.
    """
    ct, base = float(ct), float(base)
    if base == 0.0:
        if ct == 0.0:
            return float("nan")
        return math.copysign(float("inf"), ct)
    return (ct - base) / base


def relative_gains(ct, base) -> np.ndarray:
    """:func:`relative_gain` elementwise on arrays (e.g. bootstrap replicates), in float64.

    Args:
        ct: accuracies with CT.
        base: accuracies of the unmodified model, broadcastable against ``ct``.

    Returns:
        ``(ct - base) / base``; ``+inf`` where ``base == 0 < ct``, ``nan`` where both are 0 (no warning).
    """
    ct, base = np.asarray(ct, np.float64), np.asarray(base, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (ct - base) / base


# --------------------------------------------------------------------------------------------------
# percentile bootstrap over examples, paired across betas
#: smallest (class, split half) stratum :func:`bootstrap_weights` resamples within; smaller ones fall back
#: to the split half alone.
MIN_STRATUM = 10


@dataclass(frozen=True)
class BootstrapInterval:
    """A percentile bootstrap interval.

    Attributes:
        lo: lower percentile of the finite replicates (``nan`` when none is finite).
        hi: upper percentile of the finite replicates (``nan`` when none is finite).
        n_boot: replicates drawn.
        n_undefined: replicates left out because they are not finite (e.g. a relative gain whose resampled
            base accuracy is 0).
    """

    lo: float
    hi: float
    n_boot: int
    n_undefined: int


def percentile_interval(samples, conf: float = 0.95) -> BootstrapInterval:
    """Percentile interval of bootstrap replicates, ignoring the non-finite ones.

    Args:
        samples: ``(n_boot,)`` replicates of a statistic.
        conf: confidence level; the interval spans the ``(1 - conf) / 2`` and ``(1 + conf) / 2`` percentiles
            (numpy's linear interpolation).

    Returns:
        The interval, with how many replicates were undefined.

    Example:
        >>> percentile_interval(np.arange(101.0), conf=0.5)
        BootstrapInterval(lo=25.0, hi=75.0, n_boot=101, n_undefined=0)
    """
    samples = np.asarray(samples, dtype=np.float64)
    finite = samples[np.isfinite(samples)]
    lo = hi = float("nan")
    if finite.size:
        lo_, hi_ = np.percentile(finite, [50.0 * (1 - conf), 100.0 - 50.0 * (1 - conf)])
        lo, hi = float(lo_), float(hi_)
    return BootstrapInterval(lo=lo, hi=hi, n_boot=int(samples.size), n_undefined=int(samples.size - finite.size))


def bootstrap_weights(labels, n_boot: int, rng, *, half=None, min_stratum: int = MIN_STRATUM) -> np.ndarray:
    """Stratified bootstrap resampling counts: each stratum keeps its size in every replicate.

    Strata are (class, split half) when every such stratum has at least ``min_stratum`` examples, else the
    split half only (e.g. ImageNet with 1 example per class: a class stratum of size 1 would have no
    bootstrap variance at all). Memory is ``4 * N * n_boot`` bytes (80 MB for the full 10 000-image test
    set at 2000 replicates).

    Args:
        labels: ``(N,)`` int class labels of the examples.
        n_boot: replicates.
        rng: a ``numpy.random.Generator`` (draws advance it) or a seed for a fresh one.
        half: ``(N,)`` bool split half (e.g. the selection mask of :func:`stratified_split`), or ``None``.
        min_stratum: see above.

    Returns:
        ``(N, n_boot)`` float32 counts: how often each example is drawn in each replicate; a statistic of a
        replicate is ``flags @ weights / N`` (see :func:`bootstrap_accuracy`).

    Example:
        >>> w = bootstrap_weights(np.zeros(20, int), n_boot=3, rng=0)
        >>> w.shape, w.sum(axis=0).tolist()
        ((20, 3), [20.0, 20.0, 20.0])
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    labels = np.asarray(labels)
    n = labels.size
    half_code = np.asarray(half).astype(np.int64) if half is not None else np.zeros(n, np.int64)
    strata = labels.astype(np.int64) * 2 + half_code
    _, sizes = np.unique(strata, return_counts=True)
    if sizes.size and sizes.min() < min_stratum:
        strata = half_code
    w = np.zeros((n, n_boot), np.float32)
    for st in np.unique(strata):
        idx = np.flatnonzero(strata == st)
        m = idx.size
        draws = rng.integers(0, m, size=(n_boot, m))
        # one bincount over all replicates: replicate r's draws are offset by r * m
        flat = (draws + (np.arange(n_boot) * m)[:, None]).ravel()
        w[idx] = np.bincount(flat, minlength=m * n_boot).reshape(n_boot, m).T
    return w


def bootstrap_accuracy(flags, weights) -> np.ndarray:
    """Accuracy in every bootstrap replicate.

    Args:
        flags: ``(N,)`` or ``(B, N)`` bool, e.g. robust flags of each beta on the same examples.
        weights: ``(N, n_boot)`` counts from :func:`bootstrap_weights` (the same for every beta: paired).

    Returns:
        ``(n_boot,)`` or ``(B, n_boot)`` float32 accuracies (fractions). The counts are integer-valued, so
        float32 is exact up to 2**24 examples.
    """
    flags = np.asarray(flags)
    return (flags.astype(np.float32) @ weights) / float(flags.shape[-1])


def _priority_order(betas: np.ndarray, tie_break: str) -> np.ndarray:
    """Betas ordered so that the first maximum in this order is :func:`select_beta`'s choice."""
    if tie_break == "smallest":
        return np.argsort(betas, kind="stable")
    return np.lexsort((-betas, np.abs(1.0 - betas)))


def bootstrap_reselect(flags, betas, weights, select_mask,
                       tie_break: str = "closest_to_one") -> tuple[np.ndarray, np.ndarray]:
    """Held-out selection in every replicate: beta chosen on the resampled selection half.

    Re-selecting in every replicate makes an interval of the held-out accuracy include the variability of
    the selection step (holding the selected beta fixed would not).

    Args:
        flags: ``(B, N)`` bool, e.g. robust flags of each beta on the same examples.
        betas: ``(B,)`` the betas of the rows of ``flags``.
        weights: ``(N, n_boot)`` counts from :func:`bootstrap_weights`.
        select_mask: ``(N,)`` bool, the selection half (the rest is the report half); both non-empty.
        tie_break: as :func:`select_beta` (ties are exact: the counts are integers).

    Returns:
        ``(selected, report)``: ``(n_boot,)`` report-half accuracy of the beta selected in each replicate,
        and ``(B, n_boot)`` report-half accuracy of every beta (row of beta = 1: the base model).
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"unknown tie_break {tie_break!r}; known: {', '.join(TIE_BREAKS)}")
    sel = np.asarray(select_mask, bool)
    if not sel.any() or sel.all():
        raise ValueError("the selection half and the report half must both be non-empty")
    r = np.asarray(flags).astype(np.float32)
    c_sel = r[:, sel] @ weights[sel]
    c_rep = r[:, ~sel] @ weights[~sel]
    report = c_rep / float((~sel).sum())
    order = _priority_order(np.asarray(betas, np.float64), tie_break)
    pick = order[np.argmax(c_sel[order], axis=0)]  # first max in priority order
    return report[pick, np.arange(report.shape[1])], report
