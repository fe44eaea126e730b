"""Family ``<RobustBench name>``: RobustBench 1.1.1 zoo entries, loaded by RobustBench's own loader.

Entries for (``cifar10`` | ``cifar100`` | ``imagenet``) x (``Linf`` | ``L2``) (ImageNet has no L2 entries in
1.1.1), e.g. ``Standard``, ``Carmon2019Unlabeled``, are loaded by ``robustbench.utils.load_model`` from
``<model_dir>/<dataset>/<threat>/<name>.pt`` (ensembles: ``<name>.pt_m0.pt``, ``<name>.pt_m1.pt``, ...). A missing
checkpoint is first downloaded by ctrobust itself (gdown, from the Google Drive id in RobustBench's zoo) into a
temporary file next to its final path, checked (a PyTorch archive, not an HTML page, complete, loadable with
``weights_only=True``) and only then moved into place, so a failed or quota-limited download never leaves a file
a later run would load. Timm-hosted entries (``Debenedetti2022Light_XCiT-*``) and ImageNet ``Standard_R50``
(torchvision weights) download through their own hubs into ``torch.hub.get_dir()/checkpoints``. Failures raise
:class:`ModelUnavailableError` naming the file to place and its source; every connect/read waits at most
``$CTROBUST_NET_TIMEOUT`` (15 s), and ``CTROBUST_OFFLINE=1`` skips download attempts altogether. RobustBench
models normalize inside; they take [0, 1] input.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch
from torch import nn

from ctrobust._compat import import_robustbench
from ctrobust._registry import did_you_mean
from ctrobust.data import DATASETS, network_timeout, offline, parse_dataset, removing_new_folders_on_error
from ctrobust.models._common import (ModelFamily, ModelLoadError, ModelUnavailableError, model_root, no_network)
from ctrobust.models._common import first_line as _first_line
from ctrobust.models.bundled import BUNDLED_MODELS
from ctrobust.threat import Threat

__all__ = ["FAMILY", "list_models", "checkpoint_paths"]

def _zoo(dataset: str, threat: Threat) -> dict:
    """RobustBench's zoo dict ``name -> {'model': ctor, 'gdrive_id': ...}`` for the pair (may be empty)."""
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts[BenchmarkDataset(dataset)].get(ThreatModel(threat.value), {})


def _parse_pair(dataset: str, threat) -> tuple[str, Threat]:
    return parse_dataset(dataset), Threat.parse(threat)


def list_models(dataset: str = "cifar10", threat: "str | Threat" = "Linf") -> list[str]:
    """Names :func:`load_model` accepts for the pair: RobustBench's zoo (its order) plus bundled models.

    Args:
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``.
        threat: ``"Linf"`` or ``"L2"``.

    Returns:
        List of names; bundled names (``bundled/...``) come last.
    """
    dataset, threat = _parse_pair(dataset, threat)
    names = list(_zoo(dataset, threat))
    names += [n for n, (ds, _) in BUNDLED_MODELS.items() if ds == dataset]
    return names


def _unknown_model(name: str, dataset: str, threat: Threat) -> Exception:
    elsewhere = []
    for ds in DATASETS:
        for th in Threat:
            if (ds, th) != (dataset, threat) and name in list_models(ds, th):
                elsewhere.append(f"{ds}/{th}")
    hint = f"List the models with `ctrobust models --dataset {dataset} --threat {threat}`."
    if elsewhere:
        hint = f"({name!r} exists for {', '.join(elsewhere)}: pass --dataset/--threat.) " + hint
    return did_you_mean(f"model for {dataset}/{threat}", name, list_models(dataset, threat), hint=hint)


def _timm_name(name: str, dataset: str, threat: Threat) -> str:
    # exactly how robustbench.utils.load_model decides that an entry is timm-hosted
    return f"{name.lower().replace('-', '_')}_{dataset}_{threat.value.lower()}"


def _is_timm_hosted(name: str, dataset: str, threat: Threat) -> bool:
    import timm

    return timm.is_model(_timm_name(name, dataset, threat))


def _is_torchvision_hosted(name: str, dataset: str) -> bool:
    # robustbench returns torchvision's pretrained weights for ImageNet 'Standard*' entries (gdrive_id '')
    return dataset == "imagenet" and "Standard" in name


def checkpoint_paths(name: str, dataset: str = "cifar10", threat: "str | Threat" = "Linf",
                     model_dir: str | os.PathLike | None = None) -> list[Path]:
    """The files :func:`load_model` reads for a RobustBench model, in RobustBench's layout.

    Returns ``[<model_dir>/<dataset>/<threat>/<name>.pt]`` (ensembles: one ``<name>.pt_m{i}.pt`` per member),
    the torch-hub file for timm/torchvision-hosted entries, and ``[]`` for bundled models.
    """
    dataset, threat = _parse_pair(dataset, threat)
    zoo = _zoo(dataset, threat)
    if name not in zoo:
        raise _unknown_model(name, dataset, threat)
    hub = _hub_source(name, dataset, threat)
    if hub is not None:
        return [hub[1]]
    base = model_root(model_dir) / dataset / threat.value / f"{name}.pt"
    gid = zoo[name]["gdrive_id"]
    if isinstance(gid, (list, tuple)):
        return [Path(f"{base}_m{i}.pt") for i in range(len(gid))]
    return [base]


def _hub_source(name: str, dataset: str, threat: Threat) -> tuple[str, Path] | None:
    """(url, cache file) for timm- or torchvision-hosted entries, else None."""
    hub_ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    if _is_timm_hosted(name, dataset, threat):
        import timm

        cfg = timm.models.get_pretrained_cfg(_timm_name(name, dataset, threat))
        url = (getattr(cfg, "url", None) or "") if cfg is not None else ""
        if not url and cfg is not None and getattr(cfg, "hf_hub_id", None):
            hf_home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
            return f"https://huggingface.co/{cfg.hf_hub_id}", hf_home / "hub"
        return url, (hub_ckpt / os.path.basename(url.split("?")[0])) if url else hub_ckpt
    if _is_torchvision_hosted(name, dataset):
        from torchvision.models import ResNet50_Weights

        url = ResNet50_Weights.IMAGENET1K_V1.url  # what pt_models.resnet50(pretrained=True) fetches
        return url, hub_ckpt / os.path.basename(url)
    return None



# ---------------------------------------------------------------------------------------------------
# Checkpoint download and validation
# ---------------------------------------------------------------------------------------------------


class _InvalidCheckpoint(Exception):
    pass


def _check_header(path: Path) -> str:
    """Cheap structural check. Returns ``"zip"`` or ``"pickle"``; raises _InvalidCheckpoint with the reason."""
    size = path.stat().st_size
    if size == 0:
        raise _InvalidCheckpoint("the file is empty")
    with open(path, "rb") as f:
        head = f.read(1024)
    low = head.lstrip().lower()
    if low.startswith(b"<") or b"<html" in low or b"<!doctype" in low:
        raise _InvalidCheckpoint("it is an HTML page, not a checkpoint (Google Drive quota, permission or "
                                 "virus-scan page?)")
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                zf.infolist()
        except zipfile.BadZipFile as exc:
            raise _InvalidCheckpoint(f"it is an incomplete/corrupted PyTorch archive ({exc})") from None
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    raise _InvalidCheckpoint(f"it is not a PyTorch checkpoint (starts with {head[:16]!r}, {size} bytes)")


def _validate_checkpoint(path: Path) -> None:
    """Raise _InvalidCheckpoint unless ``path`` is a complete checkpoint loadable with ``weights_only=True``."""
    kind = _check_header(path)
    try:
        try:  # zip archives: map instead of reading the tensors (cheap for GB-sized checkpoints)
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=(kind == "zip"))
        except Exception:  # noqa: BLE001
            if kind != "zip":
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means: not a usable checkpoint
        raise _InvalidCheckpoint(f"torch.load(weights_only=True) fails: {type(exc).__name__}: "
                                 f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    del obj


def _gdrive_url(gid: str) -> str:
    return f"https://drive.google.com/uc?id={gid}"


def _fetch_gdrive(gid: str, dest: Path) -> None:
    """Download Google Drive file ``gid`` to ``dest`` atomically (temp folder next to it, validate, replace).

    Raises:
        ModelUnavailableError: download failed or produced no valid checkpoint; nothing is left behind.
    """
    source = _gdrive_url(gid)
    if offline():
        raise ModelUnavailableError(
            f"checkpoint missing: {dest} (CTROBUST_OFFLINE is set, not downloading). Download it from {source} "
            f"(gdrive id {gid}) and place it at exactly that path.")
    with removing_new_folders_on_error(dest.parent):  # a failed fetch leaves no trace, not even folders
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.download-", dir=dest.parent))
        try:
            tmp = tmpdir / dest.name
            try:
                import gdown

                with network_timeout():
                    out = gdown.download(id=gid, output=str(tmp), quiet=False)
                if out is None or not tmp.is_file():
                    raise _InvalidCheckpoint("the downloader produced no file")
                _validate_checkpoint(tmp)
            except _InvalidCheckpoint as exc:
                raise ModelUnavailableError(
                    f"checkpoint missing: {dest}. Downloading it from {source} gave no valid checkpoint: {exc}. "
                    f"The download was discarded. Download the file yourself (gdrive id {gid}) and place it at "
                    f"exactly that path.") from None
            except Exception as exc:  # noqa: BLE001 - network errors, quota errors, gdown errors
                raise ModelUnavailableError(
                    f"checkpoint missing: {dest}. Downloading it from {source} failed "
                    f"({type(exc).__name__}: {_first_line(exc)}). Place the checkpoint at exactly that path "
                    f"(gdrive id {gid}), or set CTROBUST_MODEL_DIR / --model-dir to a folder holding "
                    f"<dataset>/<threat>/<name>.pt.") from exc
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)



def _ensure_gdrive_checkpoints(name: str, dataset: str, threat: Threat, model_dir: Path) -> list[Path]:
    gids = _zoo(dataset, threat)[name]["gdrive_id"]
    paths = checkpoint_paths(name, dataset, threat, model_dir)
    gids = list(gids) if isinstance(gids, (list, tuple)) else [gids]
    for gid, path in zip(gids, paths):
        bad = None
        if path.is_file():
            try:
                _check_header(path)
            except _InvalidCheckpoint as exc:
                bad = str(exc)
            else:
                # a file placed by the user (or by an older run): prove it is safe for weights_only=True
                # before RobustBench's loader unpickles it
                try:
                    _validate_checkpoint(path)
                except _InvalidCheckpoint as exc:
                    raise ModelLoadError(f"checkpoint {path} cannot be used: {exc}. Replace it with the file from "
                                         f"{_gdrive_url(gid)} (or delete it to re-download).") from None
                continue
        try:
            _fetch_gdrive(gid, path)  # replaces an invalid existing file only with a validated download
        except ModelUnavailableError as exc:
            if bad is None:
                raise
            raise ModelUnavailableError(f"{path} exists but is not a usable checkpoint ({bad}); replace it. "
                                        + str(exc)) from exc.__cause__
    return paths


# ---------------------------------------------------------------------------------------------------
# Loading


# ---------------------------------------------------------------------------------------------------
# Loading and building
# ---------------------------------------------------------------------------------------------------


def load(name: str, dataset: str, threat, model_dir=None, checkpoint=None) -> nn.Module:
    """The trained RobustBench model (CPU), through RobustBench's own loader; see the module docstring."""
    threat = Threat.parse(threat)
    zoo = _zoo(dataset, threat)
    if name not in zoo:
        raise _unknown_model(name, dataset, threat)
    root = model_root(model_dir)

    from robustbench.utils import load_model as rb_load_model

    hub = _hub_source(name, dataset, threat)
    if hub is not None:
        url, cache = hub
        if offline() and not cache.is_file():
            raise ModelUnavailableError(f"checkpoint missing: {cache} (CTROBUST_OFFLINE is set, not downloading). "
                                        f"Download it from {url} and place it at exactly that path.")
        try:
            with network_timeout():
                model = rb_load_model(name, model_dir=str(root), dataset=dataset, threat_model=threat.value)
        except Exception as exc:  # noqa: BLE001
            if not cache.is_file():
                raise ModelUnavailableError(
                    f"checkpoint missing: {cache}. Downloading it from {url} failed ({type(exc).__name__}: "
                    f"{_first_line(exc)}). Place the file at exactly that path (torch hub cache; "
                    f"set TORCH_HOME to move it).") from exc
            raise ModelLoadError(f"loading {name!r} ({dataset}/{threat}) from {cache} failed: "
                                 f"{type(exc).__name__}: {_first_line(exc)}") from exc
    else:
        paths = _ensure_gdrive_checkpoints(name, dataset, threat, root)
        try:
            model = rb_load_model(name, model_dir=str(root), dataset=dataset, threat_model=threat.value)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(
                f"loading {name!r} ({dataset}/{threat}) with RobustBench's loader from "
                f"{', '.join(map(str, paths))} failed: {type(exc).__name__}: {_first_line(exc)}. If the file is "
                f"damaged, delete it and run again to re-download.") from exc
    return model


def build(name: str, dataset: str, threat) -> nn.Module:
    """The entry's architecture with random weights (network blocked while building)."""
    threat = Threat.parse(threat)
    zoo = _zoo(dataset, threat)
    if name not in zoo:
        raise _unknown_model(name, dataset, threat)
    with no_network():
        if _is_timm_hosted(name, dataset, threat):
            import timm

            model = timm.create_model(_timm_name(name, dataset, threat), num_classes=DATASETS[dataset],
                                      pretrained=False)
        elif _is_torchvision_hosted(name, dataset):
            from robustbench.model_zoo.architectures.utils_architectures import normalize_model
            from robustbench.model_zoo.imagenet import mu, sigma
            from torchvision.models import resnet50

            model = normalize_model(resnet50(weights=None), mu, sigma)
        else:
            model = zoo[name]["model"]()
    return model


def _weights(dataset: str, model_dir) -> str:
    return (f"{model_root(model_dir)}/{dataset}/<threat>/<name>.pt, downloaded from RobustBench's Google Drive "
            f"ids when the network allows (hub-hosted entries: torch hub / timm caches)")


FAMILY = ModelFamily(
    name="robustbench", pattern="<RobustBench name>", datasets=tuple(DATASETS),
    about="RobustBench 1.1.1 zoo entries (listed above), e.g. Standard, Carmon2019Unlabeled",
    matches=lambda name: True, load=load, build=build, weights=_weights, names=None,
    keyed_by_weights=False, takes_checkpoint=False)
