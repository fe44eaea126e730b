"""FAB (Fast Adaptive Boundary) attack with per-row state and early exit at the first point in the ball.

Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive boundary attack"
(ICML), as implemented in pyautoattack 0.2.0 (``fab_base.FABAttack``, ``fab_pt.FABAttack_PT``,
``fab_projections``), for the Linf and L2 threat models. One iteration, for the current point ``x1``:

1. linearize the decision boundary: ``f_l = z_l - z_y`` and ``g_l = grad f_l`` for every class
   (untargeted, K backward passes) or for the target class only (targeted, one backward pass);
2. pick the closest linearized boundary ``l* = argmin_l |f_l| / ||g_l||_q`` (``q`` the dual norm);
3. project both ``x1`` and the original point ``x0`` onto the hyperplane ``{z : <g, z> = <g, x1> - f}``
   intersected with the box [0, 1] (exact projections ``projection_linf`` / ``projection_l2``, eq. 6-8);
4. take the convex combination ``x1 <- clip((x1 + eta d1)(1 - a) + (x0 + eta d2) a, 0, 1)`` with
   ``a = min(||d1|| / (||d1|| + ||d2||), alpha_max)``, ``eta = 1.05``, ``alpha_max = 0.1``;
5. if the new point is misclassified, remember it when closer than the best so far and step back towards
   ``x0``: ``x1 <- x0 + beta (x1 - x0)`` with ``beta = 0.9``.

FAB minimizes the distortion; AutoAttack only asks whether a misclassified point lies within ``eps``.
Early exit: a row leaves at the first misclassified iterate with ``||x1 - x0|| <= eps``. pyautoattack's
result for a row is "broken" iff its best (smallest) adversarial distortion is ``<= eps``, i.e. iff some
iterate is misclassified within ``eps``: the flags agree, and the trajectory up to that point is the same.

Cost per iteration, as in pyautoattack: one forward pass without gradient to check the last update (it
decides the early exit and the step back) and one forward + backward pass (K backward passes for
untargeted FAB) to linearize at the current point. (Reusing the check's forward for the next gradient
would save a forward pass only when the new point is not adversarial; on points that stay robust FAB
overshoots the boundary at almost every iteration, where that scheme needs two forward and two backward
passes.)

Targets (FAB-T): the 2nd, 3rd, ... most likely classes of the clean image (9 by default), each with one
run from ``x0`` (standard AutoAttack: 1 restart); random restarts (restart index > 0, as in
pyautoattack's ``use_rand_start=(counter > 0)``) start at ``x0 + eps/2 * t / ||t||`` with ``t`` uniform
(Linf) or normal (L2), drawn from :mod:`rng`.

The projections are computed in float64 (pyautoattack: float32), which makes their cumulative sums
insensitive to the summation order of the device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ctrobust.engines.fast import rng
from ctrobust.engines.fast._context import AttackContext
from ctrobust.engines.fast._driver import Attack, RowState
from ctrobust.engines.fast._ops import lp_norm

__all__ = ["FAB", "projection_linf", "projection_l2"]


def projection_linf(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Minimal Linf step ``d`` with ``<w, t + d> = b`` and ``t + d`` in [0, 1]^D (FAB, eq. 6; per row).

    Port of pyautoattack's ``fab_projections.projection_linf`` (sort the coordinates by how far they
    can move, binary-search the number of saturated coordinates).

    Args:
        t: float ``(n, D)`` points in [0, 1].
        w: float ``(n, D)`` hyperplane normals.
        b: float ``(n,)`` offsets.

    Returns:
        float ``(n, D)`` steps ``d`` (zero where ``w == 0``).
    """
    w = w.clone()
    b = b.clone()
    sign = 2 * ((w * t).sum(1) - b >= 0) - 1
    w = w * sign.unsqueeze(1)
    b = b * sign
    a = (w < 0).to(t.dtype)
    d = (a - t) * (w != 0).to(t.dtype)
    p = a - t * (2 * a - 1)
    indp = torch.argsort(p, dim=1, stable=True)
    b = b - (w * t).sum(1)
    b0 = (w * d).sum(1)
    indp2 = indp.flip((1,))
    ws = w.gather(1, indp2)
    bs2 = -ws * d.gather(1, indp2)
    s = torch.cumsum(ws.abs(), dim=1)
    sb = torch.cumsum(bs2, dim=1) + b0.unsqueeze(1)
    b2 = sb[:, -1] - s[:, -1] * p.gather(1, indp[:, 0:1]).squeeze(1)
    c_l = b - b2 > 0
    c2 = (b - b0 > 0) & (~c_l)
    lb = torch.zeros(int(c2.sum()), device=t.device, dtype=t.dtype)
    ub = torch.full_like(lb, w.shape[1] - 1)
    nitermax = math.ceil(math.log2(w.shape[1]))
    indp_, sb_, s_, p_, b_ = indp[c2], sb[c2], s[c2], p[c2], b[c2]
    for _ in range(nitermax):
        counter4 = torch.floor((lb + ub) / 2)
        counter2 = counter4.long().unsqueeze(1)
        indcurr = indp_.gather(1, indp_.size(1) - 1 - counter2)
        b2 = (sb_.gather(1, counter2) - s_.gather(1, counter2) * p_.gather(1, indcurr)).squeeze(1)
        c = b_ - b2 > 0
        lb = torch.where(c, counter4, lb)
        ub = torch.where(c, ub, counter4)
    lb = lb.long()
    if bool(c_l.any()):
        lmbd_opt = torch.clamp_min((b[c_l] - sb[c_l, -1]) / (-s[c_l, -1]), min=0).unsqueeze(-1)
        d[c_l] = (2 * a[c_l] - 1) * lmbd_opt
    if bool(c2.any()):
        lmbd_opt = torch.clamp_min((b[c2] - sb[c2, lb]) / (-s[c2, lb]), min=0).unsqueeze(-1)
        d[c2] = torch.min(lmbd_opt, d[c2]) * a[c2] + torch.max(-lmbd_opt, d[c2]) * (1 - a[c2])
    return d * (w != 0).to(t.dtype)


def projection_l2(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Minimal L2 step ``d`` with ``<w, t + d> = b`` and ``t + d`` in [0, 1]^D (FAB, eq. 7-8; per row).

    Port of pyautoattack's ``fab_projections.projection_l2``. Shapes as :func:`projection_linf`.
    """
    w = w.clone()
    c = (w * t).sum(1) - b
    ind2 = 2 * (c >= 0) - 1
    w = w * ind2.unsqueeze(1)
    c = c * ind2
    r = torch.max(t / w, (t - 1) / w).clamp(min=-1e12, max=1e12)
    r.masked_fill_(w.abs() < 1e-8, 1e12)
    r[r == -1e12] *= -1
    rs, indr = torch.sort(r, dim=1, stable=True)
    rs2 = F.pad(rs[:, 1:], (0, 1))
    rs.masked_fill_(rs == 1e12, 0)
    rs2.masked_fill_(rs2 == 1e12, 0)
    w3s = (w ** 2).gather(1, indr)
    w5 = w3s.sum(dim=1, keepdim=True)
    ws = w5 - torch.cumsum(w3s, dim=1)
    d = -(r * w)
    d.mul_((w.abs() > 1e-8).to(t.dtype))
    s = torch.cat((-w5 * rs[:, 0:1], torch.cumsum((-rs2 + rs) * ws, dim=1) - w5 * rs[:, 0:1]), 1)
    c4 = s[:, 0] + c < 0
    c3 = (d * w).sum(dim=1) + c > 0
    c2 = ~(c4 | c3)
    lb = torch.zeros(int(c2.sum()), device=t.device, dtype=t.dtype)
    ub = torch.full_like(lb, w.shape[1] - 1)
    nitermax = math.ceil(math.log2(w.shape[1]))
    s_, c_ = s[c2], c[c2]
    for _ in range(nitermax):
        counter4 = torch.floor((lb + ub) / 2)
        counter2 = counter4.long().unsqueeze(1)
        c3 = s_.gather(1, counter2).squeeze(1) + c_ > 0
        lb = torch.where(c3, counter4, lb)
        ub = torch.where(c3, ub, counter4)
    lb = lb.long()
    if bool(c4.any()):
        alpha = c[c4] / w5[c4].squeeze(-1)
        d[c4] = -alpha.unsqueeze(-1) * w[c4]
    if bool(c2.any()):
        alpha = (s[c2, lb] + c[c2]) / ws[c2, lb] + rs[c2, lb]
        alpha[ws[c2, lb] == 0] = 0
        c5 = (alpha.unsqueeze(-1) > r[c2]).to(t.dtype)
        d[c2] = d[c2] * c5 - alpha.unsqueeze(-1) * w[c2] * (1 - c5)
    return d * (w.abs() > 1e-8).to(t.dtype)


class FAB(Attack):
    """FAB (targeted ``fab-t`` or untargeted ``fab``) for the Linf and L2 threat models.

    Args:
        targeted: FAB-T (one run per target class) or untargeted FAB (all classes linearized).
        n_iter: iterations per run (AutoAttack: 100).
        n_restarts: runs per target (targeted) or in total (untargeted); run ``r > 0`` starts at a random
            point (AutoAttack standard: 1).
        n_target_classes: targets of FAB-T (AutoAttack: 9).
        alpha_max, eta, beta: FAB's hyper-parameters (AutoAttack: 0.1, 1.05, 0.9).

    Shapes: images ``(B, C, H, W)`` in [0, 1]; labels ``(B,)``.
    """

    def __init__(self, *, targeted: bool = True, n_iter: int = 100, n_restarts: int = 1,
                 n_target_classes: int = 9, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9):
        self.targeted = bool(targeted)
        self.name = "fab-t" if self.targeted else "fab"
        self.code = rng.ATTACK_CODES[self.name]
        self.n_iter = int(n_iter)
        self.n_restarts = int(n_restarts)
        self.n_target_classes = int(n_target_classes)
        self.alpha_max = float(alpha_max)
        self.eta = float(eta)
        self.beta = float(beta)
        self.n_phases = self.n_restarts * (self.n_target_classes if self.targeted else 1)

    def start(self, ctx: AttackContext, rows: torch.Tensor, phase: torch.Tensor) -> RowState:
        x0 = ctx.x[rows]
        restart = phase % self.n_restarts
        x1 = x0.clone()
        rand = restart > 0
        if bool(rand.any()):
            keys = rng.row_keys(ctx.seed, ctx.ids[rows], ctx.betas[rows], self.code, phase)
            shape = tuple(x0.shape[1:])
            if ctx.norm == "Linf":
                t = 2.0 * rng.uniform(keys, 0, shape) - 1.0
            else:
                t = rng.normal(keys, 0, shape)
            # pyautoattack: x0 + min(res2, eps) * t / ||t|| * 0.5 with res2 = 1e10 at the start
            xr = torch.clamp(x0 + ctx.eps * t / lp_norm(t, ctx.norm, keepdim=True) * 0.5, 0.0, 1.0)
            x1 = torch.where(rand.reshape(-1, *([1] * (x0.dim() - 1))), xr, x1)
        b = rows.shape[0]
        st = RowState(rows=rows, phase=phase, x0=x0, y=ctx.y[rows], x=x1,
                      it=torch.zeros(b, dtype=torch.int64, device=x0.device))
        if self.targeted:
            order = ctx.clean_order(rows)
            k = order.shape[1]
            tgt_idx = phase // self.n_restarts + 2
            if int(tgt_idx.max()) > k:
                raise ValueError(f"fab-t: {self.n_target_classes} target classes need at least "
                                 f"{self.n_target_classes + 1} classes, the model has {k}")
            st["target"] = order.gather(1, (k - tgt_idx)[:, None]).squeeze(1)
        return st

    def _linearize(self, ctx: AttackContext, st: RowState):
        """``df`` ``(B, L)`` and ``dg`` ``(B, L, C, H, W)`` at the current points (L = 1 targeted, K otherwise)."""
        x, rows, y = st["x"], st["rows"], st["y"]
        u = torch.arange(x.shape[0], device=x.device)
        if self.targeted:
            tgt = st["target"]

            def diff(z):
                return -(z[u, y] - z[u, tgt])

            _, df, g = ctx.value_and_grad(x, rows, diff)
            return df.unsqueeze(1), g.unsqueeze(1)
        logits, jac = ctx.logits_and_jacobian(x, rows)
        df = logits - logits[u, y].unsqueeze(1)
        dg = jac - jac[u, y].unsqueeze(1)
        df[u, y] = 1e10
        return df, dg

    def step(self, ctx: AttackContext, st: RowState):
        """One FAB iteration per row: check the last update (forward), then linearize and update.

        Two model calls, as in pyautoattack: a forward pass without gradient on the points produced by
        the previous update (``it > 0``), which decides early exit and the step back, then a forward and
        backward pass at the (possibly stepped-back) current points of the rows still running.
        """
        eps, norm = ctx.eps, ctx.norm
        x, x0, it = st["x"], st["x0"], st["it"]
        b = x.shape[0]
        bshape = (-1,) + (1,) * (x.dim() - 1)
        broken = torch.zeros(b, dtype=torch.bool, device=x.device)
        chk = it > 0
        if bool(chk.any()):
            ci = chk.nonzero().squeeze(1)
            logits = ctx.forward(x[ci], st["rows"][ci])
            adv = logits.argmax(1) != st["y"][ci]
            inside = lp_norm(x[ci] - x0[ci], norm) <= eps
            broken[ci] = adv & inside
            back = torch.zeros(b, dtype=torch.bool, device=x.device)
            back[ci] = adv & ~inside
            # adversarial but outside the ball: step back towards x0 (pyautoattack's backward step)
            x = torch.where(back.reshape(bshape), x0 + (x - x0) * self.beta, x)
        x_eval = st["x"]
        done = ~broken & (it >= self.n_iter)
        run = ~broken & ~done
        if bool(run.any()):
            ri = run.nonzero().squeeze(1)
            sub = RowState({k: v[ri] for k, v in st.items()})
            sub["x"] = x[ri]
            df, dg = self._linearize(ctx, sub)
            x = x.clone()
            x[ri] = self._update(sub["x"], sub["x0"], df, dg, norm)
        st["x"] = x
        st["it"] = it + run.to(torch.int64)
        return broken, x_eval, done

    def _update(self, x1: torch.Tensor, x0: torch.Tensor, df: torch.Tensor, dg: torch.Tensor, norm: str
                ) -> torch.Tensor:
        """One FAB step for a sub-batch (float64 geometry, float32 result)."""
        bs = x1.shape[0]
        u1 = torch.arange(bs, device=x1.device)
        dgf = dg.reshape(bs, dg.shape[1], -1).double()
        dfd = df.double()
        if norm == "Linf":
            dist1 = dfd.abs() / (1e-12 + dgf.abs().sum(-1))
        else:
            dist1 = dfd.abs() / (1e-12 + dgf.pow(2).sum(-1).sqrt())
        ind = dist1.min(dim=1)[1]
        w = dgf[u1, ind]
        x1f = x1.reshape(bs, -1).double()
        x0f = x0.reshape(bs, -1).double()
        b = -dfd[u1, ind] + (w * x1f).sum(-1)
        proj = projection_linf if norm == "Linf" else projection_l2
        d3 = proj(torch.cat((x1f, x0f), 0), torch.cat((w, w), 0), torch.cat((b, b), 0))
        d1, d2 = d3[:bs], d3[bs:]
        if norm == "Linf":
            a0 = d3.abs().max(dim=1, keepdim=True)[0]
        else:
            a0 = d3.pow(2).sum(dim=1, keepdim=True).sqrt()
        a0 = torch.clamp_min(a0, 1e-8)
        a1, a2 = a0[:bs], a0[bs:]
        alpha = torch.clamp(a1 / (a1 + a2), 0.0, self.alpha_max)
        xn = ((x1f + self.eta * d1) * (1 - alpha) + (x0f + d2 * self.eta) * alpha).clamp(0.0, 1.0)
        return xn.to(x1.dtype).reshape(x1.shape)
