"""The attack-engine interface shared by the reference (pyautoattack) and fast engines.

An engine attacks *rows*: each row is one example evaluated at one CT beta. Rows of several betas may be
passed together; an engine either batches them (fast) or groups them by beta (reference).
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

__all__ = ["AttackOutcome", "AttackEngine", "capture_warnings", "is_oom"]


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
    """

    clean_correct: np.ndarray
    robust: np.ndarray
    broken_by: np.ndarray
    x_adv: torch.Tensor
    forward_passes: int = 0
    backward_passes: int = 0
    batch_size: int = 0
    warnings: list = field(default_factory=list)

    def subset(self, mask: np.ndarray) -> "AttackOutcome":
        """Rows selected by a boolean or index array (counters are kept for the whole call)."""
        idx = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.asarray(mask)
        return AttackOutcome(self.clean_correct[idx], self.robust[idx], self.broken_by[idx],
                             self.x_adv[torch.as_tensor(idx, dtype=torch.long)], self.forward_passes,
                             self.backward_passes, self.batch_size, list(self.warnings))


class AttackEngine(Protocol):
    """What the sweep needs from an engine."""

    name: str

    def run(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, ids: torch.Tensor,
            betas: torch.Tensor, seed: int, threat: str, eps: float, attacks: list, batch_size,
            device: torch.device) -> AttackOutcome:
        """Attack rows ``x`` (N, C, H, W) in [0, 1] with labels ``y`` (N,), example ids ``ids`` (N,) and
        per-row CT betas ``betas`` (N,) on ``model`` (a ``CTModel``); ``batch_size`` is an int or "auto"."""
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
