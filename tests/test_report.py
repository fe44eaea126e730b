"""Tests for ctrobust.report on hand-made per-example outcomes (no store, no attacks).

The toy run: 8 examples, 2 classes (4 each), betas 0.8 / 0.9 / 1.0. With S = the selection half and
R = the report half of the seeded stratified split (2 per class each; S = s0..s3, R = r0..r3):

    beta 1.0 robust on {s0, r0}            all 2/8 = 25 %    S 1/4 = 25 %    R 1/4 = 25 %
    beta 0.9 robust on S + {r0}            all 5/8 = 62.5 %  S 4/4 = 100 %   R 1/4 = 25 %
    beta 0.8 robust on {s0, s1} + R        all 6/8 = 75 %    S 2/4 = 50 %    R 4/4 = 100 %

Oracle (argmax on all points): beta 0.8, 75 %, gain 75 - 25 = 50 points, relative (75 - 25) / 25 = 200 %.
McNemar 0.8 vs 1.0: base-only robust = {} (b10 = 0), 0.8-only = {s1, r1, r2, r3} (b01 = 4):
p = 2 * C(4, 0) / 2^4 = 0.125.
Held-out (argmax on S): beta 0.9 (100 %), reported on R: 25 %, base on R: 25 %: gain 0, p = 1.

The summaries are typed (``ctrobust.report.summary``); rendering is tested on a hand-built report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types

import numpy as np
import pytest

from ctrobust import report, stats
from ctrobust.report import summary as S
from ctrobust.report.claims import _claim_betas

IDS = np.array([11, 12, 13, 14, 21, 22, 23, 24])
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def _halves(split_seed=0):
    sel, _ = stats.stratified_split(IDS, LABELS, split_seed)
    s = sorted(IDS[sel].tolist())
    r = sorted(IDS[~sel].tolist())
    return s, r


def _toy_outcomes(seeds=(42,), base_sets=None, split_seed=0, masked_beta=None):
    s, r = _halves(split_seed)
    robust_sets = {1.0: {s[0], r[0]}, 0.9: set(s) | {r[0]}, 0.8: {s[0], s[1]} | set(r)}
    cols = {k: [] for k in ("id", "label", "beta", "seed", "clean_correct", "robust", "broken_by",
                            "grad_zero", "grad_nonfinite", "transfer_broken")}
    for seed in seeds:
        for beta in (1.0, 0.9, 0.8):
            robust = robust_sets[beta] if base_sets is None or beta != 1.0 else base_sets[seed]
            for i, lab in zip(IDS, LABELS):
                rob = int(i) in robust
                # clean accuracy: 100 % except s3 at beta 0.8 (not robust there, so consistent): 7/8
                clean = not (beta == 0.8 and int(i) == s[3])
                cols["id"].append(i)
                cols["label"].append(lab)
                cols["beta"].append(beta)
                cols["seed"].append(seed)
                cols["clean_correct"].append(clean)
                cols["robust"].append(rob)
                cols["broken_by"].append("" if rob else ("clean" if not clean else "apgd-ce"))
                cols["grad_zero"].append(beta == masked_beta)
                cols["grad_nonfinite"].append(False)
                cols["transfer_broken"].append(not rob)
    return {k: np.asarray(v) for k, v in cols.items()}


CFG = {"model": "toynet", "dataset": "cifar10", "threat": "Linf", "eps": 8 / 255, "n_examples": 8,
       "subset": "balanced", "seeds": [42], "betas": [1.0, 0.9, 0.8], "coeff": 0.5, "attacks": "standard",
       "engine": "fast"}


def test_oracle_and_heldout_against_hand_values():
    s = report.summarize_run(_toy_outcomes(), CFG, n_boot=200, name="toy")
    assert isinstance(s, report.RunSummary)
    (ps,) = s.per_seed
    base = next(r for r in ps.per_beta if r.beta == 1.0)
    assert base.robust_acc_pct == 25.0 and base.clean_acc_pct == 100.0
    o = ps.oracle
    assert o.beta == 0.8 and o.select_n == 8 and o.select_robust_acc_pct == 75.0
    r = o.report
    assert r.robust_acc_pct == 75.0 and r.base_robust_acc_pct == 25.0 and r.abs_gain_pts == 50.0
    assert r.rel_gain_pct == pytest.approx(200.0)
    assert r.clean_acc_pct == 87.5 and r.base_clean_acc_pct == 100.0
    assert (r.mcnemar_b01, r.mcnemar_b10) == (4, 0)
    assert r.mcnemar_p == pytest.approx(0.125)
    h = ps.heldout
    assert h.beta == 0.9 and h.select_n == 4 and h.report.n == 4
    assert h.select_robust_acc_pct == 100.0
    assert h.report.robust_acc_pct == 25.0 and h.report.base_robust_acc_pct == 25.0
    assert h.report.abs_gain_pts == 0.0 and h.report.mcnemar_p == 1.0
    assert h.report.clean_acc_pct == 100.0
    # the Newcombe interval of the oracle gain is the stats function on the same flags
    lo, hi = stats.paired_diff_interval(*[_flags(beta) for beta in (0.8, 1.0)])
    assert r.abs_gain_ci_pts == pytest.approx((100 * lo, 100 * hi))
    # bootstrap intervals exist and contain the point estimates
    ci = s.oracle.abs_gain_ci_pts
    assert isinstance(ci, stats.BootstrapInterval)
    assert ci.n_boot == 200 and ci.lo <= 50.0 <= ci.hi


def _flags(beta):
    out = _toy_outcomes()
    m = out["beta"] == beta
    order = np.argsort(out["id"][m])
    return out["robust"][m][order]


def test_seed_means_and_paper_relative_gain():
    # seed 43: the base model is robust on s0 only (1/8 = 12.5 %; on R: 0/4 = 0 %)
    s0 = _halves()[0][0]
    base_sets = {42: None, 43: {s0}}
    s_, r_ = _halves()
    base_sets[42] = {s_[0], r_[0]}
    out = _toy_outcomes(seeds=(42, 43), base_sets=base_sets)
    cfg = dict(CFG, seeds=[42, 43])
    summ = report.summarize_run(out, cfg, n_boot=0)
    # base: 25 and 12.5 -> mean 18.75, population std 6.25
    assert summ.oracle.base.robust_acc_pct == S.MeanStd(18.75, 6.25)
    # oracle: 0.8 in both seeds (75 %); gains 50 and 62.5 -> 56.25 +- 6.25
    assert summ.oracle.betas == (0.8, 0.8)
    assert summ.oracle.abs_gain_pts == S.MeanStd(56.25, 6.25)
    # paper formula on seed means: (75 - 18.75) / 18.75 = 300 %
    assert summ.oracle.rel_gain_pct == pytest.approx(300.0)
    # held-out seed 43: on S base 1/4, 0.9 4/4 -> 0.9; on R 0.9 25 %, base 0 % -> gain 25
    assert summ.heldout.betas == (0.9, 0.9)
    assert summ.heldout.abs_gain_pts == S.MeanStd(12.5, 12.5)
    assert summ.heldout.base.robust_acc_pct == S.MeanStd(12.5, 12.5)  # report half: 25 and 0
    # relative on seed means: (25 - 12.5) / 12.5 = 100 %
    assert summ.heldout.rel_gain_pct == pytest.approx(100.0)
    assert summ.oracle.abs_gain_ci_pts is None  # n_boot = 0: no bootstrap


def test_zero_base_gives_infinite_relative_gain_and_is_dropped_from_aggregate():
    out = _toy_outcomes(base_sets={42: set()})
    s_zero = report.summarize_run(out, dict(CFG, dataset="cifar100"), n_boot=50, name="zero")
    assert s_zero.oracle.rel_gain_pct == float("inf")
    s_ok = report.summarize_run(_toy_outcomes(), CFG, n_boot=50, name="ok")
    (agg,) = report.aggregate_runs([s_ok, s_zero])
    assert agg.model == "toynet" and agg.datasets == ("cifar10", "cifar100")
    # mean over datasets with base > 0 only: 200 %
    assert agg.oracle.value_pct == pytest.approx(200.0)
    assert agg.oracle.dropped == ("cifar100",)
    md = report.report_from_summaries([s_ok, s_zero])
    assert "+inf (base is 0)" in md and "Base robust accuracy is 0" in md
    assert "(50 of 50 replicates undefined: base 0)" in md  # every bootstrap base is 0 too
    js = json.loads(report.report_from_summaries([s_ok, s_zero], fmt="json"))
    # a number, not a string: JSON's Infinity token, which json.loads reads as float("inf")
    assert js["runs"][1]["oracle"]["rel_gain_pct"] == float("inf")


def _walk(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, node


def test_markdown_has_oracle_and_heldout_rows_and_json_round_trips():
    s = report.summarize_run(_toy_outcomes(masked_beta=0.8), CFG, n_boot=100, name="toy")
    md = report.report_from_summaries([s])
    assert "| oracle (paper protocol: selected on the reported points) | all 8 | 0.80 | 75.00 |" in md
    assert "| held-out (selected on the selection half, reported on the report half) | report 4" in md
    assert "| base (β = 1) | all 8 | 1.00 | 25.00 |" in md
    assert "SUSPECTED: β 0.80: grad-zero 100.0 %" in md  # masking flag of the oracle beta
    text = report.report_from_summaries([s], fmt="json")
    data = json.loads(text)
    assert json.dumps(data, indent=2) == text
    assert data["format"] == report.REPORT_FORMAT_VERSION == "ctrobust-report/2"
    assert list(data) == ["format", "select_on", "split_seed", "conf", "tie_break", "n_boot", "boot_seed", "runs",
                          "aggregates", "claims"]
    run = data["runs"][0]
    assert "_replicates" not in run
    assert run["per_seed"][0]["oracle"]["beta"] == 0.8
    assert run["per_seed"][0]["heldout"]["beta"] == 0.9
    assert run["oracle"]["rel_gain_pct"] == pytest.approx(200.0)
    masking = {pb["beta"]: pb["masking"]["masking_suspected"] for pb in run["per_beta"]}
    assert masking == {0.8: True, 0.9: False, 1.0: False}
    # the masking signals are numbers: a fraction, not "grad-zero 100.0 %"
    (flags,) = run["oracle"]["masking"]["flags"]
    assert flags["beta"] == 0.8 and flags["grad_zero_frac"] == 1.0 and flags["masking_suspected"] is True


def test_json_round_trips_the_typed_report():
    runs = [report.summarize_run(_toy_outcomes(masked_beta=0.8), CFG, n_boot=100, name="toy"),
            report.summarize_run(_toy_outcomes(base_sets={42: set()}), dict(CFG, dataset="cifar100"), n_boot=100,
                                 name="zero")]
    rep = report.combine_runs(runs, claims=[_claim(), _claim(id="other", eps={"cifar10": "4/255"})])
    text = report.render_json(rep)
    data = json.loads(text)
    assert data == json.loads(json.dumps(dataclasses.asdict(rep, dict_factory=lambda kv: {
        k: v for k, v in kv if not k.startswith("_")})))
    # numbers are numbers: no formatted values anywhere, and no "inf" / "nan" strings
    leaves = dict(_walk(data))
    strings = {p: v for p, v in leaves.items() if isinstance(v, str)}
    assert not [v for v in strings.values() if v.strip().lower() in ("inf", "-inf", "nan", "+inf")]
    assert not [p for p in strings if p.rsplit(".", 1)[-1].endswith(("_pct", "_pts", "_frac", "beta", "_p"))]
    assert isinstance(leaves[".runs[0].oracle.robust_acc_pct.mean"], float)
    assert isinstance(leaves[".runs[0].per_seed[0].oracle.report.mcnemar_b01"], int)
    assert isinstance(leaves[".runs[0].settings.eps"], float)
    assert math.isinf(leaves[".runs[1].oracle.rel_gain_pct"])
    assert math.isnan(leaves[".runs[1].oracle.rel_gain_ci_pct.lo"])
    diff = data["claims"][1]["per_dataset"][0]["diffs"][0]
    assert diff == {"setting": "eps", "ours": pytest.approx(8 / 255), "paper": pytest.approx(4 / 255)}
    # back to the typed report: the same report (bootstrap replicates aside), the same texts
    back = report.Report.from_dict(data)
    assert isinstance(back.runs[0].per_seed[0].oracle, S.Selection)
    assert isinstance(back.runs[0].oracle.abs_gain_ci_pts, stats.BootstrapInterval)
    assert back.runs[0].settings.seeds == (42,)
    assert report.render_json(back) == text
    assert report.render_markdown(back) == report.render_markdown(rep)
    assert back.runs[0] == runs[0]  # finite numbers only in this run: plain equality holds


# ---------------------------------------------------------------------------------------- rendering
def _ms(mean, std=0.0):
    return S.MeanStd(mean, std)


def _mask(beta, suspected=False, **over):
    f = dict(beta=beta, n=10, square_only=0, square_only_flag=False, grad_zero_frac=0.0, grad_nonfinite_frac=0.0,
             transfer_only=0, masking_suspected=suspected, reasons=())
    f.update(over)
    return S.MaskingFlags(**f)


def _row(beta, robust, base, gain, ci, p, n=10):
    # deliberately inconsistent numbers (gain != robust - base): the renderer must print, not compute
    return S.BetaRow(beta=beta, n=n, robust_acc_pct=robust, clean_acc_pct=90.0, base_robust_acc_pct=base,
                     base_clean_acc_pct=95.0, abs_gain_pts=gain, abs_gain_ci_pts=ci, rel_gain_pct=1.0,
                     mcnemar_b01=3, mcnemar_b10=1, mcnemar_p=p)


def _hand_report(heldout=True, claims=()):
    none = S.MaskingSummary(False, (_mask(1.0),))
    sus = S.MaskingSummary(True, (_mask(0.85, True, grad_zero_frac=0.123, square_only=2),))
    base = S.BaseStats(n=10, robust_acc_pct=_ms(12.345), clean_acc_pct=_ms(99.0), masking=none)
    interval = stats.BootstrapInterval(lo=-1.0, hi=7.5, n_boot=99, n_undefined=0)
    oracle = S.ProtocolSummary(
        protocol="oracle", n=10, select_n=10, betas=(0.85, 0.85), beta=_ms(0.85), base=base,
        robust_acc_pct=_ms(33.333, 1.5), clean_acc_pct=_ms(88.0), abs_gain_pts=_ms(99.99), rel_gain_pct=-12.5,
        mcnemar_p=(0.5, 0.00012), abs_gain_ci_pts=interval,
        rel_gain_ci_pct=stats.BootstrapInterval(float("nan"), float("nan"), 99, 99), masking=sus)
    held = dataclasses.replace(oracle, protocol="heldout", n=5, select_n=5, betas=(0.9, 0.8), beta=_ms(0.85, 0.05),
                               abs_gain_ci_pts=None, rel_gain_ci_pct=None, rel_gain_pct=float("inf"),
                               base=dataclasses.replace(base, n=5, robust_acc_pct=_ms(0.0)), masking=none)
    seed = S.SeedSummary(seed=7, n=10, dropped_rows=0, per_beta=(), heldout=None,
                         oracle=S.Selection(beta=0.85, select_n=10, select_robust_acc_pct=40.0,
                                            report=_row(0.85, 41.0, 20.0, 5.0, (-2.0, 12.25), 0.031)))
    settings = S.RunSettings(model="m", dataset="cifar10", threat="Linf", eps=8 / 255, n_examples=10, subset=None,
                             data="full", seeds=(7, 8), betas=(1.0, 0.85), coeff=0.5, attacks="standard",
                             attack_names=("apgd-ce",), engine="fast")
    per_beta = (S.BetaSummary(beta=0.85, robust_acc_pct=_ms(1.0), clean_acc_pct=_ms(2.0), abs_gain_pts=_ms(3.0),
                              mcnemar_p=(1.0,), masking=_mask(0.85, True, grad_zero_frac=0.5, transfer_only=None)),
                S.BetaSummary(beta=1.0, robust_acc_pct=_ms(4.0), clean_acc_pct=_ms(5.0), abs_gain_pts=_ms(0.0),
                              mcnemar_p=(1.0,), masking=None))
    run = S.RunSummary(name="hand", settings=settings, select_on="half", split_seed=3, conf=0.9,
                       tie_break="smallest", n_boot=99, boot_seed=1, n_seeds=2, oracle=oracle,
                       heldout=held if heldout else None, per_seed=(seed,), per_beta=per_beta, per_attack=None,
                       warnings=("look out",))
    agg = S.Aggregate(model="m", threat="Linf", datasets=("cifar10",), runs=("hand",), warnings=(),
                      oracle=S.AggregateProtocol(per_dataset=(S.DatasetGain("cifar10", "hand", 1.0, 2.0, 300.0),),
                                                 value_pct=float("nan"), dropped=("cifar10",), ci_pct=None),
                      heldout=None)
    return S.Report(format=S.REPORT_FORMAT_VERSION, select_on="half", split_seed=3, conf=0.9, tie_break="smallest",
                    n_boot=99, boot_seed=1, runs=(run,), aggregates=(agg,), claims=tuple(claims))


HELDOUT_ROW = "| held-out (selected on the selection half"


def test_render_markdown_prints_a_hand_built_report_without_computing():
    lines = report.render_markdown(_hand_report()).split("\n")
    assert "m on cifar10, Linf eps 8/255, n = 10 examples (?), seeds [7, 8], 2 betas, coeff 0.5, attacks standard, " \
           "engine fast." in lines
    assert "| base (β = 1) | all 10 | 1.00 | 12.35 | 99.00 | — | — | — | — | none |" in lines
    assert ("| oracle (paper protocol: selected on the reported points) | all 10 | 0.85 | 33.33 ± 1.50 | 88.00 "
            "| 99.99 | [-1.00, 7.50] | -12.50 % [undefined, undefined] (99 of 99 replicates undefined: base 0) "
            "| 0.5 / 1.2e-04 | SUSPECTED: β 0.85: square-only 2, grad-zero 12.3 % |") in lines
    assert "| base (β = 1), report half | report 5 | 1.00 | 0.00 | 99.00 | — | — | — | — | none |" in lines
    assert ("| held-out (selected on the selection half, reported on the report half) | report 5 (selected on 5) "
            "| 0.850 ± 0.050 (0.90, 0.80) | 33.33 ± 1.50 | 88.00 | 99.99 | — | +inf (base is 0) — | 0.5 / 1.2e-04 "
            "| none |") in lines
    assert "| 7 | oracle | 10 | 0.85 | 41.00 | 20.00 | 5.00 | [-2.00, 12.25] | 3 / 1 | 0.031 |" in lines
    assert "| 0.85 | 1.00 | 2.00 | 3.00 | 1 | 0 | 50.00 | 0.00 | — | YES |" in lines
    assert "| 1.00 | 4.00 | 5.00 | 0.00 | 1 | — | — | — | — | no |" in lines
    assert "- warning: look out" in lines
    assert "- Ties in selection go to the smallest beta" in lines
    assert any("90 % CI (bootstrap): percentile bootstrap over examples (99 replicates, seed 1" in ln for ln in lines)
    assert ("| m | Linf | oracle (paper protocol) | cifar10: +300.00 % | undefined (every dataset has base 0) | — "
            "| cifar10 |") in lines
    assert "No paper claims loaded (configs/paper_claims.yaml or $CTROBUST_CLAIMS)." in lines
    assert "Note: base robust accuracy is 12.35 %" not in "\n".join(lines)  # only below 5 %
    same = report.render_markdown(dataclasses.replace(_hand_report(heldout=False), select_on="same"))
    assert HELDOUT_ROW not in same and "report half |" not in same


def test_render_markdown_claims_from_typed_comparisons():
    diff = (S.SettingDiff("eps", 8 / 255, 4 / 255), S.SettingDiff("betas", (0.8, 0.9), "0.7:0.99:0.01"),
            S.SettingDiff("seeds", (42,), (42, 43)))
    unmatched = S.ClaimComparison(
        id="c1", source="paper", model="m", datasets=("cifar10", "imagenet"), metric="rel gain",
        paper_value_pct=12.0, matched=False,
        per_dataset=(S.ClaimDataset("cifar10", "hand", diff), S.ClaimDataset("imagenet", None, ())),
        ours_pct=None, ours_ci_pct=None, paper_in_our_ci=None, ours_heldout_pct=None, dropped=(),
        ours_closest_pct=5.0, ours_closest_datasets=("cifar10",))
    matched = dataclasses.replace(unmatched, id="c2", matched=True, ours_pct=10.0, paper_in_our_ci=True,
                                  ours_ci_pct=stats.BootstrapInterval(1.0, 20.0, 9, 0), ours_heldout_pct=None,
                                  dropped=("imagenet",))
    lines = report.render_markdown(_hand_report(claims=(unmatched, matched))).split("\n")
    assert "- **c1** (paper): rel gain for m on cifar10, imagenet = **12.00 %** in the paper." in lines
    assert ("  - cifar10 (closest run: hand): differs in eps: ours 8/255, paper 4/255; betas: ours 2 betas "
            "0.80..0.90, paper 0.7:0.99:0.01; seeds: ours [42], paper [42, 43]") in lines
    assert "  - imagenet: no run" in lines
    assert any(ln.startswith("  Ours on the closest runs with the paper's model (cifar10;") and ln.endswith(
        ": +5.00 %.") for ln in lines)
    assert ("  Ours on the paper's setting: +10.00 % (90 % CI [1.00, 20.00]); the paper's value lies within our "
            "interval. Held-out protocol: —.") in lines
    assert "  Left out of the mean (base 0): imagenet." in lines


def test_select_on_same_reports_oracle_only():
    s = report.summarize_run(_toy_outcomes(), CFG, select_on="same", n_boot=0)
    assert s.heldout is None and s.per_seed[0].heldout is None and s.split_seed is None
    md = report.report_from_summaries([s])
    assert "oracle (paper protocol" in md and "held-out (selected" not in md
    with pytest.raises(ValueError):
        report.summarize_run(_toy_outcomes(), CFG, select_on="both")


def test_bad_outcomes_are_refused():
    out = _toy_outcomes()
    no_base = {k: v[out["beta"] != 1.0] for k, v in out.items()}
    with pytest.raises(ValueError, match="beta = 1"):
        report.summarize_run(no_base, CFG)
    dup = {k: np.concatenate([v, v[:1]]) for k, v in out.items()}
    with pytest.raises(ValueError, match="more than once"):
        report.summarize_run(dup, CFG)
    with pytest.raises(KeyError):
        report.summarize_run({"id": out["id"]}, CFG)


def test_partial_run_keeps_only_examples_seen_at_every_beta():
    out = _toy_outcomes()
    keep = ~((out["beta"] == 0.9) & (out["id"] == 24))
    s = report.summarize_run({k: v[keep] for k, v in out.items()}, CFG, n_boot=0)
    assert s.per_seed[0].n == 7 and s.per_seed[0].dropped_rows == 2
    assert any("dropped" in w for w in s.warnings)
    # the settings are what was evaluated (7 examples), not what was configured (8): flagged, and a claim
    # asking for 8 examples does not match
    assert s.settings.n_examples == 7
    assert any("7 examples evaluated at every beta, the config asks for 8" in w for w in s.warnings)
    (c,) = report.compare_claims([s], [_claim()])
    assert not c.matched and S.SettingDiff("n_examples", 7, 8) in c.per_dataset[0].diffs


def test_per_attack_breakdown():
    out = {"beta": np.array([1.0, 1.0, 1.0, 0.9, 0.9, 0.9]),
           "seed": np.array([0, 0, 1, 0, 0, 0]),
           "broken_by": np.array(["apgd-ce", "", "square", "clean", "apgd-t", "apgd-ce"])}
    pa = report.per_attack_breakdown(out)
    assert pa == {0.9: {"clean": 1, "apgd-ce": 1, "apgd-t": 1, "square": 0, "robust": 0},
                  1.0: {"clean": 0, "apgd-ce": 1, "apgd-t": 0, "square": 1, "robust": 1}}
    assert list(pa[1.0]) == ["clean", "apgd-ce", "apgd-t", "square", "robust"]
    only0 = report.per_attack_breakdown(out, seed=0)
    assert only0[1.0]["square"] == 0 and sum(only0[1.0].values()) == 2
    # registry order (apgd-dlr, fab after square), unknown names sorted after the known ones
    more = {"beta": np.ones(4), "broken_by": np.array(["zeta", "fab", "apgd-dlr", "square"])}
    assert list(report.per_attack_breakdown(more)[1.0]) == ["square", "apgd-dlr", "fab", "zeta"]


def _claim(**over):
    c = {"id": "toy-claim", "source": "arXiv 2502.07783", "model": "toynet", "datasets": ["cifar10"],
         "threat": "Linf", "eps": {"cifar10": "8/255"}, "n_examples": 8, "subset": "balanced", "seeds": [42],
         "betas": "0.8:0.9:0.1", "coeff": 0.5, "attacks": "standard",
         "metric": "relative robust-accuracy gain averaged over datasets", "value": 1e6}
    c.update(over)
    return c


def test_claims_matched_and_differing_settings():
    s = report.summarize_run(_toy_outcomes(), CFG, n_boot=200, name="toy")
    matched, = report.compare_claims([s], [_claim()])
    assert matched.matched and matched.ours_pct == pytest.approx(200.0)
    # relative gains on 8 points are at most (8/8 - 1/8) / (1/8) = 700 %: 1e6 is outside our interval
    assert matched.paper_in_our_ci is False
    ci = matched.ours_ci_pct
    assert ci.lo <= 200.0 <= ci.hi <= 700.0
    other, = report.compare_claims([s], [_claim(eps={"cifar10": "4/255"}, seeds=[42, 43, 44])])
    assert not other.matched and other.ours_pct is None
    assert other.per_dataset[0].diffs == (S.SettingDiff("eps", pytest.approx(8 / 255), pytest.approx(4 / 255)),
                                          S.SettingDiff("seeds", (42,), (42, 43, 44)))
    assert other.ours_closest_pct == pytest.approx(200.0)  # same model: shown, labelled not comparable
    missing, = report.compare_claims([s], [_claim(datasets=["cifar10", "imagenet"])])
    assert not missing.matched
    assert missing.per_dataset[1] == S.ClaimDataset(dataset="imagenet", run=None, diffs=())
    md = report.report_from_summaries([s], claims=[_claim(eps={"cifar10": "4/255"})])
    assert "differs in eps: ours 8/255, paper 4/255" in md
    md = report.report_from_summaries([s], claims=[_claim(seeds=[42, 43, 44])])
    assert "differs in seeds: ours [42], paper [42, 43, 44]" in md


def test_paper_claims_file_loads_and_names_its_settings():
    claims = report.load_claims(report.default_claims_path())
    by_id = {c["id"]: c for c in claims}
    assert by_id["ct-linf-resnet50"]["value"] == 1032.64
    assert by_id["ct-linf-resnet152"]["value"] == 1494.46
    for c in claims:
        assert c["source"] == "arXiv 2502.07783"
        assert c["seeds"] == [42, 43, 44] and c["n_examples"] == 1000 and c["coeff"] == 0.5
        assert sorted(c["datasets"]) == ["cifar10", "cifar100", "imagenet"]
        assert len(_claim_betas(c)) == 31  # 0.70..0.99 plus the baseline 1.0


def test_build_report_reads_the_store(tmp_path, monkeypatch):
    """build_report through a stand-in for ctrobust.store (the contract: load_outcomes/results/config)."""
    runs = {"run_a": (_toy_outcomes(), CFG)}
    fake = types.ModuleType("ctrobust.store")
    fake.load_outcomes = lambda rd: runs[str(rd).rsplit("/", 1)[-1]][0]
    fake.load_config = lambda rd: runs[str(rd).rsplit("/", 1)[-1]][1]

    def load_results(rd):
        # one stored row that disagrees with the outcomes (25 % at beta 1): reported as a warning
        return [{"beta": 1.0, "seed": 42, "robust_acc": 0.5}, {"beta": 0.8, "seed": 42, "robust_acc": 0.75}]
    fake.load_results = load_results
    monkeypatch.setitem(sys.modules, "ctrobust.store", fake)
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims: []\n")
    md = report.build_report([str(tmp_path / "run_a")], claims_path=claims, n_boot=50)
    assert "## run_a" in md and "oracle (paper protocol" in md
    assert "results.csv robust accuracy at seed 42, beta 1.0" in md
    assert "beta 0.8 (" not in md.split("warning:")[-1]  # the matching row raises nothing
    rep = report.summarize([str(tmp_path / "run_a")], claims_path=claims, n_boot=50)
    assert report.render_markdown(rep) == md
    assert any("results.csv robust accuracy" in w for w in rep.runs[0].warnings)
    js = json.loads(report.build_report([str(tmp_path / "run_a")], fmt="json", claims_path=claims, n_boot=50))
    assert js["runs"][0]["name"] == "run_a" and js["select_on"] == "half"
    assert js == json.loads(report.render_json(rep))
    with pytest.raises(ValueError):
        report.build_report([str(tmp_path / "run_a")], fmt="html")
