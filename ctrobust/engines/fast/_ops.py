"""Per-row norms, projections and losses of the fast attacks (all reductions per row)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["lp_norm", "normalize", "clip_linf", "project_ball", "dlr_loss", "dlr_loss_targeted", "margin",
           "ce_loss"]


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
