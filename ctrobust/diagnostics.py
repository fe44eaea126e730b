"""Gradient-masking diagnostics for CT models.

A smoothed network can look robust because its gradients stop guiding the attack (gradient masking,
Athalye et al. 2018, "Obfuscated gradients give a false sense of security"), not because it is robust.
This module records, per example, the signals that point to it; :func:`masking_flags` turns the stored
per-example outcomes into per-beta red flags.

Per-example signals (computed by the sweep for each work unit, stored as outcome columns):

- ``grad_zero`` / ``grad_nonfinite`` (:func:`gradient_health`): the input gradient of the cross-entropy
  loss is all zero (or below 1e-20 in max-abs) / contains NaN or inf. AutoAttack's own
  ``checks.check_zero_gradients`` warns on any exactly-zero gradient.
- ``transfer_broken`` (:func:`transfer_flags`): the adversarial example found against the unmodified
  (beta = 1) model also fools the CT model. A point that survives the CT model's own white-box attack but
  falls to a *transferred* one means the white-box attack on the CT model is weaker than a black-box one.

Per-beta flags (:func:`masking_flags`) also use ``broken_by``: AutoAttack runs its attacks in order on the
points still robust and records the first attack that succeeds, so ``broken_by == "square"`` means the
gradient-based attacks before Square (gradient-free) all failed on that point — AutoAttack's
``checks.check_square_sr`` warning sign.

All functions take ``x`` as float ``(N, C, H, W)`` images in [0, 1] (normalization inside the model) and
``y`` as int64 ``(N,)``, and return numpy arrays of length ``N``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctrobust.attacks import ATTACKS, SUITES, gradient_attacks

__all__ = [
    "GRAD_ZERO_TOL",
    "GRADIENT_ATTACKS",
    "STANDARD_ORDER",
    "gradient_health",
    "transfer_flags",
    "masking_flags",
]

#: max-abs input gradient at or below which a gradient counts as zero.
GRAD_ZERO_TOL = 1e-20

#: attacks that follow the gradient (derived from the registry, :func:`ctrobust.attacks.gradient_attacks`).
GRADIENT_ATTACKS = gradient_attacks()

#: order in which AutoAttack "standard" runs its attacks (the registry's ``standard`` suite).
STANDARD_ORDER = SUITES["standard"].attacks


class _EvalMode:
    """Context manager: put every submodule in eval mode, restore each module's own flag on exit."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self._modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc) -> None:
        for m, mode in self._modes:
            m.training = mode


def _batches(n: int, batch_size: int | None):
    step = n if not batch_size or batch_size <= 0 else int(batch_size)
    for start in range(0, n, max(step, 1)):
        yield slice(start, min(start + step, n))


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return fallback


def _check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    if not torch.is_tensor(x) or not torch.is_floating_point(x):
        raise TypeError("x must be a float tensor (N, C, H, W) in [0, 1]")
    if x.dim() < 2:
        raise ValueError(f"x must be batched (N, ...), got shape {tuple(x.shape)}")
    if not torch.is_tensor(y) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be a 1-D tensor of length {x.shape[0]}")


def gradient_health(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                    batch_size: int | None = None, zero_tol: float = GRAD_ZERO_TOL) -> dict:
    """Per-example health of the input gradient of the cross-entropy loss.

    The gradient of ``sum_i CE(model(x)_i, y_i)`` with respect to ``x`` is taken in eval mode; in eval
    mode examples do not interact, so row ``i`` is the gradient of example ``i``'s own loss, whatever the
    batch size. The model's (and every submodule's) train/eval flag is restored afterwards; parameter
    ``.grad`` fields are not touched.

    Args:
        model: classifier taking [0, 1] images and returning logits ``(N, K)`` (e.g. a ``CTModel``).
        x: ``(N, C, H, W)`` float images in [0, 1].
        y: ``(N,)`` int64 labels.
        batch_size: examples per forward/backward; ``None`` (default) uses one pass over all ``N`` — keep
            that when the model holds a per-example beta tensor (``set_beta`` with ``len == N``).
        zero_tol: a gradient whose max-abs is ``<= zero_tol`` counts as zero.

    Returns:
        ``{"grad_zero": bool (N,), "grad_nonfinite": bool (N,)}``. A non-finite gradient is never
        reported as zero.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> h = gradient_health(net, torch.rand(2, 3, 2, 2), torch.tensor([0, 1]))
        >>> h["grad_zero"].tolist(), h["grad_nonfinite"].tolist()
        ([False, False], [False, False])
    """
    _check_inputs(x, y)
    n = x.shape[0]
    zero = np.zeros(n, dtype=bool)
    nonfinite = np.zeros(n, dtype=bool)
    device = _model_device(model, x.device)
    with _EvalMode(model), torch.enable_grad():
        for sl in _batches(n, batch_size):
            xb = x[sl].detach().to(device).clone().requires_grad_(True)
            yb = y[sl].to(device)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, reduction="sum")
            (grad,) = torch.autograd.grad(loss, xb, allow_unused=True)
            if grad is None:  # the output does not depend on the input at all
                grad = torch.zeros_like(xb)
            flat = grad.detach().reshape(grad.shape[0], -1)
            bad = ~torch.isfinite(flat).all(dim=1)
            maxabs = torch.nan_to_num(flat.abs(), nan=0.0, posinf=0.0).amax(dim=1) \
                if flat.shape[1] else torch.zeros(flat.shape[0], device=flat.device)
            nonfinite[sl] = bad.cpu().numpy()
            zero[sl] = ((maxabs <= zero_tol) & ~bad).cpu().numpy()
    return {"grad_zero": zero, "grad_nonfinite": nonfinite}


@torch.no_grad()
def transfer_flags(model: nn.Module, x_clean: torch.Tensor, x_adv_base: torch.Tensor,
                   y: torch.Tensor, *, batch_size: int | None = None) -> np.ndarray:
    """Whether the beta = 1 adversarial examples fool ``model`` (transfer attack).

    ``x_adv_base`` is the attack output for the unmodified (beta = 1) model on the same examples and
    seed: adversarial where that attack succeeded, the clean image otherwise (the engine contract), so on
    rows the base attack did not break this reduces to clean misclassification by ``model``.

    Args:
        model: the CT model at some beta (logits ``(N, K)`` from [0, 1] images).
        x_clean: ``(N, C, H, W)`` clean images, used to check shapes and the [0, 1] range.
        x_adv_base: ``(N, C, H, W)`` beta = 1 adversarial images of the same examples, same order.
        y: ``(N,)`` int64 labels.
        batch_size: examples per forward; ``None`` = one pass (needed for per-example beta tensors).

    Returns:
        ``(N,)`` bool, True where ``model`` misclassifies ``x_adv_base``.
    """
    _check_inputs(x_adv_base, y)
    if tuple(x_clean.shape) != tuple(x_adv_base.shape):
        raise ValueError(f"x_clean {tuple(x_clean.shape)} and x_adv_base {tuple(x_adv_base.shape)} differ in shape")
    if x_adv_base.numel() and (float(x_adv_base.min()) < 0.0 or float(x_adv_base.max()) > 1.0):
        raise ValueError("x_adv_base must lie in [0, 1] (pixel space; normalization belongs in the model)")
    n = x_adv_base.shape[0]
    out = np.zeros(n, dtype=bool)
    device = _model_device(model, x_adv_base.device)
    with _EvalMode(model):
        for sl in _batches(n, batch_size):
            pred = model(x_adv_base[sl].to(device)).argmax(dim=1)
            out[sl] = (pred != y[sl].to(device)).cpu().numpy()
    return out


def masking_flags(outcomes: Mapping[str, np.ndarray], *, attacks: Sequence[str] | None = None,
                  max_square_only: int = 0, max_grad_zero_frac: float = 0.0,
                  max_grad_nonfinite_frac: float = 0.0, max_transfer_only: int = 0) -> dict:
    """Per-beta gradient-masking red flags from stored per-example outcomes.

    Counts pool every row of a beta (all seeds). For each beta:

    - ``square_only``: rows with ``broken_by == "square"`` — broken by the gradient-free Square attack
      after the gradient attacks (:data:`GRADIENT_ATTACKS`) run before it missed them.
      ``None`` when ``attacks`` is given and no gradient attack precedes ``square`` (then the count means
      nothing).
    - ``grad_zero_frac`` / ``grad_nonfinite_frac``: fraction of clean-correct rows (the points the attack
      has to work on) whose input gradient is zero / non-finite; over all rows if ``clean_correct`` is
      missing. ``None`` if the column was not recorded.
    - ``transfer_only``: rows robust under this beta's own white-box attack (``robust``) yet broken by
      the transferred beta = 1 adversarial (``transfer_broken``).
    - ``masking_suspected``: any of the above above its threshold; ``reasons`` says which.

    Args:
        outcomes: columns as returned by ``ctrobust.store.load_outcomes``: ``beta`` (required),
            ``robust``, ``broken_by``, ``clean_correct``, ``grad_zero``, ``grad_nonfinite``,
            ``transfer_broken`` (each optional; a missing one gives ``None`` for its signal).
        attacks: attack order of the run (canonical names); default AutoAttack standard order.
        max_square_only: flag when ``square_only`` exceeds this (0: any; AutoAttack's own check tolerates
            0.2 % of points).
        max_grad_zero_frac: flag when ``grad_zero_frac`` exceeds this (0: any, as AutoAttack).
        max_grad_nonfinite_frac: flag when ``grad_nonfinite_frac`` exceeds this.
        max_transfer_only: flag when ``transfer_only`` exceeds this.

    Returns:
        ``{beta: {"n", "square_only", "square_only_flag", "grad_zero_frac", "grad_nonfinite_frac",
        "transfer_only", "masking_suspected", "reasons"}}`` with betas rounded to 6 decimals, ascending.
    """
    if "beta" not in outcomes:
        raise KeyError("outcomes need a 'beta' column")
    betas = np.round(np.asarray(outcomes["beta"], dtype=np.float64), 6)
    n_rows = betas.shape[0]

    def col(name, dtype=None):
        if name not in outcomes:
            return None
        arr = np.asarray(outcomes[name])
        if arr.shape[0] != n_rows:
            raise ValueError(f"column {name!r} has {arr.shape[0]} rows, 'beta' has {n_rows}")
        return arr.astype(dtype) if dtype is not None else arr

    broken_by = col("broken_by")
    broken_by = None if broken_by is None else np.asarray([str(b) for b in broken_by])
    robust = col("robust", bool)
    clean = col("clean_correct", bool)
    gzero = col("grad_zero", bool)
    gnonf = col("grad_nonfinite", bool)
    tbroken = col("transfer_broken", bool)

    order = list(attacks) if attacks is not None else list(STANDARD_ORDER)
    # gradient-free attacks (Square) that run after a gradient attack: a point only they break was missed by
    # the gradients; one that runs first says nothing about the gradients
    free = [a for a in order if a in ATTACKS and not ATTACKS[a].gradient]
    after_gradient = [a for a in free if any(b in GRADIENT_ATTACKS for b in order[:order.index(a)])]
    square_meaningful = bool(after_gradient) or not free

    result: dict = {}
    for b in np.unique(betas):
        rows = betas == b
        n = int(rows.sum())
        entry: dict = {"n": n}
        reasons: list[str] = []

        if broken_by is None or not square_meaningful:
            entry["square_only"] = None
        else:
            entry["square_only"] = int(np.isin(broken_by[rows], after_gradient).sum())
        entry["square_only_flag"] = entry["square_only"] is not None and entry["square_only"] > max_square_only
        if entry["square_only_flag"]:
            reasons.append(f"{entry['square_only']} point(s) broken only by Square (gradient-free) after the "
                           "gradient attacks missed them")

        denom_rows = rows & clean if clean is not None else rows
        denom = int(denom_rows.sum())
        for name, arr, limit, what in (("grad_zero_frac", gzero, max_grad_zero_frac, "zero"),
                                       ("grad_nonfinite_frac", gnonf, max_grad_nonfinite_frac, "non-finite")):
            if arr is None:
                entry[name] = None
                continue
            frac = float(np.sum(arr[denom_rows]) / denom) if denom else 0.0
            entry[name] = frac
            if frac > limit:
                reasons.append(f"{frac:.1%} of clean-correct points have a {what} input gradient")

        if robust is None or tbroken is None:
            entry["transfer_only"] = None
        else:
            entry["transfer_only"] = int(np.sum(robust[rows] & tbroken[rows]))
            if entry["transfer_only"] > max_transfer_only:
                reasons.append(f"{entry['transfer_only']} point(s) survive this beta's white-box attack but "
                               "fall to the transferred beta = 1 adversarial")
        entry["masking_suspected"] = bool(reasons)
        entry["reasons"] = reasons
        result[float(b)] = entry
    return result
