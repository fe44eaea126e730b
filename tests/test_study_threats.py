"""``ctrobust reproduce ct-paper --threats Linf,L2,corruptions``: every cell of the three threats runs on
test-written inputs, each threat's aggregate equals a hand computation of ``compare_robustness_results.py``
from the cells' ``results.csv``, and without inputs every missing file is listed at once.

The corruptions cells run through ``ctrobust sweep --threat corruptions`` (``SweepConfig(threat="corruptions",
corruptions=, severities=)``; ``results.csv`` rows with ``corruption_acc``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from corruption_files import write_cifar_c
from ctrobust.cli import main
from ctrobust.corruptions import CORRUPTIONS
from ctrobust.store import load_config, load_results

pytestmark = pytest.mark.usefixtures("one_thread")

THREATS = ("Linf", "L2", "corruptions")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A randomly initialised CT-paper ResNet-18 under the reference's file name, and CIFAR-10-C (every
    corruption, sparse full-size files) in RobustBench's layout."""
    from ctrobust.models.ct_paper import build_resnet

    root = tmp_path_factory.mktemp("inputs")
    models, data = root / "models", root / "data"
    (models / "ct-paper").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_resnet("resnet18", 10).state_dict(), models / "ct-paper" / "resnet18_cifar10_epoch200.pth")
    write_cifar_c(data, "cifar10", corruptions=CORRUPTIONS, n_per_severity=8)
    return models, data


@pytest.fixture(scope="module")
def study(inputs, tmp_path_factory):
    models, data = inputs
    out = tmp_path_factory.mktemp("study3") / "s"
    argv = ["reproduce", "ct-paper", "--model", "resnet18", "--datasets", "cifar10", "--threats", "Linf,L2,corruptions",
            "--corruptions", "fog,snow", "--severities", "1,5", "--data", "bundled", "--n-examples", "4", "--seeds",
            "42", "--betas", "0.9", "--attacks",
            "apgd-ce", "--device", "cpu", "--quiet", "--model-dir", str(models), "--data-dir", str(data),
            "--out", str(out)]
    assert main(argv) == 0
    return out


def _accuracy_column(threat: str) -> str:
    return "corruption_acc" if threat == "corruptions" else "robust_acc"


def _by_hand(run_dir: Path, threat: str) -> tuple[float, float, float | None]:
    """compare_robustness_results.py on one dataset: per seed CT = max(best over the grid, base), means over
    seeds, relative improvement when the base is > 0 (percent)."""
    rows = load_results(run_dir)
    col = _accuracy_column(threat)
    seeds = sorted({int(r["seed"]) for r in rows})
    base, ct = [], []
    for s in seeds:
        acc = {float(r["beta"]): 100 * float(r[col]) for r in rows if int(r["seed"]) == s}
        b = acc.pop(1.0)
        base.append(b)
        ct.append(max(max(acc.values()), b))
    mb, mc = float(np.mean(base)), float(np.mean(ct))
    return mb, mc, ((mc - mb) / mb * 100 if mb > 0 else None)


def test_every_cell_of_the_three_threats_runs_and_each_aggregate_is_the_reference_rule(study):
    runs = sorted(p.name for p in (study / "runs").iterdir())
    assert runs == sorted([f"{t}-cifar10-{c}" for t in ("Linf", "L2") for c in ("reference", "pixel", "valid")]
                          + ["corruptions-cifar10-reference", "corruptions-cifar10-valid"])
    for t in ("Linf", "L2"):
        cfg = load_config(study / "runs" / f"{t}-cifar10-reference")
        assert cfg.threat == t and cfg.protocol == "reference"
        assert float(cfg.eps) == pytest.approx(8 / 255 if t == "Linf" else 0.5)
    for cell, scope in (("reference", "modules"), ("valid", "all")):
        cfg = load_config(study / "runs" / f"corruptions-cifar10-{cell}")
        assert (cfg.threat, cfg.protocol, cfg.ct_scope) == ("corruptions", "valid", scope)
    rep = json.loads((study / "report.json").read_text())
    assert rep["threats"] == list(THREATS)
    rows = {(r["threat"], r["cell"], r["selection"]): r for r in rep["decomposition"]}
    for t in THREATS:
        cells = ("reference", "pixel", "valid") if t != "corruptions" else ("reference", "valid")
        for cell in cells:
            base, ct, rel = _by_hand(study / "runs" / f"{t}-cifar10-{cell}", t)
            row = rows[(t, cell, "oracle")]
            (term,) = row["per_dataset"]
            assert term["base_pct"] == pytest.approx(base) and term["ct_pct"] == pytest.approx(ct)
            assert (row["value_pct"] is None) == (rel is None)
            if rel is not None:
                assert row["value_pct"] == pytest.approx(rel)
        assert (t, "valid", "heldout") in rows
    corr = next(c for c in rep["cells"] if c["threat"] == "corruptions" and c["cell"] == "valid")
    assert corr["pairs"] == 4 and corr["n"] == 4  # 2 corruptions x 2 severities, 4 images each
    l2 = next(c for c in rep["cells"] if c["threat"] == "L2" and c["cell"] == "valid")
    assert l2["pixel_l2_max"] is not None and l2["pixel_l2_max"] <= 0.5 + 1e-5 and l2["in_ball_frac"] == 1.0
    md = (study / "report.md").read_text()
    for t in THREATS:
        assert f"| {t} | cifar10 | reference |" in md
    assert (study / "figures" / "study.png").stat().st_size > 0


def test_offline_without_inputs_every_missing_file_of_the_three_threats_is_listed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("CTROBUST_OFFLINE", "1")
    models, data = tmp_path / "models", tmp_path / "data"
    models.mkdir()
    data.mkdir()
    out = tmp_path / "study"
    argv = ["reproduce", "ct-paper", "--model", "resnet50", "--datasets", "cifar10,cifar100,imagenet",
            "--threats", "Linf,L2,corruptions", "--model-dir", str(models), "--data-dir", str(data),
            "--out", str(out), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln.strip() for ln in err.splitlines() if ln.strip().startswith("- ")]
    # one model and one clean dataset per dataset (shared by Linf and L2), then every corruption file:
    # CIFAR-C: 15 .npy + labels.npy each; ImageNet-C: 15 corruptions x 5 severity folders
    assert len(lines) == 3 + 3 + 2 * 16 + 75, err
    for d, folder in (("cifar10", "CIFAR-10-C"), ("cifar100", "CIFAR-100-C")):
        for c in (*CORRUPTIONS, "labels"):
            assert any(ln.startswith(f"- {d}: corruptions data:") and f"{folder}/{c}.npy" in ln for ln in lines), (d, c)
    for c in CORRUPTIONS:
        for s in range(1, 6):
            assert any(f"ImageNet-C/{c}/{s}" in ln and "zenodo.org/records/2235448" in ln for ln in lines), (c, s)
    assert not out.exists()
    assert list(models.iterdir()) == [] and list(data.iterdir()) == []
