"""Robustness curves: robust accuracy at every eps, derived from per-example minimal perturbations.

A minimum-norm attack gives each example an upper bound on its minimal adversarial perturbation (its
*distance*, in the threat's norm, [0, 1] pixel units): ``0`` for an example misclassified without attack,
``inf`` for one no attack broke, NaN where no minimum-norm attack ran. Robust accuracy at any eps then follows
from one run: an example is robust at eps when its distance exceeds eps. :func:`robust_at` is that rule, the
one place results, reports and figures derive "robust at eps" from a distance.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

__all__ = ["robust_at", "default_curve_eps", "parse_curve_eps", "has_distances"]


def robust_at(distance, eps: float) -> np.ndarray:
    """Robust at ``eps``: the example's minimal perturbation found exceeds ``eps``.

    Args:
        distance: ``(N,)`` distances (float; ``0`` misclassified clean, ``inf`` never broken).
        eps: the budget in the same norm and units.

    Returns:
        bool ``(N,)``. An ``inf`` distance is robust at every eps, a ``0`` distance at none; NaN (not
        measured) is not robust.
    """
    d = np.asarray(distance, dtype=np.float64)
    return d > float(eps)


def has_distances(outcomes) -> bool:
    """True if ``outcomes`` (``store.load_outcomes``) hold minimum-norm distances (a ``min-norm`` run)."""
    d = outcomes.get("min_norm") if hasattr(outcomes, "get") else None
    return d is not None and len(d) > 0 and bool(np.any(~np.isnan(np.asarray(d, dtype=np.float64))))


#: the default curve grid per threat: 0 to 16/255 in steps of 1/255 (Linf), 0 to 1.5 in steps of 0.1 (L2).
_DEFAULT_GRIDS = {"Linf": (Fraction(0), Fraction(16, 255), Fraction(1, 255)),
                  "L2": (Fraction(0), Fraction(3, 2), Fraction(1, 10))}


def _grid(start: Fraction, stop: Fraction, step: Fraction) -> list[float]:
    n = int((stop - start) / step + Fraction(1, 10 ** 6))
    return [float(start + i * step) for i in range(n + 1)]


def default_curve_eps(threat: str) -> list[float]:
    """The eps grid of ``curves.csv`` when ``--curve-eps`` is not given (see :data:`_DEFAULT_GRIDS`)."""
    return _grid(*_DEFAULT_GRIDS[threat])


def _fraction(tok: str) -> Fraction:
    tok = tok.strip()
    if "/" in tok:
        num, den = tok.split("/", 1)
        return Fraction(num.strip()) / Fraction(den.strip())
    return Fraction(tok)


def parse_curve_eps(spec, threat: str) -> list[float]:
    """Parse ``--curve-eps``: ``start:stop:step`` (fractions allowed, stop included: ``0:16/255:1/255``) or a
    list (``0,1/255,2/255``); None gives :func:`default_curve_eps`. Returns sorted unique eps >= 0.

    Raises:
        ValueError: junk, a negative eps, or a bad range.
    """
    if spec is None:
        return default_curve_eps(threat)
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    toks = [t for item in items for t in str(item).replace(",", " ").split()]
    try:
        if len(toks) == 1 and ":" in toks[0]:
            parts = toks[0].split(":")
            if len(parts) != 3:
                raise ValueError
            start, stop, step = (_fraction(p) for p in parts)
            if step <= 0 or stop < start:
                raise ValueError
            values = _grid(start, stop, step)
        else:
            values = [float(_fraction(t)) for t in toks]
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"bad curve eps {spec!r}: give start:stop:step (e.g. 0:16/255:1/255) or a list "
                         "(e.g. 0,4/255,8/255)") from None
    if not values or any(not np.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"bad curve eps {spec!r}: every eps must be a finite number >= 0")
    return sorted(set(values))
