"""Rendering a :class:`~ctrobust.report.summary.Report`: Markdown for people, JSON for programs.

Nothing here computes a statistic: every number is already in the report; this module only chooses
words, units (percent with 2 decimals, betas with 2) and layout.
"""

from __future__ import annotations

import json
import math

import numpy as np

from ctrobust.threat import format_eps
from ctrobust.report.summary import (BootstrapInterval, ClaimComparison, DistanceRow, DistanceSummary,
                                     EpsComparison, MaskingFlags, MaskingSummary, MeanStd, ProtocolSummary, Report,
                                     RunSummary, SettingDiff, to_dict)

__all__ = ["render_markdown", "render_json", "ORACLE_LABEL", "HELDOUT_LABEL"]

ORACLE_LABEL = "oracle (paper protocol: selected on the reported points)"
HELDOUT_LABEL = "held-out (selected on the selection half, reported on the report half)"


# ==================================================================================================
# JSON
def _json_default(obj):
    # numpy scalars that slipped into a summary: write them as the numbers they are
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def render_json(report: Report) -> str:
    """JSON text of a report: ``dataclasses.asdict`` of it, private (``_``) fields left out.

    Numbers stay numbers. Non-finite ones (a relative gain over a base accuracy of 0, an interval with
    every replicate undefined, the median distance of points never broken) are written as ``Infinity``,
    ``-Infinity`` and ``NaN``, the tokens Python's ``json``, JavaScript's ``JSON5`` and pandas read back
    (strict JSON has no such numbers).
    :meth:`Report.from_dict` rebuilds the typed report from ``json.loads`` of the text.

    Args:
        report: the typed report.

    Returns:
        The text, indented by 2.
    """
    return json.dumps(to_dict(report), indent=2, default=_json_default)


# ==================================================================================================
# Markdown: formatting of single values
def _f(x, nd=2) -> str:
    if x is None:
        return "—"
    x = float(x)
    if math.isnan(x):
        return "undefined"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return f"{x:.{nd}f}"


def _fms(d: MeanStd | None, nd=2) -> str:
    if d is None:
        return "—"
    if d.std is None or not math.isfinite(d.std) or d.std == 0:
        return _f(d.mean, nd)
    return f"{_f(d.mean, nd)} ± {_f(d.std, nd)}"


def _fci(ci: BootstrapInterval | None, nd=2) -> str:
    if not ci:
        return "—"
    text = f"[{_f(ci.lo, nd)}, {_f(ci.hi, nd)}]"
    if ci.n_undefined:
        text += f" ({ci.n_undefined} of {ci.n_boot} replicates undefined: base 0)"
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


def _fmask_reason(m: MaskingFlags) -> str:
    parts = []
    if m.square_only:
        parts.append(f"square-only {m.square_only}")
    if m.grad_zero_frac:
        parts.append(f"grad-zero {100 * m.grad_zero_frac:.1f} %")
    if m.grad_nonfinite_frac:
        parts.append(f"grad-non-finite {100 * m.grad_nonfinite_frac:.1f} %")
    if m.transfer_only:
        parts.append(f"transfer-only {m.transfer_only}")
    return ", ".join(parts) or "; ".join(m.reasons)


def _fmask(m: MaskingSummary | None) -> str:
    if m is None:
        return "—"
    if not m.masking_suspected:
        return "none"
    # one entry per beta as printed: betas that round to the same 2 decimals are listed once, the last
    # one's reasons shown (as the report always did)
    by_beta = {}
    for f in m.flags:
        if f.masking_suspected:
            by_beta[f"{f.beta:.2f}"] = _fmask_reason(f)
    return "SUSPECTED: " + "; ".join(f"β {b}: {why}" for b, why in by_beta.items())


def _fbetas(d: MeanStd, betas) -> str:
    if len(betas) > 1 and d.std > 0:
        return f"{d.mean:.3f} ± {d.std:.3f} ({', '.join(f'{b:.2f}' for b in betas)})"
    return f"{d.mean:.2f}"


def _fval(v) -> str:
    """A setting value as written in the claims file or config (tuples shown as lists)."""
    def unfreeze(x):
        return [unfreeze(y) for y in x] if isinstance(x, tuple) else x
    return str(unfreeze(v))


def _fdiff(d: SettingDiff) -> str:
    if d.setting == "eps":
        ours, paper = format_eps(d.ours), format_eps(d.paper)
    elif d.setting == "betas":
        grid = d.ours or ()
        ours = f"{len(grid)} betas {grid[0]:.2f}..{grid[-1]:.2f}" if grid else "none"
        paper = _fval(d.paper)
    else:
        ours, paper = _fval(d.ours), _fval(d.paper)
    return f"{d.setting}: ours {ours}, paper {paper}"


# ==================================================================================================
# Markdown: sections
def _protocol_row(label: str, points: str, p: ProtocolSummary) -> str:
    return (f"| {label} | {points} | {_fbetas(p.beta, p.betas)} | {_fms(p.robust_acc_pct)} "
            f"| {_fms(p.clean_acc_pct)} | {_fms(p.abs_gain_pts)} | {_fci(p.abs_gain_ci_pts)} "
            f"| {_frel(p.rel_gain_pct)} {_fci(p.rel_gain_ci_pct)} | {_fp(p.mcnemar_p)} "
            f"| {_fmask(p.masking)} |")


def _md_run(s: RunSummary) -> list[str]:
    st = s.settings
    o, hd = s.oracle, s.heldout
    b = o.base
    title = s.name or "run"
    conf_pct = int(round(s.conf * 100))
    lines = [f"## {title}", ""]
    lines.append(
        f"{st.model} on {st.dataset}, {st.threat} eps {format_eps(st.eps)}, "
        f"n = {b.n} examples ({st.subset or '?'}), seeds {_fval(st.seeds)}, "
        f"{len(st.betas or ())} betas, coeff {st.coeff}, attacks {st.attacks}, "
        f"engine {st.engine}.")
    lines.append("")
    if st.protocol == "reference":
        from ctrobust.protocols import REFERENCE_NOTE

        lines += [f"> **Threat model: {REFERENCE_NOTE}.** CT scope {st.ct_scope}.", ""]
    if st.data == "timing":
        from ctrobust.data import TIMING_NOTE

        lines += [f"> **{TIMING_NOTE[0].upper() + TIMING_NOTE[1:]}.**", ""]
    lines += ["| protocol | points | beta | robust acc (%) | clean acc (%) | Δ robust vs β=1 (pts) "
              f"| {conf_pct} % CI of Δ (pts, bootstrap) | relative gain (paper formula) "
              "| McNemar p vs β=1 (per seed) | masking flags |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    lines.append(f"| base (β = 1) | all {b.n} | 1.00 | {_fms(b.robust_acc_pct)} | {_fms(b.clean_acc_pct)} "
                 f"| — | — | — | — | {_fmask(b.masking)} |")
    lines.append(_protocol_row(ORACLE_LABEL, f"all {o.n}", o))
    if hd is not None:
        br = hd.base
        lines.append(f"| base (β = 1), report half | report {br.n} | 1.00 | {_fms(br.robust_acc_pct)} "
                     f"| {_fms(br.clean_acc_pct)} | — | — | — | — | {_fmask(b.masking)} |")
        lines.append(_protocol_row(HELDOUT_LABEL, f"report {hd.n} (selected on {hd.select_n})", hd))
    lines.append("")
    if b.robust_acc_pct.mean == 0:
        lines.append("**Base robust accuracy is 0: the relative gain (CT − base) / base is +inf for any CT "
                     "gain (undefined if CT is also 0). The paper's aggregate leaves such a dataset out of its "
                     "mean.** Read the absolute gain instead.")
        lines.append("")
    elif b.robust_acc_pct.mean < 5:
        lines.append(f"Note: base robust accuracy is {_f(b.robust_acc_pct.mean)} %: near zero, so the "
                     "relative gain is large for a small absolute gain. Read the absolute gain and its interval.")
        lines.append("")

    # per seed
    lines += ["### Per seed (beta fixed; Newcombe paired interval, exact McNemar)", "",
              "| seed | protocol | points | beta | robust acc (%) | base on same points (%) | Δ (pts) "
              f"| {conf_pct} % CI (pts) | robust only with CT / only at β=1 | McNemar p |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for ps in s.per_seed:
        for label, sel in (("oracle", ps.oracle), ("held-out", ps.heldout)):
            if sel is None:
                continue
            r = sel.report
            lines.append(f"| {ps.seed} | {label} | {r.n} | {sel.beta:.2f} | {_f(r.robust_acc_pct)} "
                         f"| {_f(r.base_robust_acc_pct)} | {_f(r.abs_gain_pts)} "
                         f"| [{_f(r.abs_gain_ci_pts[0])}, {_f(r.abs_gain_ci_pts[1])}] "
                         f"| {r.mcnemar_b01} / {r.mcnemar_b10} | {_fp([r.mcnemar_p])} |")
    lines.append("")

    # per beta
    lines += ["### Per beta (all points; masking flags pool the seeds)", "",
              "| beta | robust acc (%) | clean acc (%) | Δ vs β=1 (pts) | McNemar p (per seed) | square-only "
              "| grad zero (%) | grad non-finite (%) | transfer-only | masking suspected |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for pb in sorted(s.per_beta, key=lambda r: -r.beta):
        m = pb.masking

        def g(k, as_pct=False):
            v = None if m is None else getattr(m, k)
            return "—" if v is None else (_f(100 * v) if as_pct else str(v))
        lines.append(f"| {pb.beta:.2f} | {_fms(pb.robust_acc_pct)} | {_fms(pb.clean_acc_pct)} "
                     f"| {_fms(pb.abs_gain_pts)} | {_fp(pb.mcnemar_p)} | {g('square_only')} "
                     f"| {g('grad_zero_frac', True)} | {g('grad_nonfinite_frac', True)} | {g('transfer_only')} "
                     f"| {'YES' if m is not None and m.masking_suspected else 'no'} |")
    lines.append("")
    if s.distances is not None:
        lines += _md_distances(s.distances)
    if s.corruptions is not None:
        lines += _md_corruptions(s.corruptions)
    for w in s.warnings:
        lines.append(f"- warning: {w}")
    if s.warnings:
        lines.append("")
    return lines


def _fdist(d, threat) -> str:
    """A distance in the threat's norm: ``k/255`` units for Linf (2 decimals), 3 decimals for L2."""
    if d is None or math.isnan(float(d)):
        return "—"
    d = float(d)
    if math.isinf(d):
        return "inf"
    return f"{255 * d:.2f}/255" if threat == "Linf" else f"{d:.3f}"


def _fdist_ci(ci, threat) -> str:
    lo, hi = ci
    if lo is None or math.isnan(float(lo)):
        return "—"
    return f"[{_fdist(lo, threat)}, {_fdist(hi, threat)}]"


def _fwilcoxon(r: DistanceRow) -> str:
    if r.wilcoxon_n == 0:
        return "— (no difference)"
    return f"{_fp([r.wilcoxon_p])} ({r.wilcoxon_method}, n {r.wilcoxon_n})"


def _fchange(r: DistanceRow) -> str:
    return f"{_f(100 * r.grew_frac, 1)} / {_f(100 * r.shrank_frac, 1)}"


def _facc_ci(acc, ci) -> str:
    return f"{_f(acc)} [{_f(ci[0])}, {_f(ci[1])}]"


def _fweaker(e: EpsComparison | None) -> str:
    return "—" if e is None else ("YES" if e.min_norm_weaker else "no")


def _md_corruptions(c) -> list[str]:
    lines = ["### Common corruptions", "",
             "No attack: \"robust accuracy\" above is the accuracy on the corrupted images (mean over the "
             "(corruption, severity) pairs), and the paired tests compare correctness at each beta with beta = 1. "
             f"Per pair, at beta = 1 and at the {c.chosen_by} choice beta = {c.beta:g} (all seeds pooled):", "",
             "| corruption | severity | n | beta = 1 (%) | chosen beta (%) | gain (pts) |",
             "|---|---|---|---|---|---|"]
    for r in c.rows:
        lines.append(f"| {r.corruption} | {r.severity} | {r.n} | {_f(r.base_acc_pct)} | {_f(r.acc_pct)} "
                     f"| {_f(r.gain_pts)} |")
    lines.append("")
    return lines


def _md_distances(d: DistanceSummary) -> list[str]:
    """The minimal-perturbation section of a run (a run with minimum-norm distances)."""
    conf_pct = int(round(d.conf * 100))
    unit = "k/255 pixel units" if d.threat == "Linf" else "[0, 1] pixel units"
    bounded = ", ".join(d.bounded_attacks)
    lines = ["### Minimal perturbations (minimum-norm attack)", "",
             f"Per example, the smallest {d.threat} perturbation the minimum-norm attack found ({unit}; an upper "
             "bound on the minimal one): inf = never broken, 0 = misclassified clean. Median with its "
             f"{conf_pct} % percentile bootstrap interval over examples ({d.n_boot} replicates); against β = 1 on "
             "the same examples: the share whose distance grew / shrank and the two-sided Wilcoxon signed-rank "
             "test (zero differences dropped)."]
    compare = bool(d.bounded_attacks) and d.eps is not None
    if compare:
        lines += ["", f"Robust accuracy at eps {format_eps(d.eps)} two ways, with {conf_pct} % Wilson intervals: "
                     f"the bounded suite ({bounded}) and the curve (distance > eps). *min-norm weaker*: the curve's "
                     "lower bound lies above the bounded accuracy, so the minimum-norm attack missed adversarial "
                     "points within eps that the bounded suite found and the curve overstates robustness there."]
    lines.append("")
    head = (f"| seed | beta | points | median distance | {conf_pct} % CI | grew / shrank vs β=1 (%) "
            "| Wilcoxon p vs β=1 | never broken (%) |")
    rule = "|---|---|---|---|---|---|---|---|"
    if compare:
        head += (f" robust at eps, {bounded} (%) | robust at eps, curve (%) | min-norm weaker |")
        rule += "---|---|---|"
    lines += [head, rule]
    for ds in d.per_seed:
        for r in sorted(ds.per_beta, key=lambda r: -r.beta):
            line = (f"| {ds.seed} | {r.beta:.2f} | {r.n} | {_fdist(r.median_dist, d.threat)} "
                    f"| {_fdist_ci(r.median_dist_ci, d.threat)} | {_fchange(r)} | {_fwilcoxon(r)} "
                    f"| {_f(100 * r.never_broken_frac, 1)} |")
            if compare:
                e = r.at_eps
                line += (" — | — | — |" if e is None else
                         f" {_facc_ci(e.bounded_robust_acc_pct, e.bounded_ci_pct)} "
                         f"| {_facc_ci(e.curve_robust_acc_pct, e.curve_ci_pct)} | {_fweaker(e)} |")
            lines.append(line)
    lines.append("")
    lines += ["Beta with the largest median distance (oracle: chosen and reported on all points; held-out: chosen "
              f"on the selection half of the split, seed {d.split_seed}, reported on the report half):"
              if d.split_seed is not None else
              "Beta with the largest median distance (oracle: chosen and reported on all points):", "",
              f"| seed | protocol | points | beta | median distance | {conf_pct} % CI | β=1 median on same points "
              "| grew / shrank vs β=1 (%) | Wilcoxon p vs β=1 |",
              "|---|---|---|---|---|---|---|---|---|"]
    for ds in d.per_seed:
        for label, sel in (("oracle", ds.oracle), ("held-out", ds.heldout)):
            if sel is None:
                continue
            r = sel.report
            points = f"all {r.n}" if label == "oracle" else f"report {r.n} (selected on {sel.select_n})"
            lines.append(f"| {ds.seed} | {label} | {points} | {sel.beta:.2f} | {_fdist(r.median_dist, d.threat)} "
                         f"| {_fdist_ci(r.median_dist_ci, d.threat)} | {_fdist(r.base_median_dist, d.threat)} "
                         f"| {_fchange(r)} | {_fwilcoxon(r)} |")
    lines.append("")
    weaker = [f"seed {ds.seed} β {r.beta:.2f}" for ds in d.per_seed for r in sorted(ds.per_beta, key=lambda r: -r.beta)
              if r.at_eps is not None and r.at_eps.min_norm_weaker]
    if weaker:
        lines += [f"**The minimum-norm attack was weaker than {bounded} at eps {format_eps(d.eps)}** "
                  f"({', '.join(weaker)}): read the curve there as an upper bound that the bounded suite beats.", ""]
    for w in d.warnings:
        lines.append(f"- warning: {w}")
    if d.warnings:
        lines.append("")
    return lines


def _md_claim(c: ClaimComparison, conf_pct: int) -> list[str]:
    lines = [f"- **{c.id}** ({c.source}): {c.metric} for {c.model} on "
             f"{', '.join(c.datasets)} = **{_f(c.paper_value_pct)} %** in the paper."]
    if c.matched:
        verdict = ("lies within" if c.paper_in_our_ci else "lies outside") \
            if c.paper_in_our_ci is not None else "cannot be compared with (no interval)"
        lines.append(f"  Ours on the paper's setting: {_fagg(c.ours_pct)} "
                     f"({conf_pct} % CI {_fci(c.ours_ci_pct)}); the paper's value {verdict} our interval. "
                     f"Held-out protocol: {_fagg(c.ours_heldout_pct)}.")
        if c.dropped:
            lines.append(f"  Left out of the mean (base 0): {', '.join(map(str, c.dropped))}.")
        return lines
    lines.append("  Not comparable: no run has the paper's setting for every dataset.")
    for pd in c.per_dataset:
        if pd.run is None:
            lines.append(f"  - {pd.dataset}: no run")
            continue
        lines.append(f"  - {pd.dataset} (closest run: {pd.run}): "
                     f"{'same setting' if not pd.diffs else 'differs in ' + '; '.join(map(_fdiff, pd.diffs))}")
    if c.ours_closest_pct is not None:
        lines.append(f"  Ours on the closest runs with the paper's model "
                     f"({', '.join(map(str, c.ours_closest_datasets))}; not the paper's full setting, so "
                     f"not comparable): {_fagg(c.ours_closest_pct)}.")
    return lines


def render_markdown(report: Report) -> str:
    """Markdown text of a report: how to read it, one section per run, the paper aggregate, the claims.

    Args:
        report: the typed report (:func:`ctrobust.report.summarize`).

    Returns:
        The text.
    """
    lines = ["# Curvature Tuning robustness: reproduction report", ""]
    conf_pct = int(round(report.conf * 100))
    lines += [
        "How to read this report:",
        "",
        f"- **{ORACLE_LABEL}**: beta is the argmax of robust accuracy over all evaluated points and is reported "
        "on the same points, as in the CT paper. It is biased upwards (the best of many noisy estimates).",
    ]
    if report.select_on == "half":
        lines.append(f"- **{HELDOUT_LABEL}**: beta chosen on one half of a class-stratified split (split seed "
                     f"{report.split_seed}), accuracy of that beta and of the base model (β = 1) reported on "
                     "the other half. This is the number to trust.")
    lines += [
        "- Ties in selection go to the beta closest to 1 (the least modification)"
        if report.tie_break == "closest_to_one" else "- Ties in selection go to the smallest beta",
        f"- Δ: robust accuracy gain in percentage points. {conf_pct} % CI (bootstrap): percentile bootstrap over "
        f"examples ({report.n_boot} replicates, seed {report.boot_seed} combined with each run's "
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
    for s in report.runs:
        lines += _md_run(s)

    if report.aggregates:
        lines += ["## Paper aggregate: mean over datasets of per-dataset relative gains", "",
                  "As in the CT reference code: per dataset, (mean over seeds of CT robust acc − mean base) / "
                  "mean base; datasets with base 0 are left out of the mean (listed as dropped).", "",
                  "| model | threat | protocol | per dataset | aggregate | "
                  f"{conf_pct} % CI (bootstrap) | dropped (base 0) |",
                  "|---|---|---|---|---|---|---|"]
        for a in report.aggregates:
            for e, label in ((a.oracle, "oracle (paper protocol)"), (a.heldout, "held-out")):
                if e is None:
                    continue
                per = "; ".join(f"{p.dataset}: {_frel(p.rel_gain_pct)}" for p in e.per_dataset)
                lines.append(f"| {a.model} | {a.threat} | {label} | {per} | {_fagg(e.value_pct)} "
                             f"| {_fci(e.ci_pct)} | {', '.join(map(str, e.dropped)) or 'none'} |")
        lines.append("")

    lines += ["## Paper claims", ""]
    if not report.claims:
        lines += ["No paper claims loaded (configs/paper_claims.yaml or $CTROBUST_CLAIMS).", ""]
    for c in report.claims:
        lines += _md_claim(c, conf_pct)
    lines.append("")
    return "\n".join(lines)
