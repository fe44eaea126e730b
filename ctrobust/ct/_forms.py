"""What counts as a ReLU: the call forms CT recognises, the scopes that reach them, the activations it cannot tune.

A ReLU can be computed by an ``nn.ReLU`` module or by a function call inside some ``forward``
(``F.relu``, ``F.relu(inplace=True)``, ``F.relu_``, ``torch.relu``, ``torch.relu_``, ``Tensor.relu``,
``Tensor.relu_``, or an alias such as ``from torch.nn.functional import relu``); LeakyReLU likewise.
These tables are shared by the interception (``model.py``) and the counting (``coverage.py``), so the
two cannot disagree about what a ReLU call is.

Scopes (``SCOPES``):

``all``
    every ReLU the forward computes: module swap plus function-mode interception (ctrobust's default).
``modules``
    only ``nn.ReLU``/``nn.LeakyReLU`` submodules, swapped; functional calls and ReLU modules built inside
    ``forward`` stay ReLUs. This is what the CT reference code's ``replace_module`` does.
"""

from __future__ import annotations

import inspect
import re
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ctrobust._registry import did_you_mean
from ctrobust.ct.activation import CTActivation

__all__ = ["SCOPES", "CTCoverageError"]

SCOPES = ("all", "modules")


class CTCoverageError(ValueError):
    """The model has no activation that CT can tune (e.g. a SiLU/GELU network)."""


def _checked_scope(scope) -> str:
    """``scope`` as one of ``SCOPES``, or an ``UnknownNameError`` with "did you mean"."""
    if isinstance(scope, str) and scope in SCOPES:
        return SCOPES[SCOPES.index(scope)]
    raise did_you_mean("CT scope", str(scope), SCOPES)


_RELU_OUT = {F.relu, torch.relu, torch.Tensor.relu}
_RELU_INPLACE = {torch.relu_, torch.Tensor.relu_, F.relu_}
_LEAKY = {F.leaky_relu}
_LEAKY_INPLACE = {F.leaky_relu_} if hasattr(F, "leaky_relu_") else set()

# Activations CT does not tune, recognised for the coverage report (functional name -> label).
_UNSUPPORTED_FUNCS = {
    F.silu: "SiLU", F.gelu: "GELU", F.softplus: "Softplus", F.elu: "ELU", F.selu: "SELU",
    F.celu: "CELU", torch.tanh: "Tanh", torch.Tensor.tanh: "Tanh", F.hardswish: "Hardswish",
    F.mish: "Mish", F.relu6: "ReLU6", F.hardtanh: "Hardtanh", F.prelu: "PReLU",
    torch.sigmoid: "Sigmoid", torch.Tensor.sigmoid: "Sigmoid", F.softsign: "Softsign",
    F.hardsigmoid: "Hardsigmoid", F.glu: "GLU",
}
_UNSUPPORTED_MODULES = (nn.SiLU, nn.GELU, nn.Softplus, nn.ELU, nn.SELU, nn.CELU, nn.Tanh, nn.Hardswish,
                        nn.Mish, nn.ReLU6, nn.Hardtanh, nn.PReLU, nn.Sigmoid, nn.Softsign, nn.Hardsigmoid,
                        nn.GLU, nn.RReLU)
_ACTIVATION_NAME = re.compile(r"swish|silu|mish|gelu|elu|tanh|sigmoid|softplus|hardswish|relu|activation",
                              re.IGNORECASE)


def _is_relu_func(func) -> bool:
    return func in _RELU_OUT or func in _RELU_INPLACE


def _describe(counts: dict) -> str:
    """``{"SiLU": 2, "GELU": 1}`` -> ``"SiLU x 2, GELU x 1"`` (most frequent first)."""
    return ", ".join(f"{k} x {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _static_unsupported(model: nn.Module) -> dict:
    """Activation modules CT does not tune, by class name, found without running the model."""
    counts: Counter = Counter()
    for m in model.modules():
        if isinstance(m, _UNSUPPORTED_MODULES):
            counts[type(m).__name__] += 1
        elif (type(m).__module__.split(".")[0] != "torch" and not isinstance(m, CTActivation)
              and _ACTIVATION_NAME.search(type(m).__name__) and not list(m.children())):
            counts[type(m).__name__] += 1
    return dict(counts)


def _forward_mentions_relu(model: nn.Module) -> bool:
    """Static hint: does any forward's source mention relu? (a dynamic check follows at first forward)."""
    seen = set()
    for m in model.modules():
        cls = type(m)
        if cls in seen or cls.__module__.startswith("torch.nn"):
            continue
        seen.add(cls)
        try:
            src = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            return True  # cannot tell: let the first forward decide
        if "relu" in src.lower():
            return True
    return False


class _CountingMode(TorchFunctionMode):
    """Counts functional ReLU / LeakyReLU / unsupported activation calls; changes nothing.

    ``leaky_functional`` counts the functional LeakyReLU calls among ``leaky_relu`` (which the coverage
    hooks also increment for modules): the calls that a ``modules`` scope leaves as they are.
    """

    def __init__(self, counts: Counter, depth: list):
        super().__init__()
        self.counts = counts
        self.depth = depth  # >0 while inside an activation module's forward: its calls are the module's

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.depth[0]:
            if _is_relu_func(func):
                self.counts["relu_functional"] += 1
            elif func in _LEAKY or func in _LEAKY_INPLACE:
                self.counts["leaky_relu"] += 1
                self.counts["leaky_functional"] += 1
            elif func in _UNSUPPORTED_FUNCS:
                self.counts["unsupported:" + _UNSUPPORTED_FUNCS[func]] += 1
        return func(*args, **kwargs)

