"""Curvature Tuning (CT): the beta-parameterized activation and its full-coverage application.

CT (Hu, Gamba, Balestriero, arXiv 2502.07783) replaces every ReLU of a pretrained network by

    phi(x) = c * sigmoid(beta * x / (1 - beta + eps)) * x
             + (1 - c) * (1 - beta + eps) * softplus(x / (1 - beta + eps)),      eps = 1e-6,

with beta in (0, 1] and c in [0, 1] (default 0.5). beta = 1 is the original ReLU; smaller beta smooths
the activation (lower curvature), and hence the network's decision boundary. LeakyReLU(a) becomes
``a * x + (1 - a) * phi(x)``.

Mechanism, and why
------------------
A ReLU can be computed in two ways: by an ``nn.ReLU`` module, or by a function call inside some
``forward`` (``F.relu``, ``F.relu(inplace=True)``, ``torch.relu``, ``torch.relu_``, ``Tensor.relu``,
``Tensor.relu_``, or an alias such as ``from torch.nn.functional import relu``). The CT reference code swaps
only modules, so networks written with ``F.relu`` (PreActResNet-style blocks, the ResNet-18 shipped with
AutoAttack) are silently evaluated unmodified. ``apply_ct`` therefore combines:

1. a **module swap**: every ``nn.ReLU``/``nn.LeakyReLU`` of a deep copy becomes a ``CTActivation``
   (one replacement per original instance, so an instance reused at several places stays shared). This
   keeps the module tree honest (``print(model)`` shows what runs) and makes state (beta, c) visible
   buffers that follow ``.to(device)`` and ``copy.deepcopy``;
2. a **torch function mode** (``torch.overrides.TorchFunctionMode``) entered around the wrapped network's
   forward, which intercepts the functional forms at PyTorch's ``__torch_function__`` dispatch. Because it
   intercepts the *call*, not a module attribute, it also catches aliases bound before CT was applied, and
   it needs no tracing: ``torch.fx`` fails on data-dependent control flow found in several RobustBench
   models, and monkey-patching ``torch.nn.functional.relu`` misses aliases and leaks across threads.

The cost of the mode is a Python hop per torch call inside the forward (microseconds per op), negligible
next to convolutions. The activation itself is a custom autograd function that computes phi in one pass
and saves only its input (the backward recomputes two sigmoids), which keeps CT's forward+backward close
to ReLU's; see ``benchmarks/ct_overhead.py``.

Per-sample beta: ``set_beta(model, beta)`` accepts a 1-D tensor with one beta per example; it is
broadcast over the non-batch dimensions of every activation, so one forward pass can evaluate an
example at several betas (the fast engine batches betas this way).

Coverage: ``ct_coverage(model, x)`` counts, in one forward pass, the activation calls by kind and, by
also running the CT model under a ``TorchDispatchMode`` at the ATen level, the ReLU calls CT did *not*
replace (``missed``), so a new form of ReLU call shows up as a number instead of a silent no-op.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "EPS",
    "CTActivation",
    "CTModel",
    "CTCoverageError",
    "apply_ct",
    "set_beta",
    "get_beta",
    "ct_coverage",
    "ct_phi",
    "activation_curves",
]

EPS = 1e-6

# ---------------------------------------------------------------------------------------------------
# The activation
# ---------------------------------------------------------------------------------------------------


class CTCoverageError(ValueError):
    """The model has no activation that CT can tune (e.g. a SiLU/GELU network)."""


def _validate_beta(beta) -> None:
    if isinstance(beta, torch.Tensor):
        if beta.dim() > 1:
            raise ValueError(f"beta must be a scalar or a 1-D per-example tensor, got shape {tuple(beta.shape)}")
        if beta.numel() == 0:
            raise ValueError("beta tensor is empty")
        bad = ~((beta > 0) & (beta <= 1))
        if bool(bad.any()):
            raise ValueError(f"beta must lie in (0, 1]; got {beta[bad][0].item()!r}")
        return
    try:
        b = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta must be a number in (0, 1], got {beta!r}") from None
    if not (0.0 < b <= 1.0) or b != b:
        raise ValueError(f"beta must lie in (0, 1], got {beta!r} (beta = 1 is the original ReLU)")


def _validate_coeff(coeff) -> float:
    try:
        c = float(coeff)
    except (TypeError, ValueError):
        raise ValueError(f"coeff (c) must be a number in [0, 1], got {coeff!r}") from None
    if not (0.0 <= c <= 1.0):
        raise ValueError(f"coeff (c) must lie in [0, 1], got {coeff!r}")
    return c


class _CTFunction(torch.autograd.Function):
    """phi(x) with an analytic backward that saves only ``x`` (and the small beta/coeff tensors).

    d phi / dx = c * (s1 + beta * z * s1 * (1 - s1)) + (1 - c) * s2,
    with d = 1 - beta + eps, z = x / d, s1 = sigmoid(beta * z), s2 = sigmoid(z).
    """

    @staticmethod
    def forward(ctx, x, beta, coeff):
        d = (1.0 - beta) + EPS
        z = x / d
        out = coeff * torch.sigmoid(beta * z) * x + (1.0 - coeff) * d * F.softplus(z)
        ctx.save_for_backward(x, beta, coeff)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, beta, coeff = ctx.saved_tensors
        d = (1.0 - beta) + EPS
        z = x / d
        bz = beta * z
        s1 = torch.sigmoid(bz)
        # s1 * (1 - s1) written as s1 * sigmoid(-bz): exact in the tails, where 1 - s1 rounds to 0;
        # bz * 0 stays 0 (bz is finite for |x| <= 3e32), so no NaN at small 1 - beta.
        dphi = coeff * (s1 + bz * s1 * torch.sigmoid(-bz)) + (1.0 - coeff) * torch.sigmoid(z)
        return grad_out * dphi, None, None


def _broadcast_beta(beta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Shape a scalar or per-example beta so that it broadcasts against activations ``x``."""
    if beta.dim() == 0:
        return beta.to(dtype=x.dtype)
    if x.dim() == 0 or x.shape[0] != beta.shape[0]:
        raise ValueError(
            f"per-example beta has {beta.shape[0]} entries but the activation has batch size "
            f"{x.shape[0] if x.dim() else 'none'}: call set_beta() with one beta per example of the batch")
    return beta.to(dtype=x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))


def ct_phi(x: torch.Tensor, beta, coeff=0.5, negative_slope: float = 0.0) -> torch.Tensor:
    """Evaluate the CT activation (out of place).

    Args:
        x: any-shape float tensor.
        beta: float in (0, 1], or a 0-d tensor, or a 1-D tensor with ``x.shape[0]`` entries (per example).
        coeff: the mixing coefficient c in [0, 1].
        negative_slope: ``a`` of a LeakyReLU being tuned; the result is ``a * x + (1 - a) * phi(x)``.

    Returns:
        Tensor like ``x``. Rows whose beta is exactly 1 equal ``relu(x)`` (``leaky_relu(x, a)``) bit for bit.
    """
    if not isinstance(beta, torch.Tensor):
        beta = torch.tensor(float(beta), device=x.device)
    if not isinstance(coeff, torch.Tensor):
        coeff = torch.tensor(float(coeff), device=x.device)
    beta = beta.to(x.device)
    coeff = coeff.to(device=x.device, dtype=x.dtype)

    def base(t):
        # aten's relu *is* clamp_min(x, 0); calling it directly (and leaky_relu through torch._C._nn)
        # keeps the exact baseline without re-entering the functional interception below.
        return torch._C._nn.leaky_relu(t, negative_slope) if negative_slope else torch.clamp_min(t, 0)

    if beta.dim() == 0:
        if float(beta) == 1.0:  # one host sync for a scalar; exact baseline
            return base(x)
        out = _CTFunction.apply(x, beta.to(dtype=x.dtype), coeff)
        if negative_slope:
            out = negative_slope * x + (1.0 - negative_slope) * out
        return out
    b = _broadcast_beta(beta, x)
    # rows at beta = 1 are computed at a harmless beta, then replaced by the exact baseline
    is_one = b == 1.0
    out = _CTFunction.apply(x, torch.where(is_one, torch.full_like(b, 0.5), b), coeff)
    if negative_slope:
        out = negative_slope * x + (1.0 - negative_slope) * out
    return torch.where(is_one, base(x), out)


class CTActivation(nn.Module):
    """The CT activation as a module: ``phi_beta,c`` (optionally tuning a LeakyReLU).

    Args:
        beta: float in (0, 1]. ``beta = 1`` is exactly ReLU (bit for bit). Stored as a buffer, so it
            follows ``.to(device)``/``copy.deepcopy``; ``set_beta`` may replace it by a 1-D per-example tensor.
        coeff: c in [0, 1] (default 0.5), also a buffer.
        negative_slope: 0 for ReLU; ``a`` for LeakyReLU(a), which becomes ``a*x + (1-a)*phi(x)``.
        inplace: write the result into the input, as ``nn.ReLU(inplace=True)`` does.

    Shape: input ``(B, *)`` float, any range; output the same shape.

    Example:
        >>> act = CTActivation(0.9)
        >>> act(torch.tensor([-1.0, 0.0, 1.0]))  # smooth, close to ReLU
    """

    def __init__(self, beta: float = 1.0, coeff: float = 0.5, negative_slope: float = 0.0,
                 inplace: bool = False):
        super().__init__()
        _validate_beta(beta)
        coeff = _validate_coeff(coeff)
        self.register_buffer("beta", torch.as_tensor(beta, dtype=torch.float32).clone())
        self.register_buffer("coeff", torch.tensor(coeff, dtype=torch.float32))
        self.negative_slope = float(negative_slope)
        self.inplace = bool(inplace)

    def extra_repr(self) -> str:
        b = self.beta
        beta = f"{b.item():g}" if b.dim() == 0 else f"per-example[{b.numel()}]"
        s = f"beta={beta}, coeff={self.coeff.item():g}"
        if self.negative_slope:
            s += f", negative_slope={self.negative_slope:g}"
        if self.inplace:
            s += ", inplace=True"
        return s

    def forward(self, x: torch.Tensor, inplace: bool | None = None) -> torch.Tensor:
        inplace = self.inplace if inplace is None else inplace
        out = ct_phi(x.clone() if inplace and x.requires_grad else x, self.beta, self.coeff,
                     self.negative_slope)
        if inplace:
            # in-place semantics of relu_: callers may rely on the input holding the result
            return x.copy_(out) if out is not x else x
        return out


# ---------------------------------------------------------------------------------------------------
# Functional interception
# ---------------------------------------------------------------------------------------------------

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


class _CTFunctionMode(TorchFunctionMode):
    """Routes functional ReLU/LeakyReLU calls made inside a forward to a ``CTActivation``."""

    def __init__(self, act: "CTActivation", counter: Counter | None = None):
        super().__init__()
        self.act = act
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU_OUT or func in _RELU_INPLACE:
            x = args[0]
            inplace = func in _RELU_INPLACE or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
            if self.counter is not None:
                self.counter["ct_calls"] += 1
            return self.act.forward(x, inplace=inplace)
        if func in _LEAKY or func in _LEAKY_INPLACE:
            x = args[0]
            slope = kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01)
            inplace = func in _LEAKY_INPLACE or bool(kwargs.get("inplace", args[2] if len(args) > 2 else False))
            if self.counter is not None:
                self.counter["ct_calls"] += 1
            out = ct_phi(x.clone() if inplace and x.requires_grad else x, self.act.beta, self.act.coeff,
                         float(slope))
            return x.copy_(out) if inplace else out
        return func(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------
# The wrapped model
# ---------------------------------------------------------------------------------------------------


class CTModel(nn.Module):
    """A network with Curvature Tuning applied to every ReLU it computes (see the module docstring).

    Attributes:
        net: the tuned deep copy of the original model (its ReLU/LeakyReLU modules replaced).
        ct: the ``CTActivation`` used for functional ReLU calls (shares beta/coeff with the modules
            through ``set_beta``).

    ``forward(x)`` takes what the original model takes (for ctrobust: [0, 1] images ``(B, C, H, W)``)
    and returns its output (logits ``(B, K)``).
    """

    def __init__(self, net: nn.Module, beta, coeff: float = 0.5):
        super().__init__()
        self.net = net
        self.ct = CTActivation(1.0, coeff)
        self._checked = False
        set_beta(self, beta)

    @property
    def beta(self) -> torch.Tensor:
        return self.ct.beta

    @property
    def coeff(self) -> float:
        return float(self.ct.coeff)

    def forward(self, *args, **kwargs):
        counter = None if self._checked else Counter()
        with _CTFunctionMode(self.ct, counter):
            out = self.net(*args, **kwargs)
        if counter is not None:
            n_modules = sum(1 for m in self.net.modules() if isinstance(m, CTActivation))
            if counter["ct_calls"] == 0 and n_modules == 0:
                found = _describe(_static_unsupported(self.net))
                raise CTCoverageError(f"no ReLU to tune: the forward pass computed no ReLU/LeakyReLU"
                                      f"{' (found ' + found + ')' if found else ''}; CT does not apply")
            self._checked = True
        return out


def _describe(counts: dict) -> str:
    return ", ".join(f"{k} x {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _static_unsupported(model: nn.Module) -> dict:
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


def set_beta(model: nn.Module, beta, *, validate: bool = True) -> nn.Module:
    """Set beta on every CT activation of ``model`` (a ``CTModel`` or any module containing them).

    Args:
        model: module containing ``CTActivation`` instances.
        beta: float in (0, 1]; or a 1-D tensor with one beta per example of the batches that follow
            (per-example CT, used to evaluate several betas in one pass).
        validate: check the range (costs a device sync for tensors on a GPU).

    Returns:
        ``model`` (for chaining).
    """
    if validate:
        _validate_beta(beta)
    acts = [m for m in model.modules() if isinstance(m, CTActivation)]
    if not acts:
        raise ValueError("set_beta: the model has no CT activation; call apply_ct(model, beta) first")
    for m in acts:
        if isinstance(beta, torch.Tensor):
            m.beta = beta.detach().to(device=m.coeff.device, dtype=torch.float32)
        else:
            m.beta = torch.tensor(float(beta), dtype=torch.float32, device=m.coeff.device)
    return model


def get_beta(model: nn.Module) -> torch.Tensor:
    """The beta currently set on ``model``'s CT activations (0-d or per-example 1-D tensor)."""
    for m in model.modules():
        if isinstance(m, CTActivation):
            return m.beta
    raise ValueError("the model has no CT activation")


def apply_ct(model: nn.Module, beta, coeff: float = 0.5, *, example_input: torch.Tensor | None = None
             ) -> CTModel:
    """Return a copy of ``model`` in which every ReLU its forward computes is the CT activation.

    The input model is never mutated. Replaces ``nn.ReLU`` (also ``inplace=True`` and reused instances)
    and ``nn.LeakyReLU`` modules, and intercepts ``F.relu`` (also ``inplace=True``), ``F.relu_``,
    ``torch.relu``, ``torch.relu_``, ``Tensor.relu``, ``Tensor.relu_`` and ``F.leaky_relu`` inside any
    forward, including aliases. ``apply_ct(model, 1.0)`` computes exactly the original outputs.

    Args:
        model: any ``nn.Module`` (e.g. a RobustBench model taking [0, 1] images, normalization inside).
        beta: float in (0, 1] (or a per-example 1-D tensor, see ``set_beta``).
        coeff: c in [0, 1], default 0.5.
        example_input: optional input for a coverage probe: with it, a model whose forward computes no
            ReLU is refused here; without it, the refusal happens statically when possible, else at the
            first forward of the returned model.

    Returns:
        A ``CTModel`` in the same train/eval mode and on the same device as ``model``.

    Raises:
        ValueError: beta or coeff out of range, or the model already has CT applied.
        CTCoverageError: the model has no ReLU for CT to tune (message lists what it has instead).

    Example:
        >>> ct_model = apply_ct(robust_model, beta=0.9)
        >>> logits = ct_model(x)  # x: (B, 3, 32, 32) in [0, 1]
    """
    _validate_beta(beta)
    coeff = _validate_coeff(coeff)
    if any(isinstance(m, (CTModel, CTActivation)) for m in model.modules()):
        raise ValueError("apply_ct: the model already has CT applied; apply it to the original model")
    if example_input is not None:
        cov = ct_coverage(model, example_input)
        if cov["relu_modules"] + cov["relu_functional"] + cov["leaky_relu"] == 0:
            raise CTCoverageError(f"no ReLU to tune: found {_describe(cov['unsupported']) or 'no activation'}")

    net = copy.deepcopy(model)
    memo: dict[int, CTActivation] = {}

    def swap(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.ReLU, nn.LeakyReLU)):
                if id(child) not in memo:  # one replacement per instance keeps reuse shared
                    slope = child.negative_slope if isinstance(child, nn.LeakyReLU) else 0.0
                    memo[id(child)] = CTActivation(1.0, coeff, negative_slope=slope, inplace=child.inplace)
                setattr(parent, name, memo[id(child)])
            else:
                swap(child)

    swap(net)
    if not memo and example_input is None and not _forward_mentions_relu(net):
        found = _static_unsupported(net)
        if found:
            raise CTCoverageError(f"no ReLU to tune: found {_describe(found)}")
    ct_model = CTModel(net, beta, coeff)
    ref = next(iter(model.parameters()), None)
    if ref is None:
        ref = next(iter(model.buffers()), None)
    if ref is not None:
        ct_model.to(ref.device)
    ct_model.train(model.training)
    return ct_model


# ---------------------------------------------------------------------------------------------------
# Coverage
# ---------------------------------------------------------------------------------------------------


class _CountingMode(TorchFunctionMode):
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
            elif func in _UNSUPPORTED_FUNCS:
                self.counts["unsupported:" + _UNSUPPORTED_FUNCS[func]] += 1
        return func(*args, **kwargs)


class _AtenReluCounter(TorchDispatchMode):
    _OPS = ("relu", "relu_", "leaky_relu", "leaky_relu_", "threshold", "threshold_")

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._overloadpacket.__name__ in self._OPS:
            self.n += 1
        return func(*args, **(kwargs or {}))


def ct_coverage(model: nn.Module, example_input: torch.Tensor) -> dict:
    """Count, in one forward pass, the activations ``model`` computes and what CT would miss.

    Args:
        model: the original (un-tuned) model.
        example_input: a valid input, e.g. one [0, 1] image batch ``(1, 3, 32, 32)``.

    Returns:
        ``{"relu_modules": int, "relu_functional": int, "leaky_relu": int, "missed": int,
        "unsupported": {name: calls}}``. ``relu_modules`` counts calls of ``nn.ReLU`` modules (a reused
        instance counts once per call); ``relu_functional`` counts ``F.relu``/``torch.relu``/
        ``Tensor.relu`` and their in-place forms; ``leaky_relu`` counts LeakyReLU modules and calls;
        ``missed`` is the number of ATen-level ReLU/LeakyReLU/threshold ops still executed by the CT model
        at beta = 0.5 (0 means CT reached every ReLU); ``unsupported`` counts activations CT does not tune
        (SiLU, GELU, Softplus, ELU, Tanh, Hardswish, Mish, Swish-like custom modules, ...).
    """
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
    missed = 0
    if reachable:
        tuned = apply_ct(model, 0.5)
        tuned.eval()
        counter = _AtenReluCounter()
        with torch.no_grad(), counter:
            tuned(example_input)
        missed = counter.n
    return {
        "relu_modules": counts["relu_modules"],
        "relu_functional": counts["relu_functional"],
        "leaky_relu": counts["leaky_relu"],
        "missed": missed,
        "unsupported": {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("unsupported:")},
    }


# ---------------------------------------------------------------------------------------------------
# Curves for figures
# ---------------------------------------------------------------------------------------------------


def activation_curves(betas: Sequence[float], x: Iterable[float] | np.ndarray | torch.Tensor | None = None,
                      coeff: float = 0.5) -> dict:
    """phi at several beta, for plotting.

    Args:
        betas: values in (0, 1].
        x: points to evaluate at (default 401 points on [-3, 3]).
        coeff: c in [0, 1].

    Returns:
        ``{"x": np.ndarray (M,), "phi": {beta: np.ndarray (M,)}, "dphi": {beta: np.ndarray (M,)}}``.
    """
    xs = torch.linspace(-3, 3, 401) if x is None else torch.as_tensor(np.asarray(x), dtype=torch.float32)
    xs = xs.detach().clone().to(torch.float64).requires_grad_(True)
    phi, dphi = {}, {}
    for b in betas:
        _validate_beta(b)
        y = ct_phi(xs, torch.tensor(float(b), dtype=torch.float64), torch.tensor(float(coeff), dtype=torch.float64))
        (g,) = torch.autograd.grad(y.sum(), xs)
        phi[float(b)] = y.detach().numpy()
        dphi[float(b)] = g.detach().numpy()
    return {"x": xs.detach().numpy(), "phi": phi, "dphi": dphi}


@contextlib.contextmanager
def beta_context(model: nn.Module, beta):
    """Temporarily set ``beta`` on ``model`` (restores the previous beta on exit)."""
    old = get_beta(model)
    set_beta(model, beta)
    try:
        yield model
    finally:
        set_beta(model, old, validate=False)
