"""Attacks against linear classifiers, whose minimal adversarial perturbation is known in closed form.

For logits ``z = W x + b`` and an example ``x`` of class ``y``, the region where ``y`` is no longer the
argmax is the union over ``j != y`` of the half-spaces ``z_j >= z_y``, so the minimal distance to it is

    D(x) = min_j (z_y - z_j) / ||w_y - w_j||_*        (||.||_* = l1 for Linf, l2 for L2)

and the minimiser moves ``x`` by ``-D sign(w_y - w_j*)`` (Linf) or ``-D (w_y - w_j*) / ||w_y - w_j*||_2``
(L2). A binary classifier ``z = w.x + b`` with logits ``(z, -z)`` or ``(0, z)`` has the same boundary
``z = 0`` and ``D = |w.x + b| / ||w||_*`` (adversarial-library tests attacks the same way). Every point
below is placed so that this minimiser stays inside [0, 1]^d, so the box constraint does not bind and
``D`` is the exact answer of the box-constrained problem too (checked by ``test_oracle_*``).

Each attack run gets points at ``D = eps / (1 + DELTA)`` (an attack must break them: the ball holds the
minimiser with room to spare) and at ``D = eps / (1 - DELTA)`` (nothing in the ball is adversarial, so a
"broken" flag there would be a false success), interleaved in one batch.

The model is a ``CTModel`` at beta = 1 (``relu(z) - relu(-z) == z``: CT at beta 1 is exactly ReLU, so the
network is exactly linear and the engines take it as they take any CT model). Inputs are ``(N, 1, 1, d)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from ctrobust.attacks import AttackSuite
from ctrobust.ct import apply_ct
from ctrobust.engines import get_engine
from ctrobust.threat import distances

pytestmark = pytest.mark.usefixtures("one_thread")

#: radius per threat; the logit scale (GAP) is set relative to it, so the numbers below are unitless.
EPS = {"Linf": 0.05, "L2": 0.1}
#: relative margin around the analytic distance. Measured (seeded points, d = 2..100, both norms, fast
#: engine and pyautoattack alike): APGD-CE/-DLR/-T break every point already at 0.1 % above D (on a
#: linear model the sign-gradient / normalised step hits the optimal vertex/direction in a few steps),
#: while FAB's best point after 100 iterations sits at 1.0052 D (its 1.05 overshoot followed by
#: backward steps converges from above), so FAB breaks nothing at 0.5 % and everything at 0.7 %. 1 %
#: is the smallest round margin above FAB's fixed point that is not tuned to it.
DELTA = 1e-2
#: logit gap to the nearest other class of a point at distance eps (sets the weight scale).
GAP = 4.0
#: the other classes of the multi-class model are at least this many logits further than the nearest one,
#: so the nearest class by distance is also the runner-up logit (the class DLR and the targeted attacks
#: go for first) and CE's gradient is dominated by it.
EXTRA = 6.0
CENTER = 0.5
N_POINTS = 16
K_MULTI = 4  # APGD-T needs >= 4 classes, DLR >= 3


def _dual(threat: str) -> int:
    return 1 if threat == "Linf" else 2


class LinearNet(nn.Module):
    """Logits ``W x + b`` of flattened input, written as ``relu(z) - relu(-z)`` so CT has a ReLU to tune."""

    def __init__(self, W: np.ndarray, b: np.ndarray):
        super().__init__()
        self.lin = nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            self.lin.weight.copy_(torch.as_tensor(W, dtype=torch.float32))
            self.lin.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
        self.act = nn.ReLU()

    def forward(self, x):
        z = self.lin(x.flatten(1))
        return self.act(z) - self.act(-z)


# ---------------------------------------------------------------------------------------------------
# the oracle (float64 numpy, independent of torch and of the attacks)
# ---------------------------------------------------------------------------------------------------


def analytic_distance(W, b, x, y, threat) -> tuple[np.ndarray, np.ndarray]:
    """``(D, j*)``: minimal distance of each row of ``x`` to misclassification, and the class reached."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
    z = x @ W.T + b
    rows = np.arange(len(x))
    per_class = np.full((len(x), W.shape[0]), np.inf)
    for j in range(W.shape[0]):
        nrm = np.linalg.norm(W[y] - W[j], ord=_dual(threat), axis=1)
        ok = (y != j) & (nrm > 0)
        per_class[ok, j] = (z[rows, y] - z[:, j])[ok] / nrm[ok]
    return per_class.min(1), per_class.argmin(1)


def optimal_point(W, b, x, y, threat, t) -> np.ndarray:
    """The analytic minimiser direction from each row, scaled to length ``t`` (per row)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    _, j = analytic_distance(W, b, x, y, threat)
    g = np.asarray(W, np.float64)[y] - np.asarray(W, np.float64)[j]
    step = np.sign(g) if threat == "Linf" else g / np.linalg.norm(g, axis=1, keepdims=True)
    return x - np.asarray(t, np.float64).reshape(-1, 1) * step


def binary_model(d, form, threat, rng):
    """``(W, b, w)``: 2-class logits ``(z, -z)`` (form "sym") or ``(0, z)`` (form "zero"), ``z = w.(x - c)``."""
    w = rng.choice([-1.0, 1.0], d) * rng.uniform(0.5, 1.5, d)
    w *= GAP / EPS[threat] / np.linalg.norm(w, ord=_dual(threat))
    W = np.stack([w, -w]) if form == "sym" else np.stack([np.zeros(d), w])
    return W, -W @ np.full(d, CENTER), w


def binary_points(w, targets, threat, rng) -> np.ndarray:
    """Points with ``|w.(x - c)| / ||w||_* == targets`` (random side, random offset along the boundary)."""
    n, d = len(targets), len(w)
    side = rng.choice([-1.0, 1.0], n)
    v = rng.uniform(-0.1, 0.1, (n, d))
    g = np.sign(w) if threat == "Linf" else w / np.linalg.norm(w)
    alpha = (side * np.asarray(targets) * np.linalg.norm(w, ord=_dual(threat)) - v @ w) / (g @ w)
    return CENTER + v + alpha[:, None] * g[None]


def multi_model(d, threat, rng, k=K_MULTI):
    """``K`` classes with disjoint weight supports of equal l1 and l2 norm (so every pair's ``||w_y - w_j||``
    is the same); ``z = W (x - c)``. Coordinates past ``K * (d // K)`` have zero weight."""
    m = d // k
    mag = rng.uniform(0.5, 1.5, m)
    W = np.zeros((k, d))
    for c in range(k):
        W[c, c * m:(c + 1) * m] = rng.permutation(mag) * rng.choice([-1.0, 1.0], m)
    W *= GAP / EPS[threat] / np.linalg.norm(W[0] - W[1], ord=_dual(threat))
    return W, -W @ np.full(d, CENTER)


def multi_points(W, targets, threat, rng) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: random label, a random nearest class at analytic distance ``targets``, the rest
    ``EXTRA`` logits further; each class's logit is set through its own block of coordinates."""
    k, d = W.shape
    m = d // k
    gap_per_dist = np.linalg.norm(W[0] - W[1], ord=_dual(threat))
    y = rng.integers(0, k, len(targets))
    x = CENTER + rng.uniform(-0.1, 0.1, (len(targets), d))
    for i, t in enumerate(targets):
        near = rng.choice([c for c in range(k) if c != y[i]])
        z = -GAP - EXTRA - rng.uniform(0, 1, k)
        z[y[i]], z[near] = 0.0, -t * gap_per_dist
        z += (GAP + EXTRA) / 2  # centre the logits: keeps every block's move small
        for c in range(k):
            blk = slice(c * m, (c + 1) * m)
            wc = W[c, blk]
            noise = rng.uniform(-0.03, 0.03, m)
            noise -= (noise @ wc) / (wc @ wc) * wc  # along the class's level set: does not change z_c
            x[i, blk] = CENTER + z[c] * np.sign(wc) / np.abs(wc).sum() + noise
    return x, y


def make_problem(kind, d, threat, seed, targets=None):
    """``(W, b, x float32 (N, d), y, D float64 (N,))`` with half the points just inside and half just
    outside the eps ball (interleaved), or at the given ``targets``."""
    rng = np.random.default_rng(seed)
    eps = EPS[threat]
    if targets is None:
        targets = np.where(rng.permutation(N_POINTS) % 2 == 0, eps / (1 + DELTA), eps / (1 - DELTA))
    if kind == "multi":
        W, b = multi_model(d, threat, rng)
        x, y = multi_points(W, targets, threat, rng)
    else:
        W, b, w = binary_model(d, kind, threat, rng)
        x = binary_points(w, targets, threat, rng)
        y = (x @ W.T + b).argmax(1)
    x = x.astype(np.float32)
    D, _ = analytic_distance(W, b, x, y, threat)  # of the float32 points the model sees
    return W, b, x, y, D


def _run(engine, W, b, x, y, threat, eps, attacks, batch_size, n_classes):
    model = apply_ct(LinearNet(W, b), 1.0)
    n, d = x.shape
    suite = AttackSuite("custom", tuple(attacks), n_target_classes=n_classes - 1)
    X = torch.from_numpy(x).reshape(n, 1, 1, d)
    out = engine.run(model, X, torch.as_tensor(y, dtype=torch.int64), ids=torch.arange(n),
                     betas=torch.ones(n, dtype=torch.float64), seed=0, threat=threat, eps=eps, suite=suite,
                     batch_size=batch_size, device="cpu")
    return X, out


def _check_outcome(W, b, X, y, D, out, threat, eps, what):
    inside = D < eps
    assert out.clean_correct.all(), f"{what}: clean points misclassified: construction broken"
    missed = np.flatnonzero(inside & out.robust)
    false = np.flatnonzero(~inside & ~out.robust)
    assert missed.size == 0, (f"{what}: rows {missed.tolist()} at D = eps/(1+{DELTA}) survived "
                              f"(D/eps = {(D[missed] / eps).round(5).tolist()})")
    assert false.size == 0, (f"{what}: rows {false.tolist()} at D = eps/(1-{DELTA}) counted as broken "
                             f"(nothing in the ball is adversarial); broken_by {out.broken_by[false].tolist()}")
    # the points counted as broken really are adversarial, in the ball and no closer than the optimum
    hit = ~out.robust
    xa = out.x_adv[torch.as_tensor(np.flatnonzero(hit))].reshape(int(hit.sum()), -1).double().numpy()
    z = xa @ np.asarray(W, np.float64).T + b
    rows = np.arange(len(xa))
    others = z.copy()
    others[rows, y[hit]] = -np.inf
    assert (others.max(1) >= z[rows, y[hit]]).all(), f"{what}: a 'broken' x_adv is classified correctly"
    dist = distances(X[torch.as_tensor(np.flatnonzero(hit))], out.x_adv[torch.as_tensor(np.flatnonzero(hit))],
                     threat).double().numpy()
    assert (dist <= eps * (1 + 1e-5)).all(), f"{what}: x_adv outside the ball: {dist.max()} > {eps}"
    assert (dist >= D[hit] * (1 - 1e-4)).all(), (
        f"{what}: x_adv closer than the analytic minimum: {(dist / D[hit]).min()}")


# ---------------------------------------------------------------------------------------------------
# the oracle itself
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threat", ["Linf", "L2"])
@pytest.mark.parametrize("d", [2, 10, 100])
def test_binary_forms_share_boundary_and_distance(threat, d):
    """(z, -z) and (0, z) decide alike, and the K-class formula gives |w.x + b| / ||w||_* for both."""
    rng = np.random.default_rng(d)
    W_sym, b_sym, w = binary_model(d, "sym", threat, rng)
    W_zero = np.stack([np.zeros(d), w])
    b_zero = -W_zero @ np.full(d, CENTER)
    x = rng.uniform(0, 1, (200, d))
    z = (x - CENTER) @ w
    y_sym = (x @ W_sym.T + b_sym).argmax(1)
    y_zero = (x @ W_zero.T + b_zero).argmax(1)
    assert np.array_equal(y_sym, (z < 0).astype(int)) and np.array_equal(y_zero, (z > 0).astype(int))
    expected = np.abs(z) / np.linalg.norm(w, ord=_dual(threat))
    for W, b, y in ((W_sym, b_sym, y_sym), (W_zero, b_zero, y_zero)):
        D, _ = analytic_distance(W, b, x, y, threat)
        np.testing.assert_allclose(D, expected, rtol=1e-12)
    # and the logits of the torch model are the numpy ones (relu(z) - relu(-z) == z through CT at beta 1)
    model = apply_ct(LinearNet(W_sym, b_sym), 1.0)
    with torch.no_grad():
        got = model(torch.tensor(x, dtype=torch.float32).reshape(200, 1, 1, d)).double().numpy()
    np.testing.assert_allclose(got, x @ W_sym.T + b_sym, atol=1e-4 * GAP / EPS[threat])


@pytest.mark.parametrize("threat", ["Linf", "L2"])
@pytest.mark.parametrize("kind,d", [("sym", 2), ("zero", 10), ("sym", 100), ("multi", 4), ("multi", 10),
                                    ("multi", 100)])
def test_oracle_optimum_is_exact_and_inside_the_box(kind, d, threat):
    """The analytic minimiser at (1 + 1e-4) D is misclassified, at (1 - 1e-4) D it is not, and the move
    (even at (1 + 2 DELTA) D) stays inside [0, 1]: the box does not bind, D is the exact answer."""
    W, b, x, y, D = make_problem(kind, d, threat, seed=1)
    eps = EPS[threat]
    np.testing.assert_allclose(D[D < eps], eps / (1 + DELTA), rtol=1e-4)
    np.testing.assert_allclose(D[D > eps], eps / (1 - DELTA), rtol=1e-4)
    for factor, adversarial in ((1 + 1e-4, True), (1 - 1e-4, False)):
        xs = optimal_point(W, b, x, y, threat, D * factor)
        np.testing.assert_allclose(np.linalg.norm(xs - x, ord=np.inf if threat == "Linf" else 2, axis=1),
                                   D * factor, rtol=1e-9)
        z = xs @ W.T + b
        assert np.array_equal(z.argmax(1) != y, np.full(len(y), adversarial)), (factor, adversarial)
    far = optimal_point(W, b, x, y, threat, D * (1 + 2 * DELTA))
    assert far.min() > 0.05 and far.max() < 0.95, (far.min(), far.max())
    assert x.min() > 0.05 and x.max() < 0.95


# ---------------------------------------------------------------------------------------------------
# the fast engine
# ---------------------------------------------------------------------------------------------------

# (model kind, d, batch size): dimensions 2..100; batch sizes that refill the working batch (5, 3) and one
# that holds every row (16)
BINARY_CASES = [("sym", 2, 16), ("zero", 2, 5), ("sym", 10, 5), ("zero", 10, 16), ("sym", 100, 3),
                ("zero", 100, 16)]
MULTI_CASES = [("multi", 4, 16), ("multi", 10, 5), ("multi", 100, 16)]


@pytest.mark.parametrize("threat", ["Linf", "L2"])
@pytest.mark.parametrize("kind,d,batch_size", BINARY_CASES, ids=[f"{k}-d{d}-bs{b}" for k, d, b in BINARY_CASES])
@pytest.mark.parametrize("attack", ["apgd-ce", "fab", "fab-t"])
def test_fast_engine_binary(attack, kind, d, batch_size, threat):
    W, b, x, y, D = make_problem(kind, d, threat, seed=d + batch_size)
    X, out = _run(get_engine("fast"), W, b, x, y, threat, EPS[threat], [attack], batch_size, n_classes=2)
    _check_outcome(W, b, X, y, D, out, threat, EPS[threat], f"fast {attack} {kind} d={d} {threat}")
    assert set(out.broken_by[~out.robust]) == {attack}


@pytest.mark.parametrize("threat", ["Linf", "L2"])
@pytest.mark.parametrize("kind,d,batch_size", MULTI_CASES, ids=[f"{k}-d{d}-bs{b}" for k, d, b in MULTI_CASES])
@pytest.mark.parametrize("attack", ["apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t"])
def test_fast_engine_multiclass(attack, kind, d, batch_size, threat):
    W, b, x, y, D = make_problem(kind, d, threat, seed=d + batch_size)
    X, out = _run(get_engine("fast"), W, b, x, y, threat, EPS[threat], [attack], batch_size, n_classes=K_MULTI)
    _check_outcome(W, b, X, y, D, out, threat, EPS[threat], f"fast {attack} {kind} d={d} {threat}")
    assert set(out.broken_by[~out.robust]) == {attack}


# ---------------------------------------------------------------------------------------------------
# the reference engine (pyautoattack): the same analytic answer from an independent implementation
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threat", ["Linf", "L2"])
def test_reference_engine_multiclass(threat):
    """Each attack alone (so every one of them must find every breakable point), 4 classes, d = 10."""
    W, b, x, y, D = make_problem("multi", 10, threat, seed=7)
    eng = get_engine("reference")
    for attack in ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t"):
        X, out = _run(eng, W, b, x, y, threat, EPS[threat], [attack], 16, n_classes=K_MULTI)
        _check_outcome(W, b, X, y, D, out, threat, EPS[threat], f"reference {attack} {threat}")
