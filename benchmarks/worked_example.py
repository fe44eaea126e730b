"""README's worked example: the bundled ResNet-18 as the CT paper's kind of model, under both protocols.

The model is pyautoattack's naturally trained CIFAR-10 ResNet-18 (shipped in the ``pyautoattack`` wheel),
*declared* with the CT reference code's CIFAR-10 normalization: ``inner(z) = model(mean + std * z)`` wrapped
as ``Normalized(inner, mean, std)``, the same function of the [0, 1] image, but now ctrobust knows the
normalized input space the reference protocol attacks. pyautoattack's ResNet computes every ReLU with
``F.relu``; like the reference's own CIFAR ResNets, this copy makes the stem ReLU and the first ReLU of each
block ``nn.ReLU`` modules and keeps the block-output ReLU functional, so CT scope ``modules`` (the reference
protocol) tunes 9 of the 17 ReLU calls and scope ``all`` tunes all of them. The weights are pyautoattack's.

Used as a model factory: ``--model benchmarks/worked_example.py:declared``. ``benchmarks/gpu_worked_example.sh``
runs the whole example (both protocols, the paper's grid, 8/255; the valid protocol also at 1/255 and 2/255)
and writes the figures and reports under ``figures/``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctrobust.models import Normalized, load_model

MEAN = (0.491, 0.482, 0.447)  # the CT reference code's CIFAR-10 normalization (robustness.py)
STD = (0.247, 0.244, 0.262)


class _Block(nn.Module):
    def __init__(self, src):
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2, self.shortcut = src.conv1, src.bn1, src.conv2, src.bn2, src.shortcut
        self.relu1 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out)  # the block-output ReLU: not a submodule, as in the reference's CIFAR ResNets


class ModuleReLUResNet18(nn.Module):
    """pyautoattack's ResNet-18 with its weights, stem and first block ReLUs as ``nn.ReLU`` modules."""

    def __init__(self, src):
        super().__init__()
        self.conv1, self.bn1, self.linear = src.conv1, src.bn1, src.linear
        self.relu = nn.ReLU()
        self.layers = nn.Sequential(*[_Block(b) for layer in (src.layer1, src.layer2, src.layer3, src.layer4)
                                      for b in layer])

    def forward(self, x):
        out = self.layers(self.relu(self.bn1(self.conv1(x))))
        out = F.avg_pool2d(out, 4)
        return self.linear(out.flatten(1))


class _Denormalize(nn.Module):
    """``z -> net(mean + std * z)``: the network of normalized inputs that computes ``net`` of the image."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, z):
        return self.net(self.mean + self.std * z)


def declared() -> nn.Module:
    """The bundled ResNet-18, declared with CT's CIFAR-10 normalization (a model factory)."""
    src = load_model("bundled/resnet18-cifar10")
    inner = ModuleReLUResNet18(getattr(src, "net", src))
    return Normalized(_Denormalize(inner).eval(), MEAN, STD).eval()
