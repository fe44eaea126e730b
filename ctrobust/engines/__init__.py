"""Engines behind one interface (``AttackEngine.run``): the attack engines ``reference`` and ``fast``, and
``forward`` (no attack: per-example correctness, for common corruptions).

Each engine has one :class:`EngineSpec` here; what an engine *is* (whether it batches betas, whether its
outcomes depend on the batch size, which constraint sets it can check) is read from its class, so a config
can ask without building an engine or importing the attacks before they are needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ctrobust._registry import did_you_mean
from ctrobust.engines.base import AttackEngine, AttackOutcome

__all__ = ["EngineSpec", "ENGINES", "get_engine", "get_engine_spec", "list_engines", "AttackEngine",
           "AttackOutcome"]


@dataclass(frozen=True)
class EngineSpec:
    """One engine of the registry.

    Attributes:
        name: the registry name (the ``engine`` results column).
        load: returns the engine class (imported on first use).
    """

    name: str
    load: Callable[[], type]

    @property
    def batch_invariant(self) -> bool:
        """Outcomes do not depend on the batch size (else the batch size joins the experiment key)."""
        return bool(self.load().batch_invariant)

    @property
    def batches_betas(self) -> bool:
        """One call carries the rows of all betas of a work item."""
        return bool(self.load().batches_betas)

    @property
    def constraints(self) -> tuple[str, ...]:
        """The constraint sets (``ctrobust.threat.CONSTRAINTS``) the engine can attack in and check."""
        return tuple(self.load().constraints)

    @property
    def measures(self) -> tuple[str, ...]:
        """What the engine's attacks produce: ``"bounded"`` (robust at eps) and/or ``"min-norm"`` (distances)."""
        return tuple(self.load().measures)

    def build(self) -> AttackEngine:
        return self.load()()


def _reference():
    from ctrobust.engines.reference import ReferenceEngine
    return ReferenceEngine


def _fast():
    from ctrobust.engines.fast.engine import FastEngine
    return FastEngine


def _forward():
    from ctrobust.engines.forward import ForwardEngine
    return ForwardEngine


ENGINES: dict[str, EngineSpec] = {s.name: s for s in (EngineSpec("reference", _reference),
                                                       EngineSpec("fast", _fast), EngineSpec("forward", _forward))}


def list_engines() -> list[str]:
    """The attack engines (what ``--engine`` chooses from); ``forward`` is chosen by its measurement."""
    return sorted(n for n, spec in ENGINES.items() if "bounded" in spec.measures)


def get_engine_spec(name: str) -> EngineSpec:
    """The spec of an engine by name ("did you mean" for unknown names)."""
    try:
        return ENGINES[name]
    except KeyError:
        raise did_you_mean("engine", name, ENGINES) from None


def get_engine(name: str) -> AttackEngine:
    """Return a fresh engine by name (``fast`` or ``reference``)."""
    return get_engine_spec(name).build()
