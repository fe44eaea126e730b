"""Small helpers shared by the report modules (beta keys, name matching, units)."""

from __future__ import annotations

import numpy as np


def bkey(beta) -> float:
    """A beta as the pivot keys it (``np.round`` to 6 decimals, as ``ctrobust.diagnostics.masking_flags``)."""
    return float(np.round(float(beta), 6))


def norm_name(s) -> str:
    """Lower-case alphanumerics only, so ``CIFAR-10`` matches ``cifar10``."""
    return "".join(ch for ch in str(s).lower() if ch.isalnum())


def attack_list(attacks) -> list[str] | None:
    """Canonical attack names of an attack option (suite name or list) as written, or None."""
    if attacks is None:
        return None
    from ctrobust.attacks import suite_attack_names
    return suite_attack_names(attacks if isinstance(attacks, str) else ",".join(str(a) for a in attacks))


def pct(x):
    """Fraction -> percent (scalars as float, arrays as float64 arrays)."""
    if isinstance(x, np.ndarray):
        return x.astype(np.float64) * 100.0
    return float(x) * 100.0


def opt_float(x) -> float | None:
    return None if x is None else float(x)


def freeze(value):
    """Lists (e.g. from YAML or JSON) to tuples, recursively: frozen dataclasses hold no lists."""
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value
