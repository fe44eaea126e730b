"""The attack-engine interface shared by the reference (pyautoattack) and fast engines.

An engine attacks *rows*: each row is one example evaluated at one CT beta. Rows of several betas may be
passed together; an engine either batches them (fast) or groups them by beta (reference).
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from ctrobust.attacks import AttackSuite

__all__ = ["AttackOutcome", "AttackEngine", "PeakMemory", "PassCounter", "capture_warnings", "is_oom",
           "largest_fitting_batch", "restoring_model_state"]


@dataclass
class AttackOutcome:
    """Per-row result of an attack run (all arrays have one entry per row, length N).

    Attributes:
        clean_correct: bool (N,), the model classifies the clean image correctly.
        robust: bool (N,), no attack found a misclassified point in the ball (implies clean_correct).
        broken_by: str (N,), ``""`` if robust, ``"clean"`` if misclassified without attack, else the name
            of the first attack (in run order) that broke it.
        x_adv: float tensor (N, C, H, W) on CPU in [0, 1]: the adversarial image where broken, the clean
            image otherwise; always inside the threat ball (checked with ``threat.check_ball``).
        forward_passes: example-forwards spent (one image through the model once = 1).
        backward_passes: example-backwards spent.
        batch_size: the largest batch actually used (after any out-of-memory back-off).
        warnings: AutoAttack-style check warnings raised while attacking.
        row_forward_passes: int64 (N,) example-forwards spent on each row, or None when the engine does
            not count per row (then ``forward_passes`` is the call's total).
        row_backward_passes: int64 (N,) example-backwards spent on each row, or None.
        peak_mem_mb: the accelerator's peak memory during the call (MiB, measured by the engine), or None
            off CUDA.
        min_norm: float32 (N,) for a suite with minimum-norm attacks, else None: each row's smallest verified
            adversarial perturbation in the threat's norm ([0, 1] pixel units): 0 misclassified clean, ``inf``
            none found (see :mod:`ctrobust.curves`).
        min_norm_by: str (N,) the minimum-norm attack that found it (``"clean"``, ``""`` none), or None.
        x_min_norm: float tensor (N, C, H, W) on CPU: the point of that distance (clean image where none), or
            None.
        accounting: how the engine counted its passes: ``"row"`` (``row_forward_passes`` /
            ``row_backward_passes`` hold each row's own passes) or ``"call"`` (only the call's totals; such an
            engine attacks one beta per call, so the totals are that beta's).
    """

    clean_correct: np.ndarray
    robust: np.ndarray
    broken_by: np.ndarray
    x_adv: torch.Tensor
    forward_passes: int = 0
    backward_passes: int = 0
    batch_size: int = 0
    warnings: list = field(default_factory=list)
    row_forward_passes: np.ndarray | None = None
    row_backward_passes: np.ndarray | None = None
    peak_mem_mb: float | None = None
    accounting: str = "call"
    min_norm: np.ndarray | None = None
    min_norm_by: np.ndarray | None = None
    x_min_norm: torch.Tensor | None = None

    def __post_init__(self):
        if self.accounting not in ("row", "call"):
            raise ValueError(f"accounting must be 'row' or 'call', got {self.accounting!r}")
        if self.accounting == "row" and (self.row_forward_passes is None or self.row_backward_passes is None):
            raise ValueError("accounting 'row' needs row_forward_passes and row_backward_passes")

    def subset(self, mask: np.ndarray) -> "AttackOutcome":
        """Rows selected by a boolean or index array (counters are kept for the whole call)."""
        idx = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.asarray(mask)
        return AttackOutcome(self.clean_correct[idx], self.robust[idx], self.broken_by[idx],
                             self.x_adv[torch.as_tensor(idx, dtype=torch.long)], self.forward_passes,
                             self.backward_passes, self.batch_size, list(self.warnings),
                             None if self.row_forward_passes is None else self.row_forward_passes[idx],
                             None if self.row_backward_passes is None else self.row_backward_passes[idx],
                             self.peak_mem_mb, self.accounting,
                             None if self.min_norm is None else self.min_norm[idx],
                             None if self.min_norm_by is None else self.min_norm_by[idx],
                             None if self.x_min_norm is None else self.x_min_norm[torch.as_tensor(idx, dtype=torch.long)])


class AttackEngine(Protocol):
    """What the sweep needs from an engine.

    Attributes:
        name: the engine's registry name (a results column).
        batches_betas: True if one call should carry the rows of all betas of a work item (the engine
            attacks them together); False if the caller should make one call per beta.
        batch_invariant: True if outcomes do not depend on the batch size; False puts the batch size into
            the experiment key.
    """

    name: str
    batches_betas: bool
    batch_invariant: bool

    def run(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, ids: torch.Tensor,
            betas: torch.Tensor, seed: int, threat: str, eps: float, suite: "AttackSuite", batch_size,
            device: torch.device, constraint: str = "ball") -> AttackOutcome:
        """Attack rows ``x`` (N, C, H, W) in [0, 1] with labels ``y`` (N,), example ids ``ids`` (N,) and
        per-row CT betas ``betas`` (N,) on ``model`` (a ``CTModel``) with the attacks and hyper-parameters
        of ``suite`` (a :class:`ctrobust.attacks.AttackSuite`); ``batch_size`` is an int or "auto";
        ``constraint`` names the set every result is checked against (``ctrobust.threat.CONSTRAINTS``).
        The model's train/eval flags and CT beta are as before when the call returns."""
        ...


class _ListHandler(logging.Handler):
    def __init__(self, sink: list):
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record):
        self.sink.append(record.getMessage())


@contextmanager
def capture_warnings(sink: list, logger_name: str = "auto-attack"):
    """Collect AutoAttack check warnings (its logger at WARNING and ``warnings.warn``) into ``sink``."""
    logger = logging.getLogger(logger_name)
    handler = _ListHandler(sink)
    logger.addHandler(handler)
    old_propagate = logger.propagate
    logger.propagate = False  # its DEBUG/INFO chatter should not reach the user's root handlers
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield sink
        for w in caught:
            msg = str(w.message)
            if "check" in msg.lower() or "robust" in msg.lower() or "gradient" in msg.lower() or \
                    "randomized" in msg.lower() or "logits" in msg.lower() or "square" in msg.lower():
                sink.append(msg)
    finally:
        logger.removeHandler(handler)
        logger.propagate = old_propagate


def is_oom(exc: BaseException) -> bool:
    """True for CUDA/MPS out-of-memory errors (the ones worth retrying with a smaller batch)."""
    if isinstance(exc, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def largest_fitting_batch(step, sizes, *, total_bytes: int, peak_bytes, reset_peak=None, headroom: float = 0.8,
                          empty_cache=None) -> int:
    """The largest batch in ``sizes`` whose attack step fits in accelerator memory with room to spare.

    ``step(n)`` runs one model forward + input gradient on ``n`` rows. Sizes are tried in ascending order
    and the probe stops at the first one that raises out-of-memory or whose peak memory exceeds
    ``headroom * total_bytes`` (the attack's own state and the model's activations at other batch shapes
    need the rest). The answer depends only on the model, the input shape and the device's memory, never
    on the data, so a given GPU always gets the same block (and so the same numerics).

    Args:
        step: callable ``n -> None``.
        sizes: candidate batch sizes (ints > 0), e.g. powers of two from 256.
        total_bytes: the device's memory.
        peak_bytes: callable ``() -> int``, peak memory allocated since ``reset_peak()``.
        reset_peak: callable resetting the peak counter (optional).
        headroom: fraction of ``total_bytes`` one step may use.
        empty_cache: callable freeing cached blocks after an out-of-memory error (optional).

    Returns:
        The largest fitting size; the smallest candidate if none fits (the run's out-of-memory back-off
        then takes over).
    """
    sizes = sorted({int(n) for n in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sizes must be positive ints, got {sizes}")
    best = sizes[0]
    for n in sizes:
        if reset_peak is not None:
            reset_peak()
        try:
            step(n)
        except RuntimeError as exc:
            if not is_oom(exc):
                raise
            if empty_cache is not None:
                empty_cache()
            break
        if peak_bytes() > headroom * total_bytes:
            break
        best = n
    return best


@contextmanager
def restoring_model_state(model: torch.nn.Module, *, requires_grad: bool = False):
    """Give the model back as it was: every module's train/eval flag, the CT beta (if it has CT) and, with
    ``requires_grad``, every parameter's ``requires_grad``.

    Engines set per-row or per-group betas while attacking; those must not outlive the call (a later
    forward with another batch size would fail, one with the same size would silently run at them).
    """
    from ctrobust.ct import get_beta, set_beta

    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()] if requires_grad else []
    try:
        beta = get_beta(model).detach().clone()
    except ValueError:  # no CT activation
        beta = None
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, rg in grads:
            p.requires_grad_(rg)
        if beta is not None:
            set_beta(model, beta, validate=False)


class PeakMemory:
    """Context manager: the accelerator's peak memory allocated inside the block, in MiB (``mb``).

    ``mb`` stays None off CUDA (CPU memory is the process's, measured from outside).
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self.mb: float | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2 ** 20


class PassCounter(torch.nn.Module):
    """Wraps a model and counts what it computes: example-forwards and example-backwards.

    Every forward adds its batch size to ``forward_passes``; every backward sweep through an output that
    requires grad adds the batch size to ``backward_passes`` (a hook on the output's gradient), which is how
    the fast engine counts (one image through the model once = 1). Outputs and gradients are the wrapped
    model's, unchanged.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.forward_passes = 0
        self.backward_passes = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        n = int(x.shape[0])
        self.forward_passes += n
        if out.requires_grad:
            out.register_hook(self._count_backward(n))
        return out

    def _count_backward(self, n: int):
        def hook(grad):
            self.backward_passes += n
        return hook
