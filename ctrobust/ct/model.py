"""The tuned model: ``CTModel`` (module swap + function-mode interception), ``set_beta``, ``get_beta``.

Why two mechanisms (scope ``all``): the CT reference code swaps only modules, so networks written with
``F.relu`` (PreActResNet-style blocks, the ResNet-18 shipped with AutoAttack) are silently evaluated
unmodified. ``CTModel`` therefore combines

1. a **module swap**: every ``nn.ReLU``/``nn.LeakyReLU`` of a deep copy becomes a ``CTActivation`` (one
   replacement per original instance, so an instance reused at several places stays shared). This keeps
   the module tree honest (``print(model)`` shows what runs) and makes state (beta, c) visible buffers that
   follow ``.to(device)`` and ``copy.deepcopy``;
2. a **torch function mode** (``torch.overrides.TorchFunctionMode``) entered around the wrapped network's
   forward, which intercepts the functional forms at PyTorch's ``__torch_function__`` dispatch. Because it
   intercepts the *call*, not a module attribute, it also catches aliases bound before CT was applied, and
   it needs no tracing: ``torch.fx`` fails on data-dependent control flow found in several RobustBench
   models, and monkey-patching ``torch.nn.functional.relu`` misses aliases and leaks across threads. It
   costs a Python hop per torch call inside the forward (microseconds; unmeasurable on WRN-28-10).

Scope ``modules`` keeps the swap and drops the mode, which reproduces the reference code.

Per-sample beta: ``set_beta(model, beta)`` accepts a 1-D tensor with one beta per example; it is broadcast
over the non-batch dimensions of every activation, so one forward pass can evaluate an example at several
betas (the fast engine batches betas this way).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections import Counter

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ctrobust.ct._forms import (_LEAKY, _LEAKY_INPLACE, _RELU_INPLACE, _RELU_OUT, _UNSUPPORTED_FUNCS,
                                CTCoverageError, _checked_scope, _CountingMode, _describe, _forward_mentions_relu,
                                _static_unsupported)
from ctrobust.ct._kernels import _BetaState, _checked_path, _ct_apply, _validate_beta
from ctrobust.ct.activation import CTActivation

__all__ = ["CTModel", "set_beta", "get_beta", "beta_context"]


class _CTFunctionMode(TorchFunctionMode):
    """Routes functional ReLU/LeakyReLU calls made inside a forward to a ``CTActivation``."""

    def __init__(self, act: CTActivation, counter: Counter | None = None):
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


class CTModel(nn.Module):
    """A network with Curvature Tuning applied to the ReLUs its scope reaches (see the module docstring).

    Built by ``apply_ct``; constructing one directly wraps ``net`` as it is (no module swap).

    Args:
        net: the network to run, normally a deep copy whose ReLU/LeakyReLU modules are ``CTActivation``.
        beta: float in (0, 1] or a per-example 1-D tensor (see ``set_beta``).
        coeff: c in [0, 1].
        scope: ``"all"`` (default: functional ReLU calls are tuned too) or ``"modules"`` (they are not).
        kernel: kernel path pinned for the functional calls, or ``None`` to follow ``set_kernel_path``.

    Attributes:
        net: the tuned deep copy of the original model (its ReLU/LeakyReLU modules replaced).
        ct: the ``CTActivation`` used for functional ReLU calls (shares beta/coeff with the modules
            through ``set_beta``; unused by scope ``modules``).
        scope: the scope (``SCOPES``).
        kernel: the pinned kernel path or ``None``.

    ``forward(x)`` takes what the original model takes (for ctrobust: [0, 1] images ``(B, C, H, W)``)
    and returns its output (logits ``(B, K)``). The first forward checks that some ReLU is computed
    (``CTCoverageError`` if none is).
    """

    def __init__(self, net: nn.Module, beta, coeff: float = 0.5, *, scope: str = "all",
                 kernel: str | None = None):
        super().__init__()
        self.scope = _checked_scope(scope)
        self.kernel = None if kernel is None else _checked_path(kernel)
        self.net = net
        self.ct = CTActivation(1.0, coeff, kernel=self.kernel)
        self._checked = False
        set_beta(self, beta)

    @property
    def beta(self) -> torch.Tensor:
        """The current beta: a 0-d tensor, or 1-D with one entry per example (``set_beta``)."""
        return self.ct.beta

    @property
    def coeff(self) -> float:
        """c in [0, 1]."""
        return float(self.ct.coeff)

    def forward(self, *args, **kwargs):
        counter = None if self._checked else Counter()
        scope = self.__dict__.get("scope", "all")  # .get: models pickled before scopes existed
        if scope == "all":
            with _CTFunctionMode(self.ct, counter):
                out = self.net(*args, **kwargs)
            relu_calls = counter["ct_calls"] if counter is not None else 0
        elif counter is None:
            return self.net(*args, **kwargs)  # scope "modules": the swapped modules alone
        else:
            # first forward of scope "modules": count the ReLU calls the scope leaves alone (changes nothing)
            with _CountingMode(counter, [0]):
                out = self.net(*args, **kwargs)
            relu_calls = counter["relu_functional"] + counter["leaky_relu"]
        if counter is not None:
            n_modules = sum(1 for m in self.net.modules() if isinstance(m, CTActivation))
            if relu_calls == 0 and n_modules == 0:
                seen = {k.split(":", 1)[1]: v for k, v in counter.items() if k.startswith("unsupported:")}
                found = _describe(seen or _static_unsupported(self.net))
                raise CTCoverageError(f"no ReLU to tune: the forward pass computed no ReLU/LeakyReLU"
                                      f"{' (found ' + found + ')' if found else ''}; CT does not apply")
            if scope == "modules" and n_modules == 0:
                # allowed (it is what the reference code does with such a model), but never silently
                warnings.warn(f"CT scope 'modules' tunes nothing here: the model has no nn.ReLU/nn.LeakyReLU "
                              f"module and its {relu_calls} functional ReLU call(s) stay ReLUs, so the outputs "
                              "are the original model's (scope 'all' tunes them)", RuntimeWarning, stacklevel=2)
            self._checked = True
        return out



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
    """The beta currently set on ``model``'s CT activations (0-d or per-example 1-D tensor).

    Raises:
        ValueError: ``model`` has no CT activation.
    """
    for m in model.modules():
        if isinstance(m, CTActivation):
            return m.beta
    raise ValueError("the model has no CT activation")


@contextlib.contextmanager
def beta_context(model: nn.Module, beta):
    """Temporarily set ``beta`` on ``model`` (restores the previous beta on exit, also on errors).

    Args:
        model: module containing ``CTActivation`` instances (e.g. a ``CTModel``).
        beta: float in (0, 1] or a per-example 1-D tensor, as for ``set_beta``.

    Example:
        >>> with beta_context(ct_model, 1.0):
        ...     logits = ct_model(x)  # the original model's logits
    """
    old = get_beta(model)
    set_beta(model, beta)
    try:
        yield model
    finally:
        set_beta(model, old, validate=False)


def _refuse_tuned(model: nn.Module) -> None:
    if any(isinstance(m, (CTModel, CTActivation)) for m in model.modules()):
        raise ValueError("apply_ct: the model already has CT applied; apply it to the original model")


def _tune(model: nn.Module, beta, coeff: float, *, scope: str = "all", kernel: str | None = None,
          probed: bool = False) -> CTModel:
    """``apply_ct`` after its argument checks: copy, swap the activation modules, wrap.

    ``probed``: a coverage probe has already shown that the model computes a ReLU (skips the static
    refusal). Shared by ``apply_ct`` and ``ct_coverage``, which therefore build the same tuned model.
    """
    _refuse_tuned(model)
    net = copy.deepcopy(model)
    memo: dict[int, CTActivation] = {}

    def swap(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.ReLU, nn.LeakyReLU)):
                if id(child) not in memo:  # one replacement per instance keeps reuse shared
                    slope = child.negative_slope if isinstance(child, nn.LeakyReLU) else 0.0
                    memo[id(child)] = CTActivation(1.0, coeff, negative_slope=slope, inplace=child.inplace,
                                                   kernel=kernel)
                setattr(parent, name, memo[id(child)])
            else:
                swap(child)

    swap(net)
    if not memo and not probed and not _forward_mentions_relu(net):
        found = _static_unsupported(net)
        if found:
            raise CTCoverageError(f"no ReLU to tune: found {_describe(found)}")
    ct_model = CTModel(net, beta, coeff, scope=scope, kernel=kernel)
    ref = next(iter(model.parameters()), None)
    if ref is None:
        ref = next(iter(model.buffers()), None)
    if ref is not None:
        ct_model.to(ref.device)
    ct_model.train(model.training)
    return ct_model
