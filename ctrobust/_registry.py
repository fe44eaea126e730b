"""Helpful errors for registries: unknown names get "did you mean ...?" and the list of what exists."""

from __future__ import annotations

import difflib
from typing import Iterable


class UnknownNameError(ValueError):
    """An unknown name was asked of a registry (model, engine, attack, dataset, ...)."""


def did_you_mean(kind: str, name: str, choices: Iterable[str], *, hint: str | None = None,
                 show: int = 12) -> UnknownNameError:
    """Build the error for an unknown ``name`` of the given ``kind``.

    Args:
        kind: what is being looked up, e.g. ``"model"``.
        name: the name the user gave.
        choices: the names that exist.
        hint: where to see the full list (e.g. ``"run `ctrobust models`"``).
        show: how many existing names to list when there are many.

    Returns:
        An ``UnknownNameError`` (raise it): ``unknown model 'Standrad' — did you mean 'Standard'?``
    """
    choices = sorted(set(choices))
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    if not close and name.lower() in lowered:
        close = [lowered[name.lower()]]
    if not close:
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)]
    msg = f"unknown {kind} {name!r}"
    if close:
        msg += " — did you mean " + " or ".join(repr(c) for c in close) + "?"
    if len(choices) <= show:
        msg += f" Known: {', '.join(choices)}."
    else:
        msg += f" ({len(choices)} known, e.g. {', '.join(choices[:show])}, ...)"
    if hint:
        msg += f" {hint}"
    return UnknownNameError(msg)
