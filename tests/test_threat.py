"""Threat parsing, default radii and the ball check engines run after every attack chunk."""

from __future__ import annotations

import math

import pytest
import torch

from ctrobust._registry import UnknownNameError
from ctrobust.threat import DEFAULT_EPS, BallViolationError, Threat, check_ball, distances

EPS_INF = 8 / 255
EPS_L2 = 0.5


def _clean(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g)


def _linf_adv(x, eps=EPS_INF, seed=1):
    g = torch.Generator().manual_seed(seed)
    delta = (torch.rand(x.shape, generator=g) * 2 - 1) * eps
    return (x + delta).clamp(0, 1)


def _l2_adv(x, radius, seed=2):
    g = torch.Generator().manual_seed(seed)
    delta = torch.randn(x.shape, generator=g)
    delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * radius
    # keep the clean image away from the box so clipping does not shrink the perturbation
    x = x * 0.5 + 0.25
    return x, x + delta


# ---------------------------------------------------------------------------------------------------
# Threat enum
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [("Linf", Threat.Linf), ("linf", Threat.Linf), ("LINF", Threat.Linf),
                                           ("L_inf", Threat.Linf), ("l2", Threat.L2), ("L2", Threat.L2)])
def test_threat_parse_case_insensitive(text, expected):
    assert Threat.parse(text) is expected
    assert Threat(text) is expected


def test_threat_is_a_string_and_prints_its_value():
    assert Threat.Linf == "Linf" and Threat.L2 == "L2"
    assert str(Threat.L2) == "L2" and f"{Threat.Linf}" == "Linf"
    assert Threat.parse(Threat.L2) is Threat.L2


def test_threat_unknown_suggests():
    with pytest.raises(UnknownNameError) as err:
        Threat.parse("Lin")
    assert "Linf" in str(err.value) and "did you mean" in str(err.value)
    with pytest.raises(UnknownNameError, match="L2, Linf"):
        Threat.parse("L1")


def test_default_eps():
    assert DEFAULT_EPS[Threat.Linf] == pytest.approx(8 / 255)
    assert DEFAULT_EPS[Threat.L2] == pytest.approx(0.5)
    assert DEFAULT_EPS["Linf"] == DEFAULT_EPS[Threat.Linf]  # str keys work too (str enum)


# ---------------------------------------------------------------------------------------------------
# check_ball
# ---------------------------------------------------------------------------------------------------


def test_linf_valid_batch_passes_and_returns_distances():
    x = _clean()
    xa = _linf_adv(x)
    d = check_ball(x, xa, "Linf", EPS_INF)
    assert d.shape == (x.shape[0],) and d.dtype == torch.float64
    assert torch.allclose(d, (xa - x).abs().flatten(1).amax(1).double())
    assert bool((d <= EPS_INF + 1e-7).all()) and bool((d > 0).all())
    # identical images are trivially inside
    assert float(check_ball(x, x.clone(), Threat.Linf, EPS_INF).max()) == 0.0


def test_linf_out_of_ball_is_caught_with_count_worst_and_first_index():
    x = _clean()
    xa = _linf_adv(x)
    xa[4, 1, 2, 3] = x[4, 1, 2, 3] + 2 * EPS_INF if x[4, 1, 2, 3] < 0.5 else x[4, 1, 2, 3] - 2 * EPS_INF
    xa[2, 0, 0, 0] = x[2, 0, 0, 0] + 1.5 * EPS_INF if x[2, 0, 0, 0] < 0.5 else x[2, 0, 0, 0] - 1.5 * EPS_INF
    with pytest.raises(BallViolationError) as err:
        check_ball(x, xa, "Linf", EPS_INF)
    e = err.value
    assert isinstance(e, AssertionError)
    assert e.n_bad == 2 and e.n_total == 6 and e.first_index == 2
    assert e.bad_indices.tolist() == [2, 4]
    assert e.worst_distance == pytest.approx(2 * EPS_INF, rel=1e-5)
    msg = str(e)
    assert "2 of 6" in msg and "first offending index 2" in msg and "Linf" in msg
    assert f"{2 * EPS_INF:.6g}"[:5] in msg


def test_out_of_range_inside_ball_is_caught():
    x = _clean(4)
    x[1, 0, 0, 0] = 1.0
    xa = x.clone()
    xa[1, 0, 0, 0] = 1.0 + EPS_INF / 2  # within eps of the clean pixel but above 1
    with pytest.raises(BallViolationError, match=r"outside \[0, 1\]") as err:
        check_ball(x, xa, "Linf", EPS_INF)
    assert err.value.n_bad == 1 and err.value.first_index == 1
    xb = x.clone()
    xb[3, 2, 1, 1] = -1e-3
    with pytest.raises(BallViolationError, match="first offending index 3"):
        check_ball(x, xb, "L2", EPS_L2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_is_caught(bad):
    x = _clean(3)
    xa = x.clone()
    xa[0, 0, 0, 0] = bad
    with pytest.raises(BallViolationError, match="non-finite") as err:
        check_ball(x, xa, "Linf", EPS_INF)
    assert err.value.first_index == 0 and err.value.n_bad == 1


def test_l2_valid_and_violating():
    x, xa = _l2_adv(_clean(), EPS_L2 * (1 - 1e-6))
    d = check_ball(x, xa, "L2", EPS_L2)
    assert torch.allclose(d, torch.full_like(d, EPS_L2), atol=1e-5)
    x, xa = _l2_adv(_clean(), EPS_L2 * 1.01)
    with pytest.raises(BallViolationError, match="outside the L2 ball") as err:
        check_ball(x, xa, "L2", EPS_L2)
    assert err.value.n_bad == 6 and err.value.first_index == 0
    assert err.value.worst_distance == pytest.approx(0.505, rel=1e-4)


def test_l2_uses_the_l2_norm_not_linf():
    # every pixel moves by 0.02 (< 8/255 in Linf) but the L2 norm is 0.02 * sqrt(192) ~ 0.277
    x = _clean(2) * 0.5 + 0.25
    xa = x + 0.02
    assert float(check_ball(x, xa, "Linf", EPS_INF).max()) == pytest.approx(0.02, rel=1e-4)
    with pytest.raises(BallViolationError):
        check_ball(x, xa, "L2", 0.2)
    d = check_ball(x, xa, "L2", 0.3)
    assert float(d[0]) == pytest.approx(0.02 * math.sqrt(192), rel=1e-4)


def test_tolerance_is_absolute_slack():
    x = _clean(1) * 0.5 + 0.25
    tol = 1e-5
    xa = x.clone()
    xa[0, 0, 0, 0] += EPS_INF + 0.5 * tol
    check_ball(x, xa, "Linf", EPS_INF, tol=tol)
    xa[0, 0, 0, 0] = x[0, 0, 0, 0] + EPS_INF + 5 * tol
    with pytest.raises(BallViolationError):
        check_ball(x, xa, "Linf", EPS_INF, tol=tol)


def test_bad_arguments():
    x = _clean(2)
    with pytest.raises(ValueError, match="shape"):
        check_ball(x, x[:1], "Linf", EPS_INF)
    with pytest.raises(ValueError, match="eps"):
        check_ball(x, x, "Linf", 0.0)
    with pytest.raises(UnknownNameError):
        check_ball(x, x, "L3", 0.1)


def test_distances_accepts_float64_and_other_shapes():
    x = torch.rand(5, 10, dtype=torch.float64)
    xa = x.clone()
    xa[3, 7] += 0.25
    assert distances(x, xa, "Linf").tolist() == pytest.approx([0, 0, 0, 0.25, 0])
    assert distances(x, xa, "L2")[3].item() == pytest.approx(0.25)
