"""The fast engine's attacks (APGD, FAB, Square) and its random numbers, on a tiny CNN trained in the
test on scikit-learn's digits (8x8 grey images scaled to [0, 1], 10 classes).

What is checked:
- the counter-based RNG is a per-row function (sub-batches draw the same numbers) with sane statistics;
- the pieces ported from pyautoattack agree with it: APGD checkpoints, Square's p schedule and eta
  window, FAB's Linf/L2 projections;
- given the same start point, APGD (CE, DLR, targeted DLR) and FAB (targeted, untargeted) break exactly
  the examples pyautoattack's ``attack_single_run`` breaks (same trajectories);
- every attack alone lowers robust accuracy at a moderate eps, with all points in the ball and in [0, 1];
- early exit: the counted passes follow the accounting and are far below a run without early exit;
- APGD-CE's robust accuracy is within a small margin of pyautoattack's ``APGDAttack``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from ctrobust.engines.fast import rng
from ctrobust.engines.fast._caller import ModelCaller
from ctrobust.engines.fast._context import AttackContext
from ctrobust.engines.fast._driver import run_attack
from ctrobust.engines.fast.apgd import APGD, checkpoint_schedule
from ctrobust.attacks import AttackSuite
from ctrobust.engines.fast.engine import FastEngine
from ctrobust.engines.fast.fab import FAB, projection_l2, projection_linf
from ctrobust.engines.fast.square import eta_pattern, p_selection
from ctrobust.threat import distances
from ctrobust.toy import train_digits_cnn

EPS = {"Linf": 0.1, "L2": 0.5}  # moderate radii for 8x8 digits: roughly half the points are broken


# ---------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """(model, x_test (297, 1, 8, 8) in [0, 1], y_test (297,)); the model is ~96% accurate."""
    model, x, y, _ = train_digits_cnn(cache_dir=tmp_path_factory.getbasetemp())
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.9, f"digits CNN trained badly ({acc:.2%})"
    return model, x, y


@pytest.fixture(scope="module")
def correct(digits):
    """The first 32 correctly classified test digits."""
    model, x, y = digits
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return model, x[ok][:32], y[ok][:32]


def _ctx(model, x, y, norm, eps, block=None):
    n = x.shape[0]
    ones = torch.ones(n, dtype=torch.float64)
    caller = ModelCaller(model, ones, block=block or n)
    return AttackContext(caller, x, y, torch.arange(n), ones, 0, norm, eps)


def _engine_run(engine, model, x, y, norm, eps, attacks, batch_size=64, seed=0, **params):
    n = x.shape[0]
    suite = AttackSuite("custom", tuple(attacks), **params)
    return engine.run(model, x, y, ids=torch.arange(n), betas=torch.ones(n, dtype=torch.float64), seed=seed,
                      threat=norm, eps=eps, suite=suite, batch_size=batch_size, device="cpu")


# ---------------------------------------------------------------------------------------------------
# random numbers
# ---------------------------------------------------------------------------------------------------


def test_rng_draws_are_per_row_functions_with_sane_statistics():
    n = 300
    ids = torch.arange(n) * 7 + 3
    betas = torch.tensor(np.repeat([1.0, 0.9, 0.8], n // 3))
    keys = rng.row_keys(5, ids, betas, rng.ATTACK_CODES["apgd-ce"], 0)
    ctr = torch.arange(n) % 11
    u = rng.uniform(keys, ctr, (3, 4, 4))
    # a sub-batch in another order draws exactly the same numbers
    perm = torch.randperm(n)[:37]
    assert torch.equal(rng.uniform(keys[perm], ctr[perm], (3, 4, 4)), u[perm])
    k2 = rng.row_keys(5, ids[perm], betas[perm].float(), rng.ATTACK_CODES["apgd-ce"], 0)  # float32 betas
    assert torch.equal(k2, keys[perm])
    # statistics
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    z = rng.normal(keys, 1, (64,))
    assert abs(z.mean().item()) < 0.02 and abs(z.var().item() - 1) < 0.03 and abs((z ** 4).mean().item() - 3) < 0.15
    s = rng.rademacher(keys, 2, (64,))
    assert set(s.unique().tolist()) == {-1.0, 1.0} and abs(s.mean().item()) < 0.02
    r = rng.randint(keys, 3, torch.full((n,), 5), (50,))
    assert r.min() == 0 and r.max() == 4
    counts = torch.bincount(r.flatten(), minlength=5).float() / r.numel()
    assert (counts - 0.2).abs().max() < 0.01
    # every ingredient of the key changes the draw
    base = rng.uniform(keys, 0, (16,))
    for other in (rng.row_keys(6, ids, betas, 1, 0), rng.row_keys(5, ids + 1, betas, 1, 0),
                  rng.row_keys(5, ids, betas * 0.5, 1, 0), rng.row_keys(5, ids, betas, 2, 0),
                  rng.row_keys(5, ids, betas, 1, 1)):
        assert (rng.uniform(other, 0, (16,)) != base).float().mean() > 0.99
    assert (rng.uniform(keys, 1, (16,)) != base).float().mean() > 0.99
    # neighbouring rows and counters are uncorrelated
    c = torch.corrcoef(torch.stack([u[:-1].flatten(), u[1:].flatten()]))[0, 1]
    assert abs(c.item()) < 0.02


# ---------------------------------------------------------------------------------------------------
# pieces ported from pyautoattack
# ---------------------------------------------------------------------------------------------------


def test_apgd_checkpoints_follow_the_paper():
    # Croce & Hein 2020, Sec. 3.2: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
    p = [0.0, 0.22]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - 0.03, 0.06)
        if nxt > 1.0 + 1e-9:
            break
        p.append(nxt)
    expected = [round(100 * q) - 1 for q in p[1:]]  # 0-based iteration after which the check runs
    got = torch.nonzero(checkpoint_schedule(100)).flatten().tolist()
    assert got == expected
    assert checkpoint_schedule(100)[21] == 22 and checkpoint_schedule(100)[98] == 6


def test_square_schedule_and_window_match_pyautoattack():
    from pyautoattack.square import SquareAttack

    for norm in ("Linf", "L2"):
        ref = SquareAttack(lambda z: z, norm=norm, eps=0.1, n_queries=5000, p_init=0.8, resc_schedule=False,
                           device="cpu")
        for it in list(range(0, 60)) + [200, 201, 499, 501, 999, 1001, 1999, 2001, 3999, 4001, 4999]:
            assert p_selection(it, 0.8, 5000) == ref.p_selection(it)
    ref = SquareAttack(lambda z: z, norm="L2", eps=0.5, device="cpu")
    ref.device = "cpu"
    for s in (1, 3, 5, 7, 13):
        e = torch.as_tensor(eta_pattern(s), dtype=torch.float32)
        r = ref.eta(s)
        assert torch.allclose(e, r, atol=1e-6) or torch.allclose(e.t(), r, atol=1e-6)
        assert abs(float((e ** 2).sum()) - 1.0) < 1e-5


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_fab_projections_match_pyautoattack(norm):
    from pyautoattack import fab_projections

    g = torch.Generator().manual_seed(1)
    n, d = 40, 64
    t = torch.rand(n, d, generator=g)
    t[:, :8] = (t[:, :8] > 0.5).float()  # saturated pixels, as in digits
    w = torch.randn(n, d, generator=g)
    w[:5, :10] = 0.0
    b = (w * torch.rand(n, d, generator=g)).sum(1)  # hyperplanes that cross the box
    ours = (projection_linf if norm == "Linf" else projection_l2)(t.double(), w.double(), b.double())
    ref = (fab_projections.projection_linf if norm == "Linf" else fab_projections.projection_l2)(t, w, b)
    assert torch.allclose(ours.float(), ref, atol=2e-4, rtol=1e-3)
    # the projected point lies on the hyperplane and in the box
    z = t.double() + ours
    assert (z >= -1e-9).all() and (z <= 1 + 1e-9).all()
    assert torch.allclose((w.double() * z).sum(1), b.double(), atol=1e-6)


@pytest.mark.parametrize("norm,kind", [("Linf", "ce"), ("L2", "ce"), ("Linf", "dlr-targeted"),
                                       ("Linf", "fab-t"), ("L2", "fab-t"), ("L2", "fab")])
def test_same_start_gives_pyautoattack_trajectories(correct, norm, kind):
    """From the same start point, the per-row outcome equals pyautoattack's ``attack_single_run``.

    The model is called on the same batch shape as pyautoattack's (block = all rows), so the logits are
    bitwise the same and any difference would come from the attack logic.
    """
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT

    model, x, y = correct
    eps = EPS[norm]
    n = x.shape[0]
    ctx = _ctx(model, x, y, norm, eps)
    rows = torch.arange(n)
    phase = torch.zeros(n, dtype=torch.int64)
    if kind in ("ce", "dlr-targeted"):
        att = APGD(loss=kind, n_target_classes=1)
        start = att.start(ctx, rows, phase)
        ours = run_attack(att, ctx, rows, n).broken
        if kind == "ce":
            ref = APGDAttack(model, n_iter=100, norm=norm, eps=eps, loss="ce", device="cpu")
        else:
            ref = APGDAttack_targeted(model, n_iter=100, norm=norm, eps=eps, n_target_classes=1, device="cpu")
            ref.y_target = start["target"]
        ref.init_hyperparam(x)
        _, acc, _, _ = ref.attack_single_run(x, y, x_init=start["x"])
        theirs = ~acc.bool()
    else:
        targeted = kind == "fab-t"
        n_iter = 40 if targeted else 20  # untargeted FAB costs K = 10 backward passes per iteration
        ours = run_attack(FAB(targeted=targeted, n_iter=n_iter, n_target_classes=1), ctx, rows, n).broken
        ref = FABAttack_PT(model, norm=norm, n_restarts=1, n_iter=n_iter, eps=eps, targeted=targeted,
                           n_target_classes=1, device="cpu")
        ref.target_class = 2
        adv = ref.attack_single_run(x, y, use_rand_start=False, is_targeted=targeted)
        with torch.no_grad():
            theirs = (model(adv).argmax(1) != y) & (distances(x, adv, norm) <= eps)
    assert 0 < int(theirs.sum()) < n, "eps should leave some points robust and break others"
    assert torch.equal(ours, theirs), f"{int((ours != theirs).sum())} of {n} rows differ"


# ---------------------------------------------------------------------------------------------------
# each attack through the engine
# ---------------------------------------------------------------------------------------------------

SMALL = dict(n_iter=20, n_target_classes=3, n_queries=200)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("attack", ["apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab"])
def test_each_attack_lowers_robust_accuracy_inside_the_ball(digits, attack, norm):
    model, x, y = digits
    x, y = x[:32], y[:32]
    eps = EPS[norm] * (1.5 if attack == "square" else 1.0)  # Square with 200 queries needs a little more
    out = _engine_run(FastEngine(), model, x, y, norm, eps, [attack], batch_size=16, **SMALL)
    clean, rob = out.clean_correct.mean(), out.robust.mean()
    assert clean > 0.9
    assert rob < clean - 0.2, f"{attack} ({norm}) only lowered accuracy from {clean:.2f} to {rob:.2f}"
    assert set(out.broken_by) <= {"", "clean", attack}
    assert (out.robust == (out.broken_by == "")).all()
    d = distances(x, out.x_adv, norm)
    assert (d <= eps + 1e-5).all() and out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    broken = out.broken_by == attack
    with torch.no_grad():
        pred = model(out.x_adv).argmax(1).numpy()
    assert (pred[broken] != y.numpy()[broken]).all(), "a point counted as broken is classified correctly"
    assert torch.equal(out.x_adv[torch.as_tensor(~broken)], x[torch.as_tensor(~broken)])


# ---------------------------------------------------------------------------------------------------
# early exit and pass counting
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ["apgd-ce", "apgd-t"])
def test_early_exit_counts_passes_and_saves_most_of_them(digits, attack):
    model, x, y = digits
    x, y = x[:48], y[:48]
    n_iter, n_t = 50, 3
    eng = FastEngine()
    out = _engine_run(eng, model, x, y, "Linf", 0.15, [attack], batch_size=32, n_iter=n_iter, n_target_classes=n_t)
    st = eng.last_stats
    n, n_correct, n_broken = 48, int(out.clean_correct.sum()), int((out.broken_by == attack).sum())
    assert n_broken > 0.6 * n_correct
    # accounting: clean pass + one forward and one backward per row and step + the re-check of each hit
    att = st["attacks"][attack]
    assert out.forward_passes == n + att["backward_rows"] + n_broken
    assert out.backward_passes == att["backward_rows"] == att["forward_rows"] - n_broken
    # without early exit every clean-correct row would run every iteration of every phase
    phases = n_t if attack == "apgd-t" else 1
    full = n_correct * phases * (n_iter + 1)
    assert out.backward_passes <= full
    assert out.backward_passes < 0.5 * full, (out.backward_passes, full)
    # robust rows do run to the end: the count is at least what they alone need
    n_robust = int(out.robust.sum())
    assert out.backward_passes >= n_robust * phases * (n_iter + 1)


def test_eot_averages_gradients_over_draws():
    class Cycling(nn.Module):
        """Logits scaled by 1, 2, 3, 4, 1, ... on successive calls (a stand-in randomized model)."""

        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.calls = 0

        def forward(self, z):
            self.calls += 1
            return self.lin(z.flatten(1)) * float((self.calls - 1) % 4 + 1)

    torch.manual_seed(0)
    model = Cycling().eval()
    x = torch.rand(5, 1, 2, 2)
    y = torch.tensor([0, 1, 2, 0, 1])
    ctx = _ctx(model, x, y, "Linf", 0.1)

    def lin_loss(z):  # linear in the logits: the gradient scales with the draw's factor
        return z[:, 0] - z[:, 1]

    _, _, g1 = ctx.value_and_grad(x, torch.arange(5), lin_loss, eot_iter=1)       # factor 1
    model.calls = 0
    _, _, g4 = ctx.value_and_grad(x, torch.arange(5), lin_loss, eot_iter=4)       # mean factor 2.5
    assert torch.allclose(g4, 2.5 * g1, atol=1e-6)
    assert ctx.caller.backward_rows == 5 * 5 and ctx.caller.forward_rows == 5 * 5


# ---------------------------------------------------------------------------------------------------
# not weaker than pyautoattack
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_apgd_ce_matches_pyautoattack_robust_accuracy(digits, norm):
    from pyautoattack.autopgd_base import APGDAttack

    model, x, y = digits
    x, y = x[:120], y[:120]
    eps = EPS[norm]
    ref = APGDAttack(model, n_iter=100, norm=norm, eps=eps, seed=0, loss="ce", n_restarts=1, device="cpu")
    x_ref = ref.perturb(x, y)
    with torch.no_grad():
        acc_ref = (model(x_ref).argmax(1) == y).float().mean().item()
    out = _engine_run(FastEngine(), model, x, y, norm, eps, ["apgd-ce"], batch_size=64)
    acc_fast = float(out.robust.mean())
    assert 0.2 < acc_ref < 0.8, "eps should give an informative robust accuracy"
    assert abs(acc_fast - acc_ref) <= 0.04 + 1e-9, (acc_fast, acc_ref)
    assert math.isfinite(acc_fast)
