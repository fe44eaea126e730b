"""From run directories to a :class:`Report`, and to its text: load, summarize each run, combine, render."""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path
from typing import Mapping, Sequence

from ctrobust.report._util import bkey
from ctrobust.report.aggregate import aggregate_runs
from ctrobust.report.claims import compare_claims, load_claims
from ctrobust.report.render import render_json, render_markdown
from ctrobust.report.run import SELECT_ON, summarize_run
from ctrobust.report.summary import REPORT_FORMAT_VERSION, Report, RunSummary

__all__ = ["FORMATS", "summarize", "build_report", "combine_runs", "report_from_summaries"]

#: output formats of :func:`build_report`.
FORMATS = ("md", "json")


def _run_boot_seed(boot_seed: int, config) -> int:
    """A per-run bootstrap seed from ``boot_seed`` and the run's identity (not its position in the list)."""
    from ctrobust.config import RunConfig

    rc = RunConfig.of(config)
    ident = f"{rc.model}|{rc.dataset}|{rc.threat}|{rc.eps}"
    return (int(boot_seed) * 1_000_003 + zlib.crc32(ident.encode())) % (2 ** 32)


def _check_results(results, summary: RunSummary) -> list[str]:
    """Cross-check ``results.csv`` rows against accuracies recomputed from the outcomes (soft)."""
    warnings = []
    if not results:
        return warnings
    acc_key = next((k for k in ("robust_acc", "robust_accuracy") if k in results[0]), None)
    if acc_key is None or "beta" not in results[0] or "seed" not in results[0]:
        return warnings
    ours = {(ps.seed, r.beta): r.robust_acc_pct for ps in summary.per_seed for r in ps.per_beta}
    for row in results:
        try:
            key = (int(row["seed"]), bkey(row["beta"]))
            val = float(row[acc_key])
        except (TypeError, ValueError):
            continue
        if key not in ours:
            continue
        # results.csv may hold fractions or percent: a match in either unit is a match
        val_pct = val * 100 if val <= 1.0 else val
        if abs(val_pct - ours[key]) > 1e-6 and abs(val - ours[key]) > 1e-6:
            warnings.append(f"results.csv robust accuracy at seed {key[0]}, beta {key[1]} ({row[acc_key]}) "
                            f"differs from the per-example outcomes ({ours[key]:.4f} %)")
    return warnings


def _check_options(select_on: str) -> None:
    if select_on not in SELECT_ON:
        raise ValueError(f"select_on must be one of {', '.join(SELECT_ON)}, got {select_on!r}")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; known: {', '.join(FORMATS)}")


def summarize(run_dirs: Sequence, select_on: str = "half", split_seed: int = 0, *, claims_path=None,
              conf: float = 0.95, tie_break: str = "closest_to_one", n_boot: int = 2000,
              boot_seed: int = 0) -> Report:
    """The typed reproduction report of one or more run directories, from stored results only.

    Args:
        run_dirs: run directories written by ``ctrobust sweep`` (each: one model x dataset x threat x eps).
        select_on: ``"half"`` (oracle and held-out beta, default) or ``"same"`` (oracle only).
        split_seed: seed of the selection/report split.
        claims_path: paper claims YAML (default :func:`ctrobust.report.default_claims_path`).
        conf: confidence level of every interval.
        tie_break: beta tie-break, see :func:`ctrobust.stats.select_beta`.
        n_boot: bootstrap replicates (0: no bootstrap intervals).
        boot_seed: bootstrap seed (combined with each run's identity).

    Returns:
        The :class:`~ctrobust.report.summary.Report`; :func:`render_markdown` / :func:`render_json` turn
        it into text.

    Example:
        >>> rep = summarize(["runs/Standard_cifar10_Linf_8_255"])  # doctest: +SKIP
        >>> rep.runs[0].heldout.abs_gain_ci_pts  # doctest: +SKIP
        BootstrapInterval(lo=-1.2, hi=3.4, n_boot=2000, n_undefined=0)
    """
    _check_options(select_on)
    if not run_dirs:
        raise ValueError("no run directories given")
    from ctrobust.store import load_outcomes, load_results, load_config

    summaries = []
    for rd in run_dirs:
        config = load_config(rd)
        outcomes = load_outcomes(rd)
        s = summarize_run(outcomes, config, select_on=select_on, split_seed=split_seed, conf=conf,
                          tie_break=tie_break, n_boot=n_boot, boot_seed=_run_boot_seed(boot_seed, config),
                          name=Path(rd).name)
        extra = []
        try:
            results = load_results(rd)
        except (OSError, ValueError) as exc:  # store raises ConfigError (a ValueError) when absent
            results = None
            extra.append(f"no stored results to cross-check ({exc}); numbers come from the per-example outcomes")
        extra += _check_results(results, s)
        summaries.append(dataclasses.replace(s, warnings=s.warnings + tuple(extra)))
    return combine_runs(summaries, claims=load_claims(claims_path), conf=conf, boot_seed=boot_seed)


def build_report(run_dirs: Sequence, fmt: str = "md", select_on: str = "half", split_seed: int = 0, *,
                 claims_path=None, conf: float = 0.95, tie_break: str = "closest_to_one",
                 n_boot: int = 2000, boot_seed: int = 0) -> str:
    """The reproduction report of one or more run directories as text (what ``ctrobust report`` prints).

    Args:
        run_dirs: run directories written by ``ctrobust sweep``.
        fmt: ``"md"`` (Markdown) or ``"json"`` (the typed report; see :func:`render_json`).
        select_on, split_seed, claims_path, conf, tie_break, n_boot, boot_seed: as :func:`summarize`.

    Returns:
        The report text.

    Example:
        >>> print(build_report(["runs/Standard_cifar10_Linf_8_255"]))  # doctest: +SKIP
    """
    _check_format(fmt)
    report = summarize(run_dirs, select_on, split_seed, claims_path=claims_path, conf=conf,
                       tie_break=tie_break, n_boot=n_boot, boot_seed=boot_seed)
    return render_json(report) if fmt == "json" else render_markdown(report)


def combine_runs(summaries: Sequence[RunSummary], *, claims: Sequence[Mapping] = (), conf: float = 0.95,
                 boot_seed: int | None = None) -> Report:
    """A report from per-run summaries: adds the paper's aggregate and the claims comparison.

    Args:
        summaries: :func:`ctrobust.report.summarize_run` outputs (same ``select_on``, ``conf``, ``n_boot``
            expected; the report states the first run's).
        claims: paper claims (see :func:`ctrobust.report.load_claims`).
        conf: confidence level of the aggregate intervals.
        boot_seed: the bootstrap seed to state in the report (default: the first run's).

    Returns:
        The typed report.
    """
    if not summaries:
        raise ValueError("no runs to report")
    first = summaries[0]
    return Report(format=REPORT_FORMAT_VERSION, select_on=first.select_on, split_seed=first.split_seed,
                  conf=conf, tie_break=first.tie_break, n_boot=first.n_boot,
                  boot_seed=first.boot_seed if boot_seed is None else boot_seed, runs=tuple(summaries),
                  aggregates=tuple(aggregate_runs(summaries, conf)),
                  claims=tuple(compare_claims(summaries, claims, conf)))


def report_from_summaries(summaries: Sequence[RunSummary], *, fmt: str = "md", claims: Sequence[Mapping] = (),
                          conf: float = 0.95, boot_seed: int | None = None) -> str:
    """Render a report from :func:`ctrobust.report.summarize_run` outputs (:func:`combine_runs`, then
    :func:`render_markdown` or :func:`render_json`).

    Args:
        summaries: per-run summaries.
        fmt: ``"md"`` or ``"json"``.
        claims, conf, boot_seed: as :func:`combine_runs`.

    Returns:
        The report text.
    """
    _check_format(fmt)
    report = combine_runs(summaries, claims=claims, conf=conf, boot_seed=boot_seed)
    return render_json(report) if fmt == "json" else render_markdown(report)
