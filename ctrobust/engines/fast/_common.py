"""Machinery shared by the fast attacks: the model caller, the attack context, per-row state, norms and
the early-exit driver that keeps the working batch full.

Row model
---------
An engine call attacks ``N`` *rows* (one example at one CT beta). Attacks never see the model directly;
they call ``ctx.forward(x, rows)`` where ``rows`` (int64 ``(B,)``) are indices into the context's row
arrays. The :class:`ModelCaller` sets the per-row betas (``ctrobust.ct.set_beta``) before every model
call, because after early exit and refilling the rows in the batch change from one call to the next.

Batch invariance
----------------
Every per-row quantity is computed from that row's own state: all random numbers come from
:mod:`ctrobust.engines.fast.rng` keyed by the row, all reductions are per row, and float sums over pixels
(norms, dot products) are accumulated in float64 and rounded to float32, so a different reduction order on
another batch shape almost never changes a float32 bit. The model itself is the remaining source of
batch-shape dependence: BLAS and convolution libraries pick kernels by batch size (measured on CPU: logits
of the same image differ by ~1e-7 between batch sizes 3 and 64). The caller therefore evaluates the model
on *fixed-shape blocks*: every call gets exactly ``block`` rows, padded with copies of the first row. A
row's logits then do not depend on the other rows, on the number of rows in flight, on chunking or on
beta-batching (measured on CPU and on an H100: adversarial images bit-identical between batch sizes 3 and
64 with the same block, and between one call for all betas and one call per beta).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "ModelCaller",
    "invariant_grain",
    "AttackContext",
    "RowState",
    "Attack",
    "AttackResult",
    "run_attack",
    "lp_norm",
    "normalize",
    "project_ball",
    "clip_linf",
    "dlr_loss",
    "dlr_loss_targeted",
    "margin",
    "ce_loss",
]


# ---------------------------------------------------------------------------------------------------
# The model caller
# ---------------------------------------------------------------------------------------------------


class ModelCaller:
    """Calls the model on rows, with per-row CT beta, in fixed-shape blocks, and counts the work.

    Args:
        model: eval-mode module mapping [0, 1] images ``(B, C, H, W)`` to logits ``(B, K)``; a ``CTModel``
            (or any module containing ``CTActivation``) gets ``set_beta`` before every call.
        betas: float ``(N,)`` CT beta of every row (on the model's device).
        block: rows per model call. Larger inputs are split into blocks.
        fixed_shape: pad every block to exactly ``block`` rows (bitwise batch invariance of the model's
            numerics, see the module docstring); ``False`` saves the padding compute.
        grain: with ``fixed_shape``, pad a short block only to the next multiple of ``grain`` rows instead of
            to ``block`` (``None``: ``block``). Only sound for a ``grain`` that :func:`invariant_grain` found:
            one where the model's numerics per row are the same at every multiple of it.

    Attributes:
        forward_rows / backward_rows: example-forwards / example-backwards spent (padding excluded).
        forward_calls / backward_calls: batched model calls / backward sweeps.
        padded_rows: rows of padding pushed through the model (compute overhead of ``fixed_shape``).
    """

    def __init__(self, model: torch.nn.Module, betas: torch.Tensor, *, block: int, fixed_shape: bool = True,
                 grain: int | None = None):
        from ctrobust.ct import CTActivation, set_beta

        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.model = model
        self.block = int(block)
        self.grain = self.block if grain is None else max(1, min(int(grain), self.block))
        self.fixed_shape = bool(fixed_shape)
        self._set_beta = set_beta
        self.has_ct = any(isinstance(m, CTActivation) for m in model.modules())
        self.betas32 = betas.to(torch.float32)
        if not self.has_ct and bool((betas != 1.0).any()):
            raise ValueError("rows have beta != 1 but the model has no CT activation: apply_ct(model, beta) first")
        self.forward_rows = 0
        self.backward_rows = 0
        # per-row example passes (on the device: counting costs no host synchronisation), so that the
        # passes of each beta of a beta-batched call are measured, not split evenly
        self.row_forwards = torch.zeros(betas.shape[0], dtype=torch.int64, device=betas.device)
        self.row_backwards = torch.zeros_like(self.row_forwards)
        self.forward_calls = 0
        self.backward_calls = 0
        self.padded_rows = 0

    def _blocks(self, n: int):
        for i in range(0, n, self.block):
            yield i, min(i + self.block, n)

    def forward(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` of images ``x`` ``(B, C, H, W)`` for rows ``rows`` ``(B,)``.

        Differentiable when ``x`` requires grad (the padding is a copy of a row of ``x``, so it does not
        contribute to gradients of losses computed on the returned logits).
        """
        n = x.shape[0]
        outs = []
        for i, j in self._blocks(n):
            xb, rb = x[i:j], rows[i:j]
            m = j - i
            if self.fixed_shape and m < self.block and m % self.grain:
                pad = min(self.block, -(-m // self.grain) * self.grain) - m
                xb = torch.cat([xb, xb[:1].detach().expand(pad, *xb.shape[1:])], 0)
                rb = torch.cat([rb, rb[:1].expand(pad)], 0)
                self.padded_rows += pad
            if self.has_ct:
                self._set_beta(self.model, self.betas32[rb], validate=False)
            outs.append(self.model(xb)[:m])
            self.forward_calls += 1
        self.forward_rows += n
        self.row_forwards.index_add_(0, rows, torch.ones_like(rows))
        return outs[0] if len(outs) == 1 else torch.cat(outs, 0)

    def count_backward(self, rows: torch.Tensor, sweeps: int = 1) -> None:
        """Record ``sweeps`` backward passes over the rows ``rows`` (split in blocks like the forward)."""
        n_rows = int(rows.shape[0])
        self.row_backwards.index_add_(0, rows, torch.full_like(rows, sweeps))
        self.backward_rows += n_rows * sweeps
        self.backward_calls += sweeps * max(1, math.ceil(n_rows / self.block))


def invariant_grain(model: torch.nn.Module, x: torch.Tensor, betas: torch.Tensor, block: int) -> int:
    """The smallest ``g`` dividing ``block`` such that the model computes every row bit for bit the same in a
    call of any multiple of ``g`` rows (up to ``block``) as in a call of ``block`` rows.

    Checked on ``block`` rows cycling through ``x`` (with their ``betas``) for the three things the attacks
    use: logits without gradient, logits with gradient, and the input gradient of a random combination of
    the logits; sizes ``g, 2g, ...`` are compared with the full block and the first difference rejects
    ``g``. Kernel libraries choose their algorithm by shape, not by values, and a different algorithm
    changes the last bits of random inputs almost surely, so equality here means the same computation.
    On the CPU used for development, ResNet-18 and WRN-28-10 gave ``g = 2``; a model whose kernels depend on
    the batch size gets ``g = block`` (every call padded to the block, as without the probe).

    Args:
        model: the model as the engine calls it (CT applied; eval mode; parameters frozen).
        x: float ``(N, C, H, W)`` images (any N >= 1).
        betas: float ``(N,)`` their CT betas.
        block: the block size.

    Returns:
        ``g`` in the divisors of ``block``.
    """
    from ctrobust.ct import CTActivation, set_beta

    has_ct = any(isinstance(m, CTActivation) for m in model.modules())
    idx = torch.arange(block, device=x.device) % x.shape[0]
    xb, bb = x[idx].detach(), betas[idx].to(torch.float32)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def run(m):
        if has_ct:
            set_beta(model, bb[:m], validate=False)
        with torch.no_grad():
            z0 = model(xb[:m])
        xr = xb[:m].clone().requires_grad_(True)
        with torch.enable_grad():
            z = model(xr)
            (g,) = torch.autograd.grad((z * w[:m]).sum(), [xr])
        return z0, z.detach(), g

    with torch.no_grad():
        if has_ct:
            set_beta(model, bb[:1], validate=False)
        k = model(xb[:1]).shape[1]
    w = torch.randn(block, k, generator=gen).to(x.device)
    ref = run(block)
    for g in [d for d in range(1, block) if block % d == 0]:
        if all(all(torch.equal(a, r[:m]) for a, r in zip(run(m), ref)) for m in range(g, block, g)):
            return g
    return block


# ---------------------------------------------------------------------------------------------------
# Attack context
# ---------------------------------------------------------------------------------------------------


@dataclass
class AttackContext:
    """Everything an attack needs about the rows of one engine call (all tensors on the device).

    Attributes:
        caller: the :class:`ModelCaller`.
        x: float ``(N, C, H, W)`` clean images in [0, 1].
        y: int64 ``(N,)`` labels.
        ids: int64 ``(N,)`` example ids (random keys).
        betas: float64 ``(N,)`` CT betas (random keys; the caller holds the float32 copy for the model).
        seed: the run seed (random keys).
        norm: ``"Linf"`` or ``"L2"``.
        eps: radius of the threat ball.
        clean_logits: float ``(N, K)`` logits of the clean images (targets of APGD-T/FAB-T), or None
            (computed on first use).
        notes: counters of noteworthy events (e.g. zero gradients), turned into warnings by the engine.
    """

    caller: ModelCaller
    x: torch.Tensor
    y: torch.Tensor
    ids: torch.Tensor
    betas: torch.Tensor
    seed: int
    norm: str
    eps: float
    clean_logits: torch.Tensor | None = None
    notes: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.norm not in ("Linf", "L2"):
            raise ValueError(f"norm must be 'Linf' or 'L2', got {self.norm!r}")

    def note(self, key: str, count: int = 1) -> None:
        self.notes[key] = self.notes.get(key, 0) + int(count)

    def forward(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` without gradient."""
        with torch.no_grad():
            return self.caller.forward(x, rows)

    def value_and_grad(self, x: torch.Tensor, rows: torch.Tensor,
                       loss_fn: Callable[[torch.Tensor], torch.Tensor], eot_iter: int = 1
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, per-row loss and the input gradient of the per-row loss, averaged over ``eot_iter`` draws.

        Args:
            x: float ``(B, C, H, W)``.
            rows: int64 ``(B,)``.
            loss_fn: logits ``(B, K)`` -> per-row loss ``(B,)``.
            eot_iter: Expectation over Transformation: gradients of ``eot_iter`` forward/backward passes
                are averaged (only useful for randomized models; AutoAttack's ``rand`` version uses 20).
                As in AutoAttack, the returned logits and loss are those of the last draw.

        Returns:
            ``(logits (B, K), loss (B,), grad (B, C, H, W))``, all detached.
        """
        grad = torch.zeros_like(x)
        for _ in range(eot_iter):
            xr = x.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                logits = self.caller.forward(xr, rows)
                loss = loss_fn(logits)
                (g,) = torch.autograd.grad(loss.sum(), [xr])
            self.caller.count_backward(rows)
            grad += g.detach()
        grad /= float(eot_iter)
        return logits.detach(), loss.detach(), grad

    def logits_and_jacobian(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, K)`` and their Jacobian ``(B, K, C, H, W)`` w.r.t. the input (K backward sweeps)."""
        xr = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = self.caller.forward(xr, rows)
            k = logits.shape[1]
            jac = []
            for c in range(k):
                (g,) = torch.autograd.grad(logits[:, c].sum(), [xr], retain_graph=c < k - 1)
                jac.append(g.detach())
        self.caller.count_backward(rows, sweeps=k)
        return logits.detach(), torch.stack(jac, 1)

    def clean_order(self, rows: torch.Tensor) -> torch.Tensor:
        """Classes of each row sorted by increasing clean logit (int64 ``(B, K)``; ties by class index)."""
        if self.clean_logits is None:
            n = self.x.shape[0]
            self.clean_logits = torch.cat([self.forward(self.x[i:i + self.caller.block],
                                                        torch.arange(i, min(i + self.caller.block, n),
                                                                     device=self.x.device))
                                           for i in range(0, n, self.caller.block)], 0)
        return torch.sort(self.clean_logits[rows], dim=1, stable=True)[1]


# ---------------------------------------------------------------------------------------------------
# Per-row state and the early-exit driver
# ---------------------------------------------------------------------------------------------------


class RowState(dict):
    """A dict of tensors that all have the working-batch size as first dimension.

    Required keys: ``rows`` (int64, index into the context arrays) and ``phase`` (int64, the restart or
    target-class index the row is running).
    """

    def __len__(self) -> int:  # number of rows, not number of keys
        return 0 if "rows" not in self else int(self["rows"].shape[0])

    def keep(self, mask: torch.Tensor) -> "RowState":
        return RowState({k: v[mask] for k, v in self.items()})

    def cat(self, other: "RowState") -> "RowState":
        if len(other) == 0:
            return self
        if len(self) == 0:
            return other
        return RowState({k: torch.cat([v, other[k]], 0) for k, v in self.items()})


class Attack:
    """What :func:`run_attack` needs from an attack (APGD, FAB, Square).

    Attributes:
        name: canonical attack name (``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``, ``apgd-dlr``, ``fab``).
        n_phases: restarts x target classes each row may go through (a row stops at its first success).
    """

    name: str = ""
    n_phases: int = 1

    def start(self, ctx: AttackContext, rows: torch.Tensor, phase: torch.Tensor) -> RowState:
        """Fresh per-row state for ``rows`` at restart/target ``phase`` (no model call)."""
        raise NotImplementedError

    def step(self, ctx: AttackContext, st: RowState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advance every row by one model evaluation.

        Returns:
            ``(broken, x_eval, done)``: bool ``(B,)`` rows whose evaluated point ``x_eval[b]`` (in the ball,
            in [0, 1]) is misclassified; float ``(B, C, H, W)``; bool ``(B,)`` rows that finished the
            current phase without success. ``st`` is updated in place.
        """
        raise NotImplementedError


@dataclass
class AttackResult:
    """Per-row outcome of one attack on the rows it was given (same order as ``rows``).

    Attributes:
        rows: int64 ``(R,)`` the rows attacked.
        broken: bool ``(R,)`` a misclassified point in the ball was found.
        x_adv: float ``(R, C, H, W)``: the first misclassified point found, the clean image otherwise.
        steps: batched steps taken.
    """

    rows: torch.Tensor
    broken: torch.Tensor
    x_adv: torch.Tensor
    steps: int = 0
    #: int64 ``(R,)``: the phase that broke each row (``n_phases`` where none did)
    phase: torch.Tensor | None = None
    #: for a chained attack (``segments``): per segment, steps in which it ran and row-steps it took
    segment_steps: list | None = None
    segment_rows: list | None = None


def run_attack(attack: Attack, ctx: AttackContext, rows: torch.Tensor, batch_size: int,
               speculate: bool = True) -> AttackResult:
    """Run ``attack`` on ``rows`` with early exit and a working batch refilled up to ``batch_size``.

    After every step, rows that found a misclassified point leave the batch (recorded as broken with that
    point), rows that finished a restart/target without success start their next phase in place, rows out
    of phases leave as robust, and pending rows fill the freed slots. Since all per-row state (including
    the iteration counter that drives step-size schedules and checkpoints) is the row's own, refilling
    never changes a row's trajectory.

    Speculative phases: once no rows are pending, a model call with fixed-shape blocks computes the padding
    of its last block anyway. Those slots then run *later* phases (restarts/target classes) of rows already
    in flight, at no extra model cost. The outcome stays that of running the phases one after the other: a
    row is broken by its lowest successful phase, with that phase's point, and phases above it are dropped
    (every phase starts from the clean point with its own random keys, so phases are independent). This
    shortens the tail of APGD-T and FAB-T (9 phases each) when few robust rows are left, e.g. on naturally
    trained models.

    Args:
        attack: an :class:`Attack`.
        ctx: the :class:`AttackContext`.
        rows: int64 ``(R,)`` indices of the rows to attack (still robust).
        batch_size: maximum rows in flight.
        speculate: fill the padding of fixed-shape blocks with later phases (outcomes are identical either
            way; only the number of steps changes).

    Returns:
        An :class:`AttackResult`.
    """
    dev = ctx.x.device
    rows = rows.to(device=dev, dtype=torch.int64)
    r = rows.shape[0]
    n_ph = int(attack.n_phases)
    pos = torch.full((ctx.x.shape[0],), -1, dtype=torch.int64, device=dev)
    pos[rows] = torch.arange(r, device=dev)
    x_adv = ctx.x[rows].clone()
    best = torch.full((r,), n_ph, dtype=torch.int64, device=dev)  # lowest phase that broke the row (n_ph: none)
    next_phase = torch.zeros(r, dtype=torch.int64, device=dev)  # lowest phase not started yet
    caller = ctx.caller
    spec = speculate and n_ph > 1 and bool(getattr(caller, "fixed_shape", False))
    st = RowState()
    nxt = 0
    steps = 0
    n_seg = len(getattr(attack, "segments", ()) or ())
    seg_of = attack.segment_of if n_seg > 1 else None
    if seg_of is not None:  # per-segment work of a chain (tensors: no host sync per step)
        seg_steps = torch.zeros(n_seg, dtype=torch.int64, device=dev)
        seg_rows = torch.zeros(n_seg, dtype=torch.int64, device=dev)
    while True:
        free = batch_size - len(st)
        if free > 0 and nxt < r:
            new = rows[nxt:nxt + free]
            next_phase[nxt:nxt + new.shape[0]] = 1
            nxt += new.shape[0]
            st = st.cat(attack.start(ctx, new, torch.zeros_like(new)))
        if len(st) == 0:
            break
        if spec and nxt >= r:
            st = st.cat(_speculative_starts(attack, ctx, st, pos, rows, best, next_phase,
                                            min(batch_size, -(-len(st) // caller.block) * caller.block) - len(st)))
        b, x_eval, done = attack.step(ctx, st)
        steps += 1
        p_all = pos[st["rows"]]
        ph = st["phase"]
        if seg_of is not None:
            cnt = torch.bincount(seg_of(ph), minlength=n_seg)
            seg_rows += cnt
            seg_steps += cnt > 0
        if bool(b.any()):
            pb, phb = p_all[b], ph[b]
            # several phases of one row may succeed in the same step: the lowest wins (sequential order)
            low = torch.full((r,), n_ph, dtype=torch.int64, device=dev).scatter_reduce(0, pb, phb, "amin")
            win = (phb == low[pb]) & (phb < best[pb])
            best[pb[win]] = phb[win]
            x_adv[pb[win]] = x_eval[b][win].detach()
        failed = done & ~b
        # entries leave when they broke the row, ran out of iterations, or can no longer matter (a lower
        # phase of their row already broke it)
        leave = b | done | (ph > best[p_all])
        # a failed phase hands over to the row's next phase not yet started (sequential order)
        pf = p_all[failed]
        if spec and pf.numel():  # one hand-over per row (without speculation a row has one entry)
            pf = torch.unique(pf)
        pf = pf[next_phase[pf] < torch.clamp(best[pf], max=n_ph)]
        restart = RowState()
        if pf.numel():
            restart = attack.start(ctx, rows[pf], next_phase[pf].clone())
            next_phase[pf] += 1
        st = st.keep(~leave).cat(restart)
    res = AttackResult(rows, best < n_ph, x_adv, steps, phase=best)
    if seg_of is not None:
        res.segment_steps, res.segment_rows = seg_steps.tolist(), seg_rows.tolist()
    return res


def _speculative_starts(attack: Attack, ctx: AttackContext, st: RowState, pos: torch.Tensor, rows: torch.Tensor,
                        best: torch.Tensor, next_phase: torch.Tensor, slots: int) -> RowState:
    """Start up to ``slots`` later phases of rows in flight (breadth-first: each row's next phase first)."""
    if slots <= 0:
        return RowState()
    inflight = torch.unique(pos[st["rows"]])
    avail = torch.clamp(best[inflight], max=attack.n_phases) - next_phase[inflight]
    picks, phases = [], []
    k = 0
    while slots > 0:
        sel = inflight[avail > k][:slots]
        if sel.numel() == 0:
            break
        picks.append(sel)
        phases.append(next_phase[sel] + k)
        slots -= sel.numel()
        k += 1
    if not picks:
        return RowState()
    p = torch.cat(picks)
    ph = torch.cat(phases)
    next_phase.scatter_reduce_(0, p, ph + 1, "amax")  # a row got consecutive phases: the next is above the top
    return attack.start(ctx, rows[p], ph)


# ---------------------------------------------------------------------------------------------------
# Norms, projections and losses (per row)
# ---------------------------------------------------------------------------------------------------


def _view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def lp_norm(d: torch.Tensor, norm: str, keepdim: bool = False) -> torch.Tensor:
    """Per-row ``||d||_inf`` or ``||d||_2`` of ``d`` ``(B, ...)`` (L2 accumulated in float64).

    Returns:
        float ``(B,)`` (or ``(B, 1, ..., 1)`` with ``keepdim``) in the dtype of ``d``.
    """
    flat = d.reshape(d.shape[0], -1)
    if norm == "Linf":
        n = flat.abs().amax(1)
    elif norm == "L2":
        n = flat.double().pow(2).sum(1).sqrt().to(d.dtype)
    else:
        raise ValueError(f"unsupported norm {norm!r}")
    return _view(n, d) if keepdim else n


def normalize(d: torch.Tensor, norm: str) -> torch.Tensor:
    """``d / (||d|| + 1e-12)`` per row (AutoAttack's ``normalize``)."""
    return d / (lp_norm(d, norm, keepdim=True) + 1e-12)


def clip_linf(x: torch.Tensor, x0: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto the Linf ball of radius ``eps`` around ``x0`` intersected with [0, 1]."""
    return torch.clamp(torch.min(torch.max(x, x0 - eps), x0 + eps), 0.0, 1.0)


def project_ball(x: torch.Tensor, x0: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project ``x`` onto the ``norm`` ball of radius ``eps`` around ``x0``, then clip to [0, 1].

    For L2 this is AutoAttack's ``clamp(x0 + normalize(d) * min(eps, ||d||), 0, 1)`` (the clip can only
    shrink the perturbation, so the result stays in the ball).
    """
    if norm == "Linf":
        return clip_linf(x, x0, eps)
    d = x - x0
    n = lp_norm(d, "L2", keepdim=True)
    return torch.clamp(x0 + d / (n + 1e-12) * torch.clamp(n, max=eps), 0.0, 1.0)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio loss (Croce & Hein 2020, eq. 5), per row.

    ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi`` the sorted logits (K >= 3).
    """
    zs, ind = logits.sort(dim=1)
    u = torch.arange(logits.shape[0], device=logits.device)
    top_is_y = (ind[:, -1] == y).to(logits.dtype)
    return -(logits[u, y] - zs[:, -2] * top_is_y - zs[:, -1] * (1.0 - top_is_y)) / (zs[:, -1] - zs[:, -3] + 1e-12)


def dlr_loss_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss (Croce & Hein 2020, eq. 6), per row: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2)``."""
    zs = logits.sort(dim=1)[0]
    u = torch.arange(logits.shape[0], device=logits.device)
    return -(logits[u, y] - logits[u, target]) / (zs[:, -1] - 0.5 * (zs[:, -3] + zs[:, -4]) + 1e-12)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Margin ``z_y - max_{i != y} z_i`` per row (Square's loss; <= 0 means misclassified)."""
    u = torch.arange(logits.shape[0], device=logits.device)
    other = logits.clone()
    other[u, y] = -float("inf")
    return logits[u, y] - other.amax(1)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy."""
    return F.cross_entropy(logits, y, reduction="none")
