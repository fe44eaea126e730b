"""Family ``torchvision/``: torchvision's ImageNet classifiers with their released weights, normalization inside.

``torchvision/<name>`` is ``torchvision.models.get_model(<name>)`` (any of torchvision's classification models,
``torchvision.models.list_models(module=torchvision.models)``) with the ``IMAGENET1K_V1`` weights where they
exist -- what ``pretrained=True`` gave, and what the CT paper used for ResNet-18/50/101/152 -- else the
enum's ``DEFAULT``; ``torchvision/<name>@<WEIGHTS>`` picks another set (``torchvision/resnet50@IMAGENET1K_V2``).
The weights' own preprocessing supplies mean and std (ResNets: ImageNet mean (0.485, 0.456, 0.406), std
(0.229, 0.224, 0.225)) and the crop size: the model is ``Normalized(net, mean, std, input_size=crop)``
taking [0, 1] images; ctrobust's ImageNet images are Resize 256 + CenterCrop 224 (the reference's transform),
and a model whose crop is not 224 resizes them to its crop inside (bilinear).

Weights are read from torchvision's own cache, ``torch.hub.get_dir()/checkpoints/<file of the weights URL>``
(e.g. ``resnet50-0676ba61.pth``), with ``torch.load(weights_only=True)``; a missing file is downloaded there
when the network allows, else :class:`ModelUnavailableError` names the file and its URL. ``--checkpoint FILE``
loads a state_dict of the same architecture instead (then the run is keyed by the weights' hash).

The CT reference's ResNet-50/101/152 variant gives each Bottleneck three ReLU modules (``relu1``, ``relu2``,
``relu3``); torchvision's Bottleneck calls one shared ``relu`` module three times. ReLU modules have no
parameters, so the ``IMAGENET1K_V1`` state_dict loads into both and they compute the same function; module-scope
CT swaps the shared module, so each of its three calls is tuned -- both variants are tuned identically.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ctrobust._registry import UnknownNameError, did_you_mean
from ctrobust.models._common import (ModelFamily, ModelLoadError, Normalized, ensure_hub_file, first_line,
                                     hub_checkpoint_file, load_checked, read_state_dict)

__all__ = ["FAMILY", "classification_models", "weights_of", "hub_file"]

PREFIX = "torchvision/"
PAPER_WEIGHTS = "IMAGENET1K_V1"


def classification_models() -> list[str]:
    """torchvision's classification model names (``resnet18``, ``vit_b_16``, ...)."""
    import torchvision.models

    return list(torchvision.models.list_models(module=torchvision.models))


def _parse(name: str, dataset: str) -> tuple[str, str | None]:
    rest = name[len(PREFIX):]
    arch, _, tag = rest.partition("@")
    names = classification_models()
    if arch not in names:
        raise did_you_mean("torchvision model", name, [PREFIX + n for n in names],
                           hint="(torchvision's classification models; see `ctrobust models`)")
    if dataset != "imagenet":
        raise UnknownNameError(f"model {name!r} is an ImageNet model, not for {dataset}: pass --dataset imagenet")
    return arch, (tag or None)


def weights_of(name: str, dataset: str = "imagenet"):
    """The torchvision ``WeightsEnum`` member ``torchvision/<name>[@WEIGHTS]`` loads."""
    import torchvision.models

    arch, tag = _parse(name, dataset)
    enum = torchvision.models.get_model_weights(arch)
    if tag is None:
        return enum[PAPER_WEIGHTS] if PAPER_WEIGHTS in enum.__members__ else enum.DEFAULT
    if tag not in enum.__members__:
        raise did_you_mean(f"weights of torchvision/{arch}", tag, list(enum.__members__))
    return enum[tag]


def hub_file(name: str, dataset: str = "imagenet") -> Path:
    """The torch-hub cache file of the model's weights (``<hub_dir>/checkpoints/<file>``)."""
    return hub_checkpoint_file(weights_of(name, dataset).url)


def _net(arch: str, weights) -> nn.Module:
    """The architecture as torchvision builds it for ``weights``, with random weights."""
    import torchvision.models

    kwargs = {"num_classes": len(weights.meta["categories"])}
    # the parameters torchvision's builders overwrite when given weights (models/googlenet.py, inception.py,
    # vision_transformer.py, maxvit.py), so the random-weight build computes what the pretrained one does
    if arch in ("googlenet", "inception_v3"):
        kwargs.update(transform_input=True, aux_logits=True, init_weights=False)
    if arch.startswith("vit_"):
        kwargs["image_size"] = weights.meta["min_size"][0]
    if arch.startswith("maxvit"):
        kwargs["input_size"] = weights.meta["min_size"]
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def _wrap(net: nn.Module, weights) -> Normalized:
    t = weights.transforms()
    crop = int(t.crop_size[0])
    return Normalized(net, t.mean, t.std, input_size=(crop, crop))


def build(name: str, dataset: str, threat=None) -> Normalized:
    arch, _ = _parse(name, dataset)
    weights = weights_of(name, dataset)
    return _wrap(_net(arch, weights), weights)


def load(name: str, dataset: str, threat=None, model_dir=None, checkpoint=None) -> Normalized:
    arch, _ = _parse(name, dataset)
    weights = weights_of(name, dataset)
    model = _wrap(_net(arch, weights), weights)
    expected = f"{name} (torchvision's {arch}, {len(weights.meta['categories'])} classes)"
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        state = read_state_dict(path, what=f"--checkpoint for {name}")
    else:
        path = ensure_hub_file(weights.url, hub_checkpoint_file(weights.url),
                               what=f"torchvision's {weights} weights for {name}")
        try:
            state = read_state_dict(path, what=str(weights))
        except ModelLoadError as exc:
            raise ModelLoadError(f"{first_line(exc)}; delete it to download it again from {weights.url}") from None
    load_checked(model.inner, state, path=path, expected=expected)
    return model


def _weights(dataset: str, model_dir) -> str:
    return (f"torchvision's cache {Path(torch.hub.get_dir()) / 'checkpoints'}/<file> (IMAGENET1K_V1 where it exists, "
            "else DEFAULT; @WEIGHTS picks another), downloaded when the network allows; or --checkpoint FILE")


FAMILY = ModelFamily(
    name="torchvision", pattern="torchvision/<name>[@WEIGHTS]", datasets=("imagenet",),
    about="torchvision's ImageNet classifiers (the paper's: resnet18, resnet50, resnet101, resnet152)",
    matches=lambda name: name.startswith(PREFIX), load=load, build=build, weights=_weights,
    names=lambda dataset: ([PREFIX + a for a in ("resnet18", "resnet50", "resnet101", "resnet152")]
                           if dataset == "imagenet" else []),
    keyed_by_weights=False, takes_checkpoint=True)
