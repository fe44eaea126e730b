"""The per-corruption table of a ``--threat corruptions`` run: every (corruption, severity) pair's accuracy at
beta = 1 and at the beta the report chose (held-out if asked for, else the oracle's)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ctrobust.report._util import bkey
from ctrobust.report.summary import CorruptionRow, CorruptionSummary

__all__ = ["has_corruptions", "summarize_corruptions"]


def has_corruptions(outcomes: Mapping) -> bool:
    """The outcomes hold per-row corruption names (a ``--threat corruptions`` run)."""
    c = outcomes.get("corruption")
    return c is not None and len(c) > 0 and bool(np.any(np.asarray(c).astype(str) != ""))


def summarize_corruptions(outcomes: Mapping, oracle, heldout) -> CorruptionSummary:
    """Every pair's accuracy (``clean_correct``: correct on the corrupted image) at beta = 1 and at the chosen
    beta, all seeds pooled.

    Args:
        outcomes: per-example outcomes with ``corruption`` and ``severity`` columns.
        oracle, heldout: the run's :class:`~ctrobust.report.summary.ProtocolSummary` headlines (``heldout``
            may be None); the first seed's chosen beta is the table's.
    """
    pick = heldout if heldout is not None else oracle
    beta = float(pick.betas[0]) if pick is not None and pick.betas else 1.0
    corr = np.asarray(outcomes["corruption"]).astype(str)
    sev = np.asarray(outcomes["severity"]).astype(np.int64)
    betas = np.round(np.asarray(outcomes["beta"], dtype=np.float64), 6)
    correct = np.asarray(outcomes["clean_correct"]).astype(bool)
    rows = []
    for c, s in dict.fromkeys(zip(corr.tolist(), sev.tolist())):
        pair = (corr == c) & (sev == s)
        base, chosen = pair & (betas == bkey(1.0)), pair & (betas == bkey(beta))
        if not base.any() or not chosen.any():
            continue
        b, a = 100 * float(correct[base].mean()), 100 * float(correct[chosen].mean())
        rows.append(CorruptionRow(corruption=c, severity=int(s), n=int(chosen.sum()), base_acc_pct=b, acc_pct=a,
                                  gain_pts=a - b))
    return CorruptionSummary(beta=beta, chosen_by="heldout" if heldout is not None else "oracle", rows=tuple(rows))
