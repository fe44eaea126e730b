"""Across runs: the paper's aggregate, the mean over datasets of per-dataset relative gains.

As in the CT reference code: per dataset, ``(mean over seeds of CT robust acc - mean base) / mean base``;
a dataset whose seed-mean base accuracy is 0 is left out of the mean (its relative gain is infinite or
undefined) and listed as dropped. Runs are grouped by (model, threat).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ctrobust import stats
from ctrobust.report._util import pct
from ctrobust.report.summary import Aggregate, AggregateProtocol, DatasetGain, RunSummary

__all__ = ["aggregate_runs", "paper_aggregate"]


def paper_aggregate(summaries: Sequence[RunSummary], which: str, conf: float = 0.95) -> AggregateProtocol | None:
    """The paper's aggregate of ``summaries`` (one entry per run) for one protocol.

    Args:
        summaries: the runs to average over (one per dataset, normally).
        which: ``"oracle"`` or ``"heldout"``.
        conf: confidence level of the bootstrap interval; the interval exists only when every run has
            bootstrap replicates, and resamples each run independently.

    Returns:
        The aggregate; ``None`` for ``"heldout"`` when no run has a held-out headline.
    """
    if which == "heldout" and all(s.heldout is None for s in summaries):
        return None
    per, vals, dropped = [], [], []
    for s in summaries:
        ds = s.settings.dataset or s.name
        h = getattr(s, which)
        if h is None:  # this run has no held-out headline: it counts as undefined
            ct = base = rel = float("nan")
        else:
            ct, base = h.robust_acc_pct.mean, h.base.robust_acc_pct.mean
            rel = stats.relative_gain(ct, base)
        per.append(DatasetGain(dataset=ds, run=s.name, ct_robust_acc_pct=ct, base_robust_acc_pct=base,
                               rel_gain_pct=pct(rel)))
        if base > 0 and math.isfinite(rel):
            vals.append(rel)
        else:
            dropped.append(ds)
    value = pct(np.mean(vals)) if vals else float("nan")
    ci = None
    boots = [s._replicates for s in summaries]
    base_key = "base" if which == "oracle" else "base_report"
    if boots and all(b is not None and getattr(b, which) is not None for b in boots):
        rels = np.stack([stats.relative_gains(getattr(b, which), getattr(b, base_key)) for b in boots])
        bases = np.stack([getattr(b, base_key) for b in boots])                    # (runs, n_boot)
        rels = np.where((bases > 0) & np.isfinite(rels), rels, np.nan)
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(rels)
            agg = np.where(valid.any(axis=0), np.nansum(rels, axis=0) / np.maximum(valid.sum(axis=0), 1), np.nan)
        ci = stats.percentile_interval(pct(agg), conf)
    return AggregateProtocol(per_dataset=tuple(per), value_pct=value, dropped=tuple(dropped), ci_pct=ci)


def aggregate_runs(summaries: Sequence[RunSummary], conf: float = 0.95) -> list[Aggregate]:
    """The paper's aggregate per (model, threat): mean over datasets of per-dataset relative gains.

    Args:
        summaries: outputs of :func:`ctrobust.report.summarize_run`.
        conf: confidence level of the bootstrap interval.

    Returns:
        One :class:`~ctrobust.report.summary.Aggregate` per (model, threat) group, in order of first
        appearance.
    """
    groups: dict = {}
    for s in summaries:
        key = (str(s.settings.model), str(s.settings.threat))
        groups.setdefault(key, []).append(s)
    result = []
    for (model, threat), runs in groups.items():
        datasets = tuple(r.settings.dataset for r in runs)
        warnings = []
        if len(set(datasets)) != len(datasets):
            warnings.append("several runs share a dataset (different eps or settings?): each counts as one "
                            "entry of the mean")
        result.append(Aggregate(model=model, threat=threat, datasets=datasets, runs=tuple(r.name for r in runs),
                                warnings=tuple(warnings), oracle=paper_aggregate(runs, "oracle", conf),
                                heldout=paper_aggregate(runs, "heldout", conf)))
    return result
