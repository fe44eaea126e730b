"""The one place where ctrobust adapts third-party packages to each other.

robustbench 1.1.1 (the last release on PyPI) does ``from autoattack import AutoAttack`` and
``from autoattack.state import EvaluationState`` at import time, but PyPI has no package providing a
module named ``autoattack``: AutoAttack is published there as ``pyautoattack``. robustbench's loaders
also ``import pkg_resources``, which setuptools removed in version 81 (pinned ``setuptools<81`` in
pyproject.toml). We alias ``autoattack`` (and its submodules) to ``pyautoattack`` so robustbench's model
zoo and data loaders import. robustbench's ``benchmark()`` still cannot drive pyautoattack 0.2.0 (keyword-only
API, different return values): ctrobust never calls it and runs attacks through ``ctrobust.engines``.
"""

from __future__ import annotations

import importlib
import sys
import warnings

_SUBMODULES = ("autoattack", "autopgd_base", "checks", "fab_base", "fab_projections", "fab_pt",
               "other_utils", "square", "state")

_installed = False


def install() -> None:
    """Register ``autoattack`` -> ``pyautoattack`` aliases in ``sys.modules`` (idempotent).

    A real ``autoattack`` package, if one is installed, is left alone.
    """
    global _installed
    if _installed:
        return
    _installed = True
    try:
        importlib.import_module("autoattack")
        return  # a real autoattack (e.g. the GitHub package) is installed: do not shadow it
    except ImportError:
        pass
    import pyautoattack

    sys.modules["autoattack"] = pyautoattack
    for sub in _SUBMODULES:
        try:
            sys.modules[f"autoattack.{sub}"] = importlib.import_module(f"pyautoattack.{sub}")
        except ImportError:  # pragma: no cover - depends on the installed pyautoattack
            pass


def import_robustbench():
    """Import robustbench with the shim installed; raise a clear error naming the fix if that fails.

    Returns:
        The ``robustbench`` module.
    """
    install()
    with warnings.catch_warnings():
        # pkg_resources announces its own deprecation on import; not actionable for our users.
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        try:
            import pkg_resources  # noqa: F401  (robustbench.loaders needs it)
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "robustbench 1.1.1 needs pkg_resources, removed in setuptools 81: "
                "run `pip install 'setuptools<81'`") from exc
        import robustbench
        import robustbench.utils  # noqa: F401
        import robustbench.data  # noqa: F401
    return robustbench
