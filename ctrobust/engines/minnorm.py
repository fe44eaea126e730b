"""Minimum-norm attacks: FMN and FAB, for the Linf and L2 norms, as standalone functions on rows.

A bounded attack asks "is there a misclassified point within eps?"; a minimum-norm attack asks "how close
is the nearest misclassified point it can find?" and returns one distance per row. "Robust at eps" is then
``distance > eps`` for every eps at once, which puts bounded and minimum-norm attacks on one path
(adversarial-library's ``run_attack`` / ``compute_attack_metrics`` split: attacks return points, the
distances are derived and checked).

- :func:`fmn`: Fast Minimum-Norm attack, Pintor et al., NeurIPS 2021, "Fast Minimum-norm Adversarial
  Attacks through Adaptive Norm Projections"; the algorithm of adversarial-library's
  ``attacks/fast_minimum_norm.py`` (no binary-search warm start). Deterministic.
- :func:`fab_min_norm`: untargeted FAB, Croce & Hein, ICML 2020, "Minimally distorted adversarial
  examples with a fast adaptive boundary attack", run to minimise the norm (not AutoAttack's early exit
  at eps); the algorithm of adversarial-library's ``fab`` / pyautoattack's ``attack_single_run``.
- :func:`min_norm`: runs both, verifies every candidate with :func:`verify` and keeps per row the smallest
  verified distance and the attack that found it.

Model access: every function takes ``forward(x, rows) -> logits``, where ``x`` is float ``(B, C, H, W)``
in [0, 1] and ``rows`` an int64 ``(B,)`` tensor indexing the ``N`` rows of the call (the caller uses it to
set each row's CT beta). It is called only on the rows that still need it, so a row's result must not
depend on which other rows share the batch; these functions keep that property for the parts they
compute: every reduction over pixels is per row (L2 sums and dot products in float64), random starts come
from :mod:`ctrobust.engines.fast.rng` keyed per row, and gradients of summed per-row losses are per row.

Distances are in [0, 1] pixel units over the whole image (all channels and pixels), ``||x_adv - x||_inf``
or ``||x_adv - x||_2``.

Example:
    >>> res = min_norm(forward, x, y, norm="Linf", params={"fmn": {"steps": 100}}, seed=0,
    ...                ids=torch.arange(len(x)), betas=torch.ones(len(x)))
    >>> robust_at = res.distance > 8 / 255      # bool (N,): robust at eps = 8/255 as far as FMN and FAB know
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ctrobust._registry import did_you_mean
from ctrobust.engines.fast import rng
from ctrobust.engines.fast.fab import projection_l2, projection_linf
from ctrobust.threat import Threat

__all__ = ["MinNormResult", "fmn", "fab_min_norm", "fab_restart_keys", "min_norm", "verify", "parse_norm",
           "MIN_NORM_ATTACKS"]

#: ``forward(x (B, C, H, W) in [0, 1], rows int64 (B,)) -> logits (B, K)``
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class MinNormResult:
    """Per-row outcome of a minimum-norm attack (length N, the rows of the call, in order).

    Attributes:
        x_adv: float32 ``(N, C, H, W)`` in [0, 1]: the closest adversarial point found; the clean image
            where none was found (and for rows misclassified clean).
        distance: float32 ``(N,)``: ``||x_adv - x||`` in the attack's norm, [0, 1] pixel units; 0 for rows
            misclassified clean, ``inf`` where no adversarial point was found.
        found_by: numpy ``(N,)`` of str (dtype object, as the engines' ``broken_by``): ``""`` none found, ``"clean"`` misclassified without attack, else
            the attack that found ``x_adv`` (``"fmn"``, ``"fab"``).
        forward_passes: int64 ``(N,)`` example-forwards spent on each row (one image through the model once
            = 1), on the device of ``x``.
        backward_passes: int64 ``(N,)`` example-backwards spent on each row (one input gradient of one
            scalar per row = 1; FAB's linearization takes K - 1 of them).
    """

    x_adv: torch.Tensor
    distance: torch.Tensor
    found_by: np.ndarray
    forward_passes: torch.Tensor
    backward_passes: torch.Tensor


def parse_norm(norm: str | Threat) -> str:
    """``"Linf"`` / ``"L2"`` (ctrobust's threat names, any case, or a ``Threat``) -> ``"linf"`` / ``"l2"``.

    Raises:
        UnknownNameError: anything else ("did you mean ...?").
    """
    return Threat.parse(norm).value.lower()


def _norm(d: torch.Tensor, p: str) -> torch.Tensor:
    """Per-row norm of ``d`` ``(B, ...)`` as float32 ``(B,)``; L2 accumulated in float64 so that the
    result does not depend on how the backend splits the sum (batch shape, threads)."""
    flat = d.reshape(d.shape[0], -1)
    if p == "linf":
        return flat.abs().amax(1).to(torch.float32)
    return flat.double().pow(2).sum(1).sqrt().to(torch.float32)


def _dual_norm(g: torch.Tensor, p: str) -> torch.Tensor:
    """Per-row dual norm of ``g`` ``(B, ...)`` in float64: L1 for Linf, L2 for L2."""
    flat = g.reshape(g.shape[0], -1).double()
    return flat.abs().sum(1) if p == "linf" else flat.pow(2).sum(1).sqrt()


def _bview(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{k != y} z_k`` per row (> 0: correctly classified)."""
    u = torch.arange(logits.shape[0], device=logits.device)
    other = logits.clone()
    other[u, y] = -float("inf")
    return logits[u, y] - other.amax(1)


def _check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() < 2 or y.shape != x.shape[:1]:
        raise ValueError(f"x must be (N, ...) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError("inputs must be images in [0, 1]")


def _empty_result(x: torch.Tensor) -> MinNormResult:
    n = x.shape[0]
    zeros = torch.zeros(n, dtype=torch.int64, device=x.device)
    return MinNormResult(x.detach().to(torch.float32).clone(),
                         torch.full((n,), math.inf, dtype=torch.float32, device=x.device),
                         np.full(n, "", dtype=object), zeros, zeros.clone())


# ---------------------------------------------------------------------------------------------------
# verification
# ---------------------------------------------------------------------------------------------------


def verify(forward: Forward, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """Recompute the distance of candidate points, rejecting any that are not adversarial images.

    A row passes when every value of ``x_adv`` is finite and in [0, 1] (exactly, no tolerance) and
    ``forward(x_adv).argmax(1) != y``; one forward pass, only on the rows inside the box.

    Args:
        forward: ``forward(x, rows) -> logits (B, K)``; ``rows`` index the N rows given here.
        x: float ``(N, C, H, W)`` clean images in [0, 1].
        x_adv: float ``(N, C, H, W)`` candidates.
        y: int64 ``(N,)`` labels.
        norm: ``"Linf"`` or ``"L2"``.

    Returns:
        float32 ``(N,)``: ``||x_adv - x||`` in ``norm`` for rows that pass, ``inf`` for the others (so a
        clean image that is correctly classified gets ``inf``, one that is misclassified gets 0).
    """
    p = parse_norm(norm)
    n = x.shape[0]
    flat = x_adv.detach().reshape(n, -1)
    in_box = torch.isfinite(flat).all(1) & (flat >= 0).all(1) & (flat <= 1).all(1)
    ok = torch.zeros(n, dtype=torch.bool, device=x.device)
    idx = in_box.nonzero().squeeze(1)
    if idx.numel():
        with torch.no_grad():
            logits = forward(x_adv[idx].detach(), idx)
        ok[idx] = logits.argmax(1) != y[idx]
    dist = _norm(x_adv.detach().to(torch.float32) - x.detach().to(torch.float32), p)
    return torch.where(ok, dist, torch.full_like(dist, math.inf))


# ---------------------------------------------------------------------------------------------------
# FMN
# ---------------------------------------------------------------------------------------------------


def fmn(forward: Forward, x: torch.Tensor, y: torch.Tensor, *, norm: str, steps: int = 100,
        alpha_init: float | None = None, alpha_final: float | None = None, gamma_init: float = 0.05,
        gamma_final: float = 0.001) -> MinNormResult:
    """Fast Minimum-Norm attack (Pintor et al., NeurIPS 2021), untargeted, Linf or L2.

    Every step, for each row: one forward and one backward pass at the current point ``x + delta``; keep
    the point if it is misclassified and closer than the best so far; update the radius ``eps`` (shrink to
    ``min(eps (1 - gamma), best)`` when adversarial, grow to ``eps (1 + gamma)`` when not but some
    adversarial point was found, else jump to ``||delta|| + |margin| / ||grad||_dual``, the linearized
    distance to the boundary, but to no less than ``eps (1 + gamma)``; never beyond the farthest point
    of the box); take a gradient step of length ``alpha`` along the L2-normalized gradient of
    ``max_{k != y} z_k - z_y``; project ``delta`` onto the ``eps`` sphere (L2: rescale to norm ``eps``)
    or ball (Linf: clamp to ``[-eps, eps]``); clip ``x + delta`` to [0, 1]. ``alpha`` and ``gamma`` are cosine-annealed from their initial to their final
    values. Same algorithm as adversarial-library's ``fmn`` (no starting points), but for the
    ``(1 + gamma)`` floor on the jumps before the first adversarial point: without it a row that lands
    on the correct side of a (locally) linear boundary, or whose steps the box clip shortens, can stay
    put and never become adversarial (adversarial-library: 20 of 32 digits at L2 with 100 steps).

    Rows misclassified clean are found by the first forward pass and leave (distance 0).

    Args:
        forward: ``forward(x, rows) -> logits (B, K)``; ``x`` float ``(B, C, H, W)`` in [0, 1], ``rows``
            int64 ``(B,)`` indexing the N rows.
        x: float ``(N, C, H, W)`` clean images in [0, 1].
        y: int64 ``(N,)`` labels.
        norm: ``"Linf"`` or ``"L2"``.
        steps: iterations (>= 1); each is one forward and one backward pass per row.
        alpha_init: initial step length (L2 norm of the step); default 1 (adversarial-library's, for both norms:
            on the bundled ResNet-18 with CT a Linf start of 10 overshoots and ends farther from the boundary).
        alpha_final: final step length; default ``alpha_init / 100``.
        gamma_init, gamma_final: initial and final relative radius change.

    Returns:
        :class:`MinNormResult` with ``found_by`` in ``{"", "clean", "fmn"}``. Distances are the attack's
        own bookkeeping; :func:`min_norm` re-checks them with :func:`verify`.
    """
    p = parse_norm(norm)
    _check_inputs(x, y)
    if steps < 1:
        raise ValueError(f"fmn: steps must be >= 1, got {steps}")
    alpha_init = 1.0 if alpha_init is None else float(alpha_init)
    alpha_final = alpha_init / 100 if alpha_final is None else float(alpha_final)
    res = _empty_result(x)
    n, dev = x.shape[0], x.device
    x = x.detach()
    y = y.to(device=dev, dtype=torch.int64)
    best_adv, best = res.x_adv, res.distance
    x_cur = x.clone()  # the current point x + delta of every row, always in [0, 1]
    eps = torch.full((n,), math.inf, dtype=torch.float32, device=dev)
    adv_found = torch.zeros(n, dtype=torch.bool, device=dev)
    # the farthest point of the box: eps beyond it cannot matter
    worst = _norm(torch.maximum(x, 1 - x), p)
    act = torch.arange(n, device=dev)
    for i in range(steps):
        cosine = (1 + math.cos(math.pi * i / steps)) / 2
        alpha = alpha_final + (alpha_init - alpha_final) * cosine
        gamma = gamma_final + (gamma_init - gamma_final) * cosine
        x0, xi, yi = x[act], x_cur[act], y[act]
        d_norm = _norm(xi - x0, p)
        xr = xi.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = forward(xr, act)
            loss = -_margin(logits, yi)  # increases towards misclassification
            (g,) = torch.autograd.grad(loss.sum(), [xr])
        res.forward_passes[act] += 1
        res.backward_passes[act] += 1
        loss = loss.detach()
        is_adv = logits.detach().argmax(1) != yi
        better = is_adv & (d_norm < best[act])
        best[act] = torch.where(better, d_norm, best[act])
        best_adv[act] = torch.where(_bview(better, xi), xi.to(torch.float32), best_adv[act])
        if i == 0 and bool(is_adv.any()):
            # delta is 0 at the first step: these rows are misclassified clean, nothing to minimise
            res.found_by[act[is_adv].cpu().numpy()] = "clean"
            keep = ~is_adv
            act, x0, xi, d_norm, g, loss, is_adv = (t[keep] for t in (act, x0, xi, d_norm, g, loss, is_adv))
            if act.numel() == 0:
                break
        adv_found[act] |= is_adv
        e = eps[act]
        to_boundary = (loss.double().abs() / _dual_norm(g, p).clamp_min(1e-12)).to(torch.float32)
        # Not adversarial yet: the paper's jump to the linearized boundary, but at least a (1 + gamma)
        # growth of eps (from the second step on). Without that floor two kinds of rows never become
        # adversarial, measured with adversarial-library's rule (20 of 32 digits at L2): a row that lands
        # on the correct side of a linear piece of the boundary (margin ~1e-7: eps = ||delta|| + ~0 again),
        # and a row whose step points out of the box, where the [0, 1] clip keeps ||delta|| below eps, so
        # eps = ||delta|| + (a small linearized distance) falls back to the same value every step.
        grow = d_norm + to_boundary
        grow = torch.where(torch.isfinite(e), torch.maximum(grow, e * (1 + gamma)), grow)
        e = torch.where(is_adv, torch.minimum(e * (1 - gamma), best[act]),
                        torch.where(adv_found[act], e * (1 + gamma), grow))
        e = torch.minimum(e, worst[act])
        eps[act] = e
        g_l2 = _norm(g, "l2").clamp_min(1e-12).to(g.dtype)
        delta = (xi - x0) + alpha * g / _bview(g_l2, g)
        if p == "linf":
            delta = torch.maximum(torch.minimum(delta, _bview(e, delta)), -_bview(e, delta))
        else:
            # onto the eps sphere, as adversarial-library's l2_projection_ (its trailing clamp(max=1) on
            # delta is implied by the box clip below)
            delta = delta * _bview(e / _norm(delta, "l2").clamp_min(1e-12), delta)
        x_cur[act] = torch.clamp(x0 + delta, 0.0, 1.0)
    res.found_by[(torch.isfinite(best) & (best > 0)).cpu().numpy()] = "fmn"
    return res


# ---------------------------------------------------------------------------------------------------
# FAB (minimum norm)
# ---------------------------------------------------------------------------------------------------


def fab_restart_keys(seed: int, ids: torch.Tensor, betas: torch.Tensor, restarts: int) -> torch.Tensor:
    """Per-row, per-restart random keys for :func:`fab_min_norm`.

    Restart ``r`` of a row uses ``rng.row_keys(seed, id, beta, attack=code of "fab-mn", index=r)`` and
    counter 0 (the minimum-norm FAB's own stream of the attack registry).

    Returns:
        int64 ``(N, restarts, 2)`` on ``ids.device``.
    """
    code = rng.ATTACK_CODES["fab-mn"]
    return torch.stack([rng.row_keys(seed, ids, betas, code, r) for r in range(int(restarts))], 1)


def _closest_boundary(forward: Forward, xi: torch.Tensor, rows: torch.Tensor, y: torch.Tensor, p: str,
                      candidates: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linearize every ``z_k - z_y`` (k != y) at ``xi`` and keep the one with the closest hyperplane
    (``candidates > 0``: only the classes with the ``candidates`` largest logits, one backward pass each).

    One forward pass and K - 1 backward passes; the closest is ``argmin_k |f_k| / ||grad f_k||_dual``
    (first k on ties), computed while streaming over k so that only one gradient per row is kept.

    Returns:
        ``(logits (B, K), f (B,) float64, grad (B, D) float64)`` at ``xi``.
    """
    b = xi.shape[0]
    u = torch.arange(b, device=xi.device)
    xr = xi.clone().requires_grad_(True)
    best_ratio = torch.full((b,), math.inf, dtype=torch.float64, device=xi.device)
    best_f = torch.zeros(b, dtype=torch.float64, device=xi.device)
    best_g = torch.zeros(b, xi[0].numel(), dtype=torch.float64, device=xi.device)
    with torch.enable_grad():
        logits = forward(xr, rows)
        k = logits.shape[1]
        zy = logits[u, y]
        m = k - 1 if not candidates else min(int(candidates), k - 1)
        if m < k - 1:  # only the m classes with the largest logits other than y, largest first
            masked = logits.detach().clone()
            masked[u, y] = -math.inf
            top = torch.sort(masked, dim=1, descending=True, stable=True)[1][:, :m]
        for j in range(m):
            # the j-th candidate: the j-th class other than y (all of them), or the j-th largest logit
            other = top[:, j] if m < k - 1 else j + (j >= y).to(torch.int64)
            f = logits[u, other] - zy
            (g,) = torch.autograd.grad(f.sum(), [xr], retain_graph=j < m - 1)
            gf = g.detach().reshape(b, -1).double()
            ratio = f.detach().double().abs() / _dual_norm(gf, p).clamp_min(1e-12)
            closer = ratio < best_ratio
            best_ratio = torch.where(closer, ratio, best_ratio)
            best_f = torch.where(closer, f.detach().double(), best_f)
            best_g = torch.where(closer[:, None], gf, best_g)
    return logits.detach(), best_f, best_g


def _fab_update(xi: torch.Tensor, x0: torch.Tensor, f: torch.Tensor, w: torch.Tensor, p: str, *,
                alpha_max: float, eta: float) -> torch.Tensor:
    """One FAB step: project ``xi`` and ``x0`` onto the linearized boundary within the box and take the
    biased, extrapolated convex combination (float64 geometry, result in the dtype of ``xi``).

    Rows whose gradient gives no hyperplane (all zero, e.g. a model constant around the point) or whose
    step is not finite keep ``xi``.
    """
    bs = xi.shape[0]
    x1f = xi.reshape(bs, -1).double()
    x0f = x0.reshape(bs, -1).double()
    out = x1f.clone()
    # the projections divide by the normal's entries they treat as nonzero: below it would be 0 / 0
    usable = (w != 0).any(1) if p == "linf" else (w.abs() > 1e-8).any(1)
    idx = usable.nonzero().squeeze(1)
    if idx.numel():
        m = idx.numel()
        wi, x1i, x0i = w[idx], x1f[idx], x0f[idx]
        b = (wi * x1i).sum(1) - f[idx]  # hyperplane {z : <w, z> = b}, the zero set of the linearization
        proj = projection_linf if p == "linf" else projection_l2
        d3 = proj(torch.cat((x1i, x0i), 0), torch.cat((wi, wi), 0), torch.cat((b, b), 0))
        d1, d2 = d3[:m], d3[m:]
        a0 = (d3.abs().amax(1) if p == "linf" else d3.pow(2).sum(1).sqrt()).clamp_min(1e-8)
        a1, a2 = a0[:m], a0[m:]
        alpha = (a1 / (a1 + a2)).clamp(0.0, alpha_max)[:, None]
        xn = ((x1i + eta * d1) * (1 - alpha) + (x0i + eta * d2) * alpha).clamp(0.0, 1.0)
        fin = torch.isfinite(xn).all(1)
        out[idx] = torch.where(fin[:, None], xn, x1i)
    return out.to(xi.dtype).reshape(xi.shape)


def fab_min_norm(forward: Forward, x: torch.Tensor, y: torch.Tensor, *, norm: str, steps: int = 100,
                 restarts: int = 1, keys: torch.Tensor | None = None, eps_init: float | None = None,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, candidates: int = 0) -> MinNormResult:
    """Untargeted FAB minimizing the norm (Croce & Hein, ICML 2020), Linf or L2.

    One iteration per row, at the current point ``x1`` (restart 0 starts at ``x``):

    1. linearize every ``z_k - z_y`` at ``x1`` and pick the closest hyperplane (1 forward, K - 1 backward);
    2. project ``x1`` and ``x`` onto it within the box [0, 1] (``projection_linf`` / ``projection_l2``);
    3. ``x1 <- clip((x1 + eta d1)(1 - a) + (x + eta d2) a, 0, 1)``, ``a = min(|d1| / (|d1| + |d2|), alpha_max)``;
    4. check ``x1`` (1 forward): if misclassified, keep it when closer than the best so far and step back
       ``x1 <- x + beta (x1 - x)``.

    Restart ``r > 0`` starts at ``clip(x + t / ||t|| * min(best, eps_init) / 2, 0, 1)``, ``t`` uniform in
    [-1, 1] (Linf) or normal (L2), drawn from ``keys[:, r]`` (adversarial-library's and pyautoattack's
    start). All rows run every iteration (the norm can always shrink) except rows misclassified clean,
    which the first linearization finds and which leave with distance 0.

    Args:
        forward: ``forward(x, rows) -> logits (B, K)`` (see :func:`fmn`).
        x: float ``(N, C, H, W)`` clean images in [0, 1].
        y: int64 ``(N,)`` labels.
        norm: ``"Linf"`` or ``"L2"``.
        steps: iterations per restart (>= 1).
        restarts: runs per row (>= 1); runs after the first start at a random point.
        keys: int64 ``(N, restarts, 2)`` from :func:`fab_restart_keys`; required when ``restarts > 1``
            (random starts are a function of the row, never of the batch or a global generator).
        eps_init: largest radius of a random start; default 0.3 (Linf) or 1.0 (L2), adversarial-library's.
        alpha_max, eta, beta: FAB's bias bound, extrapolation and backward step (paper: 0.1, 1.05, 0.9).
        candidates: 0 (default, the paper's FAB): linearize all K - 1 other classes every step; ``m > 0``: only
            the m classes with the largest logits at the current point (m backward passes instead of K - 1; a
            cheaper estimate for a quick look, e.g. the offline demo).

    Returns:
        :class:`MinNormResult` with ``found_by`` in ``{"", "clean", "fab"}``. Distances are the attack's
        own bookkeeping; :func:`min_norm` re-checks them with :func:`verify`.
    """
    p = parse_norm(norm)
    _check_inputs(x, y)
    if steps < 1 or restarts < 1:
        raise ValueError(f"fab_min_norm: steps and restarts must be >= 1, got {steps} and {restarts}")
    n, dev = x.shape[0], x.device
    if restarts > 1:
        if keys is None:
            raise ValueError("fab_min_norm: restarts > 1 need per-row keys (fab_restart_keys(seed, ids, betas, "
                             "restarts)); random starts never come from a global generator")
        if keys.shape[:2] != (n, restarts) or keys.shape[2:] != (2,):
            raise ValueError(f"fab_min_norm: keys must be ({n}, {restarts}, 2), got {tuple(keys.shape)}")
    eps_init = (0.3 if p == "linf" else 1.0) if eps_init is None else float(eps_init)
    res = _empty_result(x)
    x = x.detach()
    y = y.to(device=dev, dtype=torch.int64)
    best_adv, best = res.x_adv, res.distance
    act = torch.arange(n, device=dev)
    shape = tuple(x.shape[1:])
    for r in range(restarts):
        if act.numel() == 0:
            break
        x0, yi = x[act], y[act]
        if r == 0:
            xi = x0.clone()
        else:
            kr = keys[act.to(keys.device), r].to(dev)
            t = 2.0 * rng.uniform(kr, 0, shape) - 1.0 if p == "linf" else rng.normal(kr, 0, shape)
            radius = torch.clamp(best[act], max=eps_init) / 2
            xi = torch.clamp(x0 + t * _bview(radius / _norm(t, p).clamp_min(1e-12), t), 0.0, 1.0).to(x.dtype)
        for it in range(steps):
            logits, f, w = _closest_boundary(forward, xi, act, yi, p, candidates)
            res.forward_passes[act] += 1
            k1 = logits.shape[1] - 1
            res.backward_passes[act] += min(int(candidates), k1) if candidates else k1
            if r == 0 and it == 0:
                clean_adv = logits.argmax(1) != yi
                if bool(clean_adv.any()):
                    best[act[clean_adv]] = 0.0
                    res.found_by[act[clean_adv].cpu().numpy()] = "clean"
                    keep = ~clean_adv
                    act, x0, yi, xi, f, w = act[keep], x0[keep], yi[keep], xi[keep], f[keep], w[keep]
                    if act.numel() == 0:
                        break
            xi = _fab_update(xi, x0, f, w, p, alpha_max=alpha_max, eta=eta)
            with torch.no_grad():
                is_adv = forward(xi, act).argmax(1) != yi
            res.forward_passes[act] += 1
            d_norm = _norm(xi - x0, p)
            better = is_adv & (d_norm < best[act])
            best[act] = torch.where(better, d_norm, best[act])
            best_adv[act] = torch.where(_bview(better, xi), xi.to(torch.float32), best_adv[act])
            xi = torch.where(_bview(is_adv, xi), x0 + (xi - x0) * beta, xi)
    res.found_by[(torch.isfinite(best) & (best > 0)).cpu().numpy()] = "fab"
    return res


# ---------------------------------------------------------------------------------------------------
# both, verified
# ---------------------------------------------------------------------------------------------------


#: the attacks :func:`min_norm` can run, by name (also the ``found_by`` values)
MIN_NORM_ATTACKS = {"fmn": fmn, "fab": fab_min_norm}


def _resolve(attack) -> tuple[str, Callable]:
    """``"fmn"`` (a key of :data:`MIN_NORM_ATTACKS`) or ``(label, function)`` -> ``(label, function)``."""
    if isinstance(attack, str):
        if attack not in MIN_NORM_ATTACKS:
            raise did_you_mean("minimum-norm attack", attack, MIN_NORM_ATTACKS)
        return attack, MIN_NORM_ATTACKS[attack]
    label, fn = attack
    return str(label), fn


def min_norm(forward: Forward, x: torch.Tensor, y: torch.Tensor, *, norm: str,
             attacks: Sequence = ("fmn", "fab"), params: dict | None = None, seed: int,
             ids: torch.Tensor, betas: torch.Tensor, clean_correct: torch.Tensor | None = None) -> MinNormResult:
    """Run minimum-norm attacks and keep per row the smallest verified distance.

    One clean forward pass finds the rows misclassified without attack (distance 0, ``"clean"``); the
    attacks run, in order, on the other rows; then, per row, the candidates are verified with
    :func:`verify` from the smallest claimed distance up, and the first that passes is kept (normally one
    extra forward pass per row; a candidate that fails, e.g. a point exactly on the boundary whose
    prediction flips, costs another for the next one).

    Args:
        forward: ``forward(x, rows) -> logits (B, K)``; ``x`` float ``(B, C, H, W)`` in [0, 1], ``rows``
            int64 ``(B,)`` indexing the N rows (for per-row CT betas).
        x: float ``(N, C, H, W)`` clean images in [0, 1].
        y: int64 ``(N,)`` labels.
        norm: ``"Linf"`` or ``"L2"``.
        attacks: names from :data:`MIN_NORM_ATTACKS`, or ``(label, function)`` pairs (the attack registry's
            specs: ``("fab-mn", fab_min_norm)``), run in this order (ties keep the earlier attack).
        params: per attack label, keyword arguments of its function, e.g.
            ``{"fmn": {"steps": 100}, "fab": {"steps": 100, "restarts": 2}}`` (FAB's keys are built here).
        seed: the run seed (FAB's random restarts).
        ids: int64 ``(N,)`` example ids; betas: float ``(N,)`` CT betas (both only key random draws).
        clean_correct: bool ``(N,)`` if the caller already evaluated the clean images with the same ``forward``
            (the engine's clean check): the clean forward pass is then not repeated.

    Returns:
        :class:`MinNormResult`; ``found_by`` in ``{"", "clean"} | set(attacks)``; every finite distance is
        one :func:`verify` returned; passes include the clean and verification forwards.
    """
    p = parse_norm(norm)
    _check_inputs(x, y)
    resolved = [_resolve(a) for a in attacks]
    attacks = tuple(label for label, _ in resolved)
    params = dict(params or {})
    for name in params:
        if name not in attacks and name not in MIN_NORM_ATTACKS:
            raise did_you_mean("minimum-norm attack", name, attacks or MIN_NORM_ATTACKS)
    unused = set(params) - set(attacks)
    if unused:
        raise ValueError(f"min_norm: params for attacks that do not run: {sorted(unused)}")
    if not attacks:
        raise ValueError("min_norm: no attacks to run")
    if any("keys" in params.get(label, {}) for label, fn in resolved if fn is fab_min_norm):
        raise ValueError("min_norm: FAB's keys are built from seed, ids and betas; do not pass them in params")
    res = _empty_result(x)
    n, dev = x.shape[0], x.device
    x = x.detach()
    y = y.to(device=dev, dtype=torch.int64)
    ids = ids.to(dev)
    betas = betas.to(dev)
    all_rows = torch.arange(n, device=dev)
    if clean_correct is None:
        with torch.no_grad():
            clean_adv = forward(x, all_rows).argmax(1) != y
        res.forward_passes += 1
    else:
        clean_adv = ~clean_correct.to(device=dev, dtype=torch.bool)
    res.distance[clean_adv] = 0.0
    res.found_by[clean_adv.cpu().numpy()] = "clean"
    rest = (~clean_adv).nonzero().squeeze(1)
    m = rest.numel()
    if m == 0:
        return res

    def forward_rest(xb: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return forward(xb, rest[r])

    xr, yr = x[rest], y[rest]
    claimed, points = [], []
    for name, fn in resolved:
        kw = dict(params.get(name, {}))
        if fn is fab_min_norm:
            kw["keys"] = fab_restart_keys(seed, ids[rest], betas[rest], int(kw.get("restarts", 1)))
        out = fn(forward_rest, xr, yr, norm=p, **kw)
        res.forward_passes[rest] += out.forward_passes
        res.backward_passes[rest] += out.backward_passes
        # a "clean" claim here means the attack's forward disagreed with the clean check: let verify decide
        claimed.append(out.distance)
        points.append(out.x_adv)
    claimed = torch.stack(claimed, 0)  # (A, M)
    points = torch.stack(points, 0)  # (A, M, C, H, W)
    order = torch.argsort(claimed, dim=0, stable=True)
    pending = torch.arange(m, device=dev)
    for rank in range(len(attacks)):
        which = order[rank, pending]
        sel = torch.isfinite(claimed[which, pending])
        pending, which = pending[sel], which[sel]
        if pending.numel() == 0:
            break
        cand = points[which, pending]
        sub = rest[pending]

        def forward_sub(xb: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            res.forward_passes[sub[r]] += 1  # verify skips rows outside the box
            return forward(xb, sub[r])

        dist = verify(forward_sub, x[sub], cand, y[sub], p)
        ok = torch.isfinite(dist)
        res.distance[sub[ok]] = dist[ok]
        res.x_adv[sub[ok]] = cand[ok].to(torch.float32)
        for a in which[ok].unique().tolist():
            res.found_by[sub[ok & (which == a)].cpu().numpy()] = attacks[a]
        pending = pending[~ok]
    return res
