"""CT's kernel layer: phi and phi' on tensors, three selectable implementation paths, ``ct_phi``.

phi(x) = c * sigmoid(beta * x / d) * x + (1 - c) * d * softplus(x / d), d = 1 - beta + EPS, EPS = 1e-6;
LeakyReLU(a) becomes ``a * x + (1 - a) * phi(x)``; wherever beta == 1 the original op runs, bit for bit.

Kernel paths (``KERNEL_PATHS``), chosen in code like timm's ``set_layer_config``:

``fused``
    One jiterator kernel per direction (NVRTC-compiled at first use) on CUDA float32/float64 tensors.
    Where it does not apply (CPU, other dtypes, or after a jiterator failure, which warns once) the
    ``aten`` path runs instead, silently (the two agree to float32 precision, so a model runs everywhere
    under one setting). This is the default.
``aten``
    Composed aten kernels with the analytic backward of ``_CTFunction`` (which saves only the input):
    phi takes 8 and phi' 5 vectorised kernels, chosen for the CPU: no exp() argument below -30 (float32
    exp() of arguments below about -87 goes through denormals, which x86 CPUs handle 10-100x slower; at
    beta >= 0.9 CT reaches such arguments constantly), and no log1p (slow paths on small arguments):
    ``d * softplus(x/d) = relu(x) - d * log(sigmoid(|x|/d))``, a log of a number in [0.5, 1].
``formula``
    The formula above as plain torch ops, differentiated by autograd (no custom backward, no clamping):
    the readable reference the other two are tested against, and the "naive" cost baseline.

Selection: ``set_kernel_path(name)`` sets the process-wide default, ``kernel_path(name)`` sets it for a
``with`` block (timm-style: a global, not thread-local), and ``apply_ct(..., kernel=name)`` /
``CTActivation(..., kernel=name)`` pin one model, which then ignores the default. The initial default is
``fused``, or ``aten`` when ``CTROBUST_CT_FUSED`` is 0/false/no/off at import (read once: a switch for
machines whose NVRTC cannot compile the jiterator kernels).

Cost: one attack step with CT against the ReLU model is measured by ``benchmarks/ct_overhead.py``
(``benchmarks/results/ct_overhead_*.txt``); the fused path's saving is that the backward keeps only the input.
A scalar beta lives on the host as a Python float (no device sync per call); per-example
tensors are derived once per ``set_beta`` (``_BetaState``).
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from typing import Iterator

import torch
import torch.nn.functional as F

from ctrobust._registry import did_you_mean

__all__ = ["EPS", "KERNEL_PATHS", "ct_phi", "get_kernel_path", "kernel_path", "set_kernel_path"]

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

# --- argument checks and small helpers ----------------------------------------------------------------


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


# --- kernel paths ------------------------------------------------------------------------------------

KERNEL_PATHS = ("fused", "aten", "formula")


def _initial_path() -> str:
    # an environment switch for machines where NVRTC cannot compile the jiterator kernels; read once, so
    # a process's default does not change under it
    off = os.environ.get("CTROBUST_CT_FUSED", "1").strip().lower() in ("0", "false", "no", "off")
    return "aten" if off else "fused"


class _Path:
    """The process-wide default kernel path, read at every activation call of an unpinned model."""

    current: str = _initial_path()


def _checked_path(name) -> str:
    """``name`` as one of ``KERNEL_PATHS``, or an ``UnknownNameError`` with "did you mean"."""
    if isinstance(name, str) and name in KERNEL_PATHS:
        return KERNEL_PATHS[KERNEL_PATHS.index(name)]
    raise did_you_mean("CT kernel path", str(name), KERNEL_PATHS)


def get_kernel_path() -> str:
    """The current default kernel path: one of ``KERNEL_PATHS`` (``"fused"``, ``"aten"``, ``"formula"``)."""
    return _Path.current


def set_kernel_path(name: str) -> str:
    """Set the process-wide default kernel path of CT activations not pinned by ``kernel=``.

    Args:
        name: ``"fused"`` (jiterator CUDA kernels; CPU and other dtypes fall back to ``aten``),
            ``"aten"`` (composed aten ops, analytic backward) or ``"formula"`` (plain formula, autograd).

    Returns:
        The previous default (to restore it later).

    Raises:
        UnknownNameError: ``name`` is not a kernel path (the message suggests the closest one).

    Example:
        >>> previous = set_kernel_path("aten")
    """
    name = _checked_path(name)
    previous, _Path.current = _Path.current, name
    return previous


@contextlib.contextmanager
def kernel_path(name: str) -> Iterator[str]:
    """Use kernel path ``name`` as the default inside a ``with`` block (restored on exit, also on errors).

    Process-wide, like timm's ``set_layer_config``; models built with ``apply_ct(..., kernel=...)`` keep
    their own path.

    Example:
        >>> with kernel_path("formula"):
        ...     logits = ct_model(x)
    """
    previous = set_kernel_path(name)
    try:
        yield _Path.current
    finally:
        _Path.current = previous


# --- kernel specs: everything one call needs, derived once per (beta, dtype, device, c, slope, path) ----


class _Exact:
    """beta == 1 (known on the host): the original ReLU / LeakyReLU ops, bit for bit."""

    kind = "exact"

    def __init__(self, a: float):
        self.a = a


class _Scalar:
    """One beta < 1 for the whole tensor, as Python floats (no device sync per call)."""

    kind = "scalar"

    def __init__(self, b: float, c: float, a: float, dtype: torch.dtype, fused: bool, formula: bool = False):
        d = 1.0 - b + EPS
        t = _tail(dtype)
        self.b, self.c, self.a, self.d, self.dtype, self.fused = b, c, a, d, dtype, fused
        self.formula = formula
        self.k = b / d  # sigmoid argument per unit x
        self.invd = 1.0 / d  # softplus argument per unit x
        self.lo = -t * d / b  # k * lo = -t: no exp() below -t
        self.hi = t * d / b

    def relu_part(self) -> "_Scalar":
        return _Scalar(self.b, self.c, 0.0, self.dtype, self.fused, self.formula)


class _Rows:
    """Per-example beta (or a 0-d beta tensor whose value the host does not know), as tensors."""

    kind = "rows"

    def __init__(self, beta: torch.Tensor, c: float, a: float, dtype: torch.dtype, device: torch.device,
                 fused: bool, formula: bool = False):
        self.c, self.a, self.fused, self.formula = c, a, fused, formula
        b = beta.to(device=device, dtype=dtype)
        self.b = b  # the fused kernels take beta itself and treat beta == 1 exactly in-kernel
        self.n = b.shape[0] if b.dim() else None
        if fused:
            return
        t = _tail(dtype)
        self.is_one = b >= 1.0
        bb = torch.where(self.is_one, torch.full_like(b, 0.5), b)  # a harmless beta for exact rows
        d = (1.0 - bb) + EPS
        self.bb, self.d, self.invd, self.k = bb, d, 1.0 / d, bb / d
        self.lo, self.hi = (-t) * d / bb, t * d / bb
        # forward weights; exact rows get 0 on both CT terms, which leaves relu(x) bit for bit
        self.w = torch.where(self.is_one, torch.zeros_like(b), torch.full_like(b, c))
        self.coef = torch.where(self.is_one, torch.zeros_like(b), (c - 1.0) * d)
        # on the CPU this check is free; on a GPU it would be a sync, so exact rows are always merged
        self.any_one = bool(self.is_one.any()) if b.device.type == "cpu" else True
        # A block mixing beta == 1 rows with beta < 1 rows (the fast engine batches betas): on the CPU the
        # CT kernels run on the beta < 1 rows only and the others take the original op, instead of running
        # CT on every row and discarding it where beta == 1. Every element is computed by the same ops as
        # before (elementwise), so results are bit for bit the same; it saves the CT compute of the exact
        # rows. (On a GPU the fused kernels treat beta == 1 in-kernel.)
        self.split = None
        if self.any_one and b.device.type == "cpu" and self.n is not None:
            ct_rows = torch.nonzero(~self.is_one).squeeze(1)
            if 0 < ct_rows.numel() < self.n:
                self.split = (ct_rows, _Rows(b[ct_rows], c, a, dtype, device, fused, formula))

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

    def spec(self, x: torch.Tensor, c: float, a: float, path: str):
        key = (x.dtype, x.device, c, a, path)
        s = self.specs.get(key)
        if s is None:
            s = self.specs[key] = self._make(x, c, a, path)
        return s

    def _make(self, x: torch.Tensor, c: float, a: float, path: str):
        fused = path == "fused" and _fused_ok(x)  # elsewhere "fused" means the aten path (same results)
        formula = path == "formula"
        t = self.tensor
        if t.dim() == 0:
            if self.value is None and not fused:
                self.value = float(t)  # one device sync per set_beta, not per call
            if self.value is not None:
                if self.value == 1.0:
                    return _Exact(a)
                return _Scalar(self.value, c, a, x.dtype, fused, formula)
        return _Rows(t, c, a, x.dtype, x.device, fused, formula)


# --- fused CUDA kernels (jiterator), one per direction ("fused" path; the aten path is the fallback) ---

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
    """The compiled jiterator kernels (built at first use) and, after a failure, why they are off."""

    failed: str | None = None
    fns: dict | None = None


def _fused_ok(x: torch.Tensor) -> bool:
    return x.is_cuda and x.dtype in (torch.float32, torch.float64) and _Fused.failed is None


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
    if s.kind == "rows" and s.split is not None and x.dim() > 0 and x.shape[0] == s.n:
        rows, sub = s.split
        part = _phi(x.index_select(0, rows), sub)  # before ``out`` (maybe ``x`` itself) is overwritten
        res = _finish(_base(x, a), out)
        return res.index_copy_(0, rows, part)
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
    if (not differentiable and s.kind == "rows" and s.split is not None and x.dim() > 0
            and x.shape[0] == s.n):
        rows, sub = s.split
        exact = _aten.leaky_relu_backward(g, x, a, False) if a else _aten.threshold_backward(g, x, 0)
        return exact.index_copy_(0, rows, _dphi(g.index_select(0, rows), x.index_select(0, rows), sub))
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
        if spec.formula:
            return _formula_apply(x, spec, inplace)
        if torch.is_grad_enabled() and x.requires_grad:
            return _CTFunction.apply(x, spec, inplace)
        return _phi(x, spec, out=x if inplace else None)


# --- the plain formula ("formula" path) ----------------------------------------------------------------


def _phi_formula(x: torch.Tensor, s) -> torch.Tensor:
    """phi(x) as the paper writes it, in torch ops that autograd differentiates (no custom backward).

    No clamped exp() tails and no buffer reuse: the reference for the other paths. Rows with beta == 1
    take the original op, as on the other paths, so beta = 1 stays exact.
    """
    thr = _threshold(x.dtype)
    if s.kind == "scalar":
        b, d = s.b, s.d
    else:
        b, d = s.col(s.bb, x), s.col(s.d, x)
    phi = s.c * torch.sigmoid(b * x / d) * x + (1.0 - s.c) * d * F.softplus(x / d, threshold=thr)
    if s.a:
        phi = s.a * x + (1.0 - s.a) * phi
    if s.kind == "rows":
        phi = torch.where(s.col(s.is_one, x), _base(x, s.a), phi)
    return phi


def _formula_apply(x: torch.Tensor, s, inplace: bool) -> torch.Tensor:
    if not inplace:
        return _phi_formula(x, s)
    # autograd saves the formula's input for its backward: writing the result into that same tensor would
    # invalidate it, so with a graph the formula reads a copy (as _CTFunction's in-place path does)
    src = x.clone() if torch.is_grad_enabled() and x.requires_grad else x
    return x.copy_(_phi_formula(src, s))


def ct_phi(x: torch.Tensor, beta, coeff=0.5, negative_slope: float = 0.0, *, kernel: str | None = None
           ) -> torch.Tensor:
    """Evaluate the CT activation (out of place).

    Args:
        x: any-shape float tensor.
        beta: float in (0, 1], or a 0-d tensor, or a 1-D tensor with ``x.shape[0]`` entries (per example).
        coeff: the mixing coefficient c in [0, 1].
        negative_slope: ``a`` of a LeakyReLU being tuned; the result is ``a * x + (1 - a) * phi(x)``.
        kernel: kernel path (``KERNEL_PATHS``); default: the current one (``get_kernel_path()``).

    Returns:
        Tensor like ``x`` (differentiable w.r.t. ``x``). Where beta is exactly 1 the result equals
        ``relu(x)`` (``leaky_relu(x, a)``) bit for bit.

    Example:
        >>> ct_phi(torch.tensor([-1.0, 0.0, 1.0]), 0.9)
    """
    _validate_beta(beta)
    c = _validate_coeff(coeff)
    path = _Path.current if kernel is None else _checked_path(kernel)
    if isinstance(beta, torch.Tensor):
        t = beta.detach()
        state = _BetaState(t, float(t) if t.dim() == 0 else None)
    else:
        state = _BetaState(torch.tensor(float(beta), dtype=torch.float64), float(beta))
    return _ct_apply(x, state.spec(x, c, float(negative_slope), path))
