"""Minimum-norm attacks (``ctrobust.engines.minnorm``): FMN, FAB (min-norm) and ``min_norm``.

What is checked:
- on a linear binary classifier the minimal distance is analytic (``|f(x)| / ||w||_1`` for Linf,
  ``|f(x)| / ||w||_2`` for L2, the box not binding): every point is found within 1 %, never below it;
- against adversarial-library 0.2.8 (``fmn``, ``fab``) on a digits CNN: no larger median distance;
- rows misclassified clean get distance 0 (``"clean"``), rows nothing breaks get ``inf``;
- batch invariance: a subset of the rows gives the same points and distances, bit for bit;
- ``verify`` rejects points outside [0, 1], not finite, or not misclassified.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from ctrobust._registry import UnknownNameError
from ctrobust.engines.minnorm import (fab_min_norm, fab_restart_keys, fmn, min_norm, parse_norm, verify)
from ctrobust.toy import train_digits_cnn

pytestmark = [pytest.mark.usefixtures("one_thread"),
              # adv-lib 0.2.8 compares torch versions with distutils' LooseVersion on every projection
              pytest.mark.filterwarnings("ignore:distutils Version classes are deprecated:DeprecationWarning")]

NORMS = ("Linf", "L2")


# ---------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------


class Linear:
    """Two logits ``(0, w.x + b)``: class 1 iff ``f(x) = w.x + b > 0``; ``forward(x, rows)`` as the attacks
    call it, recording the rows of every call."""

    def __init__(self, w: torch.Tensor, b: float):
        self.w, self.b = w, b
        self.calls: list[torch.Tensor] = []

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1) @ self.w + self.b

    def __call__(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        self.calls.append(rows.clone())
        z = self.f(x)
        return torch.stack([torch.zeros_like(z), z], 1)


@pytest.fixture(scope="module")
def linear():
    """(model, x (16, 3, 8, 8), y): every |f(x)| in [0.2, 2] and x in [0.35, 0.65], so the minimal
    perturbation (Linf <= 0.02, L2 <= 0.15) stays well inside the box."""
    g = torch.Generator().manual_seed(0)
    n, shape = 16, (3, 8, 8)
    w = torch.randn(3 * 64, generator=g)
    model = Linear(w, 0.3)
    x = 0.4 + 0.2 * torch.rand(n, *shape, generator=g)
    target = (0.2 + 1.8 * torch.rand(n, generator=g)) * torch.where(torch.arange(n) % 2 == 0, -1.0, 1.0)
    # move each point along w until f(x) = target (a shift of at most 0.05 per pixel)
    x = x + ((target - model.f(x))[:, None] * w / w.dot(w)).reshape(n, *shape)
    assert 0.3 < x.min() and x.max() < 0.7
    y = (model.f(x) > 0).long()
    return model, x, y


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """(model with frozen parameters, x_test (297, 1, 8, 8) in [0, 1], y_test (297,)), ~96 % accurate."""
    model, x, y, _ = train_digits_cnn(cache_dir=tmp_path_factory.getbasetemp())
    for p in model.parameters():
        p.requires_grad_(False)
    return model, x, y


def _padded(model, block: int = 16):
    """``forward(x, rows)`` that evaluates the model on exactly ``block`` rows (padding with copies of the
    first), as the fast engine's model caller does: CPU kernels are chosen by batch size, so only a fixed
    shape makes a row's logits independent of the other rows."""

    def forward(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        outs = []
        for i in range(0, x.shape[0], block):
            xb = x[i:i + block]
            m = xb.shape[0]
            pad = xb[:1].detach().expand(block - m, *xb.shape[1:])
            outs.append(model(torch.cat([xb, pad], 0))[:m])
        return torch.cat(outs, 0)

    return forward


def _adv_lib():
    pytest.importorskip("adv_lib", reason="adversarial-library: pip install --no-deps adv-lib==0.2.8 "
                                          "(its dependency visdom does not build; only its logger needs it)")
    # adv_lib.attacks imports adv_lib.utils.visdom_logger, which imports visdom at import time and uses it
    # only when a VisdomLogger is built (never here)
    sys.modules.setdefault("visdom", types.ModuleType("visdom"))
    from adv_lib import attacks

    return attacks


# ---------------------------------------------------------------------------------------------------
# analytic optimum
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
def test_linear_classifier_minimal_distance_is_found_for_every_point(linear, norm):
    model, x, y = linear
    n = x.shape[0]
    dual = model.w.abs().sum() if norm == "Linf" else model.w.norm()
    true = model.f(x).abs() / dual
    res = min_norm(model, x, y, norm=norm, params={}, seed=0, ids=torch.arange(n),
                   betas=torch.ones(n, dtype=torch.float64))
    rel = res.distance / true - 1
    assert rel.max() < 0.01, rel
    # no adversarial point is closer than the optimum (float32 rounding aside): verification is real
    assert rel.min() > -1e-4, rel
    assert set(res.found_by) <= {"fmn", "fab"}
    # the points are the ones measured: in the box, misclassified, at the stated distance
    assert res.x_adv.dtype == torch.float32 and 0 <= res.x_adv.min() and res.x_adv.max() <= 1
    assert ((model.f(res.x_adv) > 0).long() != y).all()
    assert torch.equal(verify(model, x, res.x_adv, y, norm), res.distance)
    # passes per row: clean check, FMN (1 + 1 per step), FAB (2 + (K - 1) per step), one verification
    assert res.forward_passes.tolist() == [1 + 100 + 200 + 1] * n
    assert res.backward_passes.tolist() == [100 + 100] * n

    # each attack on its own reaches the optimum (measured: FMN to ~5e-5, FAB to 0.52 %: its eta = 1.05
    # overshoot and beta = 0.9 step back settle just outside a linear boundary)
    for attack in (fmn, fab_min_norm):
        out = attack(model, x, y, norm=norm)
        rel = out.distance / true - 1
        assert rel.max() < 0.01 and rel.min() > -1e-4, (attack.__name__, rel)
        assert torch.equal(verify(model, x, out.x_adv, y, norm), out.distance), attack.__name__
    assert (fmn(model, x, y, norm=norm).distance / true - 1).max() < 1e-3


def test_fmn_keeps_growing_eps_until_adversarial(linear):
    # adversarial-library's rule lands exactly on the linear boundary after one step, on the correct side
    # for some rows (margin ~1e-7), and then recomputes the same radius forever; with the (1 + gamma)
    # floor every row crosses within a few steps
    model, x, y = linear
    out = fmn(model, x, y, norm="L2", steps=10)
    assert torch.isfinite(out.distance).all()


# ---------------------------------------------------------------------------------------------------
# against adversarial-library
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_correct(digits):
    model, x, y = digits
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return model, x[ok][:32], y[ok][:32]


@pytest.mark.parametrize("norm", NORMS)
def test_fmn_is_no_worse_than_adv_lib(digits_correct, norm):
    attacks = _adv_lib()
    model, x, y = digits_correct
    forward = _padded(model, 32)
    steps = 100
    ours = fmn(forward, x, y, norm=norm, steps=steps)
    ref_x = attacks.fmn(model, x, y, norm=float("inf") if norm == "Linf" else 2, steps=steps)  # same defaults
    ref = verify(forward, x, ref_x, y, norm)
    mine = verify(forward, x, ours.x_adv, y, norm)
    assert torch.equal(mine, ours.distance)
    # every row adv-lib breaks, ours breaks too (adv-lib leaves rows unbroken: 20 of 32 at L2, 1 at Linf)
    assert torch.isfinite(mine[torch.isfinite(ref)]).all()
    assert torch.isfinite(mine).all()
    assert mine.median() <= 1.01 * ref.median()
    both = torch.isfinite(ref)
    assert both.sum() >= 10
    assert (mine[both] / ref[both]).median() <= 1.01


@pytest.mark.parametrize("norm", NORMS)
def test_fab_min_norm_is_no_worse_than_adv_lib(digits_correct, norm):
    attacks = _adv_lib()
    model, x, y = digits_correct
    forward = _padded(model, 32)
    steps = 40
    ours = fab_min_norm(forward, x, y, norm=norm, steps=steps)
    ref_x = attacks.fab(model, x, y, norm=float("inf") if norm == "Linf" else 2, n_iter=steps)
    ref = verify(forward, x, ref_x, y, norm)
    mine = verify(forward, x, ours.x_adv, y, norm)
    assert torch.equal(mine, ours.distance)
    assert torch.isfinite(mine[torch.isfinite(ref)]).all()
    assert mine.median() <= 1.01 * ref.median()
    # the same algorithm: the same distances, up to float32/float64 differences along the trajectory
    both = torch.isfinite(ref)
    assert ((mine[both] / ref[both] - 1).abs() < 1e-3).float().mean() > 0.9
    k = 10
    assert ours.forward_passes.tolist() == [2 * steps] * 32
    assert ours.backward_passes.tolist() == [(k - 1) * steps] * 32


# ---------------------------------------------------------------------------------------------------
# clean errors, unbreakable rows, verification
# ---------------------------------------------------------------------------------------------------


def test_clean_errors_have_distance_zero_and_unbreakable_rows_inf(linear):
    model, x, y = linear
    n = x.shape[0]
    wrong = torch.zeros(n, dtype=torch.bool)
    wrong[[0, 5, 6]] = True
    y = torch.where(wrong, 1 - y, y)
    kw = dict(params={"fmn": {"steps": 20}, "fab": {"steps": 10, "restarts": 2}}, seed=1, ids=torch.arange(n),
              betas=torch.ones(n))
    model.calls.clear()
    res = min_norm(model, x, y, norm="Linf", **kw)
    assert (res.distance[wrong] == 0).all() and (res.found_by[wrong.numpy()] == "clean").all()
    assert torch.equal(res.x_adv[wrong], x[wrong])
    assert (res.distance[~wrong] > 0).all() and torch.isfinite(res.distance).all()
    # the clean check is the only call that sees the clean errors, and they cost one forward only
    assert torch.equal(model.calls[0], torch.arange(n))
    assert all(not bool(wrong[c].any()) for c in model.calls[1:])
    assert res.forward_passes[wrong].tolist() == [1] * 3 and res.backward_passes[wrong].tolist() == [0] * 3
    for attack, kw1 in ((fmn, {"steps": 5}), (fab_min_norm, {"steps": 5})):
        out = attack(model, x, y, norm="L2", **kw1)
        assert (out.distance[wrong] == 0).all() and (out.found_by[wrong.numpy()] == "clean").all()
        assert (out.distance[~wrong] > 0).all()
        assert (out.found_by[~wrong.numpy()] == attack.__name__.split("_")[0]).all()

    def constant(xb, rows):
        # logits that do not depend on the input (but are connected to it, so gradients are zero, not None)
        return torch.tensor([[1.0, 0.0]]).expand(xb.shape[0], 2) + 0.0 * xb.reshape(xb.shape[0], -1)[:, :1]

    y0 = torch.zeros(n, dtype=torch.int64)
    for norm in NORMS:
        res = min_norm(constant, x, y0, norm=norm, **kw)
        assert torch.isinf(res.distance).all() and (res.found_by == "").all()
        assert torch.equal(res.x_adv, x)
        for attack in (fmn, fab_min_norm):
            out = attack(constant, x, y0, norm=norm, steps=5)
            assert torch.isinf(out.distance).all() and (out.found_by == "").all() and torch.equal(out.x_adv, x)


def test_min_norm_keeps_only_verified_claims(linear, monkeypatch):
    # an attack that claims, for every other row, a tiny distance for a point that is not adversarial (the
    # clean image, or half-way to its true point): min_norm must fall back to FAB's verified points there
    from ctrobust.engines import minnorm

    model, x, y = linear
    n = x.shape[0]
    liar_rows = torch.arange(n) % 2 == 0
    clean, half = torch.tensor([0, 2]), torch.arange(4, n, 2)

    def liar(forward, xs, ys, *, norm, steps=1):
        out = fmn(forward, xs, ys, norm=norm, steps=steps)
        out.x_adv[clean] = xs[clean]
        out.x_adv[half] = xs[half] + 0.5 * (out.x_adv[half] - xs[half])
        out.distance[liar_rows] = 1e-6
        return out

    monkeypatch.setitem(minnorm.MIN_NORM_ATTACKS, "fmn", liar)
    res = min_norm(model, x, y, norm="L2", params={"fmn": {"steps": 50}}, seed=0, ids=torch.arange(n),
                   betas=torch.ones(n))
    true = model.f(x).abs() / model.w.norm()
    assert (res.found_by[liar_rows.numpy()] == "fab").all() and (res.found_by[~liar_rows.numpy()] == "fmn").all()
    assert ((res.distance / true - 1).abs() < 0.01).all()
    assert torch.equal(verify(model, x, res.x_adv, y, "L2"), res.distance)
    # one verification forward per row, and one more where the first candidate failed
    base = 1 + 50 + 200
    assert res.forward_passes.tolist() == [base + 1 + int(lie) for lie in liar_rows]


def test_verify_rejects_points_outside_the_box_or_not_adversarial(linear):
    model, x, y = linear
    n = x.shape[0]
    res = fmn(model, x, y, norm="L2", steps=30)
    good = verify(model, x, res.x_adv, y, "L2")
    assert torch.isfinite(good).all() and torch.equal(good, res.distance)
    bad = res.x_adv.clone()
    bad[0, 0, 0, 0] = 1.5                       # outside [0, 1]
    bad[1, 2, 3, 4] = -1e-7                     # outside by a hair: no tolerance
    bad[2, 0, 1, 1] = float("nan")              # not finite
    bad[3] = x[3]                               # the clean image, correctly classified
    bad[4] = x[4] + 0.3 * (res.x_adv[4] - x[4])  # on the correct side of the boundary
    model.calls.clear()
    d = verify(model, x, bad, y, "l2")
    assert torch.isinf(d[:5]).all() and torch.equal(d[5:], good[5:])
    # the model never sees a point outside the box
    assert torch.equal(model.calls[0], torch.arange(3, n))
    # Linf distance of the same points, and a misclassified clean image is at distance 0
    dinf = verify(model, x, res.x_adv, y, "Linf")
    assert torch.allclose(dinf, (res.x_adv - x).reshape(n, -1).abs().amax(1))
    assert verify(model, x[:1], x[:1], 1 - y[:1], "Linf").tolist() == [0.0]


# ---------------------------------------------------------------------------------------------------
# batch invariance, restarts, arguments
# ---------------------------------------------------------------------------------------------------


def test_results_do_not_depend_on_the_other_rows(digits):
    model, x, y = digits
    forward = _padded(model)
    with torch.no_grad():
        wrong = (model(x).argmax(1) != y).nonzero().squeeze(1)
    idx = torch.cat([torch.arange(9), wrong[:1]])  # 9 digits and one the model gets wrong
    x, y = x[idx], y[idx]
    n = x.shape[0]
    ids = idx * 3 + 11
    betas = torch.linspace(0.8, 1.0, n, dtype=torch.float64)
    params = {"fmn": {"steps": 15}, "fab": {"steps": 8, "restarts": 3}}
    sub = torch.tensor([7, 2, 9, 4])  # another order, with the clean error

    for norm in NORMS:
        full = min_norm(lambda xb, r: forward(xb, r), x, y, norm=norm, params=params, seed=3, ids=ids,
                        betas=betas)
        part = min_norm(lambda xb, r: forward(xb, r), x[sub], y[sub], norm=norm, params=params, seed=3,
                        ids=ids[sub], betas=betas[sub])
        assert torch.equal(part.distance, full.distance[sub]), norm
        assert torch.equal(part.x_adv, full.x_adv[sub]), norm
        assert (part.found_by == full.found_by[sub.numpy()]).all()
        assert torch.equal(part.forward_passes, full.forward_passes[sub])
        assert torch.equal(part.backward_passes, full.backward_passes[sub])
        assert full.found_by[-1] == "clean" and torch.isfinite(full.distance).all()

        # restart 0 is the same run whatever the restarts: more restarts never end farther
        one = fab_min_norm(forward, x, y, norm=norm, steps=8)
        keys = fab_restart_keys(3, ids, betas, 3)
        three = fab_min_norm(forward, x, y, norm=norm, steps=8, restarts=3, keys=keys)
        assert (three.distance <= one.distance).all()
        sub3 = fab_min_norm(forward, x[sub], y[sub], norm=norm, steps=8, restarts=3, keys=keys[sub])
        assert torch.equal(sub3.distance, three.distance[sub]) and torch.equal(sub3.x_adv, three.x_adv[sub])


def test_arguments_are_checked(linear):
    model, x, y = linear
    assert parse_norm("Linf") == "linf" and parse_norm("l2") == "l2" and parse_norm("LINF") == "linf"
    with pytest.raises(UnknownNameError, match="Known: L2, Linf"):
        fmn(model, x, y, norm="L3")
    with pytest.raises(ValueError, match="keys"):
        fab_min_norm(model, x, y, norm="L2", restarts=2)
    kw = dict(seed=0, ids=torch.arange(x.shape[0]), betas=torch.ones(x.shape[0]))
    with pytest.raises(UnknownNameError, match="'fab'"):
        min_norm(model, x, y, norm="L2", attacks=("fmn", "fba"), params={}, **kw)
    with pytest.raises(ValueError, match="do not run"):
        min_norm(model, x, y, norm="L2", attacks=("fmn",), params={"fab": {"steps": 3}}, **kw)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fmn(model, x + 1, y, norm="L2")
    assert isinstance(fmn(model, x, y, norm="L2", steps=2).found_by, np.ndarray)
