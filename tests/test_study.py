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


TINY = ["--model", "resnet18", "--datasets", "cifar10", "--data", "bundled", "--n-examples", "20", "--seeds", "42",
        "--betas", "0.9", "--attacks", "apgd-ce", "--device", "cpu", "--quiet"]


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
    assert rep["format"] == "ctrobust-study/1" and rep["model"] == "resnet18"
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
            "--model-dir", str(empty_models), "--data-dir", str(empty_data), "--out", str(out), "--quiet"]
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
    assert rep.paper_value_pct == 1032.64
