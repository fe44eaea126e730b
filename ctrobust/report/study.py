"""The study report of ``ctrobust reproduce``: the paper's table under the reference protocol and beside it.

A study holds one run per (threat, dataset, cell). Cells of ``Linf`` and ``L2`` (:data:`CELLS`):

* ``reference`` -- the CT reference code's measurement (``--protocol reference``: normalized-space attack
  with the [0, 1] clamp there, CT on ``nn.ReLU`` submodules only, pyautoattack);
* ``pixel`` -- the same CT scope (``modules``) under the valid, pixel-space threat model;
* ``valid`` -- the valid protocol with full CT coverage (``--ct-scope all``).

Cells of ``corruptions`` (:data:`CORRUPTION_CELLS`; nothing is attacked, so there is no normalized-space
step): ``reference`` (CT on ``nn.ReLU`` modules only) and ``valid`` (full CT scope). Their accuracy is
RobustBench's: the mean over the (corruption, severity) pairs of the accuracy on each pair's images.

Everything is computed into frozen dataclasses first (:class:`StudyReport`), then rendered to Markdown
(:func:`render_study_markdown`) and JSON (:func:`render_study_json`, ``dataclasses.asdict``).

The paper's number is computed by the rules of the reference's ``compare_robustness_results.py``
(:func:`paper_rule`), the same for every threat: per dataset and seed, CT = the best robust accuracy over the grid (the first beta
reaching it, in ascending order, as its ``>`` comparison does), replaced by the beta = 1 accuracy when it is
lower (beta 1); mean over seeds; relative improvement = mean over the datasets whose mean base accuracy is
> 0 of ``(ct - base) / base``. The decomposition applies the same rule cell by cell, then the held-out
beta (chosen on one class-stratified half, reported on the other: :mod:`ctrobust.report.selection`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ctrobust.report.summary import MeanStd
from ctrobust.stats import mean_std, wilson_interval

__all__ = ["CELLS", "CORRUPTION_CELLS", "cells_of", "PaperFigure", "corruption_heldout", "is_corruption_outcomes", "SeedPick", "CurvePoint", "HeldOut", "CellResult", "DatasetTerm", "AggregateRow",
           "StudyReport", "paper_rule", "summarize_cell", "build_study_report", "render_study_markdown",
           "render_study_json", "PAPER_VALUES"]

#: the cells of a study, in decomposition order, and what each adds to the one before.
CELLS = {"reference": "reference protocol (the paper's measurement)",
         "pixel": "+ pixel-space threat model (valid protocol, CT on nn.ReLU modules only)",
         "valid": "+ full CT scope (every ReLU call tuned)"}

#: the cells of a corruptions study (no attack: the protocol is valid in both, the CT scope differs).
CORRUPTION_CELLS = {"reference": "the reference's CT scope (nn.ReLU modules only; no attack: no threat-model step)",
                    "valid": "+ full CT scope (every ReLU call tuned)"}


def cells_of(threat: str) -> dict:
    """The decomposition steps of ``threat``'s cells, in order."""
    return CORRUPTION_CELLS if threat == "corruptions" else CELLS


#: the paper's own figures (relative robust-accuracy gain in percent) and where it states them. Only the
#: abstract's Linf numbers for ResNet-50/152 are recorded: the reference repository prints its L2 and
#: corruptions aggregates (compare_robustness_results.py) but stores none, and no other figure is copied here.
PAPER_VALUES = {("resnet50", "Linf"): 1032.64, ("resnet152", "Linf"): 1494.46}
PAPER_SOURCES = {("resnet50", "Linf"): "arXiv 2502.07783, abstract", ("resnet152", "Linf"): "arXiv 2502.07783, abstract"}


@dataclass(frozen=True)
class PaperFigure:
    """One of the paper's own aggregates, for one threat and model (``value_pct`` None: not reported)."""

    threat: str
    value_pct: float | None
    source: str


@dataclass(frozen=True)
class SeedPick:
    """The reference rule applied to one seed: base, CT and its beta (1 when CT is not better)."""

    seed: int
    base_pct: float
    ct_pct: float
    beta: float
    clean_pct: float


@dataclass(frozen=True)
class CurvePoint:
    """Mean over seeds of clean and robust accuracy (percent) at one beta."""

    beta: float
    robust_pct: float
    clean_pct: float


@dataclass(frozen=True)
class HeldOut:
    """CT at the beta chosen on a held-out half, reported on the other half (means over seeds)."""

    beta: MeanStd
    robust_pct: MeanStd
    base_pct: MeanStd
    clean_pct: MeanStd
    n_report: int
    abs_gain_ci_pts: tuple | None


@dataclass(frozen=True)
class CellResult:
    """One (dataset, cell) run of a study.

    Attributes:
        dataset, cell: where it sits in the study (:data:`CELLS`).
        run: its run directory (relative to the study dir).
        protocol, ct_scope, engine, model: its settings.
        n: examples per seed; seeds: the seeds.
        note: what the run says about its threat model ("" for the stated one).
        base_pct / base_ci_pct: beta = 1 robust accuracy (mean over seeds; 95 % Wilson interval of the
            pooled seeds).
        oracle_pct / oracle_beta / oracle_clean_pct / oracle_ci_pct: CT by the reference rule.
        per_seed: the rule per seed.
        heldout: the held-out choice of beta, or None.
        curve: mean accuracies per beta.
        pixel_linf_max: largest pixel-space max |x_adv - x| over the run (reference protocol: beyond eps).
        in_ball_frac: fraction of rows whose pixel-space point is inside the stated ball (the threat's norm).
        pixel_l2_max: largest pixel-space ||x_adv - x||_2 (None: not recorded, or no attack).
        pairs: (corruption, severity) pairs evaluated (corruptions; 0 otherwise); ``n`` is images per pair.
        threat: ``Linf``, ``L2`` or ``corruptions``.
    """

    dataset: str
    cell: str
    run: str
    protocol: str
    ct_scope: str
    engine: str
    model: str
    n: int
    seeds: tuple
    note: str
    base_pct: MeanStd
    base_ci_pct: tuple
    oracle_pct: MeanStd
    oracle_beta: MeanStd
    oracle_clean_pct: MeanStd
    oracle_ci_pct: tuple
    per_seed: tuple
    heldout: HeldOut | None
    curve: tuple
    pixel_linf_max: float | None
    in_ball_frac: float | None
    pixel_l2_max: float | None = None
    pairs: int = 0
    threat: str = "Linf"


@dataclass(frozen=True)
class DatasetTerm:
    """One dataset's term of an aggregate (``rel_pct`` None: dropped because its base is 0)."""

    dataset: str
    base_pct: float
    ct_pct: float
    rel_pct: float | None


@dataclass(frozen=True)
class AggregateRow:
    """The paper's aggregate (mean relative gain over datasets, percent) for one step of the study."""

    step: str
    cell: str
    selection: str
    value_pct: float | None
    per_dataset: tuple
    threat: str = "Linf"


@dataclass(frozen=True)
class StudyReport:
    """Everything the study report says, before formatting.

    ``threat`` is the threats as one label (``Linf,L2,corruptions``), ``threats`` the tuple; ``paper`` one
    :class:`PaperFigure` per threat; ``decomposition`` the :class:`AggregateRow` of every threat, in order.
    """

    study: str
    model: str
    threat: str
    datasets: tuple
    cells: tuple
    paper: tuple
    decomposition: tuple
    notes: tuple
    threats: tuple = ()


# -------------------------------------------------------------------------------------------------
# Computation
# -------------------------------------------------------------------------------------------------


def paper_rule(betas: Sequence[float], robust_pct: Sequence[float], base_pct: float,
               clean_pct: Sequence[float] | None = None, base_clean_pct: float = float("nan")):
    """The reference's choice for one seed: ``(ct_pct, beta, clean_pct)``.

    Args:
        betas: the CT grid (beta < 1), any order.
        robust_pct: robust accuracy at each beta.
        base_pct: robust accuracy at beta = 1.
        clean_pct: clean accuracy at each beta (for the chosen one's clean accuracy).
        base_clean_pct: clean accuracy at beta = 1.
    """
    order = np.argsort(np.asarray(betas, dtype=float), kind="stable")
    best, best_i = -1.0, None
    for i in order:  # robustness.py: `if test_acc > best_acc` over an ascending grid
        if robust_pct[i] > best:
            best, best_i = float(robust_pct[i]), int(i)
    if best_i is None or best < base_pct:  # compare_robustness_results.py: ct < base -> base, beta 1
        return float(base_pct), 1.0, float(base_clean_pct)
    return best, float(betas[best_i]), float(clean_pct[best_i]) if clean_pct is not None else float("nan")


def _aggregate(terms: Sequence[tuple[str, float, float]]) -> tuple[float | None, tuple]:
    """Mean over datasets with base > 0 of (ct - base) / base, in percent, and the per-dataset terms."""
    out, rel = [], []
    for dataset, base, ct in terms:
        r = (ct - base) / base * 100 if base > 0 else None
        out.append(DatasetTerm(dataset, base, ct, r))
        if r is not None:
            rel.append(r)
    return (float(np.mean(rel)) if rel else None), tuple(out)


def is_corruption_outcomes(outcomes: Mapping) -> bool:
    """True for a corruptions run's outcomes: a ``corruption`` column with names (other runs hold ``""``)."""
    col = outcomes.get("corruption")
    return col is not None and len(col) > 0 and bool(np.any(np.asarray(col).astype(str) != ""))


def _pair_index(outcomes: Mapping) -> tuple[np.ndarray | None, int]:
    """Per row, the index of its (corruption, severity) pair, and the number of pairs (None, 0: no pairs)."""
    if not is_corruption_outcomes(outcomes):
        return None, 0
    keys = np.char.add(np.asarray(outcomes["corruption"]).astype(str),
                       np.char.add("/", np.asarray(outcomes["severity"]).astype(str)))
    _, inv = np.unique(keys, return_inverse=True)
    return inv.ravel(), int(inv.max()) + 1


def _mean_acc(flags: np.ndarray, mask: np.ndarray, pair: np.ndarray | None) -> float:
    """Accuracy (fraction) of ``flags[mask]``; with pairs, RobustBench's mean over pairs of each pair's accuracy."""
    if pair is None:
        return float(flags[mask].mean())
    p = pair[mask]
    n = np.bincount(p)
    k = np.bincount(p, weights=flags[mask].astype(float), minlength=n.size)
    return float(np.mean(k[n > 0] / n[n > 0]))


def summarize_cell(dataset: str, cell: str, run: str, outcomes: Mapping, config, heldout=None,
                   threat: str | None = None) -> CellResult:
    """One cell's numbers from its per-example outcomes (``store.load_outcomes``) and config.

    Args:
        heldout: the run's held-out :class:`~ctrobust.report.summary.ProtocolSummary` (or a :class:`HeldOut`),
            or None.
        threat: the cell's threat (default: the config's).

    Outcomes of a corruptions run (columns ``corruption``, ``severity``: one row per image and pair) give the
    mean over pairs of each pair's accuracy, as RobustBench's ``corruptions_evaluation``.
    """
    beta_col = np.asarray(outcomes["beta"], dtype=float)
    seed_col = np.asarray(outcomes["seed"])
    robust = np.asarray(outcomes["robust"], bool)
    clean = np.asarray(outcomes["clean_correct"], bool)
    pair, n_pairs = _pair_index(outcomes)
    seeds = sorted(int(s) for s in np.unique(seed_col))
    grid = sorted({float(b) for b in beta_col if b != 1.0})
    picks, base_k, ct_k, n_tot = [], 0, 0, 0
    curve_rows = {b: ([], []) for b in grid + [1.0]}
    for s in seeds:
        ms = seed_col == s
        acc = {}
        for b in grid + [1.0]:
            m = ms & (beta_col == b)
            acc[b] = (100 * _mean_acc(robust, m, pair), 100 * _mean_acc(clean, m, pair), int(robust[m].sum()),
                      int(m.sum()))
            curve_rows[b][0].append(acc[b][0])
            curve_rows[b][1].append(acc[b][1])
        ct, beta, cl = paper_rule(grid, [acc[b][0] for b in grid], acc[1.0][0], [acc[b][1] for b in grid],
                                  acc[1.0][1])
        picks.append(SeedPick(s, acc[1.0][0], ct, beta, cl))
        base_k += acc[1.0][2]
        ct_k += acc[beta][2]
        n_tot += acc[1.0][3]
    n = n_tot // max(1, len(seeds)) // max(1, n_pairs)
    ho = heldout if isinstance(heldout, HeldOut) else None
    if heldout is not None and ho is None:
        ci = heldout.abs_gain_ci_pts
        ho = HeldOut(heldout.beta, heldout.robust_acc_pct, heldout.base.robust_acc_pct, heldout.clean_acc_pct,
                     heldout.n, None if ci is None else (ci.lo, ci.hi))
    pix = outcomes.get("pixel_linf")
    inb = outcomes.get("in_ball")
    pl2 = outcomes.get("pixel_l2")
    if pair is not None:  # no attack: nothing was perturbed by us
        pix = inb = pl2 = None
    threat = str(threat or getattr(config, "threat", "Linf"))
    return CellResult(
        dataset=dataset, cell=cell, run=run, protocol=str(getattr(config, "protocol", "valid")),
        ct_scope=str(getattr(config, "ct_scope", "all")), engine=str(config.engine), model=str(config.model),
        n=n, seeds=tuple(seeds), note=_note(config),
        base_pct=_ms([p.base_pct for p in picks]), base_ci_pct=_pct(wilson_interval(base_k, n_tot)),
        oracle_pct=_ms([p.ct_pct for p in picks]), oracle_beta=_ms([p.beta for p in picks]),
        oracle_clean_pct=_ms([p.clean_pct for p in picks]), oracle_ci_pct=_pct(wilson_interval(ct_k, n_tot)),
        per_seed=tuple(picks), heldout=ho,
        curve=tuple(CurvePoint(b, float(np.mean(curve_rows[b][0])), float(np.mean(curve_rows[b][1])))
                    for b in sorted(curve_rows)),
        pixel_linf_max=None if pix is None or not len(pix) else float(np.max(pix)),
        in_ball_frac=None if inb is None or not len(inb) else float(np.mean(inb)),
        pixel_l2_max=_finite_max(pl2), pairs=n_pairs, threat=threat)


def _finite_max(values) -> float | None:
    if values is None or not len(values):
        return None
    v = np.asarray(values, dtype=float)
    return float(np.max(v)) if np.isfinite(v).all() else None


def corruption_heldout(outcomes: Mapping, *, split_seed: int = 0, tie_break: str = "closest_to_one") -> HeldOut | None:
    """Held-out beta of a corruptions run: chosen on one class-stratified half of the *images* (every pair of
    an image on the same side: :func:`ctrobust.stats.stratified_split` keeps repeated ids together), reported
    on the other half; accuracies are means over pairs. None when a half is empty."""
    from ctrobust.stats import select_beta, stratified_split

    ids = np.asarray(outcomes["id"]).astype(np.int64)
    labels = np.asarray(outcomes["label"]).astype(np.int64)
    sel, rep = stratified_split(ids, labels, split_seed)
    if not sel.any() or not rep.any():
        return None
    beta_col = np.round(np.asarray(outcomes["beta"], dtype=float), 6)
    seed_col = np.asarray(outcomes["seed"])
    correct = np.asarray(outcomes["robust"], bool)
    pair, _ = _pair_index(outcomes)
    betas, robust, base, chosen = sorted(set(beta_col.tolist())), [], [], []
    for s in np.unique(seed_col):
        ms = seed_col == s
        acc_sel = {b: _mean_acc(correct, ms & sel & (beta_col == b), pair) for b in betas}
        b = select_beta(acc_sel, tie_break=tie_break)
        chosen.append(b)
        robust.append(100 * _mean_acc(correct, ms & rep & (beta_col == b), pair))
        base.append(100 * _mean_acc(correct, ms & rep & (beta_col == 1.0), pair))
    n_report = int(np.unique(ids[rep]).size)
    return HeldOut(_ms(chosen), _ms(robust), _ms(base), _ms(robust), n_report, None)


def _note(config) -> str:
    from ctrobust.protocols import get_protocol

    return get_protocol(getattr(config, "protocol", "valid")).note


def _ms(values) -> MeanStd:
    m, s = mean_std(list(values))
    return MeanStd(float(m), float(s))


def _pct(interval) -> tuple:
    return (100 * interval[0], 100 * interval[1])


def _threat_rows(threat: str, datasets: tuple, cells: Sequence[CellResult]) -> list[AggregateRow]:
    by = {(c.dataset, c.cell): c for c in cells}
    rows = []
    for cell, step in cells_of(threat).items():
        got = [by[(d, cell)] for d in datasets if (d, cell) in by]
        if len(got) != len(datasets) or not got:
            continue
        value, terms = _aggregate([(c.dataset, c.base_pct.mean, c.oracle_pct.mean) for c in got])
        rows.append(AggregateRow(step, cell, "oracle", value, terms, threat))
    valid = [by[(d, "valid")] for d in datasets if (d, "valid") in by]
    if valid and len(valid) == len(datasets) and all(c.heldout is not None for c in valid):
        value, terms = _aggregate([(c.dataset, c.heldout.base_pct.mean, c.heldout.robust_pct.mean) for c in valid])
        rows.append(AggregateRow("+ held-out beta (chosen on one half, reported on the other)", "valid",
                                 "heldout", value, terms, threat))
    return rows


def build_study_report(study: str, model: str, threats, cells: Sequence[CellResult]) -> StudyReport:
    """The study report: cells, the paper's aggregate per threat and step, and the decomposition.

    Args:
        threats: ``"Linf"``, ``"Linf,L2"`` or a sequence of threats; each cell's ``threat`` says where it goes.
    """
    from ctrobust.attacks import split_list

    threats = tuple(split_list(threats)) if isinstance(threats, str) else tuple(threats)
    datasets = tuple(dict.fromkeys(c.dataset for c in cells))
    rows, paper = [], []
    for t in threats:
        tc = [c for c in cells if c.threat == t]
        rows += _threat_rows(t, tuple(dict.fromkeys(c.dataset for c in tc)), tc)
        paper.append(PaperFigure(t, PAPER_VALUES.get((model, t)),
                                 PAPER_SOURCES.get((model, t), "not reported in the paper's abstract; not recorded")))
    notes = []
    if any(c.protocol == "reference" for c in cells):
        from ctrobust.protocols import REFERENCE_NOTE
        notes.append(REFERENCE_NOTE)
    engines = sorted({c.engine for c in cells if c.threat != "corruptions"})
    if len(engines) > 1:
        notes.append("engines: " + ", ".join(f"{c.cell}: {c.engine}" for c in
                                            {c.cell: c for c in cells if c.threat != "corruptions"}.values())
                     + " (the fast engine's parity with pyautoattack: benchmarks/results/parity_*)")
    if "corruptions" in threats:
        notes.append("corruptions: accuracy on the corrupted images (no attack), the mean over the (corruption, "
                     "severity) pairs as RobustBench's corruptions_evaluation; 'robust' = correct on a corrupted image")
    return StudyReport(study, model, ",".join(threats), datasets, tuple(cells), tuple(paper), tuple(rows),
                       tuple(notes), threats)


# -------------------------------------------------------------------------------------------------
# Rendering
# -------------------------------------------------------------------------------------------------


def _f(x, nd=2, unit="") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{nd}f}{unit}"


def _msf(m: MeanStd, nd=2) -> str:
    return f"{m.mean:.{nd}f} ± {m.std:.{nd}f}"


def _perturbation(c: CellResult) -> str:
    """The largest pixel-space perturbation in the threat's norm (L2 runs also show max abs(dx))."""
    if c.threat == "L2":
        return f"L2 {_f(c.pixel_l2_max, 4)}; max abs(dx) {_f(c.pixel_linf_max, 4)}"
    if c.pixel_linf_max is None:
        return "-"
    return f"{_f(c.pixel_linf_max, 4)} ({_f(c.pixel_linf_max * 255, 1)}/255)"


def _held_out_cell(ho: "HeldOut | None") -> str:
    """CT's held-out accuracy (%), then the interval of its gain over the base, labelled as such (pts)."""
    if ho is None:
        return "-"
    if ho.abs_gain_ci_pts is None:
        return _msf(ho.robust_pct)
    lo, hi = ho.abs_gain_ci_pts
    return f"{_msf(ho.robust_pct)} (Δ vs base: 95 % CI [{_f(lo, 1)}, {_f(hi, 1)}] pts)"


def render_study_markdown(rep: StudyReport) -> str:
    """The study report as Markdown (formatting only: every number comes from ``rep``)."""
    threats = rep.threats or (rep.threat,)
    L = [f"# Reproducing the CT paper's robustness table: {rep.model}, {', '.join(threats)}", ""]
    for note in rep.notes:
        L += [f"> **Note:** {note}", ""]
    L += ["## Per dataset and protocol", "",
          "Accuracies in percent, mean ± std over seeds; [95 % Wilson interval of the pooled seeds]. "
          "Oracle = the reference rule (best beta on the reported points, never below beta = 1). "
          "Corruptions: n = images per (corruption, severity) pair.", "",
          "| threat | dataset | cell | protocol | CT scope | engine | n x seeds | base | CT (oracle) | beta "
          "| clean at beta | held-out beta | CT (held-out) | base (held-out half) | pixel perturbation (max) "
          "| in stated ball |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in rep.cells:
        ho = c.heldout
        engine = "- (no attack)" if c.threat == "corruptions" else c.engine
        n = f"{c.n} x {c.pairs} pairs x {len(c.seeds)}" if c.pairs else f"{c.n} x {len(c.seeds)}"
        L.append(
            f"| {c.threat} | {c.dataset} | {c.cell} | {c.protocol} | {c.ct_scope} | {engine} | {n} "
            f"| {_msf(c.base_pct)} [{_f(c.base_ci_pct[0], 1)}, {_f(c.base_ci_pct[1], 1)}] "
            f"| {_msf(c.oracle_pct)} [{_f(c.oracle_ci_pct[0], 1)}, {_f(c.oracle_ci_pct[1], 1)}] "
            f"| {_msf(c.oracle_beta)} | {_msf(c.oracle_clean_pct)} "
            f"| {_msf(ho.beta) if ho else '-'} "
            f"| {_held_out_cell(ho)} "
            f"| {_msf(ho.base_pct) if ho else '-'} "
            f"| {_perturbation(c)} "
            f"| {_f(None if c.in_ball_frac is None else 100 * c.in_ball_frac, 1, ' %')} |")
    L += ["", "## The paper's aggregate and what moves it", "",
          "Per threat: mean over datasets (those with base > 0) of (CT - base) / base, in percent, computed by the "
          "rules of the reference's `compare_robustness_results.py` (the same for Linf, L2 and corruptions); "
          "each row of a threat changes one thing from the row above.", "",
          "| threat | step | cell | beta chosen | relative gain | per dataset (base -> CT) |",
          "|---|---|---|---|---|---|"]
    paper = {p.threat: p for p in rep.paper}
    for t in threats:
        p = paper.get(t)
        if p is not None:
            shown = _f(p.value_pct, 2, ' %') if p.value_pct is not None else "not recorded"
            L.append(f"| {t} | the paper ({p.source}) | - | oracle | {shown} | - |")
        for r in (r for r in rep.decomposition if r.threat == t):
            per = "; ".join(f"{x.dataset}: {_f(x.base_pct)} -> {_f(x.ct_pct)}"
                            + (f" ({_f(x.rel_pct, 1, ' %')})" if x.rel_pct is not None else " (dropped: base 0)")
                            for x in r.per_dataset)
            L.append(f"| {t} | {r.step} | {r.cell} | {r.selection} | {_f(r.value_pct, 2, ' %')} | {per} |")
    L += ["", "How to read it: the first row of a threat is the paper's measurement replicated (compare it with the "
          "paper's number); each later row replaces one of its choices by the valid one. A large drop at the "
          "pixel-space row means the reference's number came from its normalized-space clamp rather than from a "
          "robustness gain; the held-out row is what a reader can expect on new points. Corruptions have no "
          "attack, so their rows differ by the CT scope and the choice of beta only.", ""]
    return "\n".join(L)


def render_study_json(rep: StudyReport) -> str:
    """The study report as JSON (``dataclasses.asdict``; numbers stay numbers)."""
    return json.dumps({"format": "ctrobust-study/2", **dataclasses.asdict(rep)}, indent=1)
