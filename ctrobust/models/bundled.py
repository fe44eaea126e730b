"""Family ``bundled/``: models shipped inside installed packages; they work offline.

- ``bundled/resnet18-cifar10``: the naturally trained CIFAR-10 ResNet-18 shipped in pyautoattack's wheel
  (``pyautoattack/examples/model_test.pt``, a plain ``state_dict`` of ``examples/resnet.py``'s ``ResNet18``, no
  normalization: it takes [0, 1] input directly; ReLUs are ``F.relu`` calls).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from ctrobust._registry import UnknownNameError, did_you_mean
from ctrobust.models._common import ModelFamily, ModelUnavailableError

__all__ = ["BUNDLED_MODELS", "FAMILY"]

PREFIX = "bundled/"

#: bundled model name -> (dataset, short description); valid for every threat model of that dataset
BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    "bundled/resnet18-cifar10": ("cifar10", "naturally trained CIFAR-10 ResNet-18 from pyautoattack's examples"),
}


def _pyautoattack_examples() -> Path:
    spec = importlib.util.find_spec("pyautoattack")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError("bundled/resnet18-cifar10 ships with pyautoattack: "
                                    "run `pip install pyautoattack==0.2.0`")
    return Path(list(spec.submodule_search_locations)[0]) / "examples"


def _bundled_resnet_module():
    """pyautoattack's ``examples/resnet.py`` (not a package) as module ``pyautoattack.examples.resnet``.

    The dotted name is also importable in a fresh process (``examples`` is a namespace package), so models
    built from it pickle and deep-copy normally.
    """
    modname = "pyautoattack.examples.resnet"
    path = _pyautoattack_examples() / "resnet.py"
    mod = sys.modules.get(modname)
    if mod is not None and Path(getattr(mod, "__file__", "")).resolve() == path.resolve():
        return mod
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ModelUnavailableError(f"bundled ResNet-18 architecture not found at {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(modname, None)
        raise
    return mod


def _check(name: str, dataset: str) -> None:
    if name not in BUNDLED_MODELS:
        raise did_you_mean("bundled model", name, BUNDLED_MODELS)
    ds = BUNDLED_MODELS[name][0]
    if ds != dataset:
        raise UnknownNameError(f"model {name!r} is a {ds} model, not for {dataset}: pass --dataset {ds}")


def build(name: str, dataset: str, threat=None) -> nn.Module:
    _check(name, dataset)
    return _bundled_resnet_module().ResNet18()


def load(name: str, dataset: str, threat=None, model_dir=None, checkpoint=None) -> nn.Module:
    model = build(name, dataset)
    path = _pyautoattack_examples() / "model_test.pt"
    if not path.is_file():
        raise ModelUnavailableError(f"bundled checkpoint missing: {path} (reinstall pyautoattack==0.2.0)")
    state = torch.load(path, map_location="cpu", weights_only=True)  # a plain state_dict, 122 tensors
    model.load_state_dict(state, strict=True)
    return model


FAMILY = ModelFamily(
    name="bundled", pattern="bundled/<name>", datasets=("cifar10",),
    about="models shipped inside installed packages (bundled/resnet18-cifar10: pyautoattack's ResNet-18)",
    matches=lambda name: name.startswith(PREFIX), load=load, build=build,
    weights=lambda dataset, model_dir: "inside the installed package (offline)",
    names=lambda dataset: [n for n, (d, _) in BUNDLED_MODELS.items() if d == dataset],
    keyed_by_weights=False, takes_checkpoint=False)
