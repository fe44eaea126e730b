"""Family ``ct-paper/``: the CIFAR ResNets the CT paper evaluated, with the reference code's checkpoint layout.

The CT reference repository (Leon-Leyang/curvature-tuning) evaluates naturally trained ResNet-18/34/50/101/152
on CIFAR-10 and CIFAR-100: the CIFAR ResNets of its ``utils/model.py``, trained 200 epochs by its ``train.py``
and saved as a plain ``state_dict`` in ``./ckpts/{model}_{dataset}_epoch200.pth``. This module is our own
implementation of that architecture, written from its layout so that those files load key for key:

- ``conv1`` = Sequential(Conv2d 3x3 stride 1 pad 1 no bias, BatchNorm2d, ReLU);
- stages ``conv2_x`` .. ``conv5_x`` (64, 128, 256, 512 channels; strides 1, 2, 2, 2) of ``BasicBlock``
  (ResNet-18/34: ``residual_function`` = conv3x3, BN, ReLU, conv3x3, BN) or ``BottleNeck`` (ResNet-50/101/152,
  expansion 4: conv1x1, BN, ReLU, conv3x3 (the block's stride), BN, ReLU, conv1x1, BN) modules, each with a
  ``shortcut`` Sequential (1x1 conv + BN when the shape changes, else empty);
- ``avg_pool`` (adaptive, 1x1) and ``fc``.

**The block's output ReLU is a fresh ``nn.ReLU(inplace=True)`` built inside ``forward``**, as in the reference:
it is not a submodule, so CT scope ``modules`` (the reference's ``replace_module``) leaves it a ReLU -- one
untouched ReLU call per block -- while scope ``all`` tunes it.

The reference normalizes in its data transform, outside the model; here the dataset's normalization is inside
(:class:`ctrobust.models.Normalized`), so the model takes [0, 1] images ``(B, 3, 32, 32)`` and attacks stay in
pixel space: CIFAR-10 mean (0.491, 0.482, 0.447), std (0.247, 0.244, 0.262); CIFAR-100 mean (0.507, 0.487,
0.441), std (0.267, 0.256, 0.276). ``load_model("ct-paper/resnet18", "cifar10").inner`` is the bare network.

Weights: ``--checkpoint FILE``, else ``<model_dir>/ct-paper/<arch>_<dataset>_epoch200.pth`` (the reference's
file name). They are not downloadable: train them with the reference's ``train.py`` (or your own run).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ctrobust._registry import UnknownNameError, did_you_mean
from ctrobust.data import num_classes
from ctrobust.models._common import ModelFamily, Normalized, load_checked, model_root, read_state_dict

__all__ = ["CIFARResNet", "BasicBlock", "BottleNeck", "ARCHS", "NORMALIZATION", "FAMILY", "default_checkpoint",
           "build_resnet"]

PREFIX = "ct-paper/"

#: dataset -> (mean, std) of the reference's data transform
NORMALIZATION = {
    "cifar10": ((0.491, 0.482, 0.447), (0.247, 0.244, 0.262)),
    "cifar100": ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276)),
}


class BasicBlock(nn.Module):
    """ResNet-18/34 block: ``relu(residual_function(x) + shortcut(x))``, the ReLU built in ``forward``."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        out = out_channels * self.expansion
        self.residual_function = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out, 3, padding=1, bias=False),
            nn.BatchNorm2d(out),
        )
        self.shortcut = _shortcut(in_channels, out, stride)

    def forward(self, x):
        # a fresh module, not a submodule: exactly what module-swapping CT cannot see
        return nn.ReLU(inplace=True)(self.residual_function(x) + self.shortcut(x))


class BottleNeck(nn.Module):
    """ResNet-50/101/152 block (expansion 4); the output ReLU is built in ``forward`` as in BasicBlock."""

    expansion = 4

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        out = out_channels * self.expansion
        self.residual_function = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out, 1, bias=False),
            nn.BatchNorm2d(out),
        )
        self.shortcut = _shortcut(in_channels, out, stride)

    def forward(self, x):
        return nn.ReLU(inplace=True)(self.residual_function(x) + self.shortcut(x))


def _shortcut(in_channels: int, out: int, stride: int) -> nn.Sequential:
    if stride == 1 and in_channels == out:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))


class CIFARResNet(nn.Module):
    """The reference's CIFAR ResNet: ``conv1``, ``conv2_x`` .. ``conv5_x``, ``avg_pool``, ``fc``.

    Takes *normalized* images ``(B, 3, 32, 32)`` and returns logits ``(B, num_classes)``.
    """

    def __init__(self, block, num_blocks, num_classes: int = 100):
        super().__init__()
        self.in_channels = 64
        self.conv1 = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
                                   nn.ReLU(inplace=True))
        self.conv2_x = self._make_layer(block, 64, num_blocks[0], 1)
        self.conv3_x = self._make_layer(block, 128, num_blocks[1], 2)
        self.conv4_x = self._make_layer(block, 256, num_blocks[2], 2)
        self.conv5_x = self._make_layer(block, 512, num_blocks[3], 2)
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, out_channels: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_channels, out_channels, s))
            self.in_channels = out_channels * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.conv1(x)
        out = self.conv5_x(self.conv4_x(self.conv3_x(self.conv2_x(out))))
        return self.fc(self.avg_pool(out).flatten(1))


#: architecture -> (block, blocks per stage, in words)
ARCHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), "ResNet-18"),
    "resnet34": (BasicBlock, (3, 4, 6, 3), "ResNet-34"),
    "resnet50": (BottleNeck, (3, 4, 6, 3), "ResNet-50"),
    "resnet101": (BottleNeck, (3, 4, 23, 3), "ResNet-101"),
    "resnet152": (BottleNeck, (3, 8, 36, 3), "ResNet-152"),
}


def _arch(name: str, dataset: str) -> str:
    arch = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if arch not in ARCHS:
        raise did_you_mean("CT-paper model", name, [PREFIX + a for a in ARCHS],
                           hint="(the CT paper's CIFAR ResNets; see `ctrobust models`)")
    if dataset not in NORMALIZATION:
        hint = (f" The paper's ImageNet models are torchvision's: --model torchvision/{arch} --dataset imagenet."
                if dataset == "imagenet" else "")
        raise UnknownNameError(f"model {name!r} is a CIFAR model (cifar10 or cifar100), not for {dataset}.{hint}")
    return arch


def build_resnet(arch: str, n_classes: int) -> CIFARResNet:
    """The bare network (no normalization) with random weights."""
    block, blocks, _ = ARCHS[arch]
    return CIFARResNet(block, blocks, num_classes=n_classes)


def default_checkpoint(name: str, dataset: str, model_dir=None) -> Path:
    """``<model_dir>/ct-paper/<arch>_<dataset>_epoch200.pth`` (the reference's file name)."""
    return model_root(model_dir) / "ct-paper" / f"{_arch(name, dataset)}_{dataset}_epoch200.pth"


def build(name: str, dataset: str, threat=None) -> Normalized:
    """``Normalized(CIFAR ResNet, dataset's mean/std)`` with random weights."""
    arch = _arch(name, dataset)
    mean, std = NORMALIZATION[dataset]
    return Normalized(build_resnet(arch, num_classes(dataset)), mean, std, input_size=(32, 32))


def load(name: str, dataset: str, threat=None, model_dir=None, checkpoint=None) -> Normalized:
    """The model with the checkpoint's weights; see the module docstring for where they come from."""
    arch = _arch(name, dataset)
    model = build(name, dataset)
    expected = (f"{PREFIX}{arch} (the CT reference's CIFAR {ARCHS[arch][2]}, utils/model.py layout, "
                f"{num_classes(dataset)} classes)")
    if checkpoint is not None:
        path, what = Path(checkpoint).expanduser(), f"--checkpoint for {PREFIX}{arch}"
    else:
        path = default_checkpoint(name, dataset, model_dir)
        what = (f"{PREFIX}{arch} on {dataset}: the CT reference's train.py writes it as "
                f"ckpts/{path.name}; place it at exactly that path or pass --checkpoint FILE")
    state = read_state_dict(path, what=what)
    load_checked(model.inner, state, path=path, expected=expected)
    return model


def _weights(dataset: str, model_dir) -> str:
    return (f"--checkpoint FILE, else {model_root(model_dir)}/ct-paper/<arch>_<dataset>_epoch200.pth "
            "(the reference's train.py output; not downloadable)")


FAMILY = ModelFamily(
    name="ct-paper", pattern="ct-paper/<arch>", datasets=("cifar10", "cifar100"),
    about="the CT paper's CIFAR ResNets (reference utils/model.py layout), normalization inside",
    matches=lambda name: name.startswith(PREFIX), load=load, build=build, weights=_weights,
    names=lambda dataset: [PREFIX + a for a in ARCHS] if dataset in NORMALIZATION else [],
    keyed_by_weights=True, takes_checkpoint=True)
