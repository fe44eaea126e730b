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

Cost
----
The activation is a custom autograd function (``_CTFunction``) that saves only its input and has an
analytic backward. On CUDA (float32/float64) phi and phi' are one fused elementwise kernel each,
compiled at first use by PyTorch's jiterator (NVRTC; on failure, or with ``CTROBUST_CT_FUSED=0``, the aten
path below is used). Elsewhere phi takes 8 and phi' 5 vectorised aten kernels, chosen for the CPU: no
exp() argument below -30 (float32 exp() of arguments below about -87 goes through denormals, which x86
CPUs handle 10-100x slower; at beta >= 0.9 CT reaches such arguments constantly), and no log1p (slow
paths on small arguments): ``d * softplus(x/d) = relu(x) - d * log(sigmoid(|x|/d))``, a log of a number in
[0.5, 1]. A scalar beta lives on the host as a Python float (no device sync per call); per-example
tensors are derived once per ``set_beta``. The function mode costs a Python hop per torch call inside
the forward (microseconds; unmeasurable on WRN-28-10). Measured with ``benchmarks/ct_overhead.py``
(``benchmarks/results/``), one attack step (forward + input gradient, beta = 0.9) vs the ReLU model:
WRN-28-10, batch 128, H100: 1.16x (aten path 1.64x, plain autograd formula 1.91x); ResNet-18 on the
H100: 1.31x at batch 128 (per-call Python/launch overhead: 17 activations, 5.8 ms steps), 1.08x at
batch 512; ResNet-18, batch 32, CPU: 1.24x with one thread (formula: 1.7-1.8x), about 1.2x with two
threads on an idle machine, more when other processes compete for the cores (13 extra kernels per
activation, each a parallel region that waits for a descheduled thread).

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
import os
import re
import warnings
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
    "beta_context",
]

EPS = 1e-6

# Arguments of exp() inside the kernels are kept within [-_TAIL, _TAIL] (in units of the exponent): a
# float32 exp() of an argument below about -87 goes through denormal numbers, which x86 CPUs handle by
# microcode assists 10-100x slower than normal arithmetic (measured here: one sigmoid over 2M elements
# 2 ms on [-30, 30] vs 20-270 ms around -87..-1000, arguments CT reaches for beta >= 0.9). The clamp moves
# phi and phi' by at most |x| * exp(-30) ~ 1e-13 |x| in float32; float64 keeps (effectively) no clamp.
_TAIL = 30.0
_TAIL_F64 = 700.0
# softplus(z) -> z and sigmoid(z) -> 1 above this (relative error exp(-threshold): below float32's eps)
_THRESHOLD = 20.0
_THRESHOLD_F64 = 40.0

_aten = torch.ops.aten
_softplus = torch._C._nn.softplus

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
        if not (beta.is_floating_point() or beta.dtype in (torch.int32, torch.int64, torch.int16, torch.int8,
                                                           torch.uint8, torch.bool)):
            raise ValueError(f"beta must be a real tensor, got dtype {beta.dtype}")
        bad = ~((beta > 0) & (beta <= 1))
        if bool(bad.any()):
            raise ValueError(f"beta must lie in (0, 1]; got {beta[bad][0].item()!r}")
        return
    if isinstance(beta, (str, bytes)):
        raise ValueError(f"beta must be a number in (0, 1], got {beta!r}")
    try:
        b = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta must be a number in (0, 1], got {beta!r}") from None
    if not (0.0 < b <= 1.0) or b != b:
        raise ValueError(f"beta must lie in (0, 1], got {beta!r} (beta = 1 is the original ReLU)")


def _validate_coeff(coeff) -> float:
    if isinstance(coeff, (str, bytes)):
        raise ValueError(f"coeff (c) must be a number in [0, 1], got {coeff!r}")
    try:
        c = float(coeff)
    except (TypeError, ValueError):
        raise ValueError(f"coeff (c) must be a number in [0, 1], got {coeff!r}") from None
    if not (0.0 <= c <= 1.0):
        raise ValueError(f"coeff (c) must lie in [0, 1], got {coeff!r}")
    return c


def _version(t: torch.Tensor):
    try:
        return t._version
    except RuntimeError:  # inference tensors have no version counter: identity alone decides
        return None


def _tail(dtype: torch.dtype) -> float:
    return _TAIL_F64 if dtype == torch.float64 else _TAIL


def _threshold(dtype: torch.dtype) -> float:
    return _THRESHOLD_F64 if dtype == torch.float64 else _THRESHOLD


# --- kernel specs: everything one call needs, derived once per (beta, dtype, device, c, slope) ----------


class _Exact:
    """beta == 1 (known on the host): the original ReLU / LeakyReLU ops, bit for bit."""

    kind = "exact"

    def __init__(self, a: float):
        self.a = a


class _Scalar:
    """One beta < 1 for the whole tensor, as Python floats (no device sync per call)."""

    kind = "scalar"

    def __init__(self, b: float, c: float, a: float, dtype: torch.dtype, fused: bool):
        d = 1.0 - b + EPS
        t = _tail(dtype)
        self.b, self.c, self.a, self.d, self.dtype, self.fused = b, c, a, d, dtype, fused
        self.k = b / d  # sigmoid argument per unit x
        self.invd = 1.0 / d  # softplus argument per unit x
        self.lo = -t * d / b  # k * lo = -t: no exp() below -t
        self.hi = t * d / b

    def relu_part(self) -> "_Scalar":
        return _Scalar(self.b, self.c, 0.0, self.dtype, self.fused)


class _Rows:
    """Per-example beta (or a 0-d beta tensor whose value the host does not know), as tensors."""

    kind = "rows"

    def __init__(self, beta: torch.Tensor, c: float, a: float, dtype: torch.dtype, device: torch.device,
                 fused: bool):
        self.c, self.a, self.fused = c, a, fused
        b = beta.to(device=device, dtype=dtype)
        self.b = b  # the fused kernels take beta itself and treat beta == 1 exactly in-kernel
        self.n = b.shape[0] if b.dim() else None
        if fused:
            return
        t = _tail(dtype)
        self.is_one = b >= 1.0
        bb = torch.where(self.is_one, torch.full_like(b, 0.5), b)  # a harmless beta for exact rows
        d = (1.0 - bb) + EPS
        self.bb, self.invd, self.k = bb, 1.0 / d, bb / d
        self.lo, self.hi = (-t) * d / bb, t * d / bb
        # forward weights; exact rows get 0 on both CT terms, which leaves relu(x) bit for bit
        self.w = torch.where(self.is_one, torch.zeros_like(b), torch.full_like(b, c))
        self.coef = torch.where(self.is_one, torch.zeros_like(b), (c - 1.0) * d)
        # on the CPU this check is free; on a GPU it would be a sync, so exact rows are always merged
        self.any_one = bool(self.is_one.any()) if b.device.type == "cpu" else True

    def relu_part(self) -> "_Rows":
        r = copy.copy(self)
        r.a = 0.0
        return r

    @staticmethod
    def col(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            return t
        return t.view((-1,) + (1,) * (x.dim() - 1))


class _BetaState:
    """A beta tensor (0-d or per-example 1-D) plus its host value and derived specs.

    ``set_beta`` builds one and shares it among all CT activations of a model, so the per-example tensors
    are derived once per ``set_beta`` call (not once per activation and forward). A state is valid while
    the activation's ``beta`` buffer is the same tensor at the same version (``load_state_dict``, in-place
    edits and ``.to()`` all invalidate it).
    """

    def __init__(self, tensor: torch.Tensor, value: float | None = None):
        self.tensor = tensor
        self.version = _version(tensor)
        if value is None and tensor.dim() == 0 and tensor.device.type == "cpu":
            value = float(tensor)
        self.value = value
        self.specs: dict = {}

    def matches(self, t: torch.Tensor) -> bool:
        return t is self.tensor and _version(t) == self.version

    def spec(self, x: torch.Tensor, c: float, a: float):
        key = (x.dtype, x.device, c, a)
        s = self.specs.get(key)
        if s is None:
            s = self.specs[key] = self._make(x, c, a)
        return s

    def _make(self, x: torch.Tensor, c: float, a: float):
        fused = _fused_ok(x)
        t = self.tensor
        if t.dim() == 0:
            if self.value is None and not fused:
                self.value = float(t)  # one device sync per set_beta, not per call
            if self.value is not None:
                if self.value == 1.0:
                    return _Exact(a)
                return _Scalar(self.value, c, a, x.dtype, fused)
        return _Rows(t, c, a, x.dtype, x.device, fused)


# --- fused CUDA kernels (jiterator), one per direction; the aten path below is the fallback -----------

_FUSED_SRC = r"""
template <typename T> T ct_phi_kernel(T x, T b, T c, T a) {
  if (b >= T(1)) {
    if (a != T(0)) { return x > T(0) ? x : x * a; }
    return x < T(0) ? T(0) : x;
  }
  T d = T(1) - b + T(EPS_VALUE);
  T z = x / d;
  T y = b * z;
  T s1 = T(1) / (T(1) + ::exp(-y));
  T sp = z > T(sizeof(T) == 8 ? 40 : 20) ? z : ::log1p(::exp(z));
  T phi = c * x * s1 + (T(1) - c) * d * sp;
  return a != T(0) ? a * x + (T(1) - a) * phi : phi;
}
""".replace("EPS_VALUE", repr(EPS))

_FUSED_BWD_SRC = r"""
template <typename T> T ct_dphi_kernel(T g, T x, T b, T c, T a) {
  if (b >= T(1)) {
    if (x > T(0)) { return g; }
    return a != T(0) ? g * a : T(0);
  }
  T d = T(1) - b + T(EPS_VALUE);
  T z = x / d;
  T y = b * z;
  T s1 = T(1) / (T(1) + ::exp(-y));
  T s1c = T(1) / (T(1) + ::exp(y));
  T s2 = T(1) / (T(1) + ::exp(-z));
  T dphi = c * s1 * (T(1) + y * s1c) + (T(1) - c) * s2;
  return g * (a != T(0) ? a + (T(1) - a) * dphi : dphi);
}
""".replace("EPS_VALUE", repr(EPS))


class _Fused:
    enabled = os.environ.get("CTROBUST_CT_FUSED", "1").strip().lower() not in ("0", "false", "no", "off")
    failed: str | None = None
    fns: dict | None = None


def _fused_ok(x: torch.Tensor) -> bool:
    return (x.is_cuda and x.dtype in (torch.float32, torch.float64) and _Fused.enabled
            and _Fused.failed is None)


def _fused_call(name: str, *tensors, **scalars):
    """Run a jiterator kernel; ``None`` (after one warning) if jiterator is unavailable or fails."""
    try:
        if _Fused.fns is None:
            from torch.cuda import jiterator

            make = getattr(jiterator, "_create_jit_fn", None) or getattr(jiterator, "_create_jit_function")
            _Fused.fns = {
                "fwd_s": make(_FUSED_SRC, b=0.5, c=0.5, a=0.0),
                "fwd_t": make(_FUSED_SRC, c=0.5, a=0.0),
                "bwd_s": make(_FUSED_BWD_SRC, b=0.5, c=0.5, a=0.0),
                "bwd_t": make(_FUSED_BWD_SRC, c=0.5, a=0.0),
            }
        return _Fused.fns[name](*tensors, **scalars)
    except torch.cuda.OutOfMemoryError:
        raise  # callers (the engines) back off on OOM: not a reason to give up the fused kernels
    except Exception as exc:  # noqa: BLE001 - any other failure of the optional fast path falls back
        _Fused.failed = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"ctrobust.ct: fused CUDA kernel unavailable ({_Fused.failed}); "
                      "using the unfused CT activation", RuntimeWarning, stacklevel=3)
        return None


# --- phi and phi' on tensors -------------------------------------------------------------------------


def _base(x: torch.Tensor, a: float, inplace: bool = False) -> torch.Tensor:
    if inplace:
        return _aten.leaky_relu_(x, a) if a else _aten.relu_(x)
    return _aten.leaky_relu(x, a) if a else _aten.relu(x)


def _finish(res: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    return res if out is None or res is out else out.copy_(res)


_sigmoid_times = _aten.softplus_backward.grad_input  # (g, v, beta, thr, grad_input=) -> g * sigmoid(beta v)
_silu_grad = _aten.silu_backward.grad_input  # (g, y, grad_input=) -> g * silu'(y)


def _ones_like(x: torch.Tensor) -> torch.Tensor:
    return torch.ones((), dtype=x.dtype, device=x.device).expand_as(x)


def _phi(x: torch.Tensor, s, out: torch.Tensor | None = None) -> torch.Tensor:
    """phi(x) (no autograd). ``out`` receives the result when given; it may be ``x`` itself (in place).

    Unfused path, written for CPUs: every step is one vectorised aten kernel, buffers are reused, and no
    exp() sees an argument that would produce denormals. With y = b x / d, z = x / d:

        c * x * sigmoid(y)           = softplus_backward(grad=x, y)            (no overflow issue)
        (1 - c) * d * softplus(z)    = (1 - c) * (relu(x) - d * log(sigmoid(|z|)))

    The second form replaces log1p (slow, with erratic slow paths for small arguments) by a log of a
    number in [0.5, 1] (absolute error <= float eps * d).
    """
    c, a = s.c, s.a
    if s.fused:
        if s.kind == "scalar":
            res = _fused_call("fwd_s", x, b=s.b, c=c, a=a)
        else:
            res = _fused_call("fwd_t", x, s.b if s.n is None else s.col(s.b, x), c=c, a=a)
        if res is not None:
            return _finish(res, out)
        s = _refresh(s, x)
    thr = _threshold(x.dtype)
    if a:  # LeakyReLU: a * x + (1 - a) * phi(x), computed out of place (x is read at the end)
        phi = _phi(x, s.relu_part())
        return _finish(torch.lerp(phi, x, a) if s.kind == "scalar" or not s.any_one else
                       torch.where(s.col(s.is_one, x), _base(x, a), torch.lerp(phi, x, a)), out)
    if s.kind == "scalar":
        if c != 0.0:
            t1 = x.clamp_min(s.lo)  # k * lo = -tail
            _sigmoid_times(x, t1, s.k, thr, grad_input=out if c == 1.0 and out is not None else t1)
            if c == 1.0:
                return t1 if out is None else out
        lg = torch.abs(x)
        _sigmoid_times(_ones_like(x), lg, s.invd, thr, grad_input=lg).log_()  # log sigmoid(|z|)
        phi = torch.clamp_min(x, 0.0, out=out) if out is not None else torch.clamp_min(x, 0.0)
        if c != 0.0:
            torch.lerp(phi, t1, c, out=phi)
        return phi.add_(lg, alpha=-(1.0 - c) * s.d)
    # per-example beta: rows with beta == 1 get weight 0 on every CT term, which leaves relu(x) exactly
    y = torch.clamp(x, min=s.col(s.lo, x)).mul_(s.col(s.k, x))
    _sigmoid_times(x, y, 1.0, thr, grad_input=y)  # x * sigmoid(y)
    lg = torch.abs(x).mul_(s.col(s.invd, x))
    _sigmoid_times(_ones_like(x), lg, 1.0, thr, grad_input=lg).log_()
    phi = torch.clamp_min(x, 0.0, out=out) if out is not None else torch.clamp_min(x, 0.0)
    torch.lerp(phi, y, s.col(s.w, x), out=phi)
    return phi.addcmul_(lg, s.col(s.coef, x))


def _dphi(g: torch.Tensor, x: torch.Tensor, s, differentiable: bool = False) -> torch.Tensor:
    """``g * phi'(x)``. With ``differentiable`` only autograd-visible ops are used (double backward)."""
    c, a = s.c, s.a
    if s.fused and not differentiable:
        if s.kind == "scalar":
            res = _fused_call("bwd_s", g, x, b=s.b, c=c, a=a)
        else:
            res = _fused_call("bwd_t", g, x, s.b if s.n is None else s.col(s.b, x), c=c, a=a)
        if res is not None:
            return res
    if s.fused:
        s = _refresh(s, x)
    thr = _threshold(x.dtype)
    if differentiable:
        gi = _dphi_plain(g, x, s, thr)
    elif s.kind == "scalar":
        # clamp, sigmoid(z) (softplus_backward), scale, silu'(y) (silu_backward), lerp by c
        xc = x.clamp(s.lo, s.hi)
        if c == 0.0:
            gi = _sigmoid_times(g, xc, s.invd, thr, grad_input=xc)
        else:
            g2 = None if c == 1.0 else _aten.softplus_backward(g, xc, s.invd, thr)
            gi = _silu_grad(g, xc.mul_(s.k), grad_input=xc)
            if g2 is not None:
                gi = torch.lerp(g2, gi, c, out=g2)
    else:
        z = torch.clamp(x, min=s.col(s.lo, x), max=s.col(s.hi, x)).mul_(s.col(s.invd, x))
        g2 = _aten.softplus_backward(g, z, 1.0, thr)
        g1 = _silu_grad(g, z.mul_(s.col(s.bb, x)), grad_input=z)
        gi = torch.lerp(g2, g1, c, out=g2)
    if a:
        gi = torch.lerp(gi, g, a) if differentiable else torch.lerp(gi, g, a, out=gi)
    if s.kind == "rows" and s.any_one:
        exact = _aten.leaky_relu_backward(g, x, a, False) if a else _aten.threshold_backward(g, x, 0)
        gi = torch.where(s.col(s.is_one, x), exact, gi)
    return gi


def _dphi_plain(g: torch.Tensor, x: torch.Tensor, s, thr: float) -> torch.Tensor:
    """``g * phi'(x)`` from out-of-place, twice-differentiable ops (for create_graph=True)."""
    if s.kind == "scalar":
        xc = x.clamp(s.lo, s.hi)
        g1 = _dsilu_plain(g, xc * s.k)
        g2 = _aten.softplus_backward(g, xc, s.invd, thr)
        return torch.lerp(g2, g1, s.c)
    z = torch.clamp(x, min=s.col(s.lo, x), max=s.col(s.hi, x)) * s.col(s.invd, x)
    return torch.lerp(_aten.softplus_backward(g, z, 1.0, thr), _dsilu_plain(g, z * s.col(s.bb, x)), s.c)


def _dsilu_plain(g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    s1 = torch.sigmoid(y)
    return g * (s1 * (1.0 + y * torch.sigmoid(-y)))


def _refresh(s, x: torch.Tensor):
    """The unfused equivalent of a fused spec (after a jiterator failure, or for double backward)."""
    if s.kind == "scalar":
        return _Scalar(s.b, s.c, s.a, x.dtype, fused=False)
    return _Rows(s.b, s.c, s.a, x.dtype, x.device, fused=False)


class _CTFunction(torch.autograd.Function):
    """phi(x) with an analytic backward that saves only ``x``.

    d phi / dx = c * (s1 + y * s1 * (1 - s1)) + (1 - c) * s2,
    with d = 1 - beta + eps, z = x / d, y = beta * z, s1 = sigmoid(y), s2 = sigmoid(z); the first term is
    silu'(y) (one aten kernel), the second softplus'(z). ``spec`` carries beta/c/slope (see ``_Scalar``,
    ``_Rows``); with ``inplace`` the result is written into ``x`` (which is marked dirty) and a copy of the
    input is saved instead.
    """

    @staticmethod
    def forward(ctx, x, spec, inplace):
        if inplace:
            saved = x.clone()
            _phi(saved, spec, out=x)
            ctx.mark_dirty(x)
            out = x
        else:
            saved = x
            out = _phi(x, spec)
        ctx.save_for_backward(saved)
        ctx.spec = spec
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return _dphi(grad_out, x, ctx.spec, differentiable=torch.is_grad_enabled()), None, None


def _ct_apply(x: torch.Tensor, spec, inplace: bool = False) -> torch.Tensor:
    """Apply the CT activation described by ``spec`` to ``x`` (autograd-aware, optionally in place)."""
    if spec.kind == "rows" and spec.n is not None and (x.dim() == 0 or x.shape[0] != spec.n):
        raise ValueError(
            f"per-example beta has {spec.n} entries but the activation has batch size "
            f"{x.shape[0] if x.dim() else 'none'}: call set_beta() with one beta per example of the batch")
    # our own kernels are not torch-function-level calls of the network: hide them from active modes
    with torch._C.DisableTorchFunction():
        if spec.kind == "exact":
            return _base(x, spec.a, inplace)
        if torch.is_grad_enabled() and x.requires_grad:
            return _CTFunction.apply(x, spec, inplace)
        return _phi(x, spec, out=x if inplace else None)


def ct_phi(x: torch.Tensor, beta, coeff=0.5, negative_slope: float = 0.0) -> torch.Tensor:
    """Evaluate the CT activation (out of place).

    Args:
        x: any-shape float tensor.
        beta: float in (0, 1], or a 0-d tensor, or a 1-D tensor with ``x.shape[0]`` entries (per example).
        coeff: the mixing coefficient c in [0, 1].
        negative_slope: ``a`` of a LeakyReLU being tuned; the result is ``a * x + (1 - a) * phi(x)``.

    Returns:
        Tensor like ``x`` (differentiable w.r.t. ``x``). Where beta is exactly 1 the result equals
        ``relu(x)`` (``leaky_relu(x, a)``) bit for bit.

    Example:
        >>> ct_phi(torch.tensor([-1.0, 0.0, 1.0]), 0.9)
    """
    _validate_beta(beta)
    c = _validate_coeff(coeff)
    if isinstance(beta, torch.Tensor):
        t = beta.detach()
        state = _BetaState(t, float(t) if t.dim() == 0 else None)
    else:
        state = _BetaState(torch.tensor(float(beta), dtype=torch.float64), float(beta))
    return _ct_apply(x, state.spec(x, c, float(negative_slope)))


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
        self.register_buffer("beta", torch.as_tensor(beta, dtype=torch.float32).detach().clone())
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

    def _coeff_value(self) -> float:
        cache = self.__dict__.get("_coeff_cache")
        t = self.coeff
        if cache is None or cache[0] is not t or cache[1] != _version(t):
            cache = (t, _version(t), float(t))
            self.__dict__["_coeff_cache"] = cache
        return cache[2]

    def _spec(self, x: torch.Tensor, negative_slope: float | None = None):
        # hot path (once per activation call): the last spec, valid while beta/coeff are the same tensors
        # at the same versions and x has the same dtype/device
        bufs = self._buffers
        beta, coeff = bufs["beta"], bufs["coeff"]
        d = self.__dict__
        last = d.get("_last_spec")
        if (negative_slope is None and last is not None and last[0] is beta and last[2] is coeff
                and last[4] is x.dtype and last[5] == x.device and last[1] == _version(beta)
                and last[3] == _version(coeff)):
            return last[6]
        state = d.get("_beta_state")
        if state is None or not state.matches(beta):
            state = _BetaState(beta)
            d["_beta_state"] = state
        a = self.negative_slope if negative_slope is None else float(negative_slope)
        spec = state.spec(x, self._coeff_value(), a)
        if negative_slope is None:
            d["_last_spec"] = (beta, _version(beta), coeff, _version(coeff), x.dtype, x.device, spec)
        return spec

    def forward(self, x: torch.Tensor, inplace: bool | None = None) -> torch.Tensor:
        inplace = self.inplace if inplace is None else inplace
        return _ct_apply(x, self._spec(x), inplace)


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
            return _ct_apply(x, self.act._spec(x, float(slope)), inplace)
        if self.counter is not None and func in _UNSUPPORTED_FUNCS:
            self.counter["unsupported:" + _UNSUPPORTED_FUNCS[func]] += 1
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
                seen = {k.split(":", 1)[1]: v for k, v in counter.items() if k.startswith("unsupported:")}
                found = _describe(seen or _static_unsupported(self.net))
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
    if isinstance(beta, torch.Tensor):
        if beta.dim() > 1:
            raise ValueError(f"beta must be a scalar or a 1-D per-example tensor, got shape {tuple(beta.shape)}")
        beta = beta.detach()
        # the host value of a scalar beta tensor: free on the CPU; on a GPU only when validating (which
        # synchronises anyway), otherwise the kernels take beta as a tensor and no sync happens
        value = float(beta) if beta.dim() == 0 and (validate or beta.device.type == "cpu") else None
    else:
        value, beta = float(beta), None
    # one tensor (a copy: later edits of the caller's tensor do not leak in) and one derived state per
    # device, shared by all activations, so per-example values are derived once per set_beta call
    states: dict = {}
    for m in acts:
        dev = m.coeff.device
        state = states.get(dev)
        if state is None:
            if beta is None:
                t = torch.full((), value, dtype=torch.float32, device=dev)  # a fill: no host-to-device copy
                v = float(torch.tensor(value, dtype=torch.float32))  # the value the float32 buffer holds
            else:
                t = beta.to(device=dev, dtype=torch.float32, copy=True)
                v = None if value is None else float(torch.tensor(value, dtype=torch.float32))
            state = states[dev] = _BetaState(t, v)
        m.beta = state.tensor
        m.__dict__["_beta_state"] = state
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
    if x is None:
        xs = torch.linspace(-3, 3, 401, dtype=torch.float64)
    elif isinstance(x, torch.Tensor):
        xs = x.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    else:
        xs = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(-1))
    xs = xs.clone().requires_grad_(True)
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
