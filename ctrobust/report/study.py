"""The study report of ``ctrobust reproduce``: the paper's table under the reference protocol and beside it.

A study holds one run per (dataset, cell). Cells:

* ``reference`` -- the CT reference code's measurement (``--protocol reference``: normalized-space attack
  with the [0, 1] clamp there, CT on ``nn.ReLU`` submodules only, pyautoattack);
* ``pixel`` -- the same CT scope (``modules``) under the valid, pixel-space threat model;
* ``valid`` -- the valid protocol with full CT coverage (``--ct-scope all``).

Everything is computed into frozen dataclasses first (:class:`StudyReport`), then rendered to Markdown
(:func:`render_study_markdown`) and JSON (:func:`render_study_json`, ``dataclasses.asdict``).

The paper's number is computed by the rules of the reference's ``compare_robustness_results.py``
(:func:`paper_rule`): per dataset and seed, CT = the best robust accuracy over the grid (the first beta
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

__all__ = ["CELLS", "SeedPick", "CurvePoint", "HeldOut", "CellResult", "DatasetTerm", "AggregateRow",
           "StudyReport", "paper_rule", "summarize_cell", "build_study_report", "render_study_markdown",
           "render_study_json", "PAPER_VALUES"]

#: the cells of a study, in decomposition order, and what each adds to the one before.
CELLS = {"reference": "reference protocol (the paper's measurement)",
         "pixel": "+ pixel-space threat model (valid protocol, CT on nn.ReLU modules only)",
         "valid": "+ full CT scope (every ReLU call tuned)"}

#: the paper's headline numbers (abstract; Linf, relative robust-accuracy gain in percent).
PAPER_VALUES = {("resnet50", "Linf"): 1032.64, ("resnet152", "Linf"): 1494.46}


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
        in_ball_frac: fraction of rows whose pixel-space point is inside the stated ball.
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


@dataclass(frozen=True)
class StudyReport:
    """Everything the study report says, before formatting."""

    study: str
    model: str
    threat: str
    datasets: tuple
    cells: tuple
    paper_value_pct: float | None
    decomposition: tuple
    notes: tuple


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


def summarize_cell(dataset: str, cell: str, run: str, outcomes: Mapping, config, heldout=None) -> CellResult:
    """One cell's numbers from its per-example outcomes (``store.load_outcomes``) and config.

    Args:
        heldout: the run's held-out :class:`~ctrobust.report.summary.ProtocolSummary`, or None.
    """
    beta_col = np.asarray(outcomes["beta"], dtype=float)
    seed_col = np.asarray(outcomes["seed"])
    robust = np.asarray(outcomes["robust"], bool)
    clean = np.asarray(outcomes["clean_correct"], bool)
    seeds = sorted(int(s) for s in np.unique(seed_col))
    grid = sorted({float(b) for b in beta_col if b != 1.0})
    picks, base_k, ct_k, n_tot = [], 0, 0, 0
    curve_rows = {b: ([], []) for b in grid + [1.0]}
    for s in seeds:
        ms = seed_col == s
        acc = {}
        for b in grid + [1.0]:
            m = ms & (beta_col == b)
            acc[b] = (100 * robust[m].mean(), 100 * clean[m].mean(), int(robust[m].sum()), int(m.sum()))
            curve_rows[b][0].append(acc[b][0])
            curve_rows[b][1].append(acc[b][1])
        ct, beta, cl = paper_rule(grid, [acc[b][0] for b in grid], acc[1.0][0], [acc[b][1] for b in grid],
                                  acc[1.0][1])
        picks.append(SeedPick(s, acc[1.0][0], ct, beta, cl))
        base_k += acc[1.0][2]
        ct_k += acc[beta][2]
        n_tot += acc[1.0][3]
    n = n_tot // max(1, len(seeds))
    ho = None
    if heldout is not None:
        ci = heldout.abs_gain_ci_pts
        ho = HeldOut(heldout.beta, heldout.robust_acc_pct, heldout.base.robust_acc_pct, heldout.clean_acc_pct,
                     heldout.n, None if ci is None else (ci.lo, ci.hi))
    pix = outcomes.get("pixel_linf")
    inb = outcomes.get("in_ball")
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
        in_ball_frac=None if inb is None or not len(inb) else float(np.mean(inb)))


def _note(config) -> str:
    from ctrobust.protocols import get_protocol

    return get_protocol(getattr(config, "protocol", "valid")).note


def _ms(values) -> MeanStd:
    m, s = mean_std(list(values))
    return MeanStd(float(m), float(s))


def _pct(interval) -> tuple:
    return (100 * interval[0], 100 * interval[1])


def build_study_report(study: str, model: str, threat: str, cells: Sequence[CellResult]) -> StudyReport:
    """The study report: cells, the paper's aggregate per step, and the decomposition."""
    datasets = tuple(dict.fromkeys(c.dataset for c in cells))
    by = {(c.dataset, c.cell): c for c in cells}
    rows = []
    for cell, step in CELLS.items():
        got = [by[(d, cell)] for d in datasets if (d, cell) in by]
        if len(got) != len(datasets) or not got:
            continue
        value, terms = _aggregate([(c.dataset, c.base_pct.mean, c.oracle_pct.mean) for c in got])
        rows.append(AggregateRow(step, cell, "oracle", value, terms))
    valid = [by[(d, "valid")] for d in datasets if (d, "valid") in by]
    if valid and len(valid) == len(datasets) and all(c.heldout is not None for c in valid):
        value, terms = _aggregate([(c.dataset, c.heldout.base_pct.mean, c.heldout.robust_pct.mean) for c in valid])
        rows.append(AggregateRow("+ held-out beta (chosen on one half, reported on the other)", "valid",
                                 "heldout", value, terms))
    notes = []
    if any(c.protocol == "reference" for c in cells):
        from ctrobust.protocols import REFERENCE_NOTE
        notes.append(REFERENCE_NOTE)
    engines = sorted({c.engine for c in cells})
    if len(engines) > 1:
        notes.append("engines: " + ", ".join(f"{c.cell}: {c.engine}" for c in
                                            {c.cell: c for c in cells}.values())
                     + " (the fast engine's parity with pyautoattack: benchmarks/results/parity_*)")
    return StudyReport(study, model, threat, datasets, tuple(cells), PAPER_VALUES.get((model, threat)),
                       tuple(rows), tuple(notes))


# -------------------------------------------------------------------------------------------------
# Rendering
# -------------------------------------------------------------------------------------------------


def _f(x, nd=2, unit="") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{nd}f}{unit}"


def _msf(m: MeanStd, nd=2) -> str:
    return f"{m.mean:.{nd}f} ± {m.std:.{nd}f}"


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
    L = [f"# Reproducing the CT paper's robustness table: {rep.model}, {rep.threat}", ""]
    for note in rep.notes:
        L += [f"> **Note:** {note}", ""]
    L += ["## Per dataset and protocol", "",
          "Accuracies in percent, mean ± std over seeds; [95 % Wilson interval of the pooled seeds]. "
          "Oracle = the reference rule (best beta on the reported points, never below beta = 1).", "",
          "| dataset | cell | protocol | CT scope | engine | n x seeds | base | CT (oracle) | beta | clean at beta "
          "| held-out beta | CT (held-out) | base (held-out half) | pixel max abs(dx) | in stated ball |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in rep.cells:
        ho = c.heldout
        L.append(
            f"| {c.dataset} | {c.cell} | {c.protocol} | {c.ct_scope} | {c.engine} | {c.n} x {len(c.seeds)} "
            f"| {_msf(c.base_pct)} [{_f(c.base_ci_pct[0], 1)}, {_f(c.base_ci_pct[1], 1)}] "
            f"| {_msf(c.oracle_pct)} [{_f(c.oracle_ci_pct[0], 1)}, {_f(c.oracle_ci_pct[1], 1)}] "
            f"| {_msf(c.oracle_beta)} | {_msf(c.oracle_clean_pct)} "
            f"| {_msf(ho.beta) if ho else '-'} "
            f"| {_held_out_cell(ho)} "
            f"| {_msf(ho.base_pct) if ho else '-'} "
            f"| {_f(c.pixel_linf_max, 4)} ({_f(None if c.pixel_linf_max is None else c.pixel_linf_max * 255, 1)}/255) "
            f"| {_f(None if c.in_ball_frac is None else 100 * c.in_ball_frac, 1, ' %')} |")
    L += ["", "## The paper's aggregate and what moves it", "",
          "Mean over datasets (those with base > 0) of (CT - base) / base, in percent, computed by the rules of "
          "the reference's `compare_robustness_results.py`; each row changes one thing from the row above.", "",
          "| step | cell | beta chosen | relative gain | per dataset (base -> CT) |", "|---|---|---|---|---|"]
    if rep.paper_value_pct is not None:
        L.append(f"| the paper (abstract) | - | oracle | {_f(rep.paper_value_pct, 2, ' %')} | - |")
    for r in rep.decomposition:
        per = "; ".join(f"{t.dataset}: {_f(t.base_pct)} -> {_f(t.ct_pct)}"
                        + (f" ({_f(t.rel_pct, 1, ' %')})" if t.rel_pct is not None else " (dropped: base 0)")
                        for t in r.per_dataset)
        L.append(f"| {r.step} | {r.cell} | {r.selection} | {_f(r.value_pct, 2, ' %')} | {per} |")
    L += ["", "How to read it: the first row is the paper's measurement replicated (compare it with the paper's "
          "number); each later row replaces one of its choices by the valid one. A large drop at the pixel-space "
          "row means the reference's number came from its normalized-space clamp rather than from a robustness "
          "gain; the held-out row is what a reader can expect on new points.", ""]
    return "\n".join(L)


def render_study_json(rep: StudyReport) -> str:
    """The study report as JSON (``dataclasses.asdict``; numbers stay numbers)."""
    return json.dumps({"format": "ctrobust-study/1", **dataclasses.asdict(rep)}, indent=1)
