"""Square Attack (score-based, gradient-free) with per-row random squares and early exit.

Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient black-box adversarial
attack via random search" (ECCV), as run by AutoAttack through pyautoattack 0.2.0 (``square.SquareAttack``
with ``p_init = 0.8``, 5000 queries, margin loss, ``resc_schedule=False``), for Linf and L2:

- loss: the margin ``z_y - max_{l != y} z_l`` (a point is adversarial when it is <= 0);
- initialization: Linf — vertical stripes ``x0 + eps * s`` with one random sign per (channel, column);
  L2 — a grid of ``h // 5``-sized squares, each filled with the two-block pattern ``eta`` (Alg. 3) times a
  random sign per channel, rescaled to norm ``eps``;
- iteration ``i`` (one query): side ``s = round(sqrt(p_i * h * w))`` with AutoAttack's schedule ``p_i``
  (``p_init`` halved after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000); Linf: a square of
  side ``s`` at a random position gets ``+-2 eps`` per channel and the result is projected; L2: the mass of
  two random windows is moved into one new ``eta`` window (Alg. 3), keeping ``||delta||_2 = eps``;
- the candidate replaces the current best when its loss is lower (or it is misclassified).

Differences from pyautoattack:

- pyautoattack draws one square position (and for Linf one sign vector) per iteration for the whole
  batch; here each row draws its own position, signs and ``eta`` orientation (as in the paper's
  algorithm, which is per image) from :mod:`rng`, keyed by (seed, id, beta, "square", iteration). This is
  what makes the outcome independent of the batch, and it is not weaker: every row still gets an
  independent uniformly random square per query;
- early exit at the first misclassified candidate (pyautoattack also stops attacking a row once its
  margin is <= 0; both report it as broken);
- each row has its own iteration counter, so the ``p`` schedule is per row and rows can join a running
  batch;
- window sums are accumulated in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ctrobust.engines.fast import rng
from ctrobust.engines.fast._context import AttackContext
from ctrobust.engines.fast._driver import Attack, RowState
from ctrobust.engines.fast._ops import lp_norm, margin, normalize

__all__ = ["Square", "p_selection", "eta_pattern"]


def p_selection(it: int, p_init: float = 0.8, n_queries: int = 5000, rescale: bool = False) -> float:
    """Fraction of pixels changed at iteration ``it`` (AutoAttack: ``rescale=False``)."""
    if rescale:
        it = int(it / n_queries * 10000)
    for bound, div in ((8000, 512), (6000, 256), (4000, 128), (2000, 64), (1000, 32), (500, 16), (200, 8),
                       (50, 4), (10, 2)):
        if it > bound:
            return p_init / div
    return p_init


def _eta_rectangles(x: int, y: int) -> np.ndarray:
    delta = np.zeros((x, y))
    x_c, y_c = x // 2 + 1, y // 2 + 1
    c0, c1 = x_c - 1, y_c - 1
    for counter in range(max(x_c, y_c)):
        delta[max(c0, 0):min(c0 + (2 * counter + 1), x), max(0, c1):min(c1 + (2 * counter + 1), y)] += \
            1.0 / (counter + 1) ** 2
        c0 -= 1
        c1 -= 1
    n = np.sqrt((delta ** 2).sum())
    return delta / n if n > 0 else delta


def eta_pattern(s: int) -> np.ndarray:
    """Square's L2 window pattern ``eta`` of side ``s`` (two blocks of opposite sign, unit L2 norm)."""
    delta = np.zeros((s, s))
    delta[:s // 2] = _eta_rectangles(s // 2, s)
    delta[s // 2:] = -1.0 * _eta_rectangles(s - s // 2, s)
    return delta / np.sqrt((delta ** 2).sum())


# random streams (see rng.stream_counter); one draw per row and query holds all numbers of that query:
# words [0, 5) = vh, vw, vh2, vw2, transpose; words [5, 5 + C) = the channel signs
_S_INIT_SIGN, _S_INIT_TRANSPOSE, _S_QUERY = range(3)


class Square(Attack):
    """Square Attack on the margin loss (Linf and L2).

    Args:
        n_queries: iterations after the initial query (AutoAttack: 5000).
        p_init: initial fraction of changed pixels (AutoAttack: 0.8).
        rescale_schedule: rescale ``p``'s schedule to ``n_queries`` (AutoAttack: False).
        n_restarts: restarts (AutoAttack: 1).

    Shapes: images ``(B, C, H, W)`` in [0, 1]; labels ``(B,)``.
    """

    name = "square"

    def __init__(self, *, n_queries: int = 5000, p_init: float = 0.8, rescale_schedule: bool = False,
                 n_restarts: int = 1):
        self.code = rng.ATTACK_CODES["square"]
        self.n_queries = int(n_queries)
        self.p_init = float(p_init)
        self.rescale = bool(rescale_schedule)
        self.n_phases = int(n_restarts)
        self._p = [p_selection(i, self.p_init, self.n_queries, self.rescale) for i in range(self.n_queries)]
        self._sizes = {}

    def _side(self, h: int, w: int, norm: str, device: torch.device) -> torch.Tensor:
        """Square side per iteration index (int64 ``(n_queries,)`` on ``device``)."""
        key = (h, w, norm, str(device))
        if key not in self._sizes:
            out = []
            for p in self._p:
                if norm == "Linf":
                    s = max(int(round(math.sqrt(p * h * w))), 1)
                else:
                    s = max(int(round(math.sqrt(p * h * w))), 3)
                    if s % 2 == 0:
                        s += 1
                out.append(min(s, min(h, w)))
            self._sizes[key] = torch.tensor(out, dtype=torch.int64, device=device)
        return self._sizes[key]

    def start(self, ctx: AttackContext, rows: torch.Tensor, phase: torch.Tensor) -> RowState:
        x0 = ctx.x[rows]
        b = rows.shape[0]
        keys = rng.row_keys(ctx.seed, ctx.ids[rows], ctx.betas[rows], self.code, phase)
        return RowState(rows=rows, phase=phase, x0=x0, y=ctx.y[rows], keys=keys, x_best=x0.clone(),
                        margin_min=torch.zeros(b, device=x0.device), loss_min=torch.zeros(b, device=x0.device),
                        it=torch.zeros(b, dtype=torch.int64, device=x0.device))

    # -- candidates -------------------------------------------------------------------------------

    def _init_linf(self, ctx, keys, x0):
        b, c, h, w = x0.shape
        sign = rng.rademacher(keys, rng.stream_counter(0, _S_INIT_SIGN), (c, 1, w))
        return torch.clamp(x0 + ctx.eps * sign, 0.0, 1.0)

    def _init_l2(self, ctx, keys, x0):
        b, c, h, w = x0.shape
        s = h // 5
        if s < 1:
            raise ValueError(f"square (L2) needs images of at least 5 x 5 pixels, got {h} x {w}")
        pat = torch.as_tensor(eta_pattern(s), dtype=x0.dtype, device=x0.device)
        tiles = [(vh, vw) for vh in range((h - s * 5) // 2, (h - s * 5) // 2 + s * (h // s), s)
                 for vw in range((h - s * 5) // 2, (h - s * 5) // 2 + s * (w // s), s)]
        signs = rng.rademacher(keys, rng.stream_counter(0, _S_INIT_SIGN), (len(tiles), c))
        transp = rng.bits(keys, rng.stream_counter(0, _S_INIT_TRANSPOSE), len(tiles)) >> 31
        delta = torch.zeros_like(x0)
        for j, (vh, vw) in enumerate(tiles):
            tile = torch.where(transp[:, j].bool()[:, None, None], pat.t(), pat)  # (B, s, s)
            blk = delta[:, :, vh:vh + s, vw:vw + s]
            hh, ww = blk.shape[-2:]
            delta[:, :, vh:vh + s, vw:vw + s] = blk + (tile[:, None, :hh, :ww] * signs[:, j, :, None, None])
        return torch.clamp(x0 + normalize(delta, "L2") * ctx.eps, 0.0, 1.0)

    @staticmethod
    def _window_mask(vh, vw, s, h, w, like):
        ah = torch.arange(h, device=like.device)[None, :]
        aw = torch.arange(w, device=like.device)[None, :]
        mh = (ah >= vh[:, None]) & (ah < (vh + s)[:, None])
        mw = (aw >= vw[:, None]) & (aw < (vw + s)[:, None])
        return (mh[:, :, None] & mw[:, None, :]).unsqueeze(1).to(like.dtype)  # (B, 1, h, w)

    def _draw(self, st, it, norm):
        """This query's draws for every row: side ``s``, the raw bits ``r`` (B, 5 + C), the window corner
        ``(vh, vw)`` and per-channel signs ``(B, C, 1, 1)``."""
        x0 = st["x0"]
        b, c, h, w = x0.shape
        s = self._side(h, w, norm, x0.device)[it - 1]
        r = rng.bits(st["keys"], rng.stream_counter(it, _S_QUERY), 5 + c)
        vh = rng.to_randint(r[:, 0], h - s)
        vw = rng.to_randint(r[:, 1], w - s)
        sign = rng.to_sign(r[:, 5:]).reshape(b, c, 1, 1)
        return s, r, vh, vw, sign

    def _propose_linf(self, ctx, st, it):
        x0, xb = st["x0"], st["x_best"]
        h, w = x0.shape[-2:]
        s, _, vh, vw, sign = self._draw(st, it, "Linf")
        mask = self._window_mask(vh, vw, s, h, w, x0)
        x_new = xb + mask * (2.0 * ctx.eps) * sign
        x_new = torch.min(torch.max(x_new, x0 - ctx.eps), x0 + ctx.eps)
        return torch.clamp(x_new, 0.0, 1.0)

    def _propose_l2(self, ctx, st, it):
        eps = ctx.eps
        x0, xb = st["x0"], st["x_best"]
        b, c, h, w = x0.shape
        s, r, vh, vw, sign = self._draw(st, it, "L2")
        vh2 = rng.to_randint(r[:, 2], h - s)  # the second window (L2 moves mass between two squares)
        vw2 = rng.to_randint(r[:, 3], w - s)
        transp = (r[:, 4] >> 31).bool()
        m1 = self._window_mask(vh, vw, s, h, w, x0)
        m2 = self._window_mask(vh2, vw2, s, h, w, x0)
        delta = xb - x0

        def wsum2(t):  # per (row, channel) sum of squares over the image, float64 -> (B, C, 1, 1)
            return t.double().pow(2).sum(dim=(-2, -1), keepdim=True).to(t.dtype)

        norms_window_1 = wsum2(delta * m1).sqrt()
        norms_image = lp_norm(delta, "L2", keepdim=True)
        norms_windows = wsum2(delta * torch.max(m1, m2)).sqrt()
        # the eta window of side s at (vh, vw), per row (rows may be at different s)
        eta_full = torch.zeros(b, 1, h, w, device=x0.device, dtype=x0.dtype)
        for sv in torch.unique(s).tolist():
            g = (s == sv).nonzero().squeeze(1)
            pat = torch.as_tensor(eta_pattern(sv), dtype=x0.dtype, device=x0.device)
            pats = torch.where(transp[g][:, None, None], pat.t(), pat)  # (G, sv, sv)
            ar = torch.arange(sv, device=x0.device)
            hi = (vh[g][:, None] + ar)[:, :, None]
            wi = (vw[g][:, None] + ar)[:, None, :]
            eta_full[g[:, None, None], 0, hi, wi] = pats
        new = eta_full * sign + delta * m1 / (1e-12 + norms_window_1)
        new = new / (1e-12 + wsum2(new).sqrt()) * (
            torch.clamp(eps ** 2 - norms_image ** 2, min=0.0) / c + norms_windows ** 2).sqrt()
        delta = delta * (1.0 - m2)
        delta = delta * (1.0 - m1) + new * m1
        return torch.clamp(x0 + normalize(delta, "L2") * eps, 0.0, 1.0)

    # -- one query --------------------------------------------------------------------------------

    def step(self, ctx: AttackContext, st: RowState):
        it = st["it"]
        fresh = it == 0
        x0 = st["x0"]
        bshape = (-1,) + (1,) * (x0.dim() - 1)
        init = self._init_linf if ctx.norm == "Linf" else self._init_l2
        prop = self._propose_linf if ctx.norm == "Linf" else self._propose_l2
        if bool(fresh.all()):
            cand = init(ctx, st["keys"], x0)
        elif not bool(fresh.any()):
            cand = prop(ctx, st, it)
        else:
            cand = torch.empty_like(x0)
            f = fresh.nonzero().squeeze(1)
            nf = (~fresh).nonzero().squeeze(1)
            cand[f] = init(ctx, st["keys"][f], x0[f])
            cand[nf] = prop(ctx, RowState({k: v[nf] for k, v in st.items()}), it[nf])
        logits = ctx.forward(cand, st["rows"])
        marg = margin(logits, st["y"])
        loss = marg  # AutoAttack: loss="margin"
        broken = logits.argmax(1) != st["y"]
        improved = fresh | (loss < st["loss_min"])
        st["loss_min"] = torch.where(improved, loss, st["loss_min"])
        improved = improved | (marg <= 0)
        st["margin_min"] = torch.where(improved, marg, st["margin_min"])
        st["x_best"] = torch.where(improved.reshape(bshape), cand, st["x_best"])
        st["it"] = it + 1
        done = st["it"] > self.n_queries
        return broken, cand, done
