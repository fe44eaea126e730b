"""The early-exit driver: per-row attack state machines run with a working batch kept full.

An attack is a state machine per row (:class:`Attack`: ``start`` a phase, ``step`` it); :func:`run_attack`
keeps up to ``batch_size`` rows in flight, takes out rows the moment they are broken or out of phases, and
refills the freed slots, so no model call is spent on a row whose outcome is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ctrobust import progress
from ctrobust.engines.fast._context import AttackContext

__all__ = ["RowState", "Attack", "AttackResult", "run_attack"]


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


@runtime_checkable
class Attack(Protocol):
    """What :func:`run_attack` needs from an attack (APGD, FAB, Square, a chain of APGD attacks).

    Attributes:
        name: canonical attack name (``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``, ``apgd-dlr``, ``fab``).
        n_phases: restarts x target classes each row may go through (a row stops at its first success).
        n_segments: attacks run as one (a chain, :meth:`APGD.chain`); the driver then counts the work of
            each segment (:meth:`segment_of`).
    """

    name: str = ""
    n_phases: int = 1
    n_segments: int = 1

    def segment_of(self, phase: torch.Tensor) -> torch.Tensor:
        """Index of the segment each phase belongs to (int64, like ``phase``); one segment: zeros."""
        return torch.zeros_like(phase)

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
    #: for a chained attack (``n_segments > 1``): per segment, steps in which it ran and row-steps it took
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
    spec = speculate and n_ph > 1 and caller.fixed_shape
    st = RowState()
    nxt = 0
    steps = 0
    n_seg = int(attack.n_segments)
    seg_of = attack.segment_of if n_seg > 1 else None
    if seg_of is not None:  # per-segment work of a chain (tensors: no host sync per step)
        seg_steps = torch.zeros(n_seg, dtype=torch.int64, device=dev)
        seg_rows = torch.zeros(n_seg, dtype=torch.int64, device=dev)
    budget = progress.attack_budget(attack) if progress.active() else 0
    if budget:  # row-steps per row (progress.py): one per step, the rest of its budget once settled
        used = torch.zeros(r, dtype=torch.int64, device=dev)
        credited, due = 0, progress.Throttle()
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
        if budget:
            used.index_add_(0, p_all, torch.ones_like(p_all))
            if due():
                inflight = torch.zeros(r, dtype=torch.bool, device=dev)
                inflight[pos[st["rows"]]] = True
                started = torch.arange(r, device=dev) < nxt
                settled = (best < n_ph) | (started & (next_phase >= n_ph) & ~inflight)
                now = int(torch.where(settled, budget, used.clamp(max=budget)).sum())
                progress.advance(now - credited)
                credited = max(credited, now)
    if budget:
        progress.advance(r * budget - credited)
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
