"""Tests for ctrobust.diagnostics: gradient health on masked and normal toy models, transfer flags,
and the per-beta masking flags on hand-made outcomes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ctrobust import diagnostics


def _tiny_cnn(seed: int = 0, n_classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, n_classes))


class _Rounding(nn.Module):
    """Gradient masking by quantization: x.round() has zero derivative everywhere."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.round())


class _Detached(nn.Module):
    """Gradient masking by detaching: the output does not depend on x in the autograd graph."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.detach()) + 0.0 * x.sum()


class _Sqrt(nn.Module):
    """d sqrt(x) / dx = inf at x = 0: a non-finite input gradient with finite logits."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.sqrt(x))


def _data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def test_normal_cnn_has_healthy_gradients():
    x, y = _data()
    h = diagnostics.gradient_health(_tiny_cnn(), x, y)
    assert h["grad_zero"].dtype == bool and h["grad_zero"].shape == (6,)
    assert not h["grad_zero"].any()
    assert not h["grad_nonfinite"].any()


@pytest.mark.parametrize("wrapper", [_Rounding, _Detached])
def test_masked_model_has_zero_gradients(wrapper):
    x, y = _data()
    h = diagnostics.gradient_health(wrapper(_tiny_cnn()), x, y)
    assert h["grad_zero"].all()
    assert not h["grad_nonfinite"].any()


def test_nonfinite_gradient_detected_per_example():
    x, y = _data(4)
    x[1, 0, 2, 2] = 0.0  # only example 1 has a pixel at 0, where sqrt's derivative is inf
    x[[0, 2, 3]] = x[[0, 2, 3]].clamp_min(0.05)
    h = diagnostics.gradient_health(_Sqrt(_tiny_cnn()), x, y)
    assert h["grad_nonfinite"].tolist() == [False, True, False, False]
    assert not h["grad_zero"][1]  # a non-finite gradient is never "zero"


def test_gradient_health_independent_of_batch_size_and_restores_modes():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3),
                        nn.Dropout(0.5))
    net.train()
    net[5].eval()  # mixed modes must come back exactly as they were
    x, y = _data(5)
    stats_before = net[1].running_mean.clone()
    h1 = diagnostics.gradient_health(net, x, y)
    h2 = diagnostics.gradient_health(net, x, y, batch_size=2)
    assert np.array_equal(h1["grad_zero"], h2["grad_zero"])
    assert [m.training for m in net.modules()] == [True, True, True, True, True, True, False]
    # run in eval mode: BatchNorm running statistics untouched; parameter grads untouched
    assert torch.equal(net[1].running_mean, stats_before)
    assert all(p.grad is None for p in net.parameters())


def test_transfer_flags_hand_made():
    class MeanThreshold(nn.Module):
        """logits = (mean(x) - 0.5, 0): class 0 iff the image mean is above 0.5."""

        def forward(self, x):
            m = x.flatten(1).mean(1) - 0.5
            return torch.stack([m, torch.zeros_like(m)], dim=1)

    x_clean = torch.full((3, 1, 2, 2), 0.6)
    x_adv = x_clean.clone()
    x_adv[1] = 0.4  # the beta = 1 adversarial of example 1 pushes the mean below 0.5
    y = torch.tensor([0, 0, 1])  # example 2 is misclassified even clean (x_adv == x_clean there)
    flags = diagnostics.transfer_flags(MeanThreshold(), x_clean, x_adv, y)
    assert flags.tolist() == [False, True, True]
    with pytest.raises(ValueError):
        diagnostics.transfer_flags(MeanThreshold(), x_clean[:2], x_adv, y)
    with pytest.raises(ValueError):
        diagnostics.transfer_flags(MeanThreshold(), x_clean, x_adv + 1.0, y)


# ------------------------------------------------------------------------------- masking flags
def _outcomes():
    # beta 0.9 rows: 0 broken by square, 1 by apgd-ce, 2 and 3 robust, 4 misclassified clean
    # beta 1.0 rows: a normal picture (gradient attacks break everything they break)
    return {
        "beta": np.array([0.9] * 5 + [1.0] * 5),
        "broken_by": np.array(["square", "apgd-ce", "", "", "clean",
                               "apgd-ce", "apgd-t", "", "fab-t", "clean"]),
        "robust": np.array([False, False, True, True, False, False, False, True, False, False]),
        "clean_correct": np.array([True, True, True, True, False, True, True, True, True, False]),
        "grad_zero": np.array([False, False, True, False, True, False, False, False, False, False]),
        "grad_nonfinite": np.zeros(10, bool),
        # row 2 survives beta 0.9's own attack but falls to the transferred beta = 1 adversarial
        "transfer_broken": np.array([False, True, True, False, True, True, True, False, True, True]),
    }


def test_masking_flags_hand_made():
    flags = diagnostics.masking_flags(_outcomes())
    assert sorted(flags) == [0.9, 1.0]
    f9, f1 = flags[0.9], flags[1.0]
    assert f9["n"] == 5
    assert f9["square_only"] == 1 and f9["square_only_flag"]
    assert f9["transfer_only"] == 1
    # grad zero among clean-correct rows only: rows 0..3 are clean-correct, row 2 has a zero gradient
    # (row 4's zero gradient is on a misclassified point and does not count): 1 / 4
    assert f9["grad_zero_frac"] == pytest.approx(0.25)
    assert f9["grad_nonfinite_frac"] == 0.0
    assert f9["masking_suspected"] and len(f9["reasons"]) == 3
    assert f1 == {"n": 5, "square_only": 0, "square_only_flag": False, "grad_zero_frac": 0.0,
                  "grad_nonfinite_frac": 0.0, "transfer_only": 0, "masking_suspected": False, "reasons": []}


def test_masking_flags_thresholds_order_and_missing_columns():
    out = _outcomes()
    relaxed = diagnostics.masking_flags(out, max_square_only=1, max_transfer_only=1, max_grad_zero_frac=0.25)
    assert not relaxed[0.9]["masking_suspected"]
    # square run before any gradient attack: "broken by square" says nothing about gradient attacks
    flags = diagnostics.masking_flags(out, attacks=["square", "apgd-ce"])
    assert flags[0.9]["square_only"] is None and not flags[0.9]["square_only_flag"]
    minimal = {"beta": out["beta"], "robust": out["robust"]}
    f = diagnostics.masking_flags(minimal)[0.9]
    assert f["square_only"] is None and f["grad_zero_frac"] is None and f["transfer_only"] is None
    assert not f["masking_suspected"]


def test_masking_flag_fires_on_masked_model_not_on_normal_one():
    """End to end: gradient_health per beta -> outcomes -> masking_flags."""
    x, y = _data(8)
    normal, masked = _tiny_cnn(), _Rounding(_tiny_cnn())
    cols = {k: [] for k in ("beta", "clean_correct", "grad_zero", "grad_nonfinite")}
    for beta, model in ((1.0, normal), (0.9, masked)):
        h = diagnostics.gradient_health(model, x, y)
        cols["beta"] += [beta] * len(y)
        cols["clean_correct"] += [True] * len(y)  # count every point, whatever the untrained toy predicts
        cols["grad_zero"] += h["grad_zero"].tolist()
        cols["grad_nonfinite"] += h["grad_nonfinite"].tolist()
    flags = diagnostics.masking_flags({k: np.asarray(v) for k, v in cols.items()})
    assert flags[0.9]["masking_suspected"] and flags[0.9]["grad_zero_frac"] == 1.0
    assert not flags[1.0]["masking_suspected"] and flags[1.0]["grad_zero_frac"] == 0.0
