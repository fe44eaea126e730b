"""Per-example outcomes as tables: one ``(betas x examples)`` matrix per seed, and counts per attack.

Input is the store's outcome columns (``ctrobust.store.load_outcomes``): one row per example x beta x
seed. Betas are keyed as :func:`ctrobust.diagnostics.masking_flags` keys them (rounded to 6 decimals).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ctrobust.attacks import ATTACKS, attack_order
from ctrobust.report._util import bkey

__all__ = ["SeedTable", "REQUIRED_COLUMNS", "pivot_outcomes", "per_attack_breakdown"]

#: outcome columns the report needs.
REQUIRED_COLUMNS = ("id", "label", "beta", "seed", "clean_correct", "robust")


@dataclass(frozen=True, eq=False)
class SeedTable:
    """One seed's outcomes pivoted to ``(n_betas, n_ids)`` boolean matrices.

    Attributes:
        seed: attack seed.
        betas: ``(B,)`` ascending, rounded to 6 decimals.
        ids: ``(N,)`` ascending example ids evaluated at every beta.
        labels: ``(N,)`` class labels.
        robust: ``(B, N)`` robust flags.
        clean: ``(B, N)`` clean-correct flags.
        dropped_rows: rows left out because their example was not evaluated at every beta.
    """

    seed: int
    betas: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    robust: np.ndarray
    clean: np.ndarray
    dropped_rows: int

    def index(self, beta: float) -> int:
        """Row of ``beta`` in the matrices."""
        return int(np.flatnonzero(self.betas == bkey(beta))[0])


def _check_columns(outcomes: Mapping[str, Any]) -> int:
    missing = [c for c in REQUIRED_COLUMNS if c not in outcomes]
    if missing:
        raise KeyError(f"outcomes lack column(s) {missing}; expected the store contract "
                       f"(id, label, beta, seed, clean_correct, robust, broken_by, ...)")
    n = len(np.asarray(outcomes["id"]))
    for name, arr in outcomes.items():
        if len(np.asarray(arr)) != n:
            raise ValueError(f"outcome column {name!r} has {len(np.asarray(arr))} rows, 'id' has {n}")
    return n


def pivot_outcomes(outcomes: Mapping[str, Any]) -> tuple[list[SeedTable], list[str]]:
    """Pivot per-example outcome rows to one :class:`SeedTable` per seed (ascending seeds).

    Only examples evaluated at every beta of a seed are kept (a partial run), with a warning.

    Args:
        outcomes: columns of the store contract; :data:`REQUIRED_COLUMNS` required.

    Returns:
        ``(tables, warnings)``.

    Raises:
        KeyError: a required column is missing.
        ValueError: no rows, columns of different lengths, a seed without beta = 1 rows, an (id, beta)
            pair twice, or an id with two labels.
    """
    _check_columns(outcomes)
    ids = np.asarray(outcomes["id"]).astype(np.int64)
    labels = np.asarray(outcomes["label"]).astype(np.int64)
    betas = np.round(np.asarray(outcomes["beta"], dtype=np.float64), 6)
    seeds = np.asarray(outcomes["seed"]).astype(np.int64)
    robust = np.asarray(outcomes["robust"]).astype(bool)
    clean = np.asarray(outcomes["clean_correct"]).astype(bool)
    if ids.size == 0:
        raise ValueError("no outcomes: the run has no evaluated examples yet")
    warnings: list[str] = []
    out = []
    for s in np.unique(seeds):
        rows = np.flatnonzero(seeds == s)
        key = np.stack([betas[rows], ids[rows].astype(np.float64)], axis=1)
        if np.unique(key, axis=0).shape[0] != rows.size:
            raise ValueError(f"seed {int(s)}: an (id, beta) pair appears more than once in the outcomes")
        b_s = np.unique(betas[rows])
        if not np.any(b_s == 1.0):
            raise ValueError(f"seed {int(s)}: no beta = 1 rows; the base model must be evaluated")
        id_sets = [np.unique(ids[rows][betas[rows] == b]) for b in b_s]
        common = id_sets[0]
        for st in id_sets[1:]:
            common = np.intersect1d(common, st)
        keep = rows[np.isin(ids[rows], common)]
        dropped = rows.size - keep.size
        if dropped:
            warnings.append(f"seed {int(s)}: {dropped} row(s) dropped: their example was not evaluated at "
                            "every beta (partial run?)")
        n_b, n_i = b_s.size, common.size
        r_mat = np.zeros((n_b, n_i), bool)
        c_mat = np.zeros((n_b, n_i), bool)
        bi = np.searchsorted(b_s, betas[keep])
        ii = np.searchsorted(common, ids[keep])
        r_mat[bi, ii] = robust[keep]
        c_mat[bi, ii] = clean[keep]
        lab = np.zeros(n_i, np.int64)
        lab[ii] = labels[keep]
        if np.any(labels[keep] != lab[ii]):  # every row of an id must carry the same label
            raise ValueError(f"seed {int(s)}: an example id carries two different labels")
        out.append(SeedTable(int(s), b_s, common, lab, r_mat, c_mat, int(dropped)))
    return out, warnings


def per_attack_breakdown(outcomes: Mapping[str, Any], seed: int | None = None) -> dict:
    """How many rows each attack broke first, per beta (for the figure panel).

    Args:
        outcomes: columns ``beta``, ``broken_by`` (and ``seed`` if ``seed`` is given), as from
            ``ctrobust.store.load_outcomes``.
        seed: only count rows of this seed; ``None`` pools all seeds.

    Returns:
        ``{beta: {name: count}}`` with betas rounded to 6 decimals (ascending). Names: ``"clean"``
        (misclassified without attack), the attacks in registry order (:func:`ctrobust.attacks.attack_order`:
        AutoAttack's), other names sorted, and ``"robust"`` (survived every attack). Every beta has every
        name that occurs anywhere in ``outcomes`` (0 where absent; the same keys whatever ``seed``), so the
        counts of a beta sum to its rows.
    """
    betas = np.round(np.asarray(outcomes["beta"], dtype=np.float64), 6)
    broken = np.asarray([str(b) for b in np.asarray(outcomes["broken_by"])])
    if broken.size != betas.size:
        raise ValueError("'broken_by' and 'beta' differ in length")
    keep = np.ones(betas.size, bool)
    if seed is not None:
        keep = np.asarray(outcomes["seed"]).astype(np.int64) == int(seed)
    all_names = np.asarray([("robust" if b == "" else b) for b in broken], dtype=object)
    present = set(all_names.tolist())  # names over all rows, so every seed's breakdown has the same keys
    betas, names = betas[keep], all_names[keep]
    attacks = [a for a in attack_order(sorted(present)) if a in ATTACKS]
    ordered = (["clean"] if "clean" in present else []) + attacks
    ordered += sorted(present - set(ordered) - {"robust"}) + (["robust"] if "robust" in present else [])
    result = {}
    for b in np.unique(betas):
        sub = names[betas == b]
        result[float(b)] = {k: int(np.sum(sub == k)) for k in ordered}
    return result
