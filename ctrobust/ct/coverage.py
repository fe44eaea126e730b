"""Coverage: which activations a model computes, which of them CT tunes, and what it would miss.

``ct_coverage(model, x)`` counts, in one forward pass, the activation calls by kind and, by also running
the CT model under a ``TorchDispatchMode`` at the ATen level, the ReLU calls CT did *not* replace
(``missed``), so a new form of ReLU call shows up as a number instead of a silent no-op. The result is a
``Coverage``: typed fields, a ``verdict``, and ``to_dict()``, the dict ``ct_coverage`` returned before it
was typed (the ``ct_*`` columns of ``results.csv`` are built from it).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ctrobust.ct._forms import (_ACTIVATION_NAME, _UNSUPPORTED_MODULES, CTCoverageError, _checked_scope,
                                _CountingMode)
from ctrobust.ct.model import _tune

__all__ = ["Coverage", "CTCoverageError", "VERDICTS", "ct_coverage"]

VERDICTS = ("full", "partial", "none")

# the legacy dict's keys, in its order (``to_dict``)
_LEGACY_KEYS = ("relu_modules", "relu_functional", "leaky_relu", "missed", "unsupported")


@dataclass(frozen=True)
class Coverage:
    """What CT reaches in one forward pass of a model (returned by ``ct_coverage``).

    Counts are calls, not modules: a module reused at three places counts three times.

    Attributes:
        relu_modules: calls of ``nn.ReLU`` submodules (>= 0).
        relu_functional: ``F.relu``/``torch.relu``/``Tensor.relu`` calls and their in-place forms, including
            the call inside an ``nn.ReLU`` built in ``forward`` (not a submodule) (>= 0).
        leaky_relu: ``nn.LeakyReLU`` submodule calls plus ``F.leaky_relu`` calls (>= 0).
        missed: ATen-level ReLU/LeakyReLU/threshold ops the CT model (beta = 0.5) still ran that its scope
            should have reached: 0 means CT reached every ReLU it was meant to (>= 0).
        unsupported: activations CT does not tune, ``{name: calls}`` (SiLU, GELU, Softplus, ELU, Tanh,
            Hardswish, Mish, Swish-like custom modules, ...), sorted by name. Do not mutate.
        scope: the CT scope counted for (``"all"`` or ``"modules"``, see ``SCOPES``).
        untouched: ReLU/LeakyReLU calls that stay ReLUs by design of the scope: the functional ones under
            ``"modules"`` (including ReLU modules built inside ``forward``); always 0 under ``"all"``.

    Example:
        >>> cov = ct_coverage(model, x[:1])
        >>> cov.verdict, cov.tuned, cov.to_dict()["missed"]
        ('full', 17, 0)
    """

    relu_modules: int = 0
    relu_functional: int = 0
    leaky_relu: int = 0
    missed: int = 0
    unsupported: dict[str, int] = field(default_factory=dict)
    scope: str = "all"
    untouched: int = 0

    def __post_init__(self):
        # an own copy: the caller's dict may change later, this record must not
        object.__setattr__(self, "unsupported", dict(self.unsupported))

    def __hash__(self) -> int:  # the generated hash would fail on the dict field
        return hash((self.relu_modules, self.relu_functional, self.leaky_relu, self.missed,
                     frozenset(self.unsupported.items()), self.scope, self.untouched))

    @property
    def relu_calls(self) -> int:
        """ReLU and LeakyReLU calls the forward computes (tuned or not)."""
        return self.relu_modules + self.relu_functional + self.leaky_relu

    @property
    def tuned(self) -> int:
        """ReLU and LeakyReLU calls CT tunes: ``relu_calls - untouched``."""
        return max(self.relu_calls - self.untouched, 0)

    @property
    def verdict(self) -> str:
        """``"none"``: no ReLU tuned (CT does not apply); ``"partial"``: ReLUs tuned, but other activations
        remain, or some ReLU calls were missed or left untouched by the scope; ``"full"``: otherwise, every
        activation is a ReLU that CT tunes."""
        if self.tuned == 0:
            return "none"
        if self.missed or self.unsupported or self.untouched:
            return "partial"
        return "full"

    def to_dict(self) -> dict:
        """The legacy coverage dict, exactly as ``ct_coverage`` returned it before ``Coverage`` existed.

        ``{"relu_modules": int, "relu_functional": int, "leaky_relu": int, "missed": int,
        "unsupported": {name: calls}}``, keys in this order; no ``scope``/``untouched`` (see ``as_record``),
        so the ``ct_*`` columns built from it stay as they were.
        """
        return {"relu_modules": self.relu_modules, "relu_functional": self.relu_functional,
                "leaky_relu": self.leaky_relu, "missed": self.missed, "unsupported": dict(self.unsupported)}

    def __getitem__(self, key: str):
        """``cov["missed"]``: ``ct_coverage`` returned a dict before it returned ``Coverage``; the keys of that
        dict still read (attributes are the typed way), anything else names ``to_dict()``."""
        legacy = self.to_dict()
        if isinstance(key, str) and key in legacy:
            return legacy[key]
        raise KeyError(f"{key!r}: ct_coverage returns a Coverage (attributes {', '.join(f.name for f in fields(self))});"
                       " use cov.to_dict() for the old dict")

    def as_record(self) -> dict:
        """All fields (``to_dict()`` plus ``scope`` and ``untouched``), JSON-ready."""
        rec = {f.name: getattr(self, f.name) for f in fields(self)}
        rec["unsupported"] = dict(self.unsupported)
        return rec

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Coverage:
        """Rebuild a ``Coverage`` from ``to_dict()``/``as_record()`` output or a legacy dict.

        Tolerant of what was written before: the legacy dict read back from ``results.json`` (no
        ``scope``/``untouched``: scope ``"all"``, untouched 0), ``ct_``-prefixed keys (a ``results.csv``
        row), counts as strings or floats, missing or ``None`` counts (0), and ``unsupported`` as a dict or
        as a summary string (``"SiLU x 2;GELU x 1"`` or ``"SiLU x 2, GELU x 1"``). Other keys are ignored.

        Raises:
            ValueError: a count or the unsupported summary cannot be read.
            UnknownNameError: an unknown ``scope``.
        """
        if isinstance(d, Coverage):
            return d

        def get(key):
            return d[key] if key in d else d.get("ct_" + key)

        def count(key) -> int:
            v = get(key)
            if v is None or v == "":
                return 0
            return int(float(v)) if isinstance(v, str) else int(v)

        return cls(relu_modules=count("relu_modules"), relu_functional=count("relu_functional"),
                   leaky_relu=count("leaky_relu"), missed=count("missed"),
                   unsupported=_read_unsupported(get("unsupported")),
                   scope=_checked_scope(get("scope") or "all"), untouched=count("untouched"))


_SUMMARY_ITEM = re.compile(r"^\s*(.+?)\s+x\s+(\d+)\s*$")


def _read_unsupported(v) -> dict:
    if v is None or v == "":
        return {}
    if isinstance(v, Mapping):
        return {str(k): int(n) for k, n in v.items()}
    if isinstance(v, str):
        out = {}
        for item in re.split(r"[;,]", v):
            if not item.strip():
                continue
            m = _SUMMARY_ITEM.match(item)
            if m is None:
                raise ValueError(f"cannot read unsupported activations from {v!r} (expected 'Name x count; ...')")
            out[m.group(1)] = out.get(m.group(1), 0) + int(m.group(2))
        return out
    raise ValueError(f"cannot read unsupported activations from {v!r}")


class _AtenReluCounter(TorchDispatchMode):
    _OPS = ("relu", "relu_", "leaky_relu", "leaky_relu_", "threshold", "threshold_")

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._overloadpacket.__name__ in self._OPS:
            self.n += 1
        return func(*args, **(kwargs or {}))


def ct_coverage(model: nn.Module, example_input: torch.Tensor, *, scope: str = "all") -> Coverage:
    """Count, in one forward pass, the activations ``model`` computes and what CT would miss.

    Args:
        model: the original (un-tuned) model; its train/eval mode is restored afterwards.
        example_input: a valid input, e.g. one [0, 1] image batch ``(1, 3, 32, 32)``.
        scope: the CT scope to count for: ``"all"`` (default, what ``apply_ct`` tunes by default) or
            ``"modules"`` (only ``nn.ReLU``/``nn.LeakyReLU`` submodules).

    Returns:
        A ``Coverage`` (see its fields; ``.to_dict()`` is the dict this function used to return).
        ``missed`` is measured by running the CT model of this scope (beta = 0.5) under an ATen-level
        counter: under ``"all"`` every ReLU/LeakyReLU/threshold op left is missed; under ``"modules"`` the
        functional ReLU calls are ``untouched`` (by design) and only the ops beyond them are missed.
        ReLUs computed inside custom activation-like modules (listed under ``unsupported``) are not counted
        as ReLU calls; under ``"modules"`` they are therefore reported as missed.

    Raises:
        UnknownNameError: unknown ``scope``.
        ValueError: ``model`` already has CT applied (and computes a ReLU).
    """
    scope = _checked_scope(scope)
    counts: Counter = Counter()
    depth = [0]
    hooks = []

    def pre(kind):
        def hook(mod, inp):
            if depth[0] == 0:
                counts[kind] += 1
            depth[0] += 1
        return hook

    def post(mod, inp, out):
        depth[0] -= 1

    for m in model.modules():
        if isinstance(m, nn.LeakyReLU):
            kind = "leaky_relu"
        elif isinstance(m, nn.ReLU):
            kind = "relu_modules"
        elif isinstance(m, _UNSUPPORTED_MODULES):
            kind = "unsupported:" + type(m).__name__
        elif (type(m).__module__.split(".")[0] != "torch" and _ACTIVATION_NAME.search(type(m).__name__)
              and not list(m.children())):
            kind = "unsupported:" + type(m).__name__  # custom Swish-like leaf modules
        else:
            continue
        hooks.append(m.register_forward_pre_hook(pre(kind)))
        hooks.append(m.register_forward_hook(post))

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _CountingMode(counts, depth):
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    reachable = counts["relu_modules"] + counts["relu_functional"] + counts["leaky_relu"]
    missed = untouched = 0
    if reachable:
        tuned = _tune(model, 0.5, 0.5, scope=scope)
        tuned.eval()
        if scope == "modules":
            tuned._checked = True  # its first-forward check would only warn about what is counted here
        counter = _AtenReluCounter()
        with torch.no_grad(), counter:
            tuned(example_input)
        left = counter.n
        if scope == "modules":
            # the functional calls (counted outside activation modules) are left as ReLUs by this scope
            untouched = min(counts["relu_functional"] + counts["leaky_functional"], left)
        missed = left - untouched
    return Coverage(
        relu_modules=counts["relu_modules"],
        relu_functional=counts["relu_functional"],
        leaky_relu=counts["leaky_relu"],
        missed=missed,
        unsupported={k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("unsupported:")},
        scope=scope,
        untouched=untouched,
    )
