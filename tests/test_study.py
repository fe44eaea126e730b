"""``ctrobust reproduce``: a study of the paper's table, its aggregate by the reference's rules, and the
all-at-once check of missing inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctrobust.cli import main
from ctrobust.report.study import build_study_report, summarize_cell

pytestmark = pytest.mark.usefixtures("one_thread")


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A randomly initialised CT-paper ResNet-18 saved under the reference's file name."""
    from ctrobust.models.ct_paper import build_resnet

    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    (d / "ct-paper").mkdir()
    torch.save(build_resnet("resnet18", 10).state_dict(), d / "ct-paper" / "resnet18_cifar10_epoch200.pth")
    return d


# --threat (the one-threat alias of --threats) Linf: the layout and study.yaml of a Linf-only study (legacy)
TINY = ["--model", "resnet18", "--datasets", "cifar10", "--threat", "Linf", "--data", "bundled", "--n-examples", "20",
        "--seeds", "42", "--betas", "0.9", "--attacks", "apgd-ce", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def study(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "s"
    assert main(["reproduce", "ct-paper", *TINY, "--model-dir", str(model_dir), "--out", str(out)]) == 0
    return out


def test_study_runs_both_protocols_and_writes_every_section(study):
    runs = sorted(p.name for p in (study / "runs").iterdir())
    assert runs == ["cifar10-pixel", "cifar10-reference", "cifar10-valid"]
    md = (study / "report.md").read_text()
    for needle in ("## Per dataset and protocol", "## The paper's aggregate and what moves it",
                   "reference protocol (the paper's measurement)", "+ pixel-space threat model",
                   "+ full CT scope", "+ held-out beta", "NOT in the stated eps-ball", "How to read it"):
        assert needle in md, needle
    rep = json.loads((study / "report.json").read_text())
    assert rep["format"] == "ctrobust-study/2" and rep["model"] == "resnet18"
    assert rep["threats"] == ["Linf"] and all(c["threat"] == "Linf" for c in rep["cells"])
    import yaml

    assert yaml.safe_load((study / "study.yaml").read_text())["threat"] == "Linf"  # as before: old dirs resume
    cells = {c["cell"]: c for c in rep["cells"]}
    assert cells["reference"]["protocol"] == "reference" and cells["reference"]["ct_scope"] == "modules"
    assert cells["reference"]["engine"] == "reference"
    assert cells["pixel"]["ct_scope"] == "modules" and cells["valid"]["ct_scope"] == "all"
    assert cells["valid"]["in_ball_frac"] == 1.0
    for c in cells.values():  # the oracle beta, clean accuracy at it, held-out numbers, intervals
        assert c["oracle_beta"]["mean"] in (0.9, 1.0) and c["heldout"] is not None
        lo, hi = c["base_ci_pct"]
        assert 0 <= lo <= c["base_pct"]["mean"] <= hi <= 100
    assert [r["cell"] for r in rep["decomposition"]] == ["reference", "pixel", "valid", "valid"]
    assert (study / "figures" / "study.png").stat().st_size > 0


def test_rerunning_the_study_does_no_work(study, model_dir, capsys):
    before = _snapshot(study / "runs")
    capsys.readouterr()
    assert main(["reproduce", "ct-paper", *TINY, "--model-dir", str(model_dir), "--out", str(study)]) == 0
    assert "ran 0 unit(s)" in capsys.readouterr().out
    after = _snapshot(study / "runs")
    assert {k: v for k, v in after.items() if "/units/" in k} == {k: v for k, v in before.items() if "/units/" in k}


def test_another_study_in_the_same_dir_is_refused(study, model_dir, capsys):
    argv = ["reproduce", "ct-paper", *TINY, "--model-dir", str(model_dir), "--out", str(study)]
    argv[argv.index("apgd-ce")] = "square"
    assert main(argv) == 2
    assert "another study" in capsys.readouterr().err


def test_missing_weights_and_data_of_every_cell_are_listed_at_once_and_nothing_is_written(tmp_path, capsys,
                                                                                          monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    empty_models, empty_data = tmp_path / "models", tmp_path / "data"
    empty_models.mkdir()
    empty_data.mkdir()
    out = tmp_path / "study"
    argv = ["reproduce", "ct-paper", "--model", "resnet50", "--datasets", "cifar10,cifar100,imagenet",
            "--threats", "Linf", "--model-dir", str(empty_models), "--data-dir", str(empty_data), "--out", str(out), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip().startswith("- ")]
    assert len(lines) == 6, err  # model and data of each of the three datasets
    for d in ("cifar10", "cifar100", "imagenet"):
        assert any(ln.strip().startswith(f"- {d}: model") for ln in lines), (d, err)
        assert any(ln.strip().startswith(f"- {d}: data") for ln in lines), (d, err)
    assert "resnet50_cifar10_epoch200.pth" in err and "resnet50_cifar100_epoch200.pth" in err
    assert "resnet50-" in err  # torchvision's hub file of the ImageNet weights
    assert not out.exists()
    assert list(empty_models.iterdir()) == [] and list(empty_data.iterdir()) == []


def _outcomes(table: dict) -> dict:
    """Per-example outcomes with given robust counts: {(seed, beta): (robust, clean)} out of n = 10."""
    n = 10
    cols = {k: [] for k in ("id", "beta", "seed", "robust", "clean_correct")}
    for (seed, beta), (k_rob, k_clean) in table.items():
        cols["id"] += list(range(n))
        cols["beta"] += [beta] * n
        cols["seed"] += [seed] * n
        cols["robust"] += [i < k_rob for i in range(n)]
        cols["clean_correct"] += [i < k_clean for i in range(n)]
    return {k: np.asarray(v) for k, v in cols.items()}


class _Cfg:
    protocol, ct_scope, engine, model = "reference", "modules", "reference", "ct-paper/resnet50"


def test_the_aggregate_equals_a_hand_computation_of_the_reference_rules():
    betas = (0.7, 0.8, 0.9)
    # robust counts out of 10 per (seed, beta); beta 1 is the base
    data = {
        "cifar10": {42: {1.0: 1, 0.7: 3, 0.8: 3, 0.9: 2}, 43: {1.0: 2, 0.7: 1, 0.8: 1, 0.9: 1},  # 43: CT < base
                    44: {1.0: 1, 0.7: 0, 0.8: 4, 0.9: 2}},
        "cifar100": {42: {1.0: 0, 0.7: 0, 0.8: 1, 0.9: 0}, 43: {1.0: 0, 0.7: 0, 0.8: 0, 0.9: 0},  # base 0: dropped
                     44: {1.0: 0, 0.7: 2, 0.8: 0, 0.9: 0}},
        "imagenet": {42: {1.0: 5, 0.7: 5, 0.8: 6, 0.9: 6}, 43: {1.0: 4, 0.7: 4, 0.8: 4, 0.9: 4},
                     44: {1.0: 5, 0.7: 7, 0.8: 5, 0.9: 5}},
    }
    cells = []
    for d, seeds in data.items():
        table = {(s, b): (k, 10) for s, row in seeds.items() for b, k in row.items()}
        cells.append(summarize_cell(d, "reference", f"runs/{d}-reference", _outcomes(table), _Cfg()))
    rep = build_study_report("ct-paper", "resnet50", "Linf", cells)

    # compare_robustness_results.py, by hand: per seed max(best over the grid, base), mean over seeds,
    # relative improvement per dataset with base > 0, mean over datasets
    rel = []
    for d, seeds in data.items():
        base = [10 * seeds[s][1.0] for s in seeds]
        ct = [max(max(10 * seeds[s][b] for b in betas), 10 * seeds[s][1.0]) for s in seeds]
        if np.mean(base) > 0:
            rel.append((np.mean(ct) - np.mean(base)) / np.mean(base))
    expected = 100 * np.mean(rel)
    row = next(r for r in rep.decomposition if r.cell == "reference")
    assert row.value_pct == pytest.approx(expected)
    assert [t.rel_pct is None for t in row.per_dataset] == [False, True, False]
    c10 = cells[0]
    # seed 43: CT is worse than base, so it counts as base at beta 1; seed 42: the first (smallest) beta of a tie
    assert [p.beta for p in c10.per_seed] == [0.7, 1.0, 0.8]
    assert [(p.threat, p.value_pct) for p in rep.paper] == [("Linf", 1032.64)]


# -------------------------------------------------------------------------------------------------------------
# Several threats: planning, corruptions cells (hand-made outcomes), the report per threat
# -------------------------------------------------------------------------------------------------------------


def test_threats_parse_in_the_papers_order_and_unknown_ones_get_a_suggestion():
    from ctrobust._registry import UnknownNameError
    from ctrobust.config import ConfigError
    from ctrobust.study import legacy_layout, parse_threats

    assert parse_threats("corruptions, linf,l2") == ["Linf", "L2", "corruptions"]
    assert parse_threats(["L2"]) == ["L2"]
    with pytest.raises(UnknownNameError, match="did you mean"):
        parse_threats("corruption,Linf")
    with pytest.raises(ConfigError, match="more than once"):
        parse_threats("Linf,linf")
    assert legacy_layout(["Linf"]) and legacy_layout(["L2"])
    assert not legacy_layout(["Linf", "L2"]) and not legacy_layout(["corruptions"])


def test_a_two_threat_study_plans_a_run_per_threat_dataset_and_cell_with_the_papers_eps(tmp_path):
    from ctrobust.study import StudySpec, plan_study

    spec = StudySpec("ct-paper", "resnet18", ["cifar10", "imagenet"], ["Linf", "L2"], ["reference", "valid"],
                     str(tmp_path / "s"))
    cells = plan_study(spec)
    assert [c.name for c in cells] == [f"{t}-{d}-{c}" for t in ("Linf", "L2") for d in ("cifar10", "imagenet")
                                       for c in ("reference", "pixel", "valid")]
    for c in cells:
        assert c.cfg.threat == c.threat
        assert c.cfg.eps == pytest.approx(8 / 255 if c.threat == "Linf" else 0.5)  # every dataset, as the reference
        assert Path(c.cfg.run_dir) == tmp_path / "s" / "runs" / c.name
        assert (c.cfg.protocol, c.cfg.ct_scope) == {"reference": ("reference", "modules"), "pixel": ("valid", "modules"),
                                                    "valid": ("valid", "all")}[c.cell]
    assert spec.asked()["threats"] == ["Linf", "L2"] and "threat" not in spec.asked()
    one = StudySpec("ct-paper", "resnet18", ["cifar10"], ["L2"], ["reference"], str(tmp_path / "t"))
    assert [c.name for c in plan_study(one)] == ["cifar10-reference"] and one.asked()["threat"] == "L2"


def _corruption_outcomes(table: dict, pairs=(("fog", 1), ("fog", 5), ("snow", 3))) -> dict:
    """One row per (image, pair, beta, seed); ``table[(seed, beta)][pair]`` = correct images out of n of that pair
    (n differs per pair, so the mean over pairs differs from the pooled mean)."""
    n_of = {p: n for p, n in zip(pairs, (10, 4, 5))}
    cols = {k: [] for k in ("id", "label", "beta", "seed", "robust", "clean_correct", "corruption", "severity")}
    for (seed, beta), per_pair in table.items():
        for p in pairs:
            n, k = n_of[p], per_pair[p]
            cols["id"] += list(range(n))
            cols["label"] += [i % 2 for i in range(n)]
            cols["beta"] += [beta] * n
            cols["seed"] += [seed] * n
            cols["robust"] += [i < k for i in range(n)]
            cols["clean_correct"] += [i < k for i in range(n)]
            cols["corruption"] += [p[0]] * n
            cols["severity"] += [p[1]] * n
    return {k: np.asarray(v) for k, v in cols.items()}


class _CfgCorr:
    protocol, ct_scope, engine, model, threat = "valid", "modules", "fast", "ct-paper/resnet18", "corruptions"


def test_corruption_cells_average_over_pairs_and_aggregate_by_the_reference_rules(tmp_path):
    from ctrobust.plots import plot_study
    from ctrobust.report.study import render_study_json, render_study_markdown

    pairs = (("fog", 1), ("fog", 5), ("snow", 3))
    n_of = dict(zip(pairs, (10, 4, 5)))
    # correct images per pair (n = 10, 4, 5) at each (seed, beta)
    table = {(42, 1.0): dict(zip(pairs, (5, 2, 1))), (42, 0.8): dict(zip(pairs, (6, 3, 1))),
             (42, 0.9): dict(zip(pairs, (7, 1, 1))),
             (43, 1.0): dict(zip(pairs, (6, 2, 2))), (43, 0.8): dict(zip(pairs, (5, 1, 1))),  # 43: CT < base
             (43, 0.9): dict(zip(pairs, (6, 1, 2)))}
    cell = summarize_cell("cifar10", "reference", "runs/corruptions-cifar10-reference", _corruption_outcomes(table),
                          _CfgCorr())

    def acc(seed, beta):  # RobustBench: mean over pairs of each pair's accuracy
        return 100 * np.mean([table[(seed, beta)][p] / n_of[p] for p in pairs])

    base = [acc(s, 1.0) for s in (42, 43)]
    ct = [max(max(acc(s, b) for b in (0.8, 0.9)), acc(s, 1.0)) for s in (42, 43)]
    assert cell.base_pct.mean == pytest.approx(np.mean(base)) and cell.oracle_pct.mean == pytest.approx(np.mean(ct))
    assert (cell.threat, cell.pairs, cell.n) == ("corruptions", 3, 6)  # n: images per pair (19 rows / 3 pairs)
    assert cell.pixel_linf_max is None and cell.in_ball_frac is None
    # a Linf cell beside it: the report keeps each threat's aggregate apart
    lin = summarize_cell("cifar10", "reference", "runs/Linf-cifar10-reference",
                         _outcomes({(42, 1.0): (1, 9), (42, 0.9): (3, 9)}), _Cfg(), threat="Linf")
    rep = build_study_report("ct-paper", "resnet50", ("Linf", "corruptions"), [lin, cell])
    rows = {(r.threat, r.cell): r for r in rep.decomposition}
    assert rows[("corruptions", "reference")].value_pct == pytest.approx(
        100 * (np.mean(ct) - np.mean(base)) / np.mean(base))
    assert rows[("Linf", "reference")].value_pct == pytest.approx(200.0)
    assert [(p.threat, p.value_pct) for p in rep.paper] == [("Linf", 1032.64), ("corruptions", None)]
    md = render_study_markdown(rep)
    assert "| corruptions | cifar10 | reference |" in md and "not recorded" in md and "3 pairs" in md
    assert json.loads(render_study_json(rep))["threats"] == ["Linf", "corruptions"]
    files = plot_study(rep, tmp_path, formats=("png",))
    assert files and files[0].stat().st_size > 0


def test_corruption_heldout_keeps_every_pair_of_an_image_on_one_side():
    from ctrobust.report.study import corruption_heldout
    from ctrobust.stats import stratified_split

    pairs = (("fog", 1), ("snow", 3))
    rng = np.random.default_rng(0)
    table = {(42, b): dict(zip(pairs, rng.integers(0, 5, 2))) for b in (1.0, 0.8, 0.9)}
    o = _corruption_outcomes(table, pairs)
    sel, rep = stratified_split(o["id"], o["label"], 0)
    for i in np.unique(o["id"]):
        assert len(set(sel[o["id"] == i])) == 1
    ho = corruption_heldout(o)
    # the chosen beta maximizes the mean-over-pairs accuracy of the selection half (ties: closest to 1)
    accs = {}
    for b in (0.8, 0.9, 1.0):
        m = (o["beta"] == b) & sel
        accs[b] = np.mean([o["robust"][m & (o["corruption"] == c) & (o["severity"] == s)].mean() for c, s in pairs])
    best = max(accs.values())
    assert ho.beta.mean == max(b for b, a in accs.items() if a == best)
    assert ho.n_report == np.unique(o["id"][rep]).size


def test_missing_corruption_files_are_listed_one_per_line_with_their_source(tmp_path):
    from types import SimpleNamespace

    from corruption_files import write_cifar_c

    from ctrobust.inputs import _missing_corruption_data

    write_cifar_c(tmp_path, "cifar10", corruptions=("fog", "snow"))
    cfg = SimpleNamespace(dataset="cifar10", data_dir=str(tmp_path), corruptions="all", severities="all",
                          n_examples=1000)
    seen = set()
    lines = _missing_corruption_data("cifar10", cfg, seen)  # the reference cell
    assert len(lines) == 13  # 15 corruptions, two written; labels.npy is there
    assert all(ln.startswith("cifar10: corruptions data: ") and "zenodo.org/records/2535967" in ln for ln in lines)
    assert not any("fog.npy" in ln or "snow.npy" in ln for ln in lines)
    # the valid cell reads the same files: not listed twice
    assert _missing_corruption_data("cifar10", cfg, seen) == []


def test_outcomes_of_an_attacked_run_with_an_empty_corruption_column_are_not_read_as_pairs():
    from ctrobust.report.study import is_corruption_outcomes

    o = _outcomes({(42, 1.0): (1, 9), (42, 0.9): (3, 9)})
    assert not is_corruption_outcomes(o)
    o["corruption"], o["severity"] = np.full(len(o["id"]), ""), np.zeros(len(o["id"]), np.int64)
    assert not is_corruption_outcomes(o)
    cell = summarize_cell("cifar10", "reference", "r", o, _Cfg(), threat="Linf")
    assert cell.pairs == 0 and cell.base_pct.mean == 10.0
