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
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from ctrobust import report, stats

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
    (ps,) = s["per_seed"]
    assert ps["base"]["robust_acc_pct"] == 25.0
    o = ps["oracle"]
    assert o["beta"] == 0.8 and o["robust_acc_pct"] == 75.0 and o["abs_gain_pts"] == 50.0
    assert o["rel_gain_pct"] == pytest.approx(200.0)
    assert o["clean_acc_pct"] == 87.5
    assert (o["mcnemar_b01"], o["mcnemar_b10"]) == (4, 0)
    assert o["mcnemar_p"] == pytest.approx(0.125)
    h = ps["heldout"]
    assert h["beta"] == 0.9 and h["select_n"] == 4 and h["n"] == 4
    assert h["select_robust_acc_pct"] == 100.0
    assert h["robust_acc_pct"] == 25.0 and h["base_robust_acc_pct"] == 25.0
    assert h["abs_gain_pts"] == 0.0 and h["mcnemar_p"] == 1.0
    assert h["clean_acc_pct"] == 100.0
    # the Newcombe interval of the oracle gain is the stats function on the same flags
    lo, hi = stats.paired_diff_interval(*[_flags(beta) for beta in (0.8, 1.0)])
    assert o["abs_gain_ci_pts"] == pytest.approx([100 * lo, 100 * hi])
    # bootstrap intervals exist and contain the point estimates
    hd = s["headline"]
    ci = hd["oracle"]["abs_gain_ci_pts"]
    assert ci["n_boot"] == 200 and ci["lo"] <= 50.0 <= ci["hi"]


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
    hd = summ["headline"]
    # base: 25 and 12.5 -> mean 18.75, population std 6.25
    assert hd["base"]["robust_acc_pct"] == {"mean": 18.75, "std": 6.25}
    # oracle: 0.8 in both seeds (75 %); gains 50 and 62.5 -> 56.25 +- 6.25
    assert hd["oracle"]["betas"] == [0.8, 0.8]
    assert hd["oracle"]["abs_gain_pts"] == {"mean": 56.25, "std": 6.25}
    # paper formula on seed means: (75 - 18.75) / 18.75 = 300 %
    assert hd["oracle"]["rel_gain_pct"] == pytest.approx(300.0)
    # held-out seed 43: on S base 1/4, 0.9 4/4 -> 0.9; on R 0.9 25 %, base 0 % -> gain 25
    assert hd["heldout"]["betas"] == [0.9, 0.9]
    assert hd["heldout"]["abs_gain_pts"] == {"mean": 12.5, "std": 12.5}
    # relative on seed means: (25 - 12.5) / 12.5 = 100 %
    assert hd["heldout"]["rel_gain_pct"] == pytest.approx(100.0)
    assert "abs_gain_ci_pts" not in hd["oracle"]  # n_boot = 0: no bootstrap


def test_zero_base_gives_infinite_relative_gain_and_is_dropped_from_aggregate():
    out = _toy_outcomes(base_sets={42: set()})
    s_zero = report.summarize_run(out, dict(CFG, dataset="cifar100"), n_boot=50, name="zero")
    assert s_zero["headline"]["oracle"]["rel_gain_pct"] == float("inf")
    s_ok = report.summarize_run(_toy_outcomes(), CFG, n_boot=50, name="ok")
    (agg,) = report.aggregate_runs([s_ok, s_zero])
    assert agg["model"] == "toynet" and agg["datasets"] == ["cifar10", "cifar100"]
    # mean over datasets with base > 0 only: 200 %
    assert agg["oracle"]["value_pct"] == pytest.approx(200.0)
    assert agg["oracle"]["dropped"] == ["cifar100"]
    md = report.report_from_summaries([s_ok, s_zero])
    assert "+inf (base is 0)" in md and "Base robust accuracy is 0" in md
    assert "(50 of 50 replicates undefined: base 0)" in md  # every bootstrap base is 0 too
    js = json.loads(report.report_from_summaries([s_ok, s_zero], fmt="json"))
    assert js["runs"][1]["headline"]["oracle"]["rel_gain_pct"] == "inf"


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
    run = data["runs"][0]
    assert "_boot" not in run
    assert run["per_seed"][0]["oracle"]["beta"] == 0.8
    assert run["per_seed"][0]["heldout"]["beta"] == 0.9
    assert run["headline"]["oracle"]["rel_gain_pct"] == pytest.approx(200.0)
    masking = {pb["beta"]: pb["masking"]["masking_suspected"] for pb in run["per_beta"]}
    assert masking == {0.8: True, 0.9: False, 1.0: False}


def test_select_on_same_reports_oracle_only():
    s = report.summarize_run(_toy_outcomes(), CFG, select_on="same", n_boot=0)
    assert s["headline"]["heldout"] is None and s["per_seed"][0]["heldout"] is None
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
    assert s["per_seed"][0]["n"] == 7
    assert any("dropped" in w for w in s["warnings"])
    # the settings are what was evaluated (7 examples), not what was configured (8): flagged, and a claim
    # asking for 8 examples does not match
    assert s["settings"]["n_examples"] == 7
    assert any("7 examples evaluated at every beta, the config asks for 8" in w for w in s["warnings"])
    (c,) = report.compare_claims([s], [_claim()])
    assert not c["matched"] and "n_examples: ours 7, paper 8" in c["per_dataset"][0]["diffs"]


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
    assert matched["matched"] and matched["ours_pct"] == pytest.approx(200.0)
    # relative gains on 8 points are at most (8/8 - 1/8) / (1/8) = 700 %: 1e6 is outside our interval
    assert matched["paper_in_our_ci"] is False
    ci = matched["ours_ci_pct"]
    assert ci["lo"] <= 200.0 <= ci["hi"] <= 700.0
    other, = report.compare_claims([s], [_claim(eps={"cifar10": "4/255"}, seeds=[42, 43, 44])])
    assert not other["matched"] and other["ours_pct"] is None
    assert other["per_dataset"][0]["diffs"] == ["eps: ours 8/255, paper 4/255",
                                               "seeds: ours [42], paper [42, 43, 44]"]
    assert other["ours_closest_pct"] == pytest.approx(200.0)  # same model: shown, labelled not comparable
    missing, = report.compare_claims([s], [_claim(datasets=["cifar10", "imagenet"])])
    assert not missing["matched"]
    assert missing["per_dataset"][1] == {"dataset": "imagenet", "run": None, "diffs": ["no run for this dataset"]}
    md = report.report_from_summaries([s], claims=[_claim(eps={"cifar10": "4/255"})])
    assert "differs in eps: ours 8/255, paper 4/255" in md


def test_paper_claims_file_loads_and_names_its_settings():
    claims = report.load_claims(report.default_claims_path())
    by_id = {c["id"]: c for c in claims}
    assert by_id["ct-linf-resnet50"]["value"] == 1032.64
    assert by_id["ct-linf-resnet152"]["value"] == 1494.46
    for c in claims:
        assert c["source"] == "arXiv 2502.07783"
        assert c["seeds"] == [42, 43, 44] and c["n_examples"] == 1000 and c["coeff"] == 0.5
        assert sorted(c["datasets"]) == ["cifar10", "cifar100", "imagenet"]
        assert len(report._claim_betas(c)) == 31  # 0.70..0.99 plus the baseline 1.0


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
    js = json.loads(report.build_report([str(tmp_path / "run_a")], fmt="json", claims_path=claims, n_boot=50))
    assert js["runs"][0]["name"] == "run_a" and js["select_on"] == "half"
    with pytest.raises(ValueError):
        report.build_report([str(tmp_path / "run_a")], fmt="html")
