"""The Python API for a model you hold: ``sweep_model(model, dataset, out=..., **options)``.

``ctrobust.sweep_model`` (exported lazily from ``ctrobust``) runs the same sweep as ``ctrobust sweep`` --
one :class:`~ctrobust.config.SweepConfig`, one :func:`~ctrobust.sweep.run_sweep` -- on an ``nn.Module``
built in your own code. The module is registered for this process under ``module:<class>-<fingerprint>``
(a hash of its weights and buffers, so two different models never share a run dir's units), deep-copied
before it is moved, put in eval mode or tuned (your module is left as it was), and unregistered afterwards.
"""

from __future__ import annotations

import os

from torch import nn

from ctrobust.config import SweepConfig
from ctrobust.errors import ConfigError
from ctrobust.models.user import register_module, unregister_module
from ctrobust.sweep import SweepResult, run_sweep

__all__ = ["sweep_model"]


def sweep_model(model: nn.Module, dataset: str = "cifar10", *, out: "str | os.PathLike", progress: bool = True,
                **options) -> SweepResult:
    """Clean and robust accuracy of ``model`` per CT beta (AutoAttack), written to the run dir ``out``.

    Args:
        model: an ``nn.Module`` taking float images ``(B, C, H, W)`` in [0, 1] (CIFAR: 32x32, ImageNet:
            224x224) and returning logits ``(B, K)``, ``K`` the dataset's classes. A network trained on
            normalized inputs: pass ``ctrobust.models.Normalized(net, mean, std)``. It must compute ReLUs
            (CT tunes ReLU and LeakyReLU). Not modified.
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``.
        out: the run directory (required: ctrobust never writes into the current directory unasked). Re-running
            with the same model and options resumes it; another model or other options are refused.
        progress: show a progress bar and per-beta summaries (unless ``quiet=True``).
        **options: any other ``SweepConfig`` field, as on the command line: ``threat`` (``"Linf"``),
            ``eps`` (``"8/255"``), ``betas`` (``"0.9,0.95"`` or a list), ``coeff``, ``ct_scope``, ``seeds``,
            ``n_examples``, ``subset``, ``data`` (``"bundled"``: images shipped in packages, offline),
            ``attacks``, ``engine``, ``batch_size``, ``device``, ``quiet``, ... Unknown keys are an error with
            "did you mean". ``executor`` must be ``"local"`` (worker processes cannot see this module).

    Returns:
        :class:`~ctrobust.sweep.SweepResult`: ``run_dir`` and ``rows``, one dict per (beta, seed) with the
        columns of ``results.csv`` (``beta``, ``seed``, ``clean_acc``, ``robust_acc`` and their Wilson
        intervals, ``ct_*`` coverage, costs, ...); ``model`` is the registered ``module:...`` name.

    Raises:
        ConfigError: bad options (also ``model``/``checkpoint`` given as options, or another executor).
        ctrobust.ct.CTCoverageError: CT has no ReLU to tune in ``model``, or would miss some.

    Example:
        >>> import ctrobust
        >>> res = ctrobust.sweep_model(net, "cifar10", out="runs/mine", data="bundled", n_examples=20,
        ...                            betas="0.9", attacks="apgd-ce", eps="1/255", device="cpu")
        >>> [(r["beta"], r["robust_acc"]) for r in res.rows]
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"sweep_model needs a torch.nn.Module, got {type(model).__name__}")
    for key in ("model", "checkpoint"):
        if key in options:
            raise ConfigError(f"sweep_model takes the model itself: drop {key}= (load weights into the module)")
    if str(options.get("executor", "local")).lower() != "local":
        raise ConfigError("sweep_model runs in this process (executor='local'): worker processes cannot load a "
                          "module that exists only here; for other executors use `ctrobust sweep --model "
                          "path/to/file.py:factory`")
    if out is None:
        raise ConfigError("sweep_model needs out=RUN_DIR")
    name = register_module(model)
    try:
        cfg = SweepConfig.from_dict({**options, "model": name, "dataset": dataset, "out": os.fspath(out)},
                                    source="sweep_model").validate()
        return run_sweep(cfg, progress=progress)
    finally:
        unregister_module(name)
