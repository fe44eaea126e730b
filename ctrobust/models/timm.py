"""Family ``timm/``: timm's pretrained ImageNet-1k models, normalization and input size from timm's config.

``timm/<name>`` is ``timm.create_model(<name>)`` (``<name>`` may carry a pretrained tag:
``timm/resnet18.a1_in1k``; without one, timm's default tag) with its pretrained weights. The model's
pretrained config supplies mean, std and input size: the model is ``Normalized(net, mean, std,
input_size=(H, W))`` taking [0, 1] images; ctrobust's 224x224 ImageNet images are resized inside (bilinear)
when the config asks for another size.

Weights come from where timm's config points: a Hugging Face hub repo (``model.safetensors``, else
``pytorch_model.bin``; cached under ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``) or a URL (torch-hub cache, ``torch.hub.get_dir()/checkpoints``). ctrobust reads
the file itself (safetensors, or ``torch.load(weights_only=True)``) and hands the state_dict to timm, which
applies the model's own checkpoint conversion. Without the file and without network,
:class:`ModelUnavailableError` names the repo or URL and the cache. ``--checkpoint FILE`` loads a state_dict of
the timm model (``model.state_dict()``) instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ctrobust._registry import UnknownNameError, did_you_mean
from ctrobust.data import network_timeout, offline
from ctrobust.models._common import (ModelFamily, ModelLoadError, ModelUnavailableError, Normalized,
                                     ensure_hub_file, first_line, hub_checkpoint_file, load_checked, no_network,
                                     read_state_dict)

__all__ = ["FAMILY", "hf_cache_dir"]

PREFIX = "timm/"
_HF_FILES = ("model.safetensors", "pytorch_model.bin")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (``HF_HUB_CACHE``, ``HF_HOME``, XDG)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _parse(name: str, dataset: str) -> tuple[str, dict]:
    import timm

    arch = name[len(PREFIX):]
    if not timm.is_model(arch):
        raise did_you_mean("timm model", name, [PREFIX + n for n in timm.list_models()],
                           hint="(`timm.list_pretrained()` lists those with weights)")
    try:
        cfg = timm.models.get_pretrained_cfg(arch, allow_unregistered=False)
    except RuntimeError as exc:  # an unknown pretrained tag
        raise did_you_mean(f"timm pretrained tag ({first_line(exc)})", name,
                           [PREFIX + n for n in timm.list_pretrained(arch.split(".")[0] + "*")]) from None
    if cfg is None:
        raise UnknownNameError(f"timm model {arch!r} has no pretrained weights; pick one of "
                               f"timm.list_pretrained({arch.split('.')[0] + '*'!r})")
    if dataset != "imagenet":
        raise UnknownNameError(f"model {name!r} is an ImageNet model, not for {dataset}: pass --dataset imagenet")
    cfg = cfg.to_dict()
    if int(cfg.get("num_classes") or 0) != 1000:
        raise UnknownNameError(f"timm model {arch!r} has {cfg.get('num_classes')} classes, not ImageNet-1k's "
                               "1000: pick an ImageNet-1k tag (e.g. one ending in _in1k)")
    return arch, cfg


def _wrap(net: nn.Module, cfg: dict) -> Normalized:
    _, h, w = cfg.get("input_size", (3, 224, 224))
    return Normalized(net, cfg["mean"], cfg["std"], input_size=(h, w))


def build(name: str, dataset: str, threat=None) -> Normalized:
    import timm

    arch, cfg = _parse(name, dataset)
    with no_network():
        net = timm.create_model(arch, pretrained=False)
    return _wrap(net, cfg)


def _hf_weights(repo_id: str, name: str, files) -> Path:
    """The cached (or just downloaded) weights file of a hub repo."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    repo, _, revision = repo_id.partition("@")
    cache = hf_cache_dir()
    for f in files:
        hit = try_to_load_from_cache(repo, f, cache_dir=cache, revision=revision or None)
        if isinstance(hit, str):
            return Path(hit)
    where = (f"Hugging Face hub repo {repo} (https://huggingface.co/{repo}, file {' or '.join(files)}), cached "
             f"under {cache / ('models--' + repo.replace('/', '--'))}")
    if offline():
        raise ModelUnavailableError(f"weights of {name} missing: {where} (CTROBUST_OFFLINE is set, not "
                                    "downloading). Download them with network (e.g. `huggingface-cli download "
                                    f"{repo}`), or pass --checkpoint FILE.")
    from huggingface_hub.utils import EntryNotFoundError

    last = None
    for f in files:
        try:
            with network_timeout():
                return Path(hf_hub_download(repo, f, cache_dir=cache, revision=revision or None))
        except EntryNotFoundError as exc:
            last = exc
        except Exception as exc:  # noqa: BLE001 - network errors, missing repos
            last = exc
            break
    raise ModelUnavailableError(f"weights of {name} missing: {where}. Downloading them failed "
                                f"({type(last).__name__}: {first_line(last)}); pass --checkpoint FILE or "
                                "download them with network.") from last


def _read(path: Path, what: str) -> dict:
    if path.suffix == ".safetensors":
        import safetensors.torch

        try:
            return safetensors.torch.load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"weights {path} ({what}) cannot be read: {type(exc).__name__}: "
                                 f"{first_line(exc)}") from None
    return read_state_dict(path, what=what)


def load(name: str, dataset: str, threat=None, model_dir=None, checkpoint=None) -> Normalized:
    import timm

    arch, cfg = _parse(name, dataset)
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        state = read_state_dict(path, what=f"--checkpoint for {name}")
        with no_network():
            net = timm.create_model(arch, pretrained=False)
        load_checked(net, state, path=path, expected=f"{name} (timm's {arch})")
        return _wrap(net, cfg)
    if cfg.get("custom_load"):
        raise ModelLoadError(f"timm's {arch} weights need timm's own custom loader (not a state_dict); "
                             "pick another tag or pass --checkpoint FILE")
    if cfg.get("hf_hub_id"):
        files = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else _HF_FILES
        path = _hf_weights(cfg["hf_hub_id"], name, files)
    elif cfg.get("url"):
        path = ensure_hub_file(cfg["url"], hub_checkpoint_file(cfg["url"]), what=f"timm's weights for {name}")
    else:
        raise ModelUnavailableError(f"timm gives no source for the weights of {name}; pass --checkpoint FILE")
    state = _read(path, f"timm's weights for {name}")
    try:
        with no_network():
            net = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"state_dict": state})
    except Exception as exc:  # noqa: BLE001 - timm's strict load names what does not fit
        raise ModelLoadError(f"loading {path} into {name} failed: {type(exc).__name__}: {first_line(exc)}") from None
    for attr in ("pretrained_cfg", "default_cfg"):  # do not keep a second copy of the weights in the config
        c = getattr(net, attr, None)
        if isinstance(c, dict):
            c.pop("state_dict", None)
    return _wrap(net, cfg)


def _weights(dataset: str, model_dir) -> str:
    return (f"timm's pretrained config: Hugging Face hub cache {hf_cache_dir()} or torch hub cache, downloaded "
            "when the network allows; or --checkpoint FILE")


FAMILY = ModelFamily(
    name="timm", pattern="timm/<name>[.<tag>]", datasets=("imagenet",),
    about="timm's pretrained ImageNet-1k models; mean, std and input size from timm's pretrained config",
    matches=lambda name: name.startswith(PREFIX), load=load, build=build, weights=_weights, names=None,
    keyed_by_weights=False, takes_checkpoint=True)
