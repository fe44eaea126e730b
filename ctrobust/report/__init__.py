"""Reproduction report: held-out beta selection, intervals, paired tests, masking flags, paper claims.

Built from stored results only (``ctrobust.store.load_outcomes`` / ``load_results`` / ``load_config``):
nothing is re-run. Numbers are computed first into a typed :class:`Report` (frozen dataclasses,
:mod:`ctrobust.report.summary`) and formatted last (:mod:`ctrobust.report.render`)::

    run dirs -> tables (outcomes pivoted per seed) -> selection (oracle / held-out beta per seed,
             -> run (headline across seeds, bootstrap, masking)   bootstrap of the selection)
             -> aggregate (across runs) + claims (paper_claims.yaml) -> Report -> Markdown | JSON

For each run (one model x dataset x threat x eps) the report gives

- the base robust accuracy (beta = 1);
- the **oracle** beta, chosen on all evaluated points and reported on the same points — the CT paper's
  protocol, which is optimistic: the maximum of ~30 noisy accuracies on the same points;
- the **held-out** beta, chosen on the selection half of a seeded class-stratified split
  (:func:`ctrobust.stats.stratified_split`) and reported, with the base model, on the report half;
- clean accuracy at each, the absolute gain in percentage points with a 95 % interval, the relative gain
  as the paper computes it (``(CT - base) / base``, infinite or undefined when base is 0), the exact
  McNemar p-value against beta = 1, mean +- std across seeds, and gradient-masking flags per beta;
- for a run with minimum-norm distances (``min_norm``; :mod:`ctrobust.report.distances`), per seed and
  beta the median minimal perturbation with a bootstrap interval, the Wilcoxon signed-rank test and the
  share of points whose distance grew against beta = 1, the beta with the largest median (oracle and
  held-out), and, where a bounded suite also ran, its robust accuracy at eps beside the curve's;

and across runs the paper's aggregate (mean over datasets of per-dataset relative gains, grouped by model
and threat), compared with the claims in ``configs/paper_claims.yaml``.

Intervals (documented choice):
    - per seed, beta fixed: Newcombe's paired score interval (:func:`ctrobust.stats.paired_diff_interval`)
      for the gain, exact McNemar test for "beta differs from beta = 1";
    - headline (mean over seeds) and relative gains: percentile bootstrap over examples with a fixed seed
      (:func:`ctrobust.stats.bootstrap_weights`), resampling within each (class, split half) stratum
      (split half only when a stratum would have fewer than 10 examples). The same resampled example
      weights serve every beta and seed (paired). The oracle beta is held fixed (the bootstrap of a
      maximum is biased); the held-out beta is re-selected on the resampled selection half in every
      replicate (:func:`ctrobust.stats.bootstrap_reselect`), so its interval includes the selection step.

JSON (``ctrobust report --format json``, :func:`render_json`) is ``dataclasses.asdict`` of the
:class:`Report`, format ``ctrobust-report/2``. Top-level keys: ``format``, ``select_on``, ``split_seed``,
``conf``, ``tie_break``, ``n_boot``, ``boot_seed``, ``runs`` (:class:`RunSummary`: ``name``,
``settings``, ``select_on``, ``split_seed``, ``conf``, ``tie_break``, ``n_boot``, ``boot_seed``,
``n_seeds``, ``oracle`` / ``heldout`` (:class:`ProtocolSummary`), ``per_seed``, ``per_beta``,
``per_attack``, ``warnings``, ``distances``: :class:`DistanceSummary` or ``null``), ``aggregates``
(:class:`Aggregate`) and ``claims`` (:class:`ClaimComparison`). Accuracies are in percent (``*_pct``),
gains in points (``*_pts``), fractions as ``*_frac``, minimal perturbations as ``*_dist``; non-finite
numbers are written ``Infinity`` / ``NaN``.

Example:
    >>> from ctrobust.report import summarize, render_markdown, render_json  # doctest: +SKIP
    >>> rep = summarize(["runs/demo"])                                       # doctest: +SKIP
    >>> rep.runs[0].oracle.rel_gain_pct, rep.runs[0].heldout.betas           # doctest: +SKIP
    >>> print(render_markdown(rep))                                          # doctest: +SKIP
"""

from __future__ import annotations

from ctrobust.report.aggregate import aggregate_runs
from ctrobust.report.build import FORMATS, build_report, combine_runs, report_from_summaries, summarize
from ctrobust.report.claims import compare_claims, default_claims_path, load_claims
from ctrobust.report.distances import summarize_distances
from ctrobust.report.render import render_json, render_markdown
from ctrobust.report.run import SELECT_ON, summarize_run
from ctrobust.report.summary import (REPORT_FORMAT_VERSION, Aggregate, AggregateProtocol, AttackCounts, BaseStats,
                                     BetaRow, BetaSummary, BootstrapInterval, ClaimComparison, ClaimDataset,
                                     DatasetGain, DistanceRow, DistanceSeed, DistanceSelection, DistanceSummary,
                                     EpsComparison, MaskingFlags, MaskingSummary, MeanStd, ProtocolSummary, Report,
                                     RunSettings, RunSummary, SeedSummary, Selection, SettingDiff)
from ctrobust.report.tables import per_attack_breakdown

__all__ = [
    # entry points
    "build_report", "summarize", "summarize_run", "combine_runs", "report_from_summaries",
    "render_markdown", "render_json",
    # pieces
    "aggregate_runs", "summarize_distances", "compare_claims", "load_claims", "default_claims_path",
    "per_attack_breakdown",
    # constants
    "SELECT_ON", "FORMATS", "REPORT_FORMAT_VERSION",
    # the typed report
    "Report", "RunSummary", "RunSettings", "ProtocolSummary", "BaseStats", "SeedSummary", "Selection", "BetaRow",
    "BetaSummary", "MaskingFlags", "MaskingSummary", "MeanStd", "BootstrapInterval", "AttackCounts",
    "Aggregate", "AggregateProtocol", "DatasetGain", "ClaimComparison", "ClaimDataset", "SettingDiff",
    "DistanceSummary", "DistanceSeed", "DistanceSelection", "DistanceRow", "EpsComparison",
]
