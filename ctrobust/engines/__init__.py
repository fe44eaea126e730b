"""Attack engines behind one interface (``AttackEngine.run``): ``reference`` and ``fast``."""

from __future__ import annotations

from ctrobust._registry import did_you_mean
from ctrobust.engines.base import AttackEngine, AttackOutcome

__all__ = ["get_engine", "list_engines", "AttackEngine", "AttackOutcome"]


def _reference():
    from ctrobust.engines.reference import ReferenceEngine
    return ReferenceEngine()


def _fast():
    from ctrobust.engines.fast.engine import FastEngine
    return FastEngine()


_ENGINES = {"reference": _reference, "fast": _fast}


def list_engines() -> list[str]:
    return sorted(_ENGINES)


def get_engine(name: str) -> AttackEngine:
    """Return a fresh engine by name (``fast`` or ``reference``)."""
    try:
        return _ENGINES[name]()
    except KeyError:
        raise did_you_mean("engine", name, _ENGINES) from None
