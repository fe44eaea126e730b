"""Evaluation protocols: how an attack's inputs, constraint set and CT scope relate to the stated threat.

* ``valid`` (default): the threat model as stated. Attacks run on [0, 1] images in pixel space (the
  normalization stays inside the model), every adversarial point is checked to lie in the eps-ball and
  in [0, 1] (``threat.check_ball``), and CT tunes every ReLU the forward computes (``--ct-scope`` as given).
* ``reference``: the CT reference code's measurement (Leon-Leyang/curvature-tuning, ``robustness.py``).
  Inputs are normalized outside the model, so AutoAttack attacks the *normalized* inputs
  ``z = (x - mean) / std`` with eps in normalized units and still clamps every iterate to [0, 1] in
  normalized space; CT replaces ``nn.ReLU`` submodules only; pyautoattack's standard AutoAttack is seeded
  with the run seed and batched as the reference batches (1000 on CIFAR, 250 on ImageNet). In pixel space
  the points ``mean + std * z_adv`` are neither in the eps-ball nor in the image box's neighbourhood the
  threat model allows: most pixels are pushed into ``[mean, mean + std]``. Runs of this protocol record
  the pixel-space perturbation per example and say in every output that the threat model is not the
  stated eps-ball.

A protocol needs the model's normalization for ``reference``: models built by ctrobust for normalized
inputs (``ct-paper/*``, ``torchvision/*``, ``timm/*``) and user models that declare it are wrapped in
:class:`ctrobust.models.Normalized` (attributes ``inner``, ``mean``, ``std``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctrobust._registry import did_you_mean

__all__ = ["ProtocolSpec", "PROTOCOLS", "get_protocol", "check_model", "REFERENCE_NOTE", "reference_batch_size", "AttackSpace",
           "attack_space"]

#: what every output of a ``reference`` run says about its threat model.
REFERENCE_NOTE = ("reference protocol: attacked in normalized input space with a [0, 1] clamp there (the CT "
                  "reference code's measurement); the perturbation is NOT in the stated eps-ball in pixel space")


@dataclass(frozen=True)
class ProtocolSpec:
    """One evaluation protocol.

    Attributes:
        name: ``valid`` or ``reference``.
        space: ``pixel`` (attack [0, 1] images, normalization inside the model) or ``normalized`` (attack
            ``(x - mean) / std`` with the model's inner network).
        constraint: the set results are checked against (``threat.CONSTRAINTS``).
        ct_scope: the CT scope the protocol requires, or None (the user's ``--ct-scope``).
        engine: the engine the protocol requires, or None (the user's ``--engine``).
        note: what outputs must say about the threat model ("" when it is the stated one).
    """

    name: str
    space: str
    constraint: str
    ct_scope: str | None
    engine: str | None
    note: str


PROTOCOLS: dict[str, ProtocolSpec] = {
    "valid": ProtocolSpec("valid", space="pixel", constraint="ball", ct_scope=None, engine=None, note=""),
    # pyautoattack on normalized inputs is the reference's arithmetic; the fast engine attacks [0, 1] images
    "reference": ProtocolSpec("reference", space="normalized", constraint="clamped-ball", ct_scope="modules",
                              engine="reference", note=REFERENCE_NOTE),
}


def get_protocol(name: str) -> ProtocolSpec:
    """The spec of ``valid`` or ``reference`` (case-insensitive; did-you-mean otherwise)."""
    key = str(name).strip().lower()
    try:
        return PROTOCOLS[key]
    except KeyError:
        raise did_you_mean("protocol", str(name), PROTOCOLS) from None


def reference_batch_size(dataset: str) -> int:
    """The CT reference code's AutoAttack batch size: 1000 on CIFAR, 250 on ImageNet (``submit_robustness.py``)."""
    return 250 if dataset == "imagenet" else 1000


@dataclass
class AttackSpace:
    """Where an engine attacks, and how its points map back to pixel space.

    Attributes:
        model: the module the engine attacks (the CT model itself in pixel space; its inner network, which
            shares the CT activations, in normalized space).
        to_space: ``x (N, C, H, W) in [0, 1] -> the engine's inputs``.
        to_pixel: the engine's points -> [0, 1]-scale images (``mean + std * z``).
        constraint: what the engine checks its results against.
    """

    model: torch.nn.Module
    to_space: object
    to_pixel: object
    constraint: str


_NO_NORMALIZATION = ("the reference protocol attacks normalized inputs, but this model's normalization is unknown: "
                     "use a ct-paper/, torchvision/ or timm/ model, or return "
                     "ctrobust.models.Normalized(inner, mean, std) from your factory")


def check_model(protocol: ProtocolSpec, model: torch.nn.Module) -> None:
    """Raise ``ValueError`` if ``protocol`` cannot evaluate ``model`` (the reference protocol needs a
    :class:`ctrobust.models.Normalized` model)."""
    if protocol.space == "normalized":
        from ctrobust.models import Normalized

        if not isinstance(getattr(model, "net", model), Normalized):
            raise ValueError(_NO_NORMALIZATION)


def attack_space(protocol: ProtocolSpec, ct_model: torch.nn.Module) -> AttackSpace:
    """The attack space of ``protocol`` for a CT model (``ct.apply_ct`` of a ctrobust model).

    Raises:
        ValueError: ``normalized`` space for a model whose normalization is unknown (not wrapped in
            :class:`ctrobust.models.Normalized`).
    """
    if protocol.space == "pixel":
        return AttackSpace(ct_model, lambda x: x, lambda z: z, protocol.constraint)
    check_model(protocol, ct_model)
    net = getattr(ct_model, "net", ct_model)
    mean = torch.as_tensor(net.mean, dtype=torch.float32).detach().cpu().reshape(1, -1, 1, 1)
    std = torch.as_tensor(net.std, dtype=torch.float32).detach().cpu().reshape(1, -1, 1, 1)

    def to_space(x):
        return (x - mean.to(x.device)) / std.to(x.device)

    def to_pixel(z):
        return mean.to(z.device) + std.to(z.device) * z

    return AttackSpace(net.inner, to_space, to_pixel, protocol.constraint)
