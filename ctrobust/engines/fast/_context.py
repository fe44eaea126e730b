"""What an attack sees of one engine call: the rows, the model caller, and gradients per row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ctrobust.engines.fast._caller import ModelCaller

__all__ = ["AttackContext"]


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
