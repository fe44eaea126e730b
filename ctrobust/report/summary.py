"""The typed report: frozen dataclasses holding every number of a reproduction report.

Computation (:mod:`~ctrobust.report.tables`, :mod:`~ctrobust.report.selection`,
:mod:`~ctrobust.report.run`, :mod:`~ctrobust.report.aggregate`, :mod:`~ctrobust.report.claims`) builds
these; :mod:`~ctrobust.report.render` only formats them. ``dataclasses.asdict`` of a :class:`Report` is
the JSON report (:func:`ctrobust.report.render_json`) and :meth:`Report.from_dict` reads it back.

Units, as the field names say:

- ``*_pct``: accuracies and relative gains in percent (``robust_acc_pct = 25.0`` is 25 %); a relative gain
  is ``+inf`` when the base accuracy is 0 and CT's is not, ``nan`` when both are 0;
- ``*_pts``: differences of accuracies in percentage points;
- ``*_frac``: fractions in [0, 1] (masking signals, shares of examples);
- ``*_dist``: minimal perturbations found by a minimum-norm attack, in the threat's norm and [0, 1] pixel
  units (``0``: misclassified clean, ``inf``: never broken; written ``Infinity`` in the JSON);
- ``beta``: the CT beta (1 = the unmodified network), rounded to 6 decimals.

Accuracies stay in percent (not fractions) because that is the unit the seed means and standard
deviations are computed in: converting afterwards would change the last bits and, now and then, the
second decimal of the rendered report.

Fields whose name starts with ``_`` (the bootstrap replicates of a run, needed for cross-run intervals)
are left out of the JSON.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

import numpy as np

from ctrobust.report._util import freeze
from ctrobust.stats import BootstrapInterval

__all__ = ["REPORT_FORMAT_VERSION", "MeanStd", "BootstrapInterval", "MaskingFlags", "MaskingSummary",
           "BetaRow", "Selection", "SeedSummary", "BaseStats", "ProtocolSummary", "BetaSummary",
           "AttackCounts", "RunSettings", "BootReplicates", "EpsComparison", "DistanceRow", "DistanceSelection",
           "DistanceSeed", "DistanceSummary", "RunSummary", "DatasetGain", "AggregateProtocol",
           "Aggregate", "SettingDiff", "ClaimDataset", "ClaimComparison", "Report", "to_dict", "from_dict"]

#: the ``format`` of a report; bumped when the JSON structure changes (2: the typed report).
REPORT_FORMAT_VERSION = "ctrobust-report/2"


@dataclass(frozen=True)
class MeanStd:
    """Mean and population standard deviation across seeds (:func:`ctrobust.stats.mean_std`)."""

    mean: float
    std: float


@dataclass(frozen=True)
class MaskingFlags:
    """Gradient-masking signals of one beta, pooled over seeds (:func:`ctrobust.diagnostics.masking_flags`).

    Attributes:
        beta: the beta.
        n: rows (examples x seeds) at this beta.
        square_only: rows first broken by the gradient-free Square attack; ``None`` when not recorded or
            when no gradient attack runs before Square.
        square_only_flag: ``square_only`` above its threshold.
        grad_zero_frac: fraction of clean-correct rows with an all-zero input gradient (``None``: not
            recorded).
        grad_nonfinite_frac: the same for a non-finite gradient.
        transfer_only: rows robust to this beta's own attack but broken by the beta = 1 adversarial.
        masking_suspected: any signal above its threshold.
        reasons: one sentence per signal that fired.
    """

    beta: float
    n: int
    square_only: int | None
    square_only_flag: bool
    grad_zero_frac: float | None
    grad_nonfinite_frac: float | None
    transfer_only: int | None
    masking_suspected: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class MaskingSummary:
    """Masking signals of the betas a protocol chose (one per distinct beta, descending).

    Attributes:
        masking_suspected: masking is suspected at one of the chosen betas at least.
        flags: the flags of each chosen beta.
    """

    masking_suspected: bool
    flags: tuple[MaskingFlags, ...]


@dataclass(frozen=True)
class BetaRow:
    """One seed, one beta, compared with beta = 1 on the same points.

    Attributes:
        beta: the beta.
        n: points.
        robust_acc_pct: robust accuracy at ``beta``.
        clean_acc_pct: clean accuracy at ``beta``.
        base_robust_acc_pct: robust accuracy at beta = 1 on the same points.
        base_clean_acc_pct: clean accuracy at beta = 1 on the same points.
        abs_gain_pts: ``robust_acc_pct - base_robust_acc_pct``.
        abs_gain_ci_pts: Newcombe's paired score interval of the gain, ``(lo, hi)``
            (:func:`ctrobust.stats.paired_diff_interval`).
        rel_gain_pct: ``(robust - base) / base`` in percent.
        mcnemar_b01: points robust at ``beta`` only.
        mcnemar_b10: points robust at beta = 1 only.
        mcnemar_p: exact McNemar p-value (:func:`ctrobust.stats.mcnemar_exact`).
    """

    beta: float
    n: int
    robust_acc_pct: float
    clean_acc_pct: float
    base_robust_acc_pct: float
    base_clean_acc_pct: float
    abs_gain_pts: float
    abs_gain_ci_pts: tuple[float, float]
    rel_gain_pct: float
    mcnemar_b01: int
    mcnemar_b10: int
    mcnemar_p: float


@dataclass(frozen=True)
class Selection:
    """The beta one protocol chose for one seed, and how it does on the reported points.

    Attributes:
        beta: the chosen beta.
        select_n: points it was chosen on (all points for the oracle, the selection half for held-out).
        select_robust_acc_pct: its robust accuracy on those points (the maximum over the grid).
        report: the chosen beta against beta = 1 on the reported points (the same points for the oracle,
            the report half for held-out).
    """

    beta: float
    select_n: int
    select_robust_acc_pct: float
    report: BetaRow


@dataclass(frozen=True)
class SeedSummary:
    """One seed: every beta on all points, and the oracle and held-out selections.

    Attributes:
        seed: attack seed.
        n: points evaluated at every beta.
        dropped_rows: outcome rows left out because their example was not evaluated at every beta.
        per_beta: every beta (ascending) against beta = 1 on all points.
        oracle: beta chosen on all points, reported on all points (the paper's protocol).
        heldout: beta chosen on the selection half, reported on the report half (``None``: not asked for
            or a half is empty).
    """

    seed: int
    n: int
    dropped_rows: int
    per_beta: tuple[BetaRow, ...]
    oracle: Selection
    heldout: Selection | None


@dataclass(frozen=True)
class BaseStats:
    """The unmodified model (beta = 1) on a protocol's reported points, across seeds."""

    n: int
    robust_acc_pct: MeanStd
    clean_acc_pct: MeanStd
    masking: MaskingSummary


@dataclass(frozen=True)
class ProtocolSummary:
    """A run's headline for one protocol (``oracle`` or ``heldout``), across seeds.

    Attributes:
        protocol: ``"oracle"`` (chosen and reported on all points) or ``"heldout"`` (chosen on the
            selection half, reported on the report half).
        n: reported points (per seed; seed 0's count).
        select_n: points beta is chosen on.
        betas: the chosen beta of each seed.
        beta: their mean and std.
        base: beta = 1 on the same reported points.
        robust_acc_pct: robust accuracy of the chosen betas.
        clean_acc_pct: clean accuracy of the chosen betas.
        abs_gain_pts: gain over beta = 1 (mean and std of the per-seed gains).
        rel_gain_pct: the paper's relative gain on the seed means, ``(mean CT - mean base) / mean base``.
        mcnemar_p: exact McNemar p-value of each seed.
        abs_gain_ci_pts: bootstrap interval of the seed-mean gain (``None`` without bootstrap).
        rel_gain_ci_pct: bootstrap interval of the relative gain.
        masking: masking signals at the chosen betas.
    """

    protocol: str
    n: int
    select_n: int
    betas: tuple[float, ...]
    beta: MeanStd
    base: BaseStats
    robust_acc_pct: MeanStd
    clean_acc_pct: MeanStd
    abs_gain_pts: MeanStd
    rel_gain_pct: float
    mcnemar_p: tuple[float, ...]
    abs_gain_ci_pts: BootstrapInterval | None
    rel_gain_ci_pct: BootstrapInterval | None
    masking: MaskingSummary


@dataclass(frozen=True)
class BetaSummary:
    """One beta on all points, across seeds, with its masking signals (pooled over seeds)."""

    beta: float
    robust_acc_pct: MeanStd
    clean_acc_pct: MeanStd
    abs_gain_pts: MeanStd
    mcnemar_p: tuple[float, ...]
    masking: MaskingFlags | None


@dataclass(frozen=True)
class AttackCounts:
    """Rows of one beta (all seeds) by the attack that broke them first (:func:`per_attack_breakdown`).

    ``counts`` keys: ``clean`` (misclassified without attack), attack names in registry order, ``robust``.
    """

    beta: float
    counts: Mapping[str, int]


@dataclass(frozen=True)
class RunSettings:
    """What a run evaluated. Seeds, betas and ``n_examples`` are what the outcomes hold (a partial run is
    not the configured experiment); the rest comes from the run's config.

    Attributes:
        attacks: the config's attack option (a suite name such as ``standard`` or a comma list).
        attack_names: the attacks it runs, canonical names in run order (``None``: no attack option).
        protocol: ``valid`` or ``reference`` (``None``: a run from before protocols existed: ``valid``).
        ct_scope: ``all`` or ``modules`` (``None``: ``all``).
    """

    model: str | None
    dataset: str | None
    threat: str | None
    eps: float | None
    n_examples: int
    subset: str | None
    data: str | None
    seeds: tuple[int, ...]
    betas: tuple[float, ...]
    coeff: float | None
    attacks: str | None
    attack_names: tuple[str, ...] | None
    engine: str | None
    protocol: str | None = None
    ct_scope: str | None = None


@dataclass(frozen=True)
class BootReplicates:
    """Bootstrap replicates of a run's seed-mean robust accuracies (fractions, ``(n_boot,)`` each).

    Kept for the cross-run aggregate's interval; not part of the JSON.
    """

    base: np.ndarray
    oracle: np.ndarray
    base_report: np.ndarray | None = None
    heldout: np.ndarray | None = None


@dataclass(frozen=True)
class EpsComparison:
    """Robust accuracy at the run's eps two ways, on the same points: the bounded attack suite's robust flags
    and the minimum-norm curve's ``curves.robust_at(distance, eps)``.

    Both are upper bounds on the true robust accuracy (each attack only finds some adversarial points), so
    the lower one is the better bound.

    Attributes:
        eps: the run's eps (threat norm, [0, 1] pixel units).
        n: points.
        bounded_robust_acc_pct: robust accuracy from the bounded suite (e.g. AutoAttack).
        bounded_ci_pct: its Wilson interval ``(lo, hi)`` (:func:`ctrobust.stats.wilson_interval`).
        curve_robust_acc_pct: share of points whose minimal perturbation found exceeds eps.
        curve_ci_pct: its Wilson interval.
        min_norm_weaker: the curve's Wilson lower bound lies above the bounded accuracy: the minimum-norm
            attack missed adversarial points within eps that the bounded suite found, so the curve overstates
            robustness here.
    """

    eps: float
    n: int
    bounded_robust_acc_pct: float
    bounded_ci_pct: tuple[float, float]
    curve_robust_acc_pct: float
    curve_ci_pct: tuple[float, float]
    min_norm_weaker: bool


@dataclass(frozen=True)
class DistanceRow:
    """One seed, one beta: the minimal perturbations found, against beta = 1 on the same points.

    Attributes:
        beta: the beta.
        n: points.
        median_dist: median distance (``inf`` when more than half were never broken).
        median_dist_ci: its percentile bootstrap interval ``(lo, hi)`` over the points
            (:func:`ctrobust.stats.median_interval`; ``nan`` without bootstrap).
        base_median_dist: median distance at beta = 1 on the same points.
        never_broken_frac: points no attack broke (distance ``inf``).
        grew_frac: points whose distance is larger than at beta = 1 (``inf`` vs ``inf`` is not growth).
        shrank_frac: points whose distance is smaller than at beta = 1.
        wilcoxon_n: points whose distance differs from beta = 1 (the ones the test ranks).
        wilcoxon_statistic: ``min(W+, W-)`` (:func:`ctrobust.stats.wilcoxon_signed_rank`).
        wilcoxon_p: its two-sided p-value.
        wilcoxon_method: ``"exact"`` or ``"approx"``.
        at_eps: the bounded suite's and the curve's robust accuracy at the run's eps (``None``: no bounded
            suite ran, or the run has no eps).
    """

    beta: float
    n: int
    median_dist: float
    median_dist_ci: tuple[float, float]
    base_median_dist: float
    never_broken_frac: float
    grew_frac: float
    shrank_frac: float
    wilcoxon_n: int
    wilcoxon_statistic: float
    wilcoxon_p: float
    wilcoxon_method: str
    at_eps: EpsComparison | None


@dataclass(frozen=True)
class DistanceSelection:
    """The beta with the largest median distance for one seed, and how it does on the reported points.

    Attributes:
        beta: the chosen beta (ties as :func:`ctrobust.stats.select_beta`).
        select_n: points it was chosen on (all points for the oracle, the selection half for held-out).
        select_median_dist: its median distance on those points (the maximum over the grid).
        report: the chosen beta against beta = 1 on the reported points (the same points for the oracle,
            the report half for held-out).
    """

    beta: float
    select_n: int
    select_median_dist: float
    report: DistanceRow


@dataclass(frozen=True)
class DistanceSeed:
    """One seed's minimal perturbations: every beta on all points, and the beta chosen by median distance.

    Attributes:
        seed: attack seed.
        n: points with a distance at every beta.
        dropped: points of the seed's outcome table left out for lack of a distance at some beta.
        per_beta: every beta (ascending) against beta = 1 on all points.
        oracle: beta chosen on all points, reported on all points.
        heldout: beta chosen on the selection half, reported on the report half (``None``: not asked for or
            a half is empty).
    """

    seed: int
    n: int
    dropped: int
    per_beta: tuple[DistanceRow, ...]
    oracle: DistanceSelection
    heldout: DistanceSelection | None


@dataclass(frozen=True)
class CorruptionRow:
    """Accuracy on one (corruption, severity) pair: at beta = 1 and at the chosen beta (all seeds pooled).

    Attributes:
        corruption: RobustBench's name (``fog``).
        severity: 1..5.
        n: images per beta (all seeds).
        base_acc_pct: accuracy at beta = 1.
        acc_pct: accuracy at the chosen beta.
        gain_pts: ``acc_pct - base_acc_pct``.
    """

    corruption: str
    severity: int
    n: int
    base_acc_pct: float
    acc_pct: float
    gain_pts: float


@dataclass(frozen=True)
class CorruptionSummary:
    """A ``--threat corruptions`` run: every pair's accuracy at beta = 1 and at the beta the report chose.

    The run's headline numbers (base, oracle and held-out beta, paired tests against beta = 1) are the report's
    usual ones, computed on per-example correctness on the corrupted images: its "robust accuracy" is the
    accuracy under corruptions (mean over the pairs, which all have the same number of images).

    Attributes:
        beta: the chosen beta (held-out choice of the first seed, else the oracle's).
        chosen_by: ``"heldout"`` or ``"oracle"``.
        rows: one per pair, in the run's order.
    """

    beta: float
    chosen_by: str
    rows: tuple[CorruptionRow, ...]


@dataclass(frozen=True)
class DistanceSummary:
    """A run's minimal perturbations (a minimum-norm attack's per-example distances), per seed and beta.

    Attributes:
        threat: the norm of every distance (``Linf`` or ``L2``).
        eps: the run's eps (``None``: not recorded).
        bounded_attacks: the bounded suite that also ran at ``eps`` (empty: distances only, and the run's
            robust flags are derived from them, so there is nothing to compare).
        conf: confidence level of every interval.
        n_boot: bootstrap replicates of each median interval (0: none).
        boot_seed: the run's bootstrap seed the median intervals derive from.
        split_seed: seed of the selection/report split (``None``: no held-out selection).
        per_seed: one entry per seed with distances.
        warnings: anything the reader should know (points or seeds without distances).
    """

    threat: str | None
    eps: float | None
    bounded_attacks: tuple[str, ...]
    conf: float
    n_boot: int
    boot_seed: int
    split_seed: int | None
    per_seed: tuple[DistanceSeed, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class RunSummary:
    """Everything the report says about one run (one model x dataset x threat x eps).

    Attributes:
        name: label of the run (its directory name).
        settings: what was evaluated.
        select_on: ``"half"`` (oracle and held-out) or ``"same"`` (oracle only).
        split_seed: seed of the selection/report split (``None`` for ``select_on="same"``).
        conf: confidence level of every interval.
        tie_break: beta tie-break (:func:`ctrobust.stats.select_beta`).
        n_boot: bootstrap replicates (0: no bootstrap intervals).
        boot_seed: the run's bootstrap seed.
        n_seeds: seeds.
        oracle: headline of the oracle protocol.
        heldout: headline of the held-out protocol (``None``: not asked for, or a half is empty).
        per_seed: per seed, betas fixed (Newcombe intervals, McNemar).
        per_beta: per beta across seeds, with masking flags.
        per_attack: rows per beta by first breaking attack (``None``: no ``broken_by`` column).
        warnings: anything the reader should know (partial run, config mismatch, results cross-check).
        distances: the minimum-norm attack's per-example distances (``None``: the run has none).
        corruptions: per (corruption, severity) accuracy of a ``--threat corruptions`` run (``None`` otherwise).
    """

    name: str | None
    settings: RunSettings
    select_on: str
    split_seed: int | None
    conf: float
    tie_break: str
    n_boot: int
    boot_seed: int
    n_seeds: int
    oracle: ProtocolSummary
    heldout: ProtocolSummary | None
    per_seed: tuple[SeedSummary, ...]
    per_beta: tuple[BetaSummary, ...]
    per_attack: tuple[AttackCounts, ...] | None
    warnings: tuple[str, ...]
    distances: DistanceSummary | None = None
    corruptions: CorruptionSummary | None = None
    # bootstrap replicates for the cross-run aggregate: large, so not in the JSON, repr or comparisons
    _replicates: BootReplicates | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class DatasetGain:
    """One run's entry of the paper's aggregate: seed-mean robust accuracies and their relative gain."""

    dataset: str | None
    run: str | None
    ct_robust_acc_pct: float
    base_robust_acc_pct: float
    rel_gain_pct: float


@dataclass(frozen=True)
class AggregateProtocol:
    """The paper's aggregate for one protocol: the mean over datasets of per-dataset relative gains.

    Attributes:
        per_dataset: every run of the group.
        value_pct: the mean over the datasets whose base accuracy is > 0 (``nan`` if there is none).
        dropped: datasets left out of the mean (base 0: relative gain infinite or undefined).
        ci_pct: bootstrap interval (``None`` unless every run has bootstrap replicates).
    """

    per_dataset: tuple[DatasetGain, ...]
    value_pct: float
    dropped: tuple[str | None, ...]
    ci_pct: BootstrapInterval | None


@dataclass(frozen=True)
class Aggregate:
    """The paper's aggregate over the runs (datasets) of one (model, threat)."""

    model: str
    threat: str
    datasets: tuple[str | None, ...]
    runs: tuple[str | None, ...]
    warnings: tuple[str, ...]
    oracle: AggregateProtocol
    heldout: AggregateProtocol | None


@dataclass(frozen=True)
class SettingDiff:
    """A setting in which a run differs from a paper claim.

    Attributes:
        setting: ``model``, ``threat``, ``eps``, ``n_examples``, ``subset``, ``seeds``, ``betas``,
            ``coeff`` or ``attacks``.
        ours: the run's value (for ``betas``: its grid without beta = 1, ascending).
        paper: the claim's value as written in the claims file (``eps`` parsed to a float).
    """

    setting: str
    ours: Any
    paper: Any


@dataclass(frozen=True)
class ClaimDataset:
    """For one dataset of a claim: the closest run (``None``: no run has the dataset) and how it differs."""

    dataset: str
    run: str | None
    diffs: tuple[SettingDiff, ...]


@dataclass(frozen=True)
class ClaimComparison:
    """A paper claim next to our number.

    Attributes:
        id, source, model, datasets, metric: the claim's fields.
        paper_value_pct: the paper's value (percent).
        matched: every dataset of the claim has a run with exactly the claim's setting.
        per_dataset: the closest run per dataset and its differing settings.
        ours_pct: the paper's aggregate (oracle protocol) on the matching runs (``None`` unless matched).
        ours_ci_pct: its bootstrap interval.
        paper_in_our_ci: the paper's value lies in that interval (``None``: nothing to compare).
        ours_heldout_pct: the same aggregate with the held-out protocol.
        dropped: datasets left out of our mean (base 0).
        ours_closest_pct: unmatched claims: the aggregate on the closest runs that have the paper's model
            (not comparable: other settings differ).
        ours_closest_datasets: the datasets of those runs.
    """

    id: Any
    source: str | None
    model: str | None
    datasets: tuple[str, ...]
    metric: str | None
    paper_value_pct: float | None
    matched: bool
    per_dataset: tuple[ClaimDataset, ...]
    ours_pct: float | None
    ours_ci_pct: BootstrapInterval | None
    paper_in_our_ci: bool | None
    ours_heldout_pct: float | None
    dropped: tuple[str | None, ...]
    ours_closest_pct: float | None
    ours_closest_datasets: tuple[str | None, ...] | None


@dataclass(frozen=True)
class Report:
    """A reproduction report: the runs, the paper's aggregate across them, and the paper's claims.

    Attributes:
        format: :data:`REPORT_FORMAT_VERSION`.
        select_on, split_seed, tie_break, n_boot: as the first run's.
        conf: confidence level of the aggregate intervals.
        boot_seed: the bootstrap seed the runs' seeds derive from.
    """

    format: str
    select_on: str
    split_seed: int | None
    conf: float
    tie_break: str
    n_boot: int
    boot_seed: int
    runs: tuple[RunSummary, ...]
    aggregates: tuple[Aggregate, ...]
    claims: tuple[ClaimComparison, ...]

    def to_dict(self) -> dict:
        """``dataclasses.asdict`` without private fields: the JSON structure (see :func:`to_dict`)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "Report":
        """Rebuild a report from :meth:`to_dict` (or parsed JSON); bootstrap replicates are not restored."""
        return from_dict(cls, data)


# --------------------------------------------------------------------------------------------------
def _public(items: list[tuple[str, Any]]) -> dict:
    return {k: v for k, v in items if not k.startswith("_")}


def to_dict(obj) -> dict:
    """``dataclasses.asdict(obj)`` with private (``_``) fields left out; tuples stay tuples."""
    return dataclasses.asdict(obj, dict_factory=_public)


def _convert(tp, value):
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value) if len(args) == 1 else freeze(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        return tuple(_convert(a, v) for a, v in zip(args, value))
    if origin in (dict, collections.abc.Mapping):
        return dict(value)
    if tp is float:
        return float(value)
    if tp is int or tp is bool or tp is str:
        return value
    return freeze(value)


def from_dict(cls, data: Mapping):
    """Rebuild dataclass ``cls`` from its :func:`to_dict` form (fields missing from ``data`` take their
    defaults; private fields are not in the JSON and come back as ``None``)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        kwargs[f.name] = _convert(hints[f.name], data[f.name])
    return cls(**kwargs)
