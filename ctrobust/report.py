"""Reproduction report: held-out beta selection, intervals, paired tests, masking flags, paper claims.

Built from stored results only (``ctrobust.store.load_outcomes`` / ``load_results`` / ``load_config``):
nothing is re-run. For each run (one model x dataset x threat x eps) the report gives

- the base robust accuracy (beta = 1);
- the **oracle** beta, chosen on all evaluated points and reported on the same points — the CT paper's
  protocol, which is optimistic: the maximum of ~30 noisy accuracies on the same points;
- the **held-out** beta, chosen on the selection half of a seeded class-stratified split
  (:func:`ctrobust.stats.stratified_split`) and reported, with the base model, on the report half;
- clean accuracy at each, the absolute gain in percentage points with a 95 % interval, the relative gain
  as the paper computes it (``(CT - base) / base``, infinite or undefined when base is 0), the exact
  McNemar p-value against beta = 1, mean +- std across seeds, and gradient-masking flags per beta;

and across runs the paper's aggregate (mean over datasets of per-dataset relative gains, grouped by model
and threat), compared with the claims in ``configs/paper_claims.yaml``.

Intervals (documented choice):
    - per seed, beta fixed: Newcombe's paired score interval (:func:`ctrobust.stats.paired_diff_interval`)
      for the gain, exact McNemar test for "beta differs from beta = 1";
    - headline (mean over seeds) and relative gains: percentile bootstrap over examples with a fixed seed,
      resampling within each (class, split half) stratum (split half only when a stratum would have fewer
      than 10 examples). The same resampled example weights serve every beta and seed (paired). The
      oracle beta is held fixed (the bootstrap of a maximum is biased); the held-out beta is re-selected
      on the resampled selection half in every replicate, so its interval includes the selection step.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ctrobust import stats
from ctrobust.diagnostics import STANDARD_ORDER, masking_flags

__all__ = ["SELECT_ON", "FORMATS", "build_report", "report_from_summaries", "summarize_run", "aggregate_runs",
           "compare_claims", "load_claims", "per_attack_breakdown", "render_markdown", "render_json",
           "default_claims_path"]

SELECT_ON = ("half", "same")
FORMATS = ("md", "json")
REPORT_FORMAT_VERSION = "ctrobust-report/1"
_REQUIRED = ("id", "label", "beta", "seed", "clean_correct", "robust")
_ORACLE_LABEL = "oracle (paper protocol: selected on the reported points)"
_HELDOUT_LABEL = "held-out (selected on the selection half, reported on the report half)"


# ==================================================================================================
# small helpers
def _cfg(config, name: str, default=None):
    """Read a config field by attribute (``SweepConfig``) or key (mapping), with a default."""
    if config is None:
        return default
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def _bkey(beta) -> float:
    # np.round, exactly as the pivot and ctrobust.diagnostics.masking_flags key their betas
    return float(np.round(float(beta), 6))


def _norm_name(s) -> str:
    return "".join(ch for ch in str(s).lower() if ch.isalnum())


def _fmt_eps(eps) -> str:
    if eps is None:
        return "?"
    eps = float(eps)
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{round(k)}/255"
    return f"{eps:g}"


def _attack_list(attacks) -> list[str] | None:
    if attacks is None:
        return None
    try:
        from ctrobust.config import parse_attacks
        return list(parse_attacks(attacks))
    except Exception:  # an unparsable value: keep what we got, as strings
        if isinstance(attacks, str):
            return [a.strip().lower() for a in attacks.split(",") if a.strip()]
        return [str(a).lower() for a in attacks]


def _pct(x):
    """Fraction -> percent (scalars as float, arrays stay arrays)."""
    if isinstance(x, np.ndarray):
        return x.astype(np.float64) * 100.0
    return float(x) * 100.0


def _percentile_ci(samples: np.ndarray, conf: float) -> dict:
    samples = np.asarray(samples, dtype=np.float64)
    finite = samples[np.isfinite(samples)]
    out = {"lo": float("nan"), "hi": float("nan"), "n_boot": int(samples.size),
           "n_undefined": int(samples.size - finite.size)}
    if finite.size:
        lo, hi = np.percentile(finite, [50.0 * (1 - conf), 100.0 - 50.0 * (1 - conf)])
        out["lo"], out["hi"] = float(lo), float(hi)
    return out


def _ms(values) -> dict:
    m, s = stats.mean_std(values)
    return {"mean": m, "std": s}


# ==================================================================================================
# per-example outcomes -> per-seed matrices
class _SeedData:
    """One seed's outcomes pivoted to ``(n_betas, n_ids)`` boolean matrices."""

    def __init__(self, seed: int, betas: np.ndarray, ids: np.ndarray, labels: np.ndarray,
                 robust: np.ndarray, clean: np.ndarray, dropped_rows: int):
        self.seed = seed
        self.betas = betas          # (B,) ascending, rounded
        self.ids = ids              # (N,) ascending
        self.labels = labels        # (N,)
        self.robust = robust        # (B, N) bool
        self.clean = clean          # (B, N) bool
        self.dropped_rows = dropped_rows

    def index(self, beta: float) -> int:
        return int(np.flatnonzero(self.betas == _bkey(beta))[0])


def _check_columns(outcomes: Mapping[str, Any]) -> int:
    missing = [c for c in _REQUIRED if c not in outcomes]
    if missing:
        raise KeyError(f"outcomes lack column(s) {missing}; expected the store contract "
                       f"(id, label, beta, seed, clean_correct, robust, broken_by, ...)")
    n = len(np.asarray(outcomes["id"]))
    for name, arr in outcomes.items():
        if len(np.asarray(arr)) != n:
            raise ValueError(f"outcome column {name!r} has {len(np.asarray(arr))} rows, 'id' has {n}")
    return n


def _pivot(outcomes: Mapping[str, Any]) -> tuple[list[_SeedData], list[str]]:
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
        out.append(_SeedData(int(s), b_s, common, lab, r_mat, c_mat, dropped))
    return out, warnings


# ==================================================================================================
# selection, per seed
def _select(acc: np.ndarray, betas: np.ndarray, tie_break: str) -> int:
    chosen = stats.select_beta({float(b): float(a) for b, a in zip(betas, acc)}, tie_break=tie_break)
    return int(np.flatnonzero(betas == _bkey(chosen))[0])


def _priority_order(betas: np.ndarray, tie_break: str) -> np.ndarray:
    """Betas ordered so that ``argmax`` over this order implements the tie-break (first max wins)."""
    if tie_break == "smallest":
        return np.argsort(betas, kind="stable")
    return np.lexsort((-betas, np.abs(1.0 - betas)))


def _compare(ct: np.ndarray, base: np.ndarray, conf: float) -> dict:
    lo, hi = stats.paired_diff_interval(ct, base, conf)
    mc = stats.mcnemar_exact(base, ct)
    n = int(ct.size)
    acc, acc0 = (float(ct.mean()) if n else float("nan")), (float(base.mean()) if n else float("nan"))
    return {"n": n, "robust_acc_pct": _pct(acc), "base_robust_acc_pct": _pct(acc0),
            "abs_gain_pts": _pct(acc - acc0), "abs_gain_ci_pts": [_pct(lo), _pct(hi)],
            "rel_gain_pct": _pct(stats.relative_gain(acc, acc0)),
            "mcnemar_b01": mc["b01"], "mcnemar_b10": mc["b10"], "mcnemar_p": mc["p_value"]}


def _seed_summary(sd: _SeedData, select_on: str, conf: float, tie_break: str, split_masks) -> dict:
    k1 = sd.index(1.0)
    acc_all = sd.robust.mean(axis=1)
    clean_all = sd.clean.mean(axis=1)
    base = {"beta": 1.0, "n": int(sd.ids.size), "robust_acc_pct": _pct(acc_all[k1]),
            "clean_acc_pct": _pct(clean_all[k1])}
    ko = _select(acc_all, sd.betas, tie_break)
    oracle = {"beta": float(sd.betas[ko]), "clean_acc_pct": _pct(clean_all[ko]),
              **_compare(sd.robust[ko], sd.robust[k1], conf)}
    per_beta = []
    for kb, b in enumerate(sd.betas):
        cmp = _compare(sd.robust[kb], sd.robust[k1], conf)
        per_beta.append({"beta": float(b), "clean_acc_pct": _pct(clean_all[kb]), **cmp})
    out = {"seed": sd.seed, "n": int(sd.ids.size), "base": base, "oracle": oracle, "per_beta": per_beta,
           "heldout": None}
    if select_on == "half":
        sel, rep = split_masks
        if sel.sum() == 0 or rep.sum() == 0:
            out["heldout"] = None
        else:
            acc_sel = sd.robust[:, sel].mean(axis=1)
            kh = _select(acc_sel, sd.betas, tie_break)
            held = {"beta": float(sd.betas[kh]), "select_n": int(sel.sum()),
                    "select_robust_acc_pct": _pct(acc_sel[kh]),
                    "clean_acc_pct": _pct(sd.clean[kh, rep].mean()),
                    "base_clean_acc_pct": _pct(sd.clean[k1, rep].mean()),
                    **_compare(sd.robust[kh, rep], sd.robust[k1, rep], conf)}
            out["heldout"] = held
    return out


# ==================================================================================================
# bootstrap (class x half stratified; oracle beta fixed, held-out beta re-selected per replicate)
_MIN_STRATUM = 10


def _boot_weights(labels: np.ndarray, half: np.ndarray | None, n_boot: int,
                  rng: np.random.Generator) -> np.ndarray:
    """``(N, n_boot)`` float32 resampling counts; each stratum keeps its size in every replicate.

    Memory is ``4 * N * n_boot`` bytes (80 MB for the full 10 000-image test set at 2000 replicates).

    Strata are (class, split half) when every such stratum has at least ``_MIN_STRATUM`` examples, else
    the split half only (e.g. ImageNet with 1 example per class: a class stratum of size 1 would have no
    bootstrap variance at all).
    """
    n = labels.size
    half_code = half.astype(np.int64) if half is not None else np.zeros(n, np.int64)
    strata = labels.astype(np.int64) * 2 + half_code
    _, sizes = np.unique(strata, return_counts=True)
    if sizes.min() < _MIN_STRATUM:
        strata = half_code
    w = np.zeros((n, n_boot), np.float32)
    for st in np.unique(strata):
        idx = np.flatnonzero(strata == st)
        m = idx.size
        draws = rng.integers(0, m, size=(n_boot, m))
        flat = (draws + (np.arange(n_boot) * m)[:, None]).ravel()
        w[idx] = np.bincount(flat, minlength=m * n_boot).reshape(n_boot, m).T
    return w


def _bootstrap_run(seeds: list[_SeedData], oracle_betas: Sequence[float], select_on: str, split_masks,
                   n_boot: int, boot_seed: int, tie_break: str) -> dict:
    """Replicates of the run-level statistics (seed means of accuracies, as fractions).

    Oracle: each seed's beta is held at the one selected on the data (re-selecting the argmax of ~30
    accuracies in every replicate would bias the replicates upwards: the bootstrap of a maximum is not
    consistent). Held-out: beta is re-selected on the resampled selection half in every replicate and
    evaluated on the resampled report half, so the interval includes the variability of the selection.
    """
    rng = np.random.default_rng(boot_seed)
    ref = seeds[0]
    shared = all(np.array_equal(sd.ids, ref.ids) for sd in seeds)
    sel_mask = split_masks[0] if select_on == "half" else None
    weights = {}

    def w_for(sd: _SeedData):
        key = 0 if shared else sd.seed
        if key not in weights:
            weights[key] = _boot_weights(sd.labels, sel_mask if (shared and sel_mask is not None) else None,
                                         n_boot, rng)
        return weights[key]

    base_all, oracle_all, base_rep, held_rep = [], [], [], []
    for sd, ob in zip(seeds, oracle_betas):
        w = w_for(sd)
        k1 = sd.index(1.0)
        ko = sd.index(ob)
        r = sd.robust.astype(np.float32)
        counts = r @ w                                    # (B, n_boot) integer-valued
        n = float(sd.ids.size)
        base_all.append(counts[k1] / n)
        oracle_all.append(counts[ko] / n)
        if select_on == "half" and shared and sel_mask is not None and sel_mask.any() and (~sel_mask).any():
            sel = sel_mask
            c_sel = r[:, sel] @ w[sel]
            c_rep = r[:, ~sel] @ w[~sel]
            n_rep = float((~sel).sum())
            order = _priority_order(sd.betas, tie_break)
            pick = order[np.argmax(c_sel[order], axis=0)]  # first max in priority order
            held_rep.append(c_rep[pick, np.arange(n_boot)] / n_rep)
            base_rep.append(c_rep[k1] / n_rep)
    out = {"base": np.mean(base_all, axis=0), "oracle": np.mean(oracle_all, axis=0)}
    if held_rep:
        out["base_report"] = np.mean(base_rep, axis=0)
        out["heldout"] = np.mean(held_rep, axis=0)
    return out


def _rel(ct: np.ndarray, base: np.ndarray) -> np.ndarray:
    ct, base = np.asarray(ct, np.float64), np.asarray(base, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = (ct - base) / base
    return rel


# ==================================================================================================
def per_attack_breakdown(outcomes: Mapping[str, Any], seed: int | None = None) -> dict:
    """How many rows each attack broke first, per beta (for the figure panel).

    Args:
        outcomes: columns ``beta``, ``broken_by`` (and ``seed`` if ``seed`` is given), as from
            ``ctrobust.store.load_outcomes``.
        seed: only count rows of this seed; ``None`` pools all seeds.

    Returns:
        ``{beta: {name: count}}`` with betas rounded to 6 decimals (ascending). Names: ``"clean"``
        (misclassified without attack), the attacks in AutoAttack order (``apgd-ce``, ``apgd-t``,
        ``fab-t``, ``square``, then others), and ``"robust"`` (survived every attack). Every beta has
        every name that occurs anywhere in ``outcomes`` (0 where absent; the same keys whatever ``seed``),
        so the counts of a beta sum to its rows.
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
    attack_order = list(STANDARD_ORDER) + ["apgd-dlr", "fab"]
    ordered = (["clean"] if "clean" in present else []) + [a for a in attack_order if a in present]
    ordered += sorted(present - set(ordered) - {"robust"}) + (["robust"] if "robust" in present else [])
    result = {}
    for b in np.unique(betas):
        sub = names[betas == b]
        result[float(b)] = {k: int(np.sum(sub == k)) for k in ordered}
    return result


def _settings(config, seeds: list[_SeedData]) -> tuple[dict, list[str]]:
    """The run's settings. Seeds, betas and n_examples are what the outcomes hold (a partial run is not
    the configured experiment); a difference from the config is returned as a warning."""
    actual_betas = sorted({float(b) for sd in seeds for b in sd.betas}, reverse=True)
    actual_seeds = [sd.seed for sd in seeds]
    actual_n = min(int(sd.ids.size) for sd in seeds)
    warnings = []
    cfg_betas, cfg_seeds, cfg_n = _cfg(config, "betas"), _cfg(config, "seeds"), _cfg(config, "n_examples")
    if cfg_betas is not None and {_bkey(b) for b in cfg_betas} != {_bkey(b) for b in actual_betas}:
        warnings.append(f"the outcomes hold {len(actual_betas)} betas, the config asks for {len(cfg_betas)}")
    if cfg_seeds is not None and sorted(int(x) for x in cfg_seeds) != sorted(actual_seeds):
        warnings.append(f"the outcomes hold seeds {actual_seeds}, the config asks for {list(cfg_seeds)}")
    if cfg_n is not None and int(cfg_n) != actual_n:
        warnings.append(f"{actual_n} examples evaluated at every beta, the config asks for {cfg_n}")
    settings = {
        "model": _cfg(config, "model"),
        "dataset": _cfg(config, "dataset"),
        "threat": _cfg(config, "threat"),
        "eps": None if _cfg(config, "eps") is None else float(_cfg(config, "eps")),
        "n_examples": actual_n,
        "subset": _cfg(config, "subset"),
        "data": _cfg(config, "data"),
        "seeds": actual_seeds,
        "betas": actual_betas,
        "coeff": None if _cfg(config, "coeff") is None else float(_cfg(config, "coeff")),
        "attacks": _cfg(config, "attacks"),
        "engine": _cfg(config, "engine"),
    }
    return settings, warnings


def summarize_run(outcomes: Mapping[str, Any], config=None, *, select_on: str = "half", split_seed: int = 0,
                  conf: float = 0.95, tie_break: str = "closest_to_one", n_boot: int = 2000,
                  boot_seed: int = 0, name: str | None = None) -> dict:
    """All the numbers of one run's report section, from per-example outcomes.

    Accuracies are in percent (``*_pct``), gains in percentage points (``*_pts``), relative gains in
    percent (``rel_gain_pct``; ``inf`` when base is 0 and CT is not, ``nan`` for 0/0).

    Args:
        outcomes: columns of the store contract (``ctrobust.store.load_outcomes``): ``id``, ``label``,
            ``beta``, ``seed``, ``clean_correct``, ``robust`` required; ``broken_by``, ``grad_zero``,
            ``grad_nonfinite``, ``transfer_broken`` used for masking flags when present.
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
        A JSON-friendly dict: ``settings``, ``per_seed`` (base / oracle / held-out / per-beta, each with a
        Newcombe interval and McNemar test), ``headline`` (mean +- std across seeds and bootstrap
        intervals), ``per_beta`` (across seeds, with masking flags), ``per_attack``, ``warnings``, plus a
        private ``_boot`` entry (bootstrap replicates) used for cross-run aggregates and dropped from the
        rendered output.
    """
    if select_on not in SELECT_ON:
        raise ValueError(f"select_on must be one of {SELECT_ON}, got {select_on!r}")
    seeds, warnings = _pivot(outcomes)
    settings, setting_warnings = _settings(config, seeds)
    warnings += setting_warnings

    # the split depends only on (ids, labels, split_seed): the same for every seed that has the same ids
    split_cache: dict = {}

    def split_for(sd: _SeedData):
        key = sd.ids.tobytes()
        if key not in split_cache:
            split_cache[key] = stats.stratified_split(sd.ids, sd.labels, split_seed)
        return split_cache[key]

    per_seed = [_seed_summary(sd, select_on, conf, tie_break, split_for(sd)) for sd in seeds]

    # ---- headline: mean +- std across seeds ------------------------------------------------------
    def col(path):
        vals = []
        for ps in per_seed:
            node = ps
            for p in path:
                node = None if node is None else node.get(p)
            if node is not None:
                vals.append(node)
        return vals

    base_acc = col(["base", "robust_acc_pct"])
    oracle_acc = col(["oracle", "robust_acc_pct"])
    headline: dict = {
        "n_seeds": len(seeds),
        "base": {"beta": 1.0, "n": int(seeds[0].ids.size), "robust_acc_pct": _ms(base_acc),
                 "clean_acc_pct": _ms(col(["base", "clean_acc_pct"]))},
        "oracle": {"label": _ORACLE_LABEL, "n": int(seeds[0].ids.size), "beta": _ms(col(["oracle", "beta"])),
                   "betas": col(["oracle", "beta"]),
                   "robust_acc_pct": _ms(oracle_acc), "clean_acc_pct": _ms(col(["oracle", "clean_acc_pct"])),
                   "abs_gain_pts": _ms(col(["oracle", "abs_gain_pts"])),
                   "mcnemar_p": col(["oracle", "mcnemar_p"]),
                   # the paper's formula: relative gain of the seed means
                   "rel_gain_pct": _pct(stats.relative_gain(np.mean(oracle_acc), np.mean(base_acc)))},
        "base_report": None,
        "heldout": None,
    }
    if select_on == "half" and all(ps["heldout"] is not None for ps in per_seed):
        h_acc = col(["heldout", "robust_acc_pct"])
        b_rep = col(["heldout", "base_robust_acc_pct"])
        headline["base_report"] = {"beta": 1.0, "n": per_seed[0]["heldout"]["n"], "robust_acc_pct": _ms(b_rep),
                                   "clean_acc_pct": _ms(col(["heldout", "base_clean_acc_pct"]))}
        headline["heldout"] = {"label": _HELDOUT_LABEL, "n": per_seed[0]["heldout"]["n"],
                               "select_n": per_seed[0]["heldout"]["select_n"],
                               "beta": _ms(col(["heldout", "beta"])), "betas": col(["heldout", "beta"]),
                               "robust_acc_pct": _ms(h_acc),
                               "clean_acc_pct": _ms(col(["heldout", "clean_acc_pct"])),
                               "abs_gain_pts": _ms(col(["heldout", "abs_gain_pts"])),
                               "mcnemar_p": col(["heldout", "mcnemar_p"]),
                               "rel_gain_pct": _pct(stats.relative_gain(np.mean(h_acc), np.mean(b_rep)))}
    elif select_on == "half":
        warnings.append("held-out selection skipped: a split half is empty (too few examples)")

    # ---- bootstrap intervals (selection included) -------------------------------------------------
    boot = None
    if n_boot > 0:
        masks = split_for(seeds[0]) if select_on == "half" else None
        boot = _bootstrap_run(seeds, [ps["oracle"]["beta"] for ps in per_seed], select_on, masks, n_boot,
                              boot_seed, tie_break)
        headline["oracle"]["abs_gain_ci_pts"] = _percentile_ci(_pct(boot["oracle"] - boot["base"]), conf)
        headline["oracle"]["rel_gain_ci_pct"] = _percentile_ci(_pct(_rel(boot["oracle"], boot["base"])), conf)
        if headline["heldout"] is not None and "heldout" in boot:
            headline["heldout"]["abs_gain_ci_pts"] = _percentile_ci(
                _pct(boot["heldout"] - boot["base_report"]), conf)
            headline["heldout"]["rel_gain_ci_pct"] = _percentile_ci(
                _pct(_rel(boot["heldout"], boot["base_report"])), conf)

    # ---- per beta across seeds, with masking flags -----------------------------------------------
    masks_by_beta = masking_flags(outcomes, attacks=_attack_list(settings["attacks"]))
    all_betas = sorted({b["beta"] for ps in per_seed for b in ps["per_beta"]})
    per_beta = []
    for b in all_betas:
        rows = [pb for ps in per_seed for pb in ps["per_beta"] if pb["beta"] == b]
        per_beta.append({
            "beta": b,
            "robust_acc_pct": _ms([r["robust_acc_pct"] for r in rows]),
            "clean_acc_pct": _ms([r["clean_acc_pct"] for r in rows]),
            "abs_gain_pts": _ms([r["abs_gain_pts"] for r in rows]),
            "mcnemar_p": [r["mcnemar_p"] for r in rows],
            "masking": masks_by_beta.get(b),
        })

    def masking_of(betas):
        by_beta = {}
        for b in sorted(set(_bkey(b) for b in betas), reverse=True):
            m = masks_by_beta.get(b)
            if m is None:
                continue
            parts = []
            if m.get("square_only"):
                parts.append(f"square-only {m['square_only']}")
            if m.get("grad_zero_frac"):
                parts.append(f"grad-zero {100 * m['grad_zero_frac']:.1f} %")
            if m.get("grad_nonfinite_frac"):
                parts.append(f"grad-non-finite {100 * m['grad_nonfinite_frac']:.1f} %")
            if m.get("transfer_only"):
                parts.append(f"transfer-only {m['transfer_only']}")
            if m["masking_suspected"]:
                by_beta[f"{b:.2f}"] = ", ".join(parts) or "; ".join(m["reasons"])
        return {"masking_suspected": bool(by_beta), "by_beta": by_beta}

    headline["base"]["masking"] = masking_of([1.0])
    headline["oracle"]["masking"] = masking_of(headline["oracle"]["betas"])
    if headline["heldout"] is not None:
        headline["heldout"]["masking"] = masking_of(headline["heldout"]["betas"])

    per_attack = None
    if "broken_by" in outcomes:
        pa = per_attack_breakdown(outcomes)
        per_attack = [{"beta": b, "counts": c} for b, c in pa.items()]

    summary = {
        "name": name,
        "settings": settings,
        "select_on": select_on,
        "split_seed": split_seed if select_on == "half" else None,
        "conf": conf,
        "tie_break": tie_break,
        "n_boot": n_boot,
        "boot_seed": boot_seed,
        "headline": headline,
        "per_seed": per_seed,
        "per_beta": per_beta,
        "per_attack": per_attack,
        "warnings": warnings,
        "_boot": boot,
    }
    return summary


# ==================================================================================================
# across runs: the paper's aggregate
def _paper_rel_point(summary: dict, which: str) -> tuple[float, float, float]:
    """(ct_mean, base_mean, rel) in fractions, paper formula, for ``oracle`` or ``heldout``."""
    h = summary["headline"]
    if which == "oracle":
        ct, base = h["oracle"]["robust_acc_pct"]["mean"], h["base"]["robust_acc_pct"]["mean"]
    else:
        if h["heldout"] is None:
            return float("nan"), float("nan"), float("nan")
        ct, base = h["heldout"]["robust_acc_pct"]["mean"], h["base_report"]["robust_acc_pct"]["mean"]
    return ct / 100.0, base / 100.0, stats.relative_gain(ct, base)


def _aggregate(summaries: Sequence[dict], conf: float) -> dict:
    """The paper's aggregate over runs (datasets): mean of per-dataset relative gains.

    As in the CT reference code, a dataset whose (seed-mean) base accuracy is 0 is left out of the mean
    (its relative gain is infinite or undefined); the result lists it under ``dropped``.
    """
    out: dict = {}
    for which in ("oracle", "heldout"):
        per, vals, dropped = [], [], []
        for s in summaries:
            ct, base, rel = _paper_rel_point(s, which)
            ds = s["settings"].get("dataset") or s.get("name")
            per.append({"dataset": ds, "run": s.get("name"), "ct_robust_acc_pct": _pct(ct),
                        "base_robust_acc_pct": _pct(base), "rel_gain_pct": _pct(rel)})
            if base > 0 and math.isfinite(rel):
                vals.append(rel)
            else:
                dropped.append(ds)
        value = _pct(np.mean(vals)) if vals else float("nan")
        entry = {"per_dataset": per, "value_pct": value, "dropped": dropped, "ci_pct": None}
        boots = [s.get("_boot") for s in summaries]
        key = "oracle" if which == "oracle" else "heldout"
        base_key = "base" if which == "oracle" else "base_report"
        if all(b is not None and key in b for b in boots) and boots:
            rels = np.stack([_rel(b[key], b[base_key]) for b in boots])        # (runs, n_boot)
            bases = np.stack([b[base_key] for b in boots])
            rels = np.where((bases > 0) & np.isfinite(rels), rels, np.nan)
            with np.errstate(invalid="ignore"):
                valid = np.isfinite(rels)
                agg = np.where(valid.any(axis=0), np.nansum(rels, axis=0) / np.maximum(valid.sum(axis=0), 1),
                               np.nan)
            entry["ci_pct"] = _percentile_ci(_pct(agg), conf)
        if which == "heldout" and all(s["headline"]["heldout"] is None for s in summaries):
            entry = None
        out[which] = entry
    return out


def aggregate_runs(summaries: Sequence[dict], conf: float = 0.95) -> list[dict]:
    """The paper's aggregate per (model, threat): mean over datasets of per-dataset relative gains.

    Args:
        summaries: outputs of :func:`summarize_run`.
        conf: confidence level of the bootstrap interval.

    Returns:
        One entry per (model, threat) group with ``datasets``, ``oracle`` and ``heldout`` (each with
        ``per_dataset``, ``value_pct``, ``ci_pct``, ``dropped``) and ``warnings``.
    """
    groups: dict = {}
    for s in summaries:
        key = (str(s["settings"].get("model")), str(s["settings"].get("threat")))
        groups.setdefault(key, []).append(s)
    result = []
    for (model, threat), runs in groups.items():
        datasets = [r["settings"].get("dataset") for r in runs]
        warnings = []
        if len(set(datasets)) != len(datasets):
            warnings.append("several runs share a dataset (different eps or settings?): each counts as one "
                            "entry of the mean")
        result.append({"model": model, "threat": threat, "datasets": datasets,
                       "runs": [r.get("name") for r in runs], "warnings": warnings, **_aggregate(runs, conf)})
    return result


# ==================================================================================================
# paper claims
def default_claims_path() -> Path:
    """``$CTROBUST_CLAIMS`` if set, else the packaged copy of ``configs/paper_claims.yaml``."""
    env = os.environ.get("CTROBUST_CLAIMS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / "resources" / "paper_claims.yaml"


def load_claims(path=None) -> list[dict]:
    """Read the paper's claims (``configs/paper_claims.yaml``); ``[]`` if the file does not exist.

    Args:
        path: claims file; default :func:`default_claims_path`.

    Returns:
        The list under the file's ``claims`` key, each a mapping (see the file for the fields).
    """
    import yaml

    p = Path(path) if path is not None else default_claims_path()
    if not p.is_file():
        if path is not None:
            raise FileNotFoundError(f"claims file {str(p)!r} not found")
        return []
    data = yaml.safe_load(p.read_text()) or {}
    claims = data.get("claims", []) if isinstance(data, Mapping) else []
    if not isinstance(claims, list):
        raise ValueError(f"{p}: 'claims' must be a list")
    return claims


def _claim_eps(claim: Mapping, dataset: str) -> float | None:
    from ctrobust.config import parse_eps

    eps = claim.get("eps")
    if isinstance(eps, Mapping):
        for k, v in eps.items():
            if _norm_name(k) == _norm_name(dataset):
                return parse_eps(v)
        return None
    return None if eps is None else parse_eps(eps)


def _claim_betas(claim: Mapping) -> list[float] | None:
    from ctrobust.config import parse_betas

    b = claim.get("betas")
    return None if b is None else parse_betas(b)


def _grid(betas) -> set:
    return {_bkey(b) for b in betas if _bkey(b) != 1.0}


def _setting_diffs(claim: Mapping, settings: Mapping) -> list[str]:
    """Which of the run's settings differ from the claim's (``[]`` = the paper's setting)."""
    diffs = []
    ds = settings.get("dataset")

    def differ(what, ours, paper):
        diffs.append(f"{what}: ours {ours}, paper {paper}")

    models = [claim.get("model")] + list(claim.get("model_aliases") or [])
    if settings.get("model") is None or _norm_name(settings["model"]) not in {_norm_name(m) for m in models if m}:
        differ("model", settings.get("model"), claim.get("model"))
    if settings.get("threat") is None or _norm_name(settings["threat"]) != _norm_name(claim.get("threat")):
        differ("threat", settings.get("threat"), claim.get("threat"))
    ce = _claim_eps(claim, ds) if ds is not None else None
    if ce is not None and (settings.get("eps") is None or abs(float(settings["eps"]) - ce) > 1e-6):
        differ("eps", _fmt_eps(settings.get("eps")), _fmt_eps(ce))
    if claim.get("n_examples") is not None and settings.get("n_examples") != int(claim["n_examples"]):
        differ("n_examples", settings.get("n_examples"), claim["n_examples"])
    if claim.get("subset") is not None and _norm_name(settings.get("subset")) != _norm_name(claim["subset"]):
        differ("subset", settings.get("subset"), claim["subset"])
    if claim.get("seeds") is not None and sorted(settings.get("seeds") or []) != sorted(claim["seeds"]):
        differ("seeds", settings.get("seeds"), claim["seeds"])
    cb = _claim_betas(claim)
    if cb is not None and _grid(settings.get("betas") or []) != _grid(cb):
        ours = sorted(_grid(settings.get("betas") or []))
        desc = f"{len(ours)} betas {ours[0]:.2f}..{ours[-1]:.2f}" if ours else "none"
        differ("betas", desc, claim.get("betas"))
    if claim.get("coeff") is not None and (settings.get("coeff") is None or
                                           abs(float(settings["coeff"]) - float(claim["coeff"])) > 1e-9):
        differ("coeff", settings.get("coeff"), claim["coeff"])
    if claim.get("attacks") is not None and _attack_list(settings.get("attacks")) != _attack_list(claim["attacks"]):
        differ("attacks", settings.get("attacks"), claim["attacks"])
    return diffs


def compare_claims(summaries: Sequence[dict], claims: Sequence[Mapping], conf: float = 0.95) -> list[dict]:
    """Put each paper claim next to our number on the runs that match its setting.

    A claim is *matched* when, for every dataset it averages over, a run has exactly the claim's setting
    (model, threat, eps for that dataset, n_examples, subset, seeds, betas, coeff, attacks). Then ``ours``
    is the paper's aggregate on those runs with its bootstrap interval, and ``paper_in_our_ci`` says
    whether the paper's value lies in it. Otherwise, for each dataset the closest run and its differing
    settings are listed, and ``ours_closest`` gives the aggregate on the closest runs (not comparable).

    Args:
        summaries: outputs of :func:`summarize_run`.
        claims: entries of ``configs/paper_claims.yaml``.
        conf: confidence level.

    Returns:
        One dict per claim.
    """
    out = []
    for claim in claims:
        datasets = list(claim.get("datasets") or [])
        per_dataset, matched_runs, closest_runs = [], [], []
        for ds in datasets:
            cands = [s for s in summaries if s["settings"].get("dataset") is not None
                     and _norm_name(s["settings"]["dataset"]) == _norm_name(ds)]
            scored = sorted(((len(_setting_diffs(claim, s["settings"])), i, s) for i, s in enumerate(cands)),
                            key=lambda t: (t[0], t[1]))
            if not scored:
                per_dataset.append({"dataset": ds, "run": None, "diffs": ["no run for this dataset"]})
                continue
            _, _, best = scored[0]
            diffs = _setting_diffs(claim, best["settings"])
            per_dataset.append({"dataset": ds, "run": best.get("name"), "diffs": diffs})
            closest_runs.append(best)
            if not diffs:
                matched_runs.append(best)
        matched = bool(datasets) and len(matched_runs) == len(datasets)
        entry = {"id": claim.get("id"), "model": claim.get("model"), "datasets": datasets,
                 "metric": claim.get("metric"), "paper_value_pct": claim.get("value"),
                 "source": claim.get("source"), "matched": matched, "per_dataset": per_dataset,
                 "ours_pct": None, "ours_ci_pct": None, "paper_in_our_ci": None,
                 "ours_heldout_pct": None, "ours_closest_pct": None, "ours_closest_datasets": None}
        if matched:
            agg = _aggregate(matched_runs, conf)
            entry["ours_pct"] = agg["oracle"]["value_pct"]
            entry["ours_ci_pct"] = agg["oracle"]["ci_pct"]
            entry["dropped"] = agg["oracle"]["dropped"]
            if agg["heldout"] is not None:
                entry["ours_heldout_pct"] = agg["heldout"]["value_pct"]
            ci = agg["oracle"]["ci_pct"]
            if claim.get("value") is not None and ci is not None and math.isfinite(ci["lo"]):
                entry["paper_in_our_ci"] = bool(ci["lo"] <= float(claim["value"]) <= ci["hi"])
        else:
            same_model = [r for r in closest_runs
                          if not any(d.startswith("model:") for d in _setting_diffs(claim, r["settings"]))]
            if same_model:
                entry["ours_closest_pct"] = _aggregate(same_model, conf)["oracle"]["value_pct"]
                entry["ours_closest_datasets"] = [r["settings"].get("dataset") for r in same_model]
        out.append(entry)
    return out


# ==================================================================================================
# rendering
def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    return obj


def render_json(report: dict) -> str:
    """JSON text of a report dict: private ``_`` keys dropped; ``inf`` / ``nan`` written as the strings
    ``"inf"``, ``"-inf"``, ``"nan"`` (standard JSON has no such numbers)."""
    return json.dumps(_jsonable(report), indent=2, allow_nan=False)


def _f(x, nd=2) -> str:
    if x is None:
        return "—"
    x = float(x)
    if math.isnan(x):
        return "undefined"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return f"{x:.{nd}f}"


def _fms(d, nd=2) -> str:
    if d is None:
        return "—"
    if d.get("std") is None or not math.isfinite(d["std"]) or d["std"] == 0:
        return _f(d["mean"], nd)
    return f"{_f(d['mean'], nd)} ± {_f(d['std'], nd)}"


def _fci(ci, nd=2) -> str:
    if not ci:
        return "—"
    text = f"[{_f(ci['lo'], nd)}, {_f(ci['hi'], nd)}]"
    if ci.get("n_undefined"):
        text += f" ({ci['n_undefined']} of {ci['n_boot']} replicates undefined: base 0)"
    return text


def _frel(x) -> str:
    if x is None:
        return "—"
    x = float(x)
    if math.isnan(x):
        return "undefined (base 0, CT 0)"
    if math.isinf(x):
        return "+inf (base is 0)"
    return f"{x:+.2f} %"


def _fagg(x) -> str:
    """An aggregate over datasets: NaN there means every dataset was left out (base 0)."""
    if x is not None and math.isnan(float(x)):
        return "undefined (every dataset has base 0)"
    return _frel(x)


def _fp(ps) -> str:
    if not ps:
        return "—"
    return " / ".join(f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}" for p in ps)


def _fmask(m) -> str:
    if m is None:
        return "—"
    if not m["masking_suspected"]:
        return "none"
    return "SUSPECTED: " + "; ".join(f"β {b}: {why}" for b, why in m["by_beta"].items())


def _fbetas(d, betas) -> str:
    if len(betas) > 1 and d["std"] > 0:
        return f"{d['mean']:.3f} ± {d['std']:.3f} ({', '.join(f'{b:.2f}' for b in betas)})"
    return f"{d['mean']:.2f}"


def _md_run(s: dict) -> list[str]:
    st = s["settings"]
    h = s["headline"]
    title = s.get("name") or "run"
    lines = [f"## {title}", ""]
    lines.append(
        f"{st.get('model')} on {st.get('dataset')}, {st.get('threat')} eps {_fmt_eps(st.get('eps'))}, "
        f"n = {h['base']['n']} examples ({st.get('subset') or '?'}), seeds {st.get('seeds')}, "
        f"{len(st.get('betas') or [])} betas, coeff {st.get('coeff')}, attacks {st.get('attacks')}, "
        f"engine {st.get('engine')}.")
    lines.append("")
    lines += ["| protocol | points | beta | robust acc (%) | clean acc (%) | Δ robust vs β=1 (pts) "
              f"| {int(round(s['conf'] * 100))} % CI of Δ (pts, bootstrap) | relative gain (paper formula) "
              "| McNemar p vs β=1 (per seed) | masking flags |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    b, o = h["base"], h["oracle"]
    lines.append(f"| base (β = 1) | all {b['n']} | 1.00 | {_fms(b['robust_acc_pct'])} | {_fms(b['clean_acc_pct'])} "
                 f"| — | — | — | — | {_fmask(b.get('masking'))} |")
    lines.append(f"| {_ORACLE_LABEL} | all {o['n']} | {_fbetas(o['beta'], o['betas'])} | {_fms(o['robust_acc_pct'])} "
                 f"| {_fms(o['clean_acc_pct'])} | {_fms(o['abs_gain_pts'])} | {_fci(o.get('abs_gain_ci_pts'))} "
                 f"| {_frel(o['rel_gain_pct'])} {_fci(o.get('rel_gain_ci_pct'))} | {_fp(o['mcnemar_p'])} "
                 f"| {_fmask(o.get('masking'))} |")
    if h["heldout"] is not None:
        br, hd = h["base_report"], h["heldout"]
        lines.append(f"| base (β = 1), report half | report {br['n']} | 1.00 | {_fms(br['robust_acc_pct'])} "
                     f"| {_fms(br['clean_acc_pct'])} | — | — | — | — | {_fmask(b.get('masking'))} |")
        lines.append(f"| {_HELDOUT_LABEL} | report {hd['n']} (selected on {hd['select_n']}) "
                     f"| {_fbetas(hd['beta'], hd['betas'])} | {_fms(hd['robust_acc_pct'])} "
                     f"| {_fms(hd['clean_acc_pct'])} | {_fms(hd['abs_gain_pts'])} | {_fci(hd.get('abs_gain_ci_pts'))} "
                     f"| {_frel(hd['rel_gain_pct'])} {_fci(hd.get('rel_gain_ci_pct'))} | {_fp(hd['mcnemar_p'])} "
                     f"| {_fmask(hd.get('masking'))} |")
    lines.append("")
    if b["robust_acc_pct"]["mean"] == 0:
        lines.append("**Base robust accuracy is 0: the relative gain (CT − base) / base is +inf for any CT "
                     "gain (undefined if CT is also 0). The paper's aggregate leaves such a dataset out of its "
                     "mean.** Read the absolute gain instead.")
        lines.append("")
    elif b["robust_acc_pct"]["mean"] < 5:
        lines.append(f"Note: base robust accuracy is {_f(b['robust_acc_pct']['mean'])} %: near zero, so the "
                     "relative gain is large for a small absolute gain. Read the absolute gain and its interval.")
        lines.append("")

    # per seed
    lines += ["### Per seed (beta fixed; Newcombe paired interval, exact McNemar)", "",
              "| seed | protocol | points | beta | robust acc (%) | base on same points (%) | Δ (pts) "
              f"| {int(round(s['conf'] * 100))} % CI (pts) | robust only with CT / only at β=1 | McNemar p |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for ps in s["per_seed"]:
        for label, r in (("oracle", ps["oracle"]), ("held-out", ps["heldout"])):
            if r is None:
                continue
            lines.append(f"| {ps['seed']} | {label} | {r['n']} | {r['beta']:.2f} | {_f(r['robust_acc_pct'])} "
                         f"| {_f(r['base_robust_acc_pct'])} | {_f(r['abs_gain_pts'])} "
                         f"| [{_f(r['abs_gain_ci_pts'][0])}, {_f(r['abs_gain_ci_pts'][1])}] "
                         f"| {r['mcnemar_b01']} / {r['mcnemar_b10']} | {_fp([r['mcnemar_p']])} |")
    lines.append("")

    # per beta
    lines += ["### Per beta (all points; masking flags pool the seeds)", "",
              "| beta | robust acc (%) | clean acc (%) | Δ vs β=1 (pts) | McNemar p (per seed) | square-only "
              "| grad zero (%) | grad non-finite (%) | transfer-only | masking suspected |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for pb in sorted(s["per_beta"], key=lambda r: -r["beta"]):
        m = pb.get("masking") or {}

        def g(k, pct=False):
            v = m.get(k)
            return "—" if v is None else (_f(100 * v) if pct else str(v))
        lines.append(f"| {pb['beta']:.2f} | {_fms(pb['robust_acc_pct'])} | {_fms(pb['clean_acc_pct'])} "
                     f"| {_fms(pb['abs_gain_pts'])} | {_fp(pb['mcnemar_p'])} | {g('square_only')} "
                     f"| {g('grad_zero_frac', True)} | {g('grad_nonfinite_frac', True)} | {g('transfer_only')} "
                     f"| {'YES' if m.get('masking_suspected') else 'no'} |")
    lines.append("")
    for w in s.get("warnings") or []:
        lines.append(f"- warning: {w}")
    if s.get("warnings"):
        lines.append("")
    return lines


def render_markdown(report: dict) -> str:
    """Markdown text of a report dict (see :func:`build_report`)."""
    lines = ["# Curvature Tuning robustness: reproduction report", ""]
    conf_pct = int(round(report["conf"] * 100))
    lines += [
        "How to read this report:",
        "",
        f"- **{_ORACLE_LABEL}**: beta is the argmax of robust accuracy over all evaluated points and is reported "
        "on the same points, as in the CT paper. It is biased upwards (the best of many noisy estimates).",
    ]
    if report["select_on"] == "half":
        lines.append(f"- **{_HELDOUT_LABEL}**: beta chosen on one half of a class-stratified split (split seed "
                     f"{report['split_seed']}), accuracy of that beta and of the base model (β = 1) reported on "
                     "the other half. This is the number to trust.")
    lines += [
        f"- Ties in selection go to the beta closest to 1 (the least modification)"
        if report["tie_break"] == "closest_to_one" else "- Ties in selection go to the smallest beta",
        f"- Δ: robust accuracy gain in percentage points. {conf_pct} % CI (bootstrap): percentile bootstrap over "
        f"examples ({report['n_boot']} replicates, seed {report['boot_seed']} combined with each run's "
        "model/dataset/threat/eps, resampled within class x split half); oracle beta held fixed, held-out "
        "beta re-selected on the resampled selection half in every replicate. Per-seed tables: Newcombe "
        "(1998) paired score interval with beta fixed, exact McNemar test.",
        "- Relative gain (paper formula): (CT − base) / base on the seed means; +inf when base is 0, "
        "undefined (0/0) when both are 0.",
        "- Masking flags: points broken only by Square after the gradient attacks missed them; zero or "
        "non-finite input gradients; points robust to the white-box attack at this beta but broken by the "
        "β = 1 adversarial (transfer).",
        "",
    ]
    for s in report["runs"]:
        lines += _md_run(s)

    # aggregates
    aggs = report.get("aggregates") or []
    if aggs:
        lines += ["## Paper aggregate: mean over datasets of per-dataset relative gains", "",
                  "As in the CT reference code: per dataset, (mean over seeds of CT robust acc − mean base) / "
                  "mean base; datasets with base 0 are left out of the mean (listed as dropped).", "",
                  "| model | threat | protocol | per dataset | aggregate | "
                  f"{conf_pct} % CI (bootstrap) | dropped (base 0) |",
                  "|---|---|---|---|---|---|---|"]
        for a in aggs:
            for which, label in (("oracle", "oracle (paper protocol)"), ("heldout", "held-out")):
                e = a.get(which)
                if e is None:
                    continue
                per = "; ".join(f"{p['dataset']}: {_frel(p['rel_gain_pct'])}" for p in e["per_dataset"])
                lines.append(f"| {a['model']} | {a['threat']} | {label} | {per} | {_fagg(e['value_pct'])} "
                             f"| {_fci(e.get('ci_pct'))} | {', '.join(map(str, e['dropped'])) or 'none'} |")
        lines.append("")

    claims = report.get("claims")
    lines += ["## Paper claims", ""]
    if not claims:
        lines += ["No paper claims loaded (configs/paper_claims.yaml or $CTROBUST_CLAIMS).", ""]
    for c in claims or []:
        head = (f"- **{c['id']}** ({c.get('source')}): {c.get('metric')} for {c.get('model')} on "
                f"{', '.join(c['datasets'])} = **{_f(c.get('paper_value_pct'))} %** in the paper.")
        lines.append(head)
        if c["matched"]:
            verdict = ("lies within" if c["paper_in_our_ci"] else "lies outside") \
                if c["paper_in_our_ci"] is not None else "cannot be compared with (no interval)"
            lines.append(f"  Ours on the paper's setting: {_fagg(c['ours_pct'])} "
                         f"({conf_pct} % CI {_fci(c.get('ours_ci_pct'))}); the paper's value {verdict} our interval. "
                         f"Held-out protocol: {_fagg(c.get('ours_heldout_pct'))}.")
            if c.get("dropped"):
                lines.append(f"  Left out of the mean (base 0): {', '.join(map(str, c['dropped']))}.")
        else:
            lines.append("  Not comparable: no run has the paper's setting for every dataset.")
            for pd in c["per_dataset"]:
                if pd["run"] is None:
                    lines.append(f"  - {pd['dataset']}: no run")
                    continue
                lines.append(f"  - {pd['dataset']} (closest run: {pd['run']}): "
                             f"{'same setting' if not pd['diffs'] else 'differs in ' + '; '.join(pd['diffs'])}")
            if c.get("ours_closest_pct") is not None:
                lines.append(f"  Ours on the closest runs with the paper's model "
                             f"({', '.join(map(str, c['ours_closest_datasets']))}; not the paper's full setting, so "
                             f"not comparable): {_fagg(c['ours_closest_pct'])}.")
    lines.append("")
    return "\n".join(lines)


# ==================================================================================================
def _run_boot_seed(boot_seed: int, settings: Mapping) -> int:
    """A per-run bootstrap seed from ``boot_seed`` and the run's identity (not its position in the list)."""
    ident = f"{settings.get('model')}|{settings.get('dataset')}|{settings.get('threat')}|{settings.get('eps')}"
    return (int(boot_seed) * 1_000_003 + zlib.crc32(ident.encode())) % (2 ** 32)


def _check_results(results, summary: dict) -> list[str]:
    """Cross-check ``results.csv`` rows against accuracies recomputed from the outcomes (soft)."""
    warnings = []
    if not results:
        return warnings
    acc_key = next((k for k in ("robust_acc", "robust_accuracy") if k in results[0]), None)
    if acc_key is None or "beta" not in results[0] or "seed" not in results[0]:
        return warnings
    ours = {(ps["seed"], pb["beta"]): pb["robust_acc_pct"] for ps in summary["per_seed"] for pb in ps["per_beta"]}
    for row in results:
        try:
            key = (int(row["seed"]), _bkey(row["beta"]))
            val = float(row[acc_key])
        except (TypeError, ValueError):
            continue
        if key not in ours:
            continue
        val_pct = val * 100 if val <= 1.0 else val
        if abs(val_pct - ours[key]) > 1e-6 and abs(val - ours[key]) > 1e-6:
            warnings.append(f"results.csv robust accuracy at seed {key[0]}, beta {key[1]} ({row[acc_key]}) "
                            f"differs from the per-example outcomes ({ours[key]:.4f} %)")
    return warnings


def build_report(run_dirs: Sequence, fmt: str = "md", select_on: str = "half", split_seed: int = 0, *,
                 claims_path=None, conf: float = 0.95, tie_break: str = "closest_to_one",
                 n_boot: int = 2000, boot_seed: int = 0) -> str:
    """The reproduction report of one or more run directories, from stored results only.

    Args:
        run_dirs: run directories written by ``ctrobust sweep`` (each: one model x dataset x threat x eps).
        fmt: ``"md"`` (markdown) or ``"json"`` (the same numbers, machine-readable; see
            :func:`render_json` for how inf/nan are written).
        select_on: ``"half"`` (oracle and held-out beta, default) or ``"same"`` (oracle only).
        split_seed: seed of the selection/report split.
        claims_path: paper claims YAML (default :func:`default_claims_path`).
        conf: confidence level of every interval.
        tie_break: beta tie-break, see :func:`ctrobust.stats.select_beta`.
        n_boot: bootstrap replicates.
        boot_seed: bootstrap seed (combined with each run's identity).

    Returns:
        The report text.

    Example:
        >>> print(build_report(["runs/Standard_cifar10_Linf_8_255"]))  # doctest: +SKIP
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; known: {', '.join(FORMATS)}")
    if select_on not in SELECT_ON:
        raise ValueError(f"select_on must be one of {', '.join(SELECT_ON)}, got {select_on!r}")
    if not run_dirs:
        raise ValueError("no run directories given")
    from ctrobust.store import load_config, load_outcomes, load_results

    summaries = []
    for rd in run_dirs:
        config = load_config(rd)
        outcomes = load_outcomes(rd)
        settings_hint = {"model": _cfg(config, "model"), "dataset": _cfg(config, "dataset"),
                         "threat": _cfg(config, "threat"), "eps": _cfg(config, "eps")}
        s = summarize_run(outcomes, config, select_on=select_on, split_seed=split_seed, conf=conf,
                          tie_break=tie_break, n_boot=n_boot,
                          boot_seed=_run_boot_seed(boot_seed, settings_hint), name=Path(rd).name)
        try:
            results = load_results(rd)
        except (OSError, ValueError) as exc:  # store raises ConfigError (a ValueError) when absent
            results = None
            s["warnings"].append(f"no stored results to cross-check ({exc}); numbers come from the "
                                 "per-example outcomes")
        s["warnings"] += _check_results(results, s)
        summaries.append(s)
    return report_from_summaries(summaries, fmt=fmt, claims=load_claims(claims_path), conf=conf,
                                 boot_seed=boot_seed)


def report_from_summaries(summaries: Sequence[dict], *, fmt: str = "md", claims: Sequence[Mapping] = (),
                          conf: float = 0.95, boot_seed: int | None = None) -> str:
    """Render a report from :func:`summarize_run` outputs (what :func:`build_report` does after loading).

    Args:
        summaries: per-run summaries (same ``select_on``, ``conf``, ``n_boot`` expected).
        fmt: ``"md"`` or ``"json"``.
        claims: paper claims (see :func:`load_claims`).
        conf: confidence level of the aggregate intervals.
        boot_seed: the bootstrap seed to state in the report (default: the first run's).

    Returns:
        The report text.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; known: {', '.join(FORMATS)}")
    if not summaries:
        raise ValueError("no runs to report")
    first = summaries[0]
    report = {
        "format": REPORT_FORMAT_VERSION,
        "select_on": first["select_on"],
        "split_seed": first["split_seed"],
        "conf": conf,
        "tie_break": first["tie_break"],
        "n_boot": first["n_boot"],
        "boot_seed": first["boot_seed"] if boot_seed is None else boot_seed,
        "runs": list(summaries),
        "aggregates": aggregate_runs(summaries, conf),
        "claims": compare_claims(summaries, claims, conf),
    }
    return render_json(report) if fmt == "json" else render_markdown(report)
