"""The error types that mean "bad user input" (the CLI prints them on one line and exits with code 2).

They live here, below every other module, so that the modules that own a name (datasets, threats,
attacks, models) can raise them without importing the config.
"""

from __future__ import annotations

from ctrobust._registry import UnknownNameError

__all__ = ["ConfigError", "UnknownNameError", "InputWarning"]


class InputWarning(UserWarning):
    """Input that is valid but most likely not meant (``--eps 8/256``): the CLI prints it on one line."""


class ConfigError(ValueError):
    """Bad user input (option, YAML key, value): the CLI prints it on one line and exits with code 2."""
