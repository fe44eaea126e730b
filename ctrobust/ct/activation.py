"""The CT activation as a module (``CTActivation``) and its curves for figures (``activation_curves``).

``CTActivation`` holds beta and c as buffers (they follow ``.to(device)``, ``copy.deepcopy`` and the
state dict) and caches, per call site, the kernel spec derived from them: the hot path of one call is a
few identity checks, no device sync.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ctrobust.ct._kernels import (_BetaState, _checked_path, _ct_apply, _Path, _validate_beta, _validate_coeff,
                                  _version, ct_phi)

__all__ = ["CTActivation", "activation_curves"]


class CTActivation(nn.Module):
    """The CT activation as a module: ``phi_beta,c`` (optionally tuning a LeakyReLU).

    Args:
        beta: float in (0, 1]. ``beta = 1`` is exactly ReLU (bit for bit). Stored as a buffer, so it
            follows ``.to(device)``/``copy.deepcopy``; ``set_beta`` may replace it by a 1-D per-example tensor.
        coeff: c in [0, 1] (default 0.5), also a buffer.
        negative_slope: 0 for ReLU; ``a`` for LeakyReLU(a), which becomes ``a*x + (1-a)*phi(x)``.
        inplace: write the result into the input, as ``nn.ReLU(inplace=True)`` does.
        kernel: pin this activation to a kernel path (``KERNEL_PATHS``: ``"fused"``, ``"aten"``,
            ``"formula"``); ``None`` (default) follows ``set_kernel_path``/``kernel_path`` at each call.

    Shape: input ``(B, *)`` float, any range; output the same shape.

    Example:
        >>> act = CTActivation(0.9)
        >>> act(torch.tensor([-1.0, 0.0, 1.0]))  # smooth, close to ReLU
    """

    def __init__(self, beta: float = 1.0, coeff: float = 0.5, negative_slope: float = 0.0,
                 inplace: bool = False, *, kernel: str | None = None):
        super().__init__()
        _validate_beta(beta)
        coeff = _validate_coeff(coeff)
        self.kernel = None if kernel is None else _checked_path(kernel)
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
        if self.__dict__.get("kernel"):
            s += f", kernel={self.kernel}"
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
        # at the same versions, x has the same dtype/device and the kernel path is the same
        bufs = self._buffers
        beta, coeff = bufs["beta"], bufs["coeff"]
        d = self.__dict__
        path = d.get("kernel") or _Path.current  # .get: activations pickled before paths existed
        last = d.get("_last_spec")
        if (negative_slope is None and last is not None and last[0] is beta and last[2] is coeff
                and last[4] is x.dtype and last[5] == x.device and last[1] == _version(beta)
                and last[3] == _version(coeff) and last[7] == path):
            return last[6]
        state = d.get("_beta_state")
        if state is None or not state.matches(beta):
            state = _BetaState(beta)
            d["_beta_state"] = state
        a = self.negative_slope if negative_slope is None else float(negative_slope)
        spec = state.spec(x, self._coeff_value(), a, path)
        if negative_slope is None:
            d["_last_spec"] = (beta, _version(beta), coeff, _version(coeff), x.dtype, x.device, spec, path)
        return spec

    def forward(self, x: torch.Tensor, inplace: bool | None = None) -> torch.Tensor:
        """phi(x) (or ``a*x + (1-a)*phi(x)``); ``inplace`` overrides the module's setting for this call."""
        inplace = self.inplace if inplace is None else inplace
        return _ct_apply(x, self._spec(x), inplace)



def activation_curves(betas: Sequence[float], x: Iterable[float] | np.ndarray | torch.Tensor | None = None,
                      coeff: float = 0.5) -> dict:
    """phi and phi' at several beta, for plotting (float64, on the CPU, current kernel path).

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

