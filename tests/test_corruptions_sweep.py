"""``--threat corruptions`` through the whole pipeline, on CIFAR-10-C files the test writes in RobustBench's layout.

The accuracies are checked against a hand computation: the npy files read directly, the model with CT written
here from the paper's formula, a plain forward and an argmax; the sweep's loader, CT and engine are not used.
"""

from __future__ import annotations

import csv
import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ctrobust.cli import main
from ctrobust.store import load_outcomes, load_results

sys.path.insert(0, str(Path(__file__).parent))
from corruption_files import write_cifar_c  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

NET = '''
import torch
from torch import nn


def make():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))
    with torch.no_grad():  # spread the logits so that CT's betas change some predictions
        for p in net.parameters():
            p.mul_(3.0)
    return net.eval()
'''


class _Phi(nn.Module):
    """CT from the paper: c sigmoid(b x/(1-b+eps)) x + (1-c)(1-b+eps) softplus(x/(1-b+eps)), eps = 1e-6."""

    def __init__(self, beta: float, c: float = 0.5):
        super().__init__()
        self.beta, self.c = beta, c

    def forward(self, x):
        s = 1 - self.beta + 1e-6
        return self.c * torch.sigmoid(self.beta * x / s) * x + (1 - self.c) * s * torch.nn.functional.softplus(x / s)


@pytest.fixture(scope="module")
def corr_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("corr")
    files = write_cifar_c(root / "data", corruptions=("gaussian_noise", "fog"), n_per_severity=6)
    (root / "net.py").write_text(NET)
    # labels: the network's own predictions (beta = 1) on one pair, so accuracies differ between pairs and betas
    labels = np.load(files["folder"] / "labels.npy")
    pred = _predict(root, files, "gaussian_noise", 1, 1.0, 6)
    for s in range(5):
        labels[s * 10000:s * 10000 + 6] = pred
    np.save(files["folder"] / "labels.npy", labels)
    return root, files


def _args(root: Path, out: Path, *extra) -> list[str]:
    return ["sweep", "--model", f"{root / 'net.py'}:make", "--dataset", "cifar10", "--threat", "corruptions",
            "--data-dir", str(root / "data"), "--n-examples", "5", "--betas", "0.8,0.6", "--severities", "1,3,5",
            "--corruptions", "gaussian_noise,fog",
            "--device", "cpu", "--quiet", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def corr_run(corr_setup):
    root, _ = corr_setup
    out = root / "run"
    assert main(_args(root, out)) == 0
    return out


def _predict(root: Path, files: dict, corruption: str, severity: int, beta: float, n: int) -> np.ndarray:
    import importlib.util

    spec = importlib.util.spec_from_file_location("hand_net", root / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.make()
    if beta < 1:
        for i, m in enumerate(net):
            if isinstance(m, nn.ReLU):
                net[i] = _Phi(beta)
    arr = np.load(files["folder"] / f"{corruption}.npy", mmap_mode="r")
    x = torch.from_numpy(np.array(arr[(severity - 1) * 10000:(severity - 1) * 10000 + n]))
    x = x.permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return net(x).argmax(1).numpy()


def _hand_accuracy(root: Path, files: dict, corruption: str, severity: int, beta: float, n: int) -> np.ndarray:
    y = np.load(files["folder"] / "labels.npy")[:n].astype(np.int64)
    return _predict(root, files, corruption, severity, beta, n) == y


def test_accuracies_equal_a_hand_computation(corr_setup, corr_run):
    root, files = corr_setup
    with (corr_run / "corruptions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["beta", "seed", "corruption", "severity", "n", "acc", "acc_lo", "acc_hi"]
    assert len(rows) == 3 * 2 * 3  # betas (1, 0.8, 0.6) x corruptions x severities
    o = load_outcomes(corr_run)
    accs = []
    for r in rows:
        want = _hand_accuracy(root, files, r["corruption"], int(r["severity"]), float(r["beta"]), 5)
        assert float(r["acc"]) == pytest.approx(want.mean(), abs=1e-9), r
        m = (o["corruption"] == r["corruption"]) & (o["severity"] == int(r["severity"])) & (o["beta"] == float(r["beta"]))
        ids = o["id"][m] % 10 ** 6
        assert np.array_equal(o["clean_correct"][m][np.argsort(ids)], want)
        accs.append(float(r["acc"]))
    assert len(set(accs)) > 1  # the betas and pairs are told apart
    res = load_results(corr_run)
    for row in res:
        pairs = [float(r["acc"]) for r in rows if float(r["beta"]) == row["beta"]]
        assert row["corruption_acc"] == pytest.approx(np.mean(pairs), abs=1e-9)
        assert row["corruption_lo"] <= row["corruption_acc"] <= row["corruption_hi"]


def test_rerun_does_no_work_and_figure_and_report_exist(corr_setup, corr_run, capsys):
    root, _ = corr_setup
    capsys.readouterr()
    assert main(_args(root, corr_run)) == 0
    assert "ran 0 unit(s)" in capsys.readouterr().out
    assert (corr_run / "figures" / "corruptions.png").is_file()
    assert main(["report", str(corr_run)]) == 0
    md = capsys.readouterr().out
    assert "Common corruptions" in md and "| fog | 5 |" in md


def test_eps_is_refused_in_one_line(corr_setup, tmp_path, capsys):
    root, _ = corr_setup
    assert main(_args(root, tmp_path / "e", "--eps", "8/255")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--eps does not apply to --threat corruptions" in err[0]
    assert not (tmp_path / "e").exists()


def test_missing_files_are_all_listed_and_nothing_is_written(corr_setup, tmp_path, monkeypatch, capsys):
    root, _ = corr_setup
    monkeypatch.setenv("CTROBUST_OFFLINE", "1")
    empty = tmp_path / "empty"
    empty.mkdir()
    args = _args(root, tmp_path / "o")
    args[args.index("--data-dir") + 1] = str(empty)
    args[args.index("--severities") + 1] = "1"
    args[args.index("--corruptions") + 1] = "fog,snow"
    assert main(args) == 2
    err = capsys.readouterr().err
    for name in ("fog.npy", "snow.npy", "labels.npy"):
        assert name in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists() and not any(empty.iterdir())


def test_unknown_corruption_gets_did_you_mean(corr_setup, tmp_path, capsys):
    root, _ = corr_setup
    args = _args(root, tmp_path / "x")
    args[args.index("--corruptions") + 1] = "fgo"
    assert main(args) == 2
    assert "did you mean 'fog'" in capsys.readouterr().err
