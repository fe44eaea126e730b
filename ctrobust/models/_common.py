"""What every model family shares: errors, the model folder, the ``Normalized`` wrapper, the weights
fingerprint, checked state_dict loading, torch-hub cache files, and the family spec.

No family module imports another family; each imports only this module (and ``ctrobust`` modules
below ``models``), and ``ctrobust.models`` (``_families``) dispatches names to them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from ctrobust.data import network_timeout, offline, removing_new_folders_on_error, user_cache_dir

__all__ = ["ModelUnavailableError", "ModelLoadError", "ModelFamily", "Normalized", "default_model_dir",
           "weights_fingerprint", "read_state_dict", "load_checked", "hub_checkpoint_file", "ensure_hub_file"]


class ModelUnavailableError(RuntimeError):
    """A checkpoint is missing and could not be downloaded; the message names where to place it and its source."""


class ModelLoadError(RuntimeError):
    """The model's files or code are there but building or loading the model from them failed."""


class _NetworkBlocked(OSError):
    """Raised by the socket guard of ``build_architecture`` (architectures must not download)."""


def default_model_dir() -> Path:
    """``$CTROBUST_MODEL_DIR`` if set, else the per-user cache folder ``.../ctrobust/models``."""
    env = os.environ.get("CTROBUST_MODEL_DIR")
    return Path(env).expanduser() if env else user_cache_dir("models")


def model_root(model_dir) -> Path:
    return Path(model_dir).expanduser() if model_dir is not None else default_model_dir()


def first_line(exc: BaseException) -> str:
    s = str(exc).strip()
    return s.splitlines()[0][:300] if s else ""


# ---------------------------------------------------------------------------------------------------
# The family spec
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFamily:
    """One kind of model name ``load_model`` accepts, and how to load it.

    Attributes:
        name: the family's name (``"ct-paper"``, ``"torchvision"``, ...).
        pattern: how its model names look (``"ct-paper/<arch>"``).
        datasets: the datasets its models are for (``()``: any).
        about: one line on what the models are.
        matches: ``name -> bool``: does the model name belong to this family (pure string test).
        load: ``(name, dataset, threat, model_dir, checkpoint) -> nn.Module`` on the CPU, trained weights.
        build: ``(name, dataset, threat) -> nn.Module`` with random weights, no file read, no download.
        weights: ``(dataset, model_dir) -> str``: how to get the weights (resolved paths).
        names: ``dataset -> list[str]``: its model names when they are few (else ``None``).
        keyed_by_weights: True when its models are code or checkpoints (a run is keyed by a hash of the
            weights, see ``weights_fingerprint``) rather than named releases (keyed by name).
        takes_checkpoint: whether ``--checkpoint FILE`` applies.
    """

    name: str
    pattern: str
    datasets: tuple
    about: str
    matches: Callable[[str], bool]
    load: Callable[..., nn.Module]
    build: Callable[..., nn.Module]
    weights: Callable[[str, "str | os.PathLike | None"], str]
    names: Callable[[str], list] | None = None
    keyed_by_weights: bool = False
    takes_checkpoint: bool = True


# ---------------------------------------------------------------------------------------------------
# Normalization inside the model
# ---------------------------------------------------------------------------------------------------


class Normalized(nn.Module):
    """``inner((x - mean) / std)``: a model trained on normalized inputs, taking [0, 1] pixels.

    Attacks then run in [0, 1] pixel space (the l-inf / l2 ball is a ball of images), whatever the
    normalization the network was trained with. A user's model factory may return one to declare its
    normalization (``Normalized(net, mean=(0.5,) * 3, std=(0.5,) * 3)``).

    Args:
        inner: the network, taking normalized images ``(B, C, H, W)`` and returning logits ``(B, K)``.
        mean: per-channel mean, ``C`` floats (pixel scale [0, 1]).
        std: per-channel standard deviation, ``C`` floats > 0.
        input_size: ``(H, W)`` the network expects; an input of another size is resized to it (bilinear)
            before normalization. ``None``: any size, no resizing.

    Attributes:
        inner: the wrapped network (its ``state_dict`` keys are the checkpoint's).
        mean, std: tuples of floats (not in the ``state_dict``; the fingerprint includes them).
        input_size: ``(H, W)`` or ``None``.

    Example:
        >>> model = Normalized(resnet, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        >>> logits = model(x)          # x: (B, 3, 224, 224) in [0, 1]
    """

    def __init__(self, inner: nn.Module, mean: Sequence[float], std: Sequence[float],
                 input_size: "tuple[int, int] | None" = None):
        super().__init__()
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) != len(std) or not mean:
            raise ValueError(f"mean and std need one value per channel, got {mean} and {std}")
        if any(not s > 0 for s in std):
            raise ValueError(f"std must be positive, got {std}")
        self.inner = inner
        self.mean, self.std = mean, std
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        # non-persistent: the state_dict stays the inner network's (prefixed ``inner.``)
        self.register_buffer("_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return self.inner((x - self._mean.to(x.dtype)) / self._std.to(x.dtype))

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}, input_size={self.input_size}"


# ---------------------------------------------------------------------------------------------------
# Weights fingerprint
# ---------------------------------------------------------------------------------------------------


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over a model's weights and buffers: what keys a model given as code or a checkpoint.

    Hashes, in ``state_dict`` key order, each entry's name, dtype, shape and bytes, then the non-persistent
    buffers (e.g. ``Normalized``'s mean and std) in ``named_buffers`` order. Independent of the device.

    Args:
        model: any ``nn.Module``.

    Returns:
        64 hex digits. Two models with equal fingerprints have identical parameters and buffers.
    """
    h = hashlib.sha256()
    state = model.state_dict(keep_vars=False)
    items = list(state.items())
    persistent = set(state)
    items += [(f"<buffer>{k}", b) for k, b in model.named_buffers() if k not in persistent]
    for key, t in items:
        if not isinstance(t, torch.Tensor):  # extra state of a custom module
            h.update(f"{key}|{type(t).__name__}|{t!r}\n".encode())
            continue
        t = t.detach()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        flat = t.reshape(-1).contiguous().cpu()
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------
# Checkpoints: read with weights_only=True, compare with the architecture, load
# ---------------------------------------------------------------------------------------------------

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")


def read_state_dict(path: "str | os.PathLike", *, what: str) -> dict:
    """A plain ``state_dict`` from ``path``, read with ``torch.load(..., weights_only=True)``.

    Accepts a plain state_dict, or one under a ``state_dict``/``model_state_dict``/``model``/``net`` key,
    with or without a ``module.`` prefix on every key (``nn.DataParallel``).

    Raises:
        ModelUnavailableError: no file at ``path``.
        ModelLoadError: unreadable, not loadable with ``weights_only=True``, or holding no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelUnavailableError(f"checkpoint missing: {path} ({what})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors of every kind
        raise ModelLoadError(f"checkpoint {path} cannot be read with torch.load(weights_only=True) "
                             f"({type(exc).__name__}: {first_line(exc)}); save a plain state_dict "
                             f"(torch.save(model.state_dict(), FILE))") from None
    if isinstance(obj, Mapping):
        for k in _WRAPPER_KEYS:
            if isinstance(obj.get(k), Mapping) and not isinstance(obj.get(k), torch.Tensor):
                obj = obj[k]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"checkpoint {path} is not a state_dict (a mapping of names to tensors), "
                             f"got {type(obj).__name__}")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _shape(t) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


def state_dict_mismatch(expected: Mapping, got: Mapping, show: int = 5) -> str:
    """``""`` if ``got`` has exactly ``expected``'s keys and shapes, else what differs (first few of each)."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k} {_shape(got[k])} (expected {_shape(expected[k])})" for k in expected
              if k in got and tuple(got[k].shape) != tuple(expected[k].shape)]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)):
        if items:
            more = f" (+{len(items) - show} more)" if len(items) > show else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:show])}{more}")
    return "; ".join(parts)


def load_checked(net: nn.Module, state: Mapping, *, path, expected: str) -> nn.Module:
    """Load ``state`` into ``net`` strictly, or raise ``ModelLoadError`` naming the first differing keys.

    Args:
        net: the architecture.
        state: the checkpoint's state_dict.
        path: the checkpoint file (for the message).
        expected: the architecture, in words (``"ct-paper/resnet18: CIFAR ResNet-18 ..., 10 classes"``).
    """
    diff = state_dict_mismatch(net.state_dict(), state)
    if diff:
        raise ModelLoadError(f"checkpoint {path} does not fit {expected}: {diff}")
    try:
        net.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"loading {path} into {expected} failed: {type(exc).__name__}: "
                             f"{first_line(exc)}") from None
    return net


# ---------------------------------------------------------------------------------------------------
# torch-hub cache files
# ---------------------------------------------------------------------------------------------------


def hub_checkpoint_file(url: str) -> Path:
    """Where ``torch.hub`` caches ``url``: ``torch.hub.get_dir()/checkpoints/<file name of the URL>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def ensure_hub_file(url: str, dest: Path, *, what: str) -> Path:
    """``dest`` (the torch-hub cache file of ``url``), downloaded first if missing and the network allows.

    Raises:
        ModelUnavailableError: missing and ``CTROBUST_OFFLINE`` is set, or the download failed; the message
            names ``dest`` and ``url``. A failed download leaves no file and no new folder.
    """
    if dest.is_file():
        return dest
    place = (f"Download it from {url} and place it at exactly that path (torch hub cache, "
             f"torch.hub.get_dir()/checkpoints; set TORCH_HOME to move it)")
    if offline():
        raise ModelUnavailableError(f"checkpoint missing: {dest} ({what}; CTROBUST_OFFLINE is set, not "
                                    f"downloading). {place}.")
    m = torch.hub.HASH_REGEX.search(dest.name)
    try:
        with network_timeout(), removing_new_folders_on_error(dest.parent):
            torch.hub.download_url_to_file(url, str(dest), hash_prefix=m.group(1) if m else None, progress=True)
    except Exception as exc:  # noqa: BLE001 - network errors, hash mismatches
        raise ModelUnavailableError(f"checkpoint missing: {dest} ({what}). Downloading it from {url} failed "
                                    f"({type(exc).__name__}: {first_line(exc)}). {place}.") from exc
    return dest


# ---------------------------------------------------------------------------------------------------
# No network while building architectures
# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def no_network():
    """Make any socket connection or DNS lookup inside the block raise ``_NetworkBlocked`` (not thread-safe)."""
    def blocked(*args, **kwargs):
        raise _NetworkBlocked("network access attempted while building an architecture (it wants to download "
                              "pretrained weights)")

    saved = (socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo, socket.create_connection)
    socket.socket.connect = blocked
    socket.socket.connect_ex = blocked
    socket.getaddrinfo = blocked
    socket.create_connection = blocked
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo, socket.create_connection = saved


def caused_by_blocked_network(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, _NetworkBlocked) or "network access attempted while building" in str(exc):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False

