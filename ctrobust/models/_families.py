"""The family registry: a model name -> its family (by prefix) -> an eval-mode module taking [0, 1] input."""

from __future__ import annotations

import os

import torch
from torch import nn

from ctrobust._registry import UnknownNameError, did_you_mean
from ctrobust.data import parse_dataset
from ctrobust.errors import ConfigError
from ctrobust.models import bundled, ct_paper, robustbench, timm, torchvision, user
from ctrobust.models._common import ModelFamily, ModelLoadError, first_line
from ctrobust.threat import Threat

__all__ = ["FAMILIES", "family_of", "model_families", "load_model", "build_architecture", "keyed_by_weights",
           "check_model_options", "check_logits"]

#: dispatch order: the first family whose ``matches`` accepts a name owns it (RobustBench: everything else)
FAMILIES: tuple[ModelFamily, ...] = (user.FAMILY, ct_paper.FAMILY, torchvision.FAMILY, timm.FAMILY,
                                     bundled.FAMILY, robustbench.FAMILY)
_PREFIXES = {"ct-paper/": ct_paper.FAMILY, "torchvision/": torchvision.FAMILY, "timm/": timm.FAMILY,
             "bundled/": bundled.FAMILY}


def model_families() -> tuple[ModelFamily, ...]:
    """Every family of model names :func:`load_model` accepts, in dispatch order."""
    return FAMILIES


def family_of(name: str) -> ModelFamily:
    """The family owning ``name`` (a pure string test: nothing is imported or loaded).

    Raises:
        UnknownNameError: ``<prefix>/...`` with a prefix no family has ("did you mean 'torchvision/'?").
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownNameError(f"bad model name {name!r}")
    for fam in FAMILIES:
        if fam.matches(name):
            if fam is robustbench.FAMILY and "/" in name:
                prefix = name.split("/", 1)[0] + "/"
                raise did_you_mean("model family", prefix, list(_PREFIXES),
                                   hint="(also py:package.module:factory, path/to/file.py:factory, or a "
                                        "RobustBench name; see `ctrobust models`)")
            return fam
    raise AssertionError("the RobustBench family matches every name")  # pragma: no cover


def keyed_by_weights(name: str, checkpoint=None) -> bool:
    """True when a run of ``name`` is keyed by a hash of the model's weights rather than by its name: models
    given as code (``py:``, ``file.py:``, ``module:``), ``ct-paper/`` checkpoints, and any ``--checkpoint``."""
    return family_of(name).keyed_by_weights or checkpoint is not None


def check_model_options(name: str, checkpoint=None) -> None:
    """Refuse (``ConfigError``) an unknown family or a ``--checkpoint`` its family does not take."""
    try:
        fam = family_of(name)
    except UnknownNameError as exc:
        raise ConfigError(str(exc)) from None
    if checkpoint is not None and not fam.takes_checkpoint:
        takes = ", ".join(f.pattern.split(" ")[0] for f in FAMILIES if f.takes_checkpoint)
        raise ConfigError(f"--checkpoint does not apply to {name!r}: {fam.name} models load their own weights "
                          f"(see `ctrobust models`); it applies to {takes}")


def load_model(name: str, dataset: str = "cifar10", threat: "str | Threat" = "Linf",
               model_dir: "str | os.PathLike | None" = None, device: "str | torch.device" = "cpu",
               checkpoint: "str | os.PathLike | None" = None) -> nn.Module:
    """Load a trained model by name, in eval mode, on ``device``.

    Args:
        name: a RobustBench zoo name for the (dataset, threat) pair (see :func:`list_models`), ``bundled/...``,
            ``ct-paper/<arch>`` (cifar10/cifar100), ``torchvision/<name>[@WEIGHTS]`` or ``timm/<name>``
            (imagenet), ``py:package.module:factory`` or ``path/to/file.py:factory`` (see ``ctrobust models``).
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``.
        threat: ``"Linf"`` or ``"L2"`` (the RobustBench leaderboard; other families ignore it).
        model_dir: root of RobustBench's layout ``<model_dir>/<dataset>/<threat>/<name>.pt`` and of
            ``<model_dir>/ct-paper/``; default ``$CTROBUST_MODEL_DIR``, else ``~/.cache/ctrobust/models``.
        device: where to put the model.
        checkpoint: a state_dict file for ``ct-paper/``, ``torchvision/``, ``timm/`` and factory models
            (read with ``weights_only=True``; keys and shapes must match the architecture).

    Returns:
        ``nn.Module`` in eval mode taking [0, 1] images ``(B, C, H, W)`` and returning logits ``(B, K)``;
        ``ct-paper/``, ``torchvision/`` and ``timm/`` models are :class:`Normalized` (``.inner``, ``.mean``,
        ``.std``).

    Raises:
        UnknownNameError: unknown family/model/dataset/threat, with "did you mean ...?".
        ConfigError: ``checkpoint`` for a family that loads its own weights.
        ModelUnavailableError: weights missing and not downloadable (names the path and the source).
        ModelLoadError: the files or code are there but the model cannot be built or loaded from them
            (a checkpoint that does not fit names the first differing keys).
    """
    dataset, threat = parse_dataset(dataset), Threat.parse(threat)
    check_model_options(name, checkpoint)
    fam = family_of(name)
    model = fam.load(name, dataset, threat, model_dir=model_dir, checkpoint=checkpoint)
    return model.to(device).eval()


def build_architecture(name: str, dataset: str = "cifar10", threat: "str | Threat" = "Linf") -> nn.Module:
    """The model's architecture with random weights, without reading or downloading any checkpoint.

    Used for CT coverage (which activations a network computes). For RobustBench and timm/torchvision models
    network access is blocked while building: an architecture that insists on downloading raises instead.
    A factory (``py:``/``file.py:``) is simply called.

    Args:
        name, dataset, threat: as for :func:`load_model`.

    Returns:
        ``nn.Module`` in eval mode (random initialization) with the same forward as the trained model.
    """
    dataset, threat = parse_dataset(dataset), Threat.parse(threat)
    return family_of(name).build(name, dataset, threat).eval()


def check_logits(model: nn.Module, x: torch.Tensor, n_classes: int, name: str) -> None:
    """Pre-flight: ``model(x)`` must run and return logits ``(B, n_classes)``; else ``ModelLoadError``.

    Args:
        model: the loaded model (eval mode).
        x: a few [0, 1] images ``(B, C, H, W)`` on the model's device.
        n_classes: the dataset's number of classes.
        name: the model's name, for the message.
    """
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - the model's own code
        raise ModelLoadError(f"model {name!r} fails on a {tuple(x.shape)} batch of [0, 1] images: "
                             f"{type(exc).__name__}: {first_line(exc)}") from None
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape != (x.shape[0], n_classes):
        got = f"shape {shape}" if shape is not None else type(out).__name__
        raise ModelLoadError(f"model {name!r} returns {got} for a {tuple(x.shape)} batch; expected logits "
                             f"({x.shape[0]}, {n_classes})")
