"""Curvature Tuning (CT): the beta-parameterized activation and its full-coverage application.

CT (Hu, Gamba, Balestriero, arXiv 2502.07783) replaces every ReLU of a pretrained network by

    phi(x) = c * sigmoid(beta * x / (1 - beta + eps)) * x
             + (1 - c) * (1 - beta + eps) * softplus(x / (1 - beta + eps)),      eps = 1e-6,

with beta in (0, 1] and c in [0, 1] (default 0.5). beta = 1 is the original ReLU; smaller beta smooths
the activation (lower curvature), and hence the network's decision boundary. LeakyReLU(a) becomes
``a * x + (1 - a) * phi(x)``.

``apply_ct(model, beta)`` returns a tuned copy that reaches every ReLU the forward computes, modules and
functional calls alike (scope ``"all"``; ``scope="modules"`` reproduces the CT reference code, which
swaps only modules). ``set_beta`` changes beta in place, also to one beta per example. ``ct_coverage``
counts what CT reaches and what it would miss, as a ``Coverage``. ``set_kernel_path`` / ``kernel_path`` /
``apply_ct(..., kernel=...)`` choose the implementation (``fused`` CUDA kernels, ``aten`` ops with an
analytic backward, or the plain ``formula`` under autograd); all compute the same function.

Layout, one layer per module (each imports only the ones above it):

- ``_kernels``: phi and phi' on tensors, the three kernel paths and their selection, ``ct_phi``;
- ``activation``: ``CTActivation`` (the module; beta and c as buffers) and ``activation_curves``;
- ``_forms``: what counts as a ReLU call, the scopes, ``CTCoverageError``;
- ``model``: ``CTModel`` (module swap + torch-function-mode interception), ``set_beta``, ``get_beta``;
- ``coverage``: ``Coverage`` and ``ct_coverage``;
- ``apply``: ``apply_ct``.

Example:
    >>> from ctrobust.ct import apply_ct, ct_coverage, set_beta
    >>> ct_coverage(model, x[:1]).verdict
    'full'
    >>> ct_model = apply_ct(model, 0.9)          # x: (B, 3, H, W) in [0, 1] -> logits (B, K)
    >>> set_beta(ct_model, torch.tensor([1.0, 0.9, 0.8]))  # one beta per example of the next batch
"""

from ctrobust.ct._forms import SCOPES, CTCoverageError
from ctrobust.ct._kernels import EPS, KERNEL_PATHS, ct_phi, get_kernel_path, kernel_path, set_kernel_path
from ctrobust.ct.activation import CTActivation, activation_curves
from ctrobust.ct.apply import apply_ct
from ctrobust.ct.coverage import VERDICTS, Coverage, ct_coverage
from ctrobust.ct.model import CTModel, beta_context, get_beta, set_beta

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
    "Coverage",
    "VERDICTS",
    "SCOPES",
    "KERNEL_PATHS",
    "set_kernel_path",
    "get_kernel_path",
    "kernel_path",
]
