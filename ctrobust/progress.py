"""Progress in rows of work, not units: what a progress bar counts while one engine call carries every beta.

A work item's engine call attacks ``rows x betas`` rows; each row has a budget of *row-steps*: one clean
pass plus, per attack, its phases (restarts, target classes) times its steps per phase (``n_iter``, Square's
``n_queries``) -- :func:`row_budget`. The attack driver credits a row one row-step per step it takes, and the
whole rest of its budget the moment its outcome is settled (broken, or out of phases), so the count moves
every step and reaches the budget exactly when the call ends. The runner installs a sink for the call
(:func:`reporting`) and hands the credit to the bar, whose ETA is then the work left at the rate so far.

Nothing here imports the rest of the package: the driver, the engines and the runner all report through it.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable

__all__ = ["reporting", "advance", "active", "attack_budget", "row_budget", "INTERVAL"]

#: seconds between two reports of the driver (each report reads the row state: a device sync on a GPU)
INTERVAL = 0.1

_sinks: list[Callable[[int], None]] = []


@contextmanager
def reporting(sink: Callable[[int], None]):
    """Send the row-steps credited inside the block to ``sink(n)``."""
    _sinks.append(sink)
    try:
        yield
    finally:
        _sinks.pop()


def active() -> bool:
    """True if someone listens (the driver skips its bookkeeping otherwise)."""
    return bool(_sinks)


def advance(n: int) -> None:
    """Credit ``n`` row-steps of work to the current sink (none: nothing)."""
    if _sinks and n > 0:
        _sinks[-1](int(n))


def attack_budget(attack) -> int:
    """Row-steps one row may take in ``attack`` (an engine's attack object): phases x steps per phase."""
    steps = getattr(attack, "n_iter", None) or getattr(attack, "n_queries", None) or 1
    return int(getattr(attack, "n_phases", 1)) * int(steps)


def row_budget(suite, n_classes: int = 10) -> int:
    """Row-steps of one row in a whole call with ``suite`` (an ``AttackSuite``): the clean pass plus each attack's
    phases x steps per phase."""
    total = 1
    targets = max(1, min(int(suite.n_target_classes), n_classes - 1))
    for name in suite.attacks:
        steps = int(suite.n_queries) if name == "square" else int(suite.n_iter)
        phases = targets if name in ("apgd-t", "fab-t") else int(suite.n_restarts)
        total += phases * steps
    return total


class Throttle:
    """True at most every :data:`INTERVAL` seconds (the first call included)."""

    def __init__(self):
        self.last = -1e9

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.last >= INTERVAL:
            self.last = now
            return True
        return False
