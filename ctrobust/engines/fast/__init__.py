"""The ``fast`` engine: AutoAttack's attacks (APGD-CE, APGD-T, FAB-T, Square; plus APGD-DLR and FAB)
reimplemented with early exit, beta-batching and batch-invariant, counter-based randomness.

Modules: :mod:`.engine` (``FastEngine``), :mod:`.apgd`, :mod:`.fab`, :mod:`.square` (the attacks, each a
per-row state machine), :mod:`.rng` (counter-based random numbers), :mod:`._caller` (the model caller: per-row
beta, fixed-shape blocks, counts), :mod:`._context` (what an attack sees of a call), :mod:`._driver` (the
early-exit driver and the :class:`~._driver.Attack` interface), :mod:`._ops` (per-row norms and losses).
"""

from ctrobust.engines.fast.apgd import APGD
from ctrobust.engines.fast.engine import FastEngine
from ctrobust.engines.fast.fab import FAB
from ctrobust.engines.fast.square import Square

__all__ = ["FastEngine", "APGD", "FAB", "Square"]
