"""``apply_ct``: the one entry point from an original model to a tuned ``CTModel``.

It checks its arguments, optionally probes coverage on an example input, and builds the model with the
same builder ``ct_coverage`` uses (``model._tune``), so what is counted is what runs.
"""

from __future__ import annotations

import torch
from torch import nn

from ctrobust.ct._forms import CTCoverageError, _checked_scope, _describe
from ctrobust.ct._kernels import _checked_path, _validate_beta, _validate_coeff
from ctrobust.ct.coverage import ct_coverage
from ctrobust.ct.model import CTModel, _refuse_tuned, _tune

__all__ = ["apply_ct"]


def apply_ct(model: nn.Module, beta, coeff: float = 0.5, *, example_input: torch.Tensor | None = None,
             scope: str = "all", kernel: str | None = None) -> CTModel:
    """Return a copy of ``model`` in which every ReLU its forward computes is the CT activation.

    The input model is never mutated. Replaces ``nn.ReLU`` (also ``inplace=True`` and reused instances)
    and ``nn.LeakyReLU`` modules, and (scope ``"all"``) intercepts ``F.relu`` (also ``inplace=True``),
    ``F.relu_``, ``torch.relu``, ``torch.relu_``, ``Tensor.relu``, ``Tensor.relu_`` and ``F.leaky_relu``
    inside any forward, including aliases. ``apply_ct(model, 1.0)`` computes exactly the original outputs,
    whatever the scope and kernel path.

    Args:
        model: any ``nn.Module`` (e.g. a RobustBench model taking [0, 1] images, normalization inside).
        beta: float in (0, 1] (or a per-example 1-D tensor, see ``set_beta``).
        coeff: c in [0, 1], default 0.5.
        example_input: optional input for a coverage probe: with it, a model whose forward computes no
            ReLU is refused here; without it, the refusal happens statically when possible, else at the
            first forward of the returned model.
        scope: ``"all"`` (default): every ReLU the forward computes; ``"modules"``: only ``nn.ReLU``/
            ``nn.LeakyReLU`` submodules are swapped and functional calls stay ReLUs, as in the CT reference
            code (a model with none such modules is accepted and warned about at its first forward: it
            computes the original outputs).
        kernel: pin the model to a kernel path (``"fused"``, ``"aten"``, ``"formula"``; see
            ``set_kernel_path``); ``None`` (default) follows the process-wide default at each call.

    Returns:
        A ``CTModel`` in the same train/eval mode and on the same device as ``model``.

    Raises:
        ValueError: beta or coeff out of range, or the model already has CT applied.
        UnknownNameError: unknown ``scope`` or ``kernel`` (a ``ValueError``; says "did you mean ...?").
        CTCoverageError: the model has no ReLU for CT to tune (message lists what it has instead).

    Example:
        >>> ct_model = apply_ct(robust_model, beta=0.9)
        >>> logits = ct_model(x)  # x: (B, 3, 32, 32) in [0, 1]
        >>> reference_like = apply_ct(robust_model, 0.9, scope="modules", kernel="formula")
    """
    _validate_beta(beta)
    coeff = _validate_coeff(coeff)
    scope = _checked_scope(scope)
    kernel = None if kernel is None else _checked_path(kernel)
    _refuse_tuned(model)
    if example_input is not None:
        cov = ct_coverage(model, example_input, scope=scope)
        if cov.relu_calls == 0:
            raise CTCoverageError(f"no ReLU to tune: found {_describe(cov.unsupported) or 'no activation'}")
    return _tune(model, beta, coeff, scope=scope, kernel=kernel, probed=example_input is not None)
