"""Family of your own models: ``py:package.module:factory``, ``path/to/file.py:factory``, and modules passed in.

A **factory** is a callable taking no arguments and returning an ``nn.Module`` that takes float images
``(B, C, H, W)`` in [0, 1] and returns logits ``(B, K)`` (``K`` = the dataset's classes). A network trained on
normalized inputs declares its normalization by returning ``ctrobust.models.Normalized(net, mean, std)``;
ctrobust then attacks in [0, 1] pixel space and later tools find ``model.inner``, ``model.mean``, ``model.std``.

- ``py:package.module:factory`` imports ``package.module`` from ``sys.path`` (installed packages,
  ``PYTHONPATH``) and calls ``factory()``;
- ``path/to/file.py:factory`` runs that file (relative to the current directory; no bytecode is written
  next to it) and calls ``factory()``;
- ``module:<class>-<fingerprint>``: a module handed to :func:`ctrobust.sweep_model` in this process
  (:func:`register_module`); not usable from the command line.

``--checkpoint FILE`` loads a state_dict into the factory's model (into ``model.inner`` when it returns a
``Normalized``), strictly, with ``weights_only=True``. These models are code, not named releases: a run is
keyed by a hash of their weights and buffers (``weights_fingerprint``), so two different models never share
results. A factory that cannot be found, raises, or returns something else is a :class:`ModelLoadError` (one
line on the command line).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path

from torch import nn

from ctrobust._registry import UnknownNameError, did_you_mean
from ctrobust.models._common import (ModelFamily, ModelLoadError, Normalized, first_line, load_checked,
                                     read_state_dict, weights_fingerprint)

__all__ = ["FAMILY", "register_module", "unregister_module", "parse_factory", "is_user_model"]

PY_PREFIX = "py:"
MODULE_PREFIX = "module:"
_FILE_SPEC = re.compile(r"^(?P<path>.+\.py):(?P<attr>[A-Za-z_][A-Za-z0-9_]*)$")
_PY_SPEC = re.compile(r"^py:(?P<mod>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):"
                      r"(?P<attr>[A-Za-z_][A-Za-z0-9_]*)$")

#: ``module:...`` name -> the module given to ``sweep_model`` (this process only)
_MODULES: dict[str, nn.Module] = {}


def is_user_model(name: str) -> bool:
    """Pure string test: a ``py:``/``module:`` name or a ``<file>.py:<factory>`` spec."""
    return name.startswith((PY_PREFIX, MODULE_PREFIX)) or bool(_FILE_SPEC.match(name))


def parse_factory(name: str) -> tuple[str, str, str]:
    """``("py", module, attr)`` or ``("file", path, attr)``; ``UnknownNameError`` for a malformed spec."""
    if name.startswith(PY_PREFIX):
        m = _PY_SPEC.match(name)
        if not m:
            raise UnknownNameError(f"bad model factory {name!r}: write py:package.module:factory "
                                   "(e.g. py:mypkg.nets:make_model)")
        return "py", m.group("mod"), m.group("attr")
    m = _FILE_SPEC.match(name)
    if not m:
        raise UnknownNameError(f"bad model factory {name!r}: write path/to/file.py:factory")
    return "file", m.group("path"), m.group("attr")


def register_module(model: nn.Module) -> str:
    """Make ``model`` loadable by name in this process; returns ``module:<class>-<fingerprint[:16]>``."""
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"expected a torch.nn.Module, got {type(model).__name__}")
    name = f"{MODULE_PREFIX}{type(model).__name__}-{weights_fingerprint(model)[:16]}"
    _MODULES[name] = model
    return name


def unregister_module(name: str) -> None:
    _MODULES.pop(name, None)


@contextlib.contextmanager
def _no_bytecode():
    old = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # never write __pycache__ next to a user's file (or into the cwd)
    try:
        yield
    finally:
        sys.dont_write_bytecode = old


def _import_file(path_text: str):
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"model file {str(path)!r} not found (relative paths start at the current "
                             "directory)")
    path = path.resolve()
    modname = f"ctrobust_user_model_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}_{path.stem}"
    modname = re.sub(r"\W", "_", modname)
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {str(path)!r} as Python code")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod  # dataclasses, pickling and typing look classes up by module name
    try:
        with _no_bytecode():
            spec.loader.exec_module(mod)
    except Exception as exc:  # noqa: BLE001 - the user's code: report, do not crash
        sys.modules.pop(modname, None)
        raise ModelLoadError(f"running model file {str(path)!r} raised {type(exc).__name__}: "
                             f"{first_line(exc)}") from exc
    return mod


def _import_module(modname: str):
    try:
        with _no_bytecode():
            return importlib.import_module(modname)
    except Exception as exc:  # noqa: BLE001 - ImportError or an error inside the user's module
        raise ModelLoadError(f"cannot import {modname!r} for the model factory ({type(exc).__name__}: "
                             f"{first_line(exc)}); py: imports from sys.path (installed packages, PYTHONPATH); "
                             "for a file, write path/to/file.py:factory") from exc


def _call_factory(name: str) -> nn.Module:
    kind, where, attr = parse_factory(name)
    mod = _import_module(where) if kind == "py" else _import_file(where)
    if not hasattr(mod, attr):
        callables = [k for k, v in vars(mod).items() if callable(v) and not k.startswith("_")]
        raise did_you_mean(f"model factory in {where}", attr, callables)
    factory = getattr(mod, attr)
    if not callable(factory):
        raise ModelLoadError(f"model factory {name!r}: {attr} is a {type(factory).__name__}, not a callable")
    try:
        model = factory()
    except Exception as exc:  # noqa: BLE001 - the user's code
        raise ModelLoadError(f"model factory {name!r} raised {type(exc).__name__}: {first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module "
                             "(return the model itself, taking [0, 1] images; wrap it in "
                             "ctrobust.models.Normalized to declare its normalization)")
    return model


def _registered(name: str) -> nn.Module:
    if name not in _MODULES:
        raise UnknownNameError(f"model {name!r} is not registered in this process: module: names come from "
                               "ctrobust.sweep_model(model, ...); on the command line use "
                               "py:package.module:factory or path/to/file.py:factory")
    return copy.deepcopy(_MODULES[name])  # the caller's module is never moved, put in eval mode or tuned


def build(name: str, dataset: str, threat=None) -> nn.Module:
    """The factory's (or the registered) model as it comes, without a checkpoint."""
    return _registered(name) if name.startswith(MODULE_PREFIX) else _call_factory(name)


def load(name: str, dataset: str, threat=None, model_dir=None, checkpoint=None) -> nn.Module:
    model = build(name, dataset)
    if checkpoint is not None:
        if name.startswith(MODULE_PREFIX):
            raise UnknownNameError("a module passed in has its weights already: load them into it before "
                                   "calling sweep_model, no checkpoint")
        target = model.inner if isinstance(model, Normalized) else model
        path = Path(checkpoint).expanduser()
        load_checked(target, read_state_dict(path, what=f"--checkpoint for {name}"), path=path,
                     expected=f"the model of {name} ({type(target).__name__})")
    return model


FAMILY = ModelFamily(
    name="user", pattern="py:package.module:factory | path/to/file.py:factory", datasets=(),
    about="your own model: factory() returns an nn.Module on [0, 1] input (or ctrobust.models.Normalized)",
    matches=is_user_model, load=load, build=build,
    weights=lambda dataset, model_dir: "whatever the factory loads; or --checkpoint FILE (a state_dict)",
    names=None, keyed_by_weights=True, takes_checkpoint=True)
