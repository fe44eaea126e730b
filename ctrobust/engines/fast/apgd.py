"""APGD (Auto-PGD) with per-row state, early exit and counter-based random starts.

Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks" (ICML), Algorithm 1, as implemented in pyautoattack 0.2.0
(``autopgd_base.APGDAttack`` / ``APGDAttack_targeted``), for the Linf and L2 threat models:

- random start: ``x0 + eps * t / ||t||`` with ``t ~ U[-1, 1]^d`` (Linf) or ``N(0, I)`` (L2), clipped to [0, 1];
- step size ``eta = 2 eps``, momentum ``alpha = 0.75`` (none at the first step):
  ``z = P(x_k + eta * s(grad))``, ``x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))`` with
  ``s = sign`` (Linf) or ``grad / ||grad||_2`` (L2) and ``P`` the projection onto ball ∩ [0, 1];
- checkpoints after ``p_1 = 0.22 N_iter`` iterations, then every ``max(p_j - 0.03 N_iter, 0.06 N_iter)``
  iterations (for 100 iterations: after iterations 22, 41, 57, 70, 80, 87, 93, 99); at a checkpoint the step
  size halves and the iterate restarts from the best point when the loss increased in at most
  ``rho = 0.75`` of the steps since the last checkpoint, or when the step was not halved last time and the
  best loss did not improve;
- losses: cross-entropy (``apgd-ce``), DLR (``apgd-dlr``) and targeted DLR (``apgd-t``, one run per target
  class: the 2nd, 3rd, ... most likely class of the clean image, 9 targets by default).

Differences from pyautoattack (none changes the attack's strength):

- early exit: a row leaves the batch at the first iterate (projected, in [0, 1], in the ball) that is
  misclassified, keeping that iterate; pyautoattack keeps iterating it and keeps the same point, so the
  pass/fail flag is the same;
- random starts are drawn per row from :mod:`rng` (key: seed, id, beta, attack, restart/target) instead of
  the global torch RNG re-seeded per batch;
- all per-row state, including the iteration counter that drives the step-size checkpoints, is carried per
  row, so rows can join a running batch (the ``run_attack`` driver refills it);
- target classes come from the clean logits computed once by the engine (pyautoattack recomputes the
  same clean forward pass before each target).
"""

from __future__ import annotations

import torch

from ctrobust.engines.fast import rng
from ctrobust.engines.fast._context import AttackContext
from ctrobust.engines.fast._driver import Attack, RowState
from ctrobust.engines.fast._ops import ce_loss, clip_linf, dlr_loss, dlr_loss_targeted, normalize, project_ball

__all__ = ["APGD", "checkpoint_schedule"]


def checkpoint_schedule(n_iter: int) -> torch.Tensor:
    """Length of the window checked at each iteration (0 where the iteration is not a checkpoint).

    Mirrors pyautoattack's ``counter3``/``k`` bookkeeping: first window ``max(int(0.22 n), 1)``, then
    ``k <- max(k - max(int(0.03 n), 1), max(int(0.06 n), 1))``.

    Returns:
        int64 ``(n_iter,)``; for ``n_iter = 100`` nonzero at iterations 21, 40, 56, 69, 79, 86, 92, 98
        (0-based) with windows 22, 19, 16, 13, 10, 7, 6, 6.
    """
    k = max(int(0.22 * n_iter), 1)
    k_min = max(int(0.06 * n_iter), 1)
    decr = max(int(0.03 * n_iter), 1)
    out = torch.zeros(n_iter, dtype=torch.int64)
    counter = 0
    for i in range(n_iter):
        counter += 1
        if counter == k:
            out[i] = k
            k = max(k - decr, k_min)
            counter = 0
    return out


class APGD(Attack):
    """Auto-PGD on the cross-entropy, DLR or targeted-DLR loss (Linf and L2).

    Args:
        norm: ``"Linf"`` or ``"L2"`` (taken from the context at run time; kept for the name check only).
        loss: ``"ce"``, ``"dlr"`` or ``"dlr-targeted"``.
        n_iter: iterations per restart / target (AutoAttack: 100).
        n_restarts: random restarts (AutoAttack standard: 1; with ``dlr-targeted``: restarts per target).
        n_target_classes: target classes of the targeted version (AutoAttack: 9).
        rho: the checkpoint threshold (AutoAttack: 0.75).
        eot_iter: gradients averaged per step (AutoAttack ``rand`` version: 20).
        name: attack name used for random keys and reporting (default from the loss).

    Shapes: images ``(B, C, H, W)`` in [0, 1]; labels ``(B,)``.

    Example:
        >>> from ctrobust.engines.fast._driver import run_attack
        >>> res = run_attack(APGD(loss="ce"), ctx, rows, batch_size=128)   # ctx: AttackContext
        >>> res.broken.float().mean()
    """

    def __init__(self, *, loss: str = "ce", n_iter: int = 100, n_restarts: int = 1, n_target_classes: int = 9,
                 rho: float = 0.75, eot_iter: int = 1, name: str | None = None):
        if loss not in ("ce", "dlr", "dlr-targeted"):
            raise ValueError(f"unknown APGD loss {loss!r} (ce, dlr, dlr-targeted)")
        self.loss = loss
        self.targeted = loss == "dlr-targeted"
        self.name = name or {"ce": "apgd-ce", "dlr": "apgd-dlr", "dlr-targeted": "apgd-t"}[loss]
        self.code = rng.ATTACK_CODES[self.name]
        self.n_iter = int(n_iter)
        self.n_restarts = int(n_restarts)
        self.n_target_classes = int(n_target_classes)
        self.rho = float(rho)
        self.eot_iter = int(eot_iter)
        self.n_phases = self.n_restarts * (self.n_target_classes if self.targeted else 1)
        self._ckpt = {}
        self._offsets = {}
        #: for a chain (:meth:`chain`): ``[(attack, first phase), ...]`` of the attacks it runs in order
        self.segments = [(self, 0)]

    @classmethod
    def chain(cls, attacks: "list[APGD]") -> "APGD":
        """One APGD whose phases are those of ``attacks`` one after the other (e.g. APGD-CE then APGD-T).

        A row's phase ``p`` runs the attack whose phase range holds ``p``, with that attack's loss, random
        keys and targets, so a row runs exactly the trajectories it would run in ``attacks`` called one
        after the other, and :func:`~ctrobust.engines.fast._driver.run_attack` keeps the lowest successful
        phase, i.e. the first attack in order that breaks the row. What the chain adds: once no rows are
        pending, the padding of the last block runs *later attacks'* phases of rows still in an earlier
        attack (speculation across attacks), e.g. APGD-T targets while APGD-CE is still running.

        Args:
            attacks: APGD attacks with the same ``n_iter``, ``rho`` and ``eot_iter`` (they share the
                step-size schedule and the gradient averaging).

        Returns:
            An :class:`APGD` with ``segments`` set; ``name`` joins the names with ``+``.
        """
        first = attacks[0]
        if len({(a.n_iter, a.rho, a.eot_iter) for a in attacks}) != 1:
            raise ValueError("chained APGD attacks must share n_iter, rho and eot_iter")
        ch = cls.__new__(cls)
        ch.__dict__.update(first.__dict__)
        ch._ckpt = {}
        ch._offsets = {}
        ch.name = "+".join(a.name for a in attacks)
        ch.targeted = any(a.targeted for a in attacks)
        ch.segments, off = [], 0
        for a in attacks:
            ch.segments.append((a, off))
            off += a.n_phases
        ch.n_phases = off
        ch.n_segments = len(ch.segments)
        return ch

    def segment_of(self, phase: torch.Tensor) -> torch.Tensor:
        """Index into :attr:`segments` of each phase (int64, like ``phase``)."""
        if len(self.segments) == 1:
            return torch.zeros_like(phase)
        offs = self._offsets.get(phase.device)
        if offs is None:  # once per device: this runs every step
            offs = self._offsets[phase.device] = torch.tensor([o for _, o in self.segments[1:]],
                                                              dtype=torch.int64, device=phase.device)
        return torch.bucketize(phase, offs, right=True)

    # -- state ------------------------------------------------------------------------------------

    def start(self, ctx: AttackContext, rows: torch.Tensor, phase: torch.Tensor) -> RowState:
        if len(self.segments) > 1:
            return self._start_chain(ctx, rows, phase)
        x0 = ctx.x[rows]
        keys = rng.row_keys(ctx.seed, ctx.ids[rows], ctx.betas[rows], self.code, phase)
        shape = tuple(x0.shape[1:])
        if ctx.norm == "Linf":
            t = 2.0 * rng.uniform(keys, 0, shape) - 1.0
        else:
            t = rng.normal(keys, 0, shape)
        x = torch.clamp(x0 + ctx.eps * normalize(t, ctx.norm), 0.0, 1.0)
        b = rows.shape[0]
        st = RowState(
            rows=rows, phase=phase, x0=x0, y=ctx.y[rows], x=x, x_old=x.clone(),
            grad=torch.zeros_like(x), x_best=x.clone(), grad_best=torch.zeros_like(x),
            loss_best=torch.zeros(b, device=x.device), step=torch.full((b,), 2.0 * ctx.eps, device=x.device),
            it=torch.full((b,), -1, dtype=torch.int64, device=x.device),
            hist=torch.zeros(b, self.n_iter, device=x.device),
            loss_best_last=torch.zeros(b, device=x.device),
            reduced_last=torch.ones(b, dtype=torch.bool, device=x.device),
        )
        if self.targeted:
            order = ctx.clean_order(rows)
            k = order.shape[1]
            tgt_idx = phase // self.n_restarts + 2  # pyautoattack: target_class in range(2, n_target + 2)
            if int(tgt_idx.max()) > k:
                raise ValueError(f"{self.name}: {self.n_target_classes} target classes need at least "
                                 f"{self.n_target_classes + 1} classes, the model has {k}")
            st["target"] = order.gather(1, (k - tgt_idx)[:, None]).squeeze(1)
        return st

    def _start_chain(self, ctx: AttackContext, rows: torch.Tensor, phase: torch.Tensor) -> RowState:
        """Each segment's own start for its rows (keys, targets), put back in the order of ``rows``."""
        seg = self.segment_of(phase)
        parts, order = [], []
        for j, (att, off) in enumerate(self.segments):
            sel = torch.nonzero(seg == j).squeeze(1)
            if sel.numel() == 0:
                continue
            part = att.start(ctx, rows[sel], phase[sel] - off)
            part["phase"] = phase[sel]
            part["seg"] = torch.full_like(sel, j)
            # a row's target class (its own one for targeted segments, the label elsewhere: unused)
            part["target"] = part["target"] if att.targeted else part["y"].clone()
            parts.append(part)
            order.append(sel)
        st = parts[0]
        for part in parts[1:]:
            st = st.cat(part)
        inv = torch.empty_like(phase)
        inv[torch.cat(order)] = torch.arange(phase.shape[0], device=phase.device)
        return st.keep(inv)

    def _loss_fn(self, st: RowState):
        if len(self.segments) > 1:
            return self._chain_loss_fn(st)
        y = st["y"]
        if self.loss == "ce":
            return lambda z: ce_loss(z, y)
        if self.loss == "dlr":
            return lambda z: dlr_loss(z, y)
        t = st["target"]
        return lambda z: dlr_loss_targeted(z, y, t)

    def _chain_loss_fn(self, st: RowState):
        """Per-row loss of a chain: each segment's loss on its own rows (row-wise, as if run alone)."""
        seg = st["seg"]
        groups = [(torch.nonzero(seg == j).squeeze(1), att) for j, (att, _) in enumerate(self.segments)]
        groups = [(idx, att) for idx, att in groups if idx.numel()]

        def loss(z):
            out = z.new_zeros(z.shape[0])
            for idx, att in groups:
                sub = RowState(y=st["y"][idx], target=st["target"][idx])
                out = out.index_put((idx,), att._loss_fn(sub)(z[idx]))
            return out
        return loss

    def _uses_dlr(self, st: RowState) -> torch.Tensor:
        """Rows whose loss is a DLR loss (bool ``(B,)``)."""
        if len(self.segments) == 1:
            return torch.full_like(st["it"], self.loss != "ce", dtype=torch.bool)
        dlr = torch.tensor([att.loss != "ce" for att, _ in self.segments], device=st["seg"].device)
        return dlr[st["seg"]]

    # -- one iteration ----------------------------------------------------------------------------

    def step(self, ctx: AttackContext, st: RowState):
        eps, norm = ctx.eps, ctx.norm
        it = st["it"]
        fresh = it < 0
        x0, x = st["x0"], st["x"]
        bshape = (-1,) + (1,) * (x.dim() - 1)
        if not bool(fresh.all()):
            # gradient step with momentum (pyautoattack: a = 0.75 if i > 0 else 1.0)
            a = torch.where(it > 0, 0.75, 1.0).to(x.dtype).reshape(bshape)
            step = st["step"].reshape(bshape)
            grad2 = x - st["x_old"]
            if norm == "Linf":
                z = clip_linf(x + step * torch.sign(st["grad"]), x0, eps)
                x_new = clip_linf(x + (z - x) * a + grad2 * (1 - a), x0, eps)
            else:
                z = project_ball(x + step * normalize(st["grad"], "L2"), x0, "L2", eps)
                x_new = project_ball(x + (z - x) * a + grad2 * (1 - a), x0, "L2", eps)
            f = fresh.reshape(bshape)
            st["x_old"] = torch.where(f, st["x_old"], x)
            x = torch.where(f, x, x_new)
            st["x"] = x

        logits, loss, grad = ctx.value_and_grad(x, st["rows"], self._loss_fn(st), self.eot_iter)
        broken = logits.argmax(1) != st["y"]
        if (len(self.segments) > 1 or self.loss != "ce") and bool(fresh.any()):
            chk = fresh & self._uses_dlr(st)
            zero = torch.zeros_like(chk)
            zero[chk] = grad[chk].flatten(1).abs().sum(1) == 0  # only the rows checked
            if bool(zero.any()):
                if len(self.segments) == 1:
                    ctx.note(f"{self.name}: points with zero gradient at the start point", int(zero.sum()))
                else:
                    seg = st["seg"][zero]
                    for j, (att, _) in enumerate(self.segments):
                        if int((seg == j).sum()):
                            ctx.note(f"{att.name}: points with zero gradient at the start point",
                                     int((seg == j).sum()))

        # fresh rows: initial bookkeeping (pyautoattack before its loop)
        fr = fresh.reshape(bshape)
        st["grad"] = grad
        st["x_best"] = torch.where(fr, x, st["x_best"])
        st["grad_best"] = torch.where(fr, grad, st["grad_best"])
        st["loss_best"] = torch.where(fresh, loss, st["loss_best"])
        st["loss_best_last"] = torch.where(fresh, loss, st["loss_best_last"])

        # running rows: iteration i = it
        run = ~fresh
        i = it.clamp_min(0)
        n = self.n_iter
        hist = st["hist"]
        hist.scatter_(1, i[:, None], torch.where(run, loss, hist.gather(1, i[:, None]).squeeze(1))[:, None])
        improved = run & (loss > st["loss_best"])
        im = improved.reshape(bshape)
        st["x_best"] = torch.where(im, x, st["x_best"])
        st["grad_best"] = torch.where(im, grad, st["grad_best"])
        st["loss_best"] = torch.where(improved, loss, st["loss_best"])

        dev = str(x.device)
        if dev not in self._ckpt:
            self._ckpt[dev] = checkpoint_schedule(self.n_iter).to(x.device)
        k = self._ckpt[dev][i] * run  # window length at checkpoints, else 0
        ck = k > 0
        if bool(ck.any()):
            kmax = int(k.max())
            c5 = torch.arange(kmax, device=x.device)
            idx = i[:, None] - c5[None, :]
            cur = hist.gather(1, idx % n)
            prev = hist.gather(1, (idx - 1) % n)  # index -1 reads the not yet written last slot (= 0)
            incr = ((cur > prev) & (c5[None, :] < k[:, None])).sum(1)
            osc = incr.to(torch.float32) <= k.to(torch.float32) * self.rho
            no_impr = (~st["reduced_last"]) & (st["loss_best_last"] >= st["loss_best"])
            fl = ck & (osc | no_impr)
            st["reduced_last"] = torch.where(ck, fl, st["reduced_last"])
            st["loss_best_last"] = torch.where(ck, st["loss_best"], st["loss_best_last"])
            st["step"] = torch.where(fl, st["step"] / 2.0, st["step"])
            flv = fl.reshape(bshape)
            st["x"] = torch.where(flv, st["x_best"], st["x"])
            st["grad"] = torch.where(flv, st["grad_best"], st["grad"])

        st["it"] = it + 1
        done = st["it"] >= n
        return broken, x, done
