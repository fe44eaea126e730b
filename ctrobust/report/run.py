"""One run's summary from its per-example outcomes: settings, per-seed selections, headline across seeds,
bootstrap intervals, per-beta masking flags, and the minimal perturbations of a minimum-norm run
(:func:`summarize_run` -> :class:`RunSummary`)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ctrobust import stats
from ctrobust.curves import has_distances
from ctrobust.diagnostics import masking_flags
from ctrobust.report._util import bkey, opt_float, pct
from ctrobust.config import RunConfig
from ctrobust.report.corruptions import has_corruptions, summarize_corruptions
from ctrobust.report.distances import summarize_distances
from ctrobust.report.selection import bootstrap_run, summarize_seed
from ctrobust.report.summary import (AttackCounts, BaseStats, BetaSummary, MaskingFlags, MaskingSummary, MeanStd,
                                     ProtocolSummary, RunSettings, RunSummary, SeedSummary)
from ctrobust.report.tables import SeedTable, per_attack_breakdown, pivot_outcomes

__all__ = ["SELECT_ON", "summarize_run"]

#: the beta-selection protocols a report can use.
SELECT_ON = ("half", "same")


def _ms(values) -> MeanStd:
    m, s = stats.mean_std(values)
    return MeanStd(mean=m, std=s)


def _settings(config, seeds: list[SeedTable]) -> tuple[RunSettings, list[str]]:
    """The run's settings. Seeds, betas and n_examples are what the outcomes hold (a partial run is not
    the configured experiment); a difference from the config is returned as a warning."""
    actual_betas = sorted({float(b) for sd in seeds for b in sd.betas}, reverse=True)
    actual_seeds = [sd.seed for sd in seeds]
    actual_n = min(int(sd.ids.size) for sd in seeds)
    warnings = []
    rc = RunConfig.of(config)
    cfg_betas, cfg_seeds, cfg_n = rc.betas, rc.seeds, rc.n_examples
    if cfg_betas is not None and {bkey(b) for b in cfg_betas} != {bkey(b) for b in actual_betas}:
        warnings.append(f"the outcomes hold {len(actual_betas)} betas, the config asks for {len(cfg_betas)}")
    if cfg_seeds is not None and sorted(int(x) for x in cfg_seeds) != sorted(actual_seeds):
        warnings.append(f"the outcomes hold seeds {actual_seeds}, the config asks for {list(cfg_seeds)}")
    if cfg_n is not None and int(cfg_n) != actual_n:
        warnings.append(f"{actual_n} examples evaluated at every beta, the config asks for {cfg_n}")
    settings = RunSettings(
        model=rc.model, dataset=rc.dataset, threat=rc.threat, eps=opt_float(rc.eps), n_examples=actual_n,
        subset=rc.subset, data=rc.data, seeds=tuple(actual_seeds), betas=tuple(actual_betas),
        coeff=opt_float(rc.coeff), attacks=rc.attacks, attack_names=rc.attack_names, engine=rc.engine,
        protocol=rc.protocol, ct_scope=rc.ct_scope)
    return settings, warnings


def _masking_flags(beta: float, m: Mapping) -> MaskingFlags:
    return MaskingFlags(beta=float(beta), n=int(m["n"]), square_only=m["square_only"],
                        square_only_flag=bool(m["square_only_flag"]), grad_zero_frac=m["grad_zero_frac"],
                        grad_nonfinite_frac=m["grad_nonfinite_frac"], transfer_only=m["transfer_only"],
                        masking_suspected=bool(m["masking_suspected"]), reasons=tuple(m["reasons"]))


def _masking_of(betas: Sequence[float], by_beta: Mapping[float, MaskingFlags]) -> MaskingSummary:
    """The masking flags of the chosen betas (distinct, descending)."""
    flags = tuple(by_beta[b] for b in sorted({bkey(b) for b in betas}, reverse=True) if b in by_beta)
    return MaskingSummary(masking_suspected=any(f.masking_suspected for f in flags), flags=flags)


def _protocol(which: str, per_seed: Sequence[SeedSummary], boot, conf: float,
              masking: Mapping[float, MaskingFlags]) -> ProtocolSummary:
    """Headline of one protocol across seeds (every seed must have its selection)."""
    sels = [getattr(ps, which) for ps in per_seed]
    rows = [s.report for s in sels]
    acc = [r.robust_acc_pct for r in rows]
    base_acc = [r.base_robust_acc_pct for r in rows]
    betas = tuple(s.beta for s in sels)
    abs_ci = rel_ci = None
    base_key = "base" if which == "oracle" else "base_report"
    if boot is not None and getattr(boot, which) is not None:
        ct_b, base_b = getattr(boot, which), getattr(boot, base_key)
        abs_ci = stats.percentile_interval(pct(ct_b - base_b), conf)
        rel_ci = stats.percentile_interval(pct(stats.relative_gains(ct_b, base_b)), conf)
    base = BaseStats(n=rows[0].n, robust_acc_pct=_ms(base_acc), clean_acc_pct=_ms([r.base_clean_acc_pct for r in rows]),
                     masking=_masking_of([1.0], masking))
    return ProtocolSummary(
        protocol=which, n=rows[0].n, select_n=sels[0].select_n, betas=betas, beta=_ms(betas), base=base,
        robust_acc_pct=_ms(acc), clean_acc_pct=_ms([r.clean_acc_pct for r in rows]),
        abs_gain_pts=_ms([r.abs_gain_pts for r in rows]), mcnemar_p=tuple(r.mcnemar_p for r in rows),
        # the paper's formula: relative gain of the seed means
        rel_gain_pct=pct(stats.relative_gain(np.mean(acc), np.mean(base_acc))),
        abs_gain_ci_pts=abs_ci, rel_gain_ci_pct=rel_ci, masking=_masking_of(betas, masking))


def summarize_run(outcomes: Mapping[str, Any], config=None, *, select_on: str = "half", split_seed: int = 0,
                  conf: float = 0.95, tie_break: str = "closest_to_one", n_boot: int = 2000,
                  boot_seed: int = 0, name: str | None = None) -> RunSummary:
    """All the numbers of one run's report section, from per-example outcomes.

    Args:
        outcomes: columns of the store contract (``ctrobust.store.load_outcomes``): ``id``, ``label``,
            ``beta``, ``seed``, ``clean_correct``, ``robust`` required; ``broken_by``, ``grad_zero``,
            ``grad_nonfinite``, ``transfer_broken`` used for masking flags when present; ``min_norm``
            (minimum-norm distances) adds the :class:`~ctrobust.report.summary.DistanceSummary`.
        config: the run's ``SweepConfig`` (or a mapping, or ``None``); read with defaults, extra fields
            ignored.
        select_on: ``"half"`` (oracle and held-out) or ``"same"`` (oracle only).
        split_seed: seed of the class-stratified selection/report split.
        conf: confidence level of every interval.
        tie_break: beta tie-break (:func:`ctrobust.stats.select_beta`).
        n_boot: bootstrap replicates (0 disables the bootstrap).
        boot_seed: bootstrap seed.
        name: label of the run (e.g. its directory name).

    Returns:
        The run's :class:`~ctrobust.report.summary.RunSummary` (accuracies in percent, gains in points).

    Example:
        >>> s = summarize_run(load_outcomes("runs/demo"), load_config("runs/demo"))  # doctest: +SKIP
        >>> s.heldout.beta.mean, s.heldout.abs_gain_ci_pts.lo  # doctest: +SKIP
    """
    if select_on not in SELECT_ON:
        raise ValueError(f"select_on must be one of {SELECT_ON}, got {select_on!r}")
    seeds, warnings = pivot_outcomes(outcomes)
    settings, setting_warnings = _settings(config, seeds)
    warnings += setting_warnings

    # the split depends only on (ids, labels, split_seed): the same for every seed that has the same ids
    split_cache: dict = {}

    def split_for(sd: SeedTable):
        key = sd.ids.tobytes()
        if key not in split_cache:
            split_cache[key] = stats.stratified_split(sd.ids, sd.labels, split_seed)
        return split_cache[key]

    per_seed = tuple(summarize_seed(sd, select_on, conf, tie_break, split_for(sd)) for sd in seeds)

    boot = None
    if n_boot > 0:
        masks = split_for(seeds[0]) if select_on == "half" else None
        boot = bootstrap_run(seeds, [ps.oracle.beta for ps in per_seed], select_on, masks, n_boot,
                             boot_seed, tie_break)

    masks_by_beta = {float(b): _masking_flags(b, m)
                     for b, m in masking_flags(outcomes, attacks=settings.attack_names).items()}
    oracle = _protocol("oracle", per_seed, boot, conf, masks_by_beta)
    heldout = None
    if select_on == "half" and all(ps.heldout is not None for ps in per_seed):
        heldout = _protocol("heldout", per_seed, boot, conf, masks_by_beta)
    elif select_on == "half":
        warnings.append("held-out selection skipped: a split half is empty (too few examples)")

    all_betas = sorted({r.beta for ps in per_seed for r in ps.per_beta})
    per_beta = []
    for b in all_betas:
        rows = [r for ps in per_seed for r in ps.per_beta if r.beta == b]
        per_beta.append(BetaSummary(
            beta=b, robust_acc_pct=_ms([r.robust_acc_pct for r in rows]),
            clean_acc_pct=_ms([r.clean_acc_pct for r in rows]), abs_gain_pts=_ms([r.abs_gain_pts for r in rows]),
            mcnemar_p=tuple(r.mcnemar_p for r in rows), masking=masks_by_beta.get(b)))

    per_attack = None
    if "broken_by" in outcomes:
        per_attack = tuple(AttackCounts(beta=b, counts=c) for b, c in per_attack_breakdown(outcomes).items())

    distances = None
    if has_distances(outcomes):
        distances = summarize_distances(outcomes, config, select_on=select_on, split_seed=split_seed, conf=conf,
                                        tie_break=tie_break, n_boot=n_boot, boot_seed=boot_seed)

    corruptions = summarize_corruptions(outcomes, oracle, heldout) if has_corruptions(outcomes) else None

    return RunSummary(name=name, settings=settings, select_on=select_on,
                      split_seed=split_seed if select_on == "half" else None, conf=conf, tie_break=tie_break,
                      n_boot=n_boot, boot_seed=boot_seed, n_seeds=len(seeds), oracle=oracle, heldout=heldout,
                      per_seed=per_seed, per_beta=tuple(per_beta), per_attack=per_attack,
                      warnings=tuple(warnings), distances=distances, corruptions=corruptions, _replicates=boot)
