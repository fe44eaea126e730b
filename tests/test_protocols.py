"""The reference protocol (the CT reference code's measurement) checked against an independent run of
pyautoattack on normalized inputs, and the pixel-space perturbation it records against the clamp's
analytic effect."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ctrobust.cli import main
from ctrobust.data import load_eval_set
from ctrobust.store import load_outcomes, load_results

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN = (0.491, 0.482, 0.447)  # the CT reference code's CIFAR-10 normalization
STD = (0.247, 0.244, 0.262)
EPS = 2 / 255                 # in normalized units, as the reference passes it
L2_EPS = 0.25                 # likewise (the paper's 0.5 breaks every point of this tiny CNN)
BETAS = (1.0, 0.9, 0.8)
SEED = 42


def _cnn() -> nn.Module:
    """A small CNN with nn.ReLU submodules (the only ReLUs CT touches in the reference)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The CNN fitted on the 20 bundled CIFAR-10 images, as normalized inputs (the reference's setting)."""
    ev = load_eval_set("cifar10", 20, subset="first", data="bundled")
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    z = (ev.x - m) / s
    torch.manual_seed(0)
    net = _cnn()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(net(z), ev.y).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        assert (net(z).argmax(1) == ev.y).float().mean() >= 0.9, "the CNN did not fit the 20 images"
    d = tmp_path_factory.mktemp("proto")
    torch.save(net.state_dict(), d / "cnn.pt")
    factory = d / "factory.py"
    factory.write_text(textwrap.dedent(f"""
        import torch
        import torch.nn as nn
        from ctrobust.models import Normalized

        def make():
            net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10))
            net.load_state_dict(torch.load({str(d / 'cnn.pt')!r}, weights_only=True))
            return Normalized(net.eval(), mean={MEAN!r}, std={STD!r})
    """))
    return net, ev, z, f"{factory}:make"


def _reference_sweep(spec: str, out, threat: str, eps: str) -> None:
    argv = ["sweep", "--model", spec, "--dataset", "cifar10", "--data", "bundled", "--subset", "first",
            "--n-examples", "20", "--betas", "0.8,0.9", "--seeds", str(SEED), "--threat", threat, "--eps", eps,
            "--protocol", "reference", "--batch-size", "1000", "--device", "cpu", "--quiet", "--out", str(out)]
    assert main(argv) == 0


@pytest.fixture(scope="module")
def reference_run(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ref"
    _reference_sweep(trained[3], out, "Linf", "2/255")
    return out


@pytest.fixture(scope="module")
def reference_run_l2(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ref-l2"
    _reference_sweep(trained[3], out, "L2", str(L2_EPS))
    return out


class _IndependentCT(nn.Module):
    """CT written from the paper's formula (not ctrobust's code), as a module replacing nn.ReLU."""

    def __init__(self, beta: float, c: float = 0.5):
        super().__init__()
        self.beta, self.c = beta, c

    def forward(self, x):
        d = 1 - self.beta + 1e-6
        return self.c * torch.sigmoid(self.beta * x / d) * x + (1 - self.c) * d * F.softplus(x / d)


def _independent_flags(net: nn.Module, z, y, beta: float, norm: str = "Linf", eps: float = EPS) -> np.ndarray:
    """pyautoattack's standard AutoAttack on normalized inputs, its model without normalization, CT on
    the nn.ReLU modules only: what the CT reference code's robustness.py computes."""
    import copy

    from pyautoattack import AutoAttack

    model = copy.deepcopy(net)
    if beta < 1:
        for name, mod in list(model.named_children()):
            if isinstance(mod, nn.ReLU):
                setattr(model, name, _IndependentCT(beta))
    model.eval()
    aa = AutoAttack(model, norm=norm, eps=eps, seed=SEED, device="cpu", version="standard")
    aa.verbose = False
    x_adv, y_adv = aa.run_standard_evaluation(z, y, batch_size=1000)
    return (y_adv.cpu() == y).numpy()


def test_reference_protocol_flags_equal_an_independent_pyautoattack_run(trained, reference_run):
    net, ev, z, _ = trained
    o = load_outcomes(reference_run)
    assert set(np.unique(o["beta"])) == set(BETAS)
    for beta in BETAS:
        m = o["beta"] == beta
        ours = o["robust"][m][np.argsort(o["id"][m])]
        theirs = _independent_flags(net, z, ev.y, beta)
        assert np.array_equal(ours, theirs), f"beta={beta}: ours {ours.astype(int)} vs pyautoattack {theirs.astype(int)}"
    # not a vacuous comparison: some points are broken and some survive somewhere on the grid
    assert o["robust"].any() and (~o["robust"] & o["clean_correct"]).any()


def test_l2_reference_protocol_flags_equal_an_independent_pyautoattack_l2_run(trained, reference_run_l2):
    net, ev, z, _ = trained
    o = load_outcomes(reference_run_l2)
    assert set(np.unique(o["beta"])) == set(BETAS)
    for beta in BETAS:
        m = o["beta"] == beta
        ours = o["robust"][m][np.argsort(o["id"][m])]
        theirs = _independent_flags(net, z, ev.y, beta, norm="L2", eps=L2_EPS)
        assert np.array_equal(ours, theirs), f"beta={beta}: ours {ours.astype(int)} vs pyautoattack {theirs.astype(int)}"
    assert o["robust"].any() and (~o["robust"] & o["clean_correct"]).any()


def test_l2_reference_run_records_the_pixel_space_l2_perturbation_it_applied(trained, reference_run_l2):
    _, ev, _, _ = trained
    o = load_outcomes(reference_run_l2)
    broken = o["clean_correct"] & ~o["robust"]
    assert broken.any()
    # analytic: a broken point has every pixel in [mean, mean + std] (the clamp in normalized space), so its
    # pixel-space L2 distance is at least the L2 norm of each pixel's distance to that interval
    m, s = np.array(MEAN).reshape(3, 1, 1), np.array(STD).reshape(3, 1, 1)
    x = ev.x.numpy()
    gap = np.maximum(m - x, 0) + np.maximum(x - (m + s), 0)
    lower = np.sqrt((gap.reshape(len(x), -1) ** 2).sum(1))
    by_id = {int(i): k for k, i in enumerate(ev.ids.numpy())}
    rows = np.flatnonzero(broken)
    for r in rows:
        assert o["pixel_l2"][r] >= lower[by_id[int(o["id"][r])]] - 1e-4
        assert o["pixel_l2"][r] >= o["pixel_linf"][r] - 1e-6  # ||d||_2 >= ||d||_inf
    moved = [r for r in rows if lower[by_id[int(o["id"][r])]] > L2_EPS + 1e-3]
    assert moved, "no broken point had pixels the clamp must move beyond the L2 ball"
    # in_ball follows the threat's norm: these points are outside the pixel-space L2 ball
    assert not o["in_ball"][moved].any()
    assert (o["pixel_l2"][~broken] == 0).all() and o["in_ball"][~broken].all()
    rows_ = load_results(reference_run_l2)
    for r in rows_:
        sel = o["beta"] == r["beta"]
        assert r["pixel_l2_max"] == pytest.approx(float(o["pixel_l2"][sel].max()), rel=1e-6)


def test_reference_run_records_pixel_perturbations_beyond_eps_where_the_clamp_moved_pixels(trained, reference_run):
    _, ev, _, _ = trained
    o = load_outcomes(reference_run)
    broken = o["clean_correct"] & ~o["robust"]
    assert broken.any()
    # analytic: a broken point is mean + std * z_adv with z_adv in [0, 1], so every pixel lies in
    # [mean, mean + std]; a clean pixel outside that interval moved at least its distance to it
    m, s = np.array(MEAN).reshape(3, 1, 1), np.array(STD).reshape(3, 1, 1)
    x = ev.x.numpy()
    gap = np.maximum(m - x, 0) + np.maximum(x - (m + s), 0)
    lower = gap.reshape(len(x), -1).max(1)
    by_id = {int(i): k for k, i in enumerate(ev.ids.numpy())}
    rows = np.flatnonzero(broken)
    for r in rows:
        assert o["pixel_linf"][r] >= lower[by_id[int(o["id"][r])]] - 1e-5
    moved = [r for r in rows if lower[by_id[int(o["id"][r])]] > EPS + 1e-4]
    assert moved, "no broken point had a pixel the clamp must move beyond eps"
    assert all(o["pixel_linf"][r] > EPS for r in moved) and not o["in_ball"][moved].any()
    # points never attacked (misclassified or robust) are the clean images: zero perturbation, in the ball
    assert (o["pixel_linf"][~broken] == 0).all() and o["in_ball"][~broken].all()
    rows_ = load_results(reference_run)
    assert all(r["protocol"] == "reference" and "NOT in the stated eps-ball" in r["threat_note"] for r in rows_)
    assert all(r["in_ball_frac"] < 1 for r in rows_ if r["beta"] == 1.0)


def test_every_output_of_a_reference_run_says_its_threat_model_is_not_the_ball(reference_run, tmp_path, capsys):
    from ctrobust.report import build_report

    assert "NOT in the stated eps-ball" in build_report([reference_run])
    assert main(["plot", str(reference_run), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "sweep.png").stat().st_size > 0
    import matplotlib.pyplot as plt
    from ctrobust import plots

    titles = []
    real = plt.Figure.suptitle

    def spy(self, t, *a, **k):
        titles.append(t)
        return real(self, t, *a, **k)

    plt.Figure.suptitle = spy
    try:
        plots.plot_runs([reference_run], out_dir=tmp_path, formats=("png",))
    finally:
        plt.Figure.suptitle = real
    assert any("NOT the stated eps-ball" in t for t in titles)


def test_reference_protocol_refuses_a_model_without_declared_normalization(tmp_path, capsys):
    argv = ["sweep", "--model", "bundled/resnet18-cifar10", "--data", "bundled", "--subset", "first",
            "--n-examples", "4", "--betas", "0.9", "--protocol", "reference", "--device", "cpu", "--quiet",
            "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "normalization" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_the_reference_protocol_fixes_its_scope_and_engine(capsys, tmp_path):
    from ctrobust.config import ConfigError, SweepConfig

    cfg = SweepConfig(model="ct-paper/resnet18", protocol="reference").validate()
    assert (cfg.ct_scope, cfg.engine, cfg.batch_size) == ("modules", "reference", 1000)
    assert cfg.chunk_size >= cfg.n_examples  # one chunk: pyautoattack batches as the reference's
    with pytest.raises(ConfigError, match="ct-scope"):
        SweepConfig(model="ct-paper/resnet18", protocol="reference", ct_scope="all").validate()
    with pytest.raises(ConfigError, match="engine"):
        SweepConfig(model="ct-paper/resnet18", protocol="reference", engine="fast").validate()
    with pytest.raises(ConfigError, match="did you mean"):
        SweepConfig(model="m", protocol="referenc").validate()
