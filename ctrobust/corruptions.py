"""Common-corruption evaluation sets: CIFAR-10-C, CIFAR-100-C and ImageNet-C in RobustBench's layout and rules.

One set is one (corruption, severity) of one dataset, returned as a :class:`CorruptionSet` (an
:class:`~ctrobust.data.EvalSet`, so it unpacks as ``x, y, ids``):

- ``x``: float32 ``(N, 3, H, W)`` in [0, 1]; ``(N, 3, 32, 32)`` for CIFAR, ``(N, 3, 224, 224)`` for ImageNet-C.
- ``y``: int64 ``(N,)`` class labels.
- ``ids``: int64 ``(N,)``, the index of each image in its severity block: 0..9999 for CIFAR-C (the CIFAR test
  image it was made from), 0..4999 for ImageNet-C (the line of RobustBench's 5000-image list,
  ``robustbench/helper_files/imagenet_test_image_ids.txt``).

The images are exactly those that RobustBench 1.1.1's own loaders (``robustbench.data.load_cifar10c``,
``load_cifar100c``, ``load_imagenetc``) return for the same dataset, corruption, severity and ``n_examples``
when it evaluates one corruption at a time (``corruptions=[corruption]``, ``shuffle=False``, as its
``corruptions_evaluation`` does). Their rules, followed here:

- **Corruptions** (:data:`CORRUPTIONS`): ``robustbench.data.CORRUPTIONS``, in its order, for all three datasets
  (15 corruptions; the 4 "extra" ones of Hendrycks & Dietterich are not part of the benchmark); severities 1..5.
- **CIFAR-10-C / CIFAR-100-C**: ``<data_dir>/CIFAR-10-C/<corruption>.npy`` (``CIFAR-100-C`` for CIFAR-100), a
  uint8 array ``(50000, 32, 32, 3)``: the 10000 test images at severity 1, then at severity 2, ... 5.
  Severity ``s`` is rows ``[(s - 1) * 10000, s * 10000)``; the set is its first ``n_examples`` rows. Labels are
  the first ``n_examples`` entries of ``labels.npy`` (50000 entries, the test labels once per severity; RobustBench
  reads the first block whatever the severity). Pixels become ``float32 / 255``, channels first.
- **ImageNet-C**: ``<data_dir>/ImageNet-C/<corruption>/<severity>/<wnid>/<file>.JPEG``; the set is the first
  ``n_examples`` (at most 5000) entries of RobustBench's image list, labels from the sorted wnid order
  (``robustbench/helper_files/imagenet_class_to_id_map.json``, which is what RobustBench's folder-scanning
  class index gives on the full 1000-folder dataset), preprocessed with RobustBench's ``Res224``
  (``Resize([224, 224])`` + ``ToTensor``: its benchmark's "exceptionally, for corruptions we use only
  resizing to 224x224"; the ImageNet-C JPEGs are 224x224 already).
- **Downloads**: CIFAR-10-C and CIFAR-100-C come from Zenodo (records 2535967 and 3555552: ``CIFAR-10-C.tar``,
  ``CIFAR-100-C.tar``, about 2.9 GB each) through RobustBench's own ``zenodo_download`` (md5 checked against
  Zenodo, then extracted into ``data_dir``; the archive is kept, as RobustBench keeps it), bounded by
  :func:`ctrobust.data.network_timeout` and skipped when ``CTROBUST_OFFLINE`` is set. RobustBench does not
  download ImageNet-C: get it from Hendrycks & Dietterich's Zenodo record 2235448 (``noise.tar``,
  ``blur.tar``, ``weather.tar``, ``digital.tar``; extract into ``<data_dir>/ImageNet-C``).

``shuffle=True`` follows RobustBench's rule with a seed instead of NumPy's / torch's global random state:
CIFAR-C permutes the *first* ``n_examples`` rows (the same images in another order; equal to RobustBench's
result after ``np.random.seed(seed)``); ImageNet-C draws ``n_examples`` of the 5000 listed images (RobustBench's
``DataLoader(shuffle=True)`` does the same with torch's global generator, so its draw cannot be reproduced).

:func:`missing_corruption_files` lists every missing file or folder with where to get it, reading only, so a
command can report all of them at once and exit before writing anything.

Example:
    >>> cs = load_corruption_set("cifar10", "fog", 3, 1000, "/data")
    >>> x, y, ids = cs
    >>> x.shape, cs.corruption, cs.severity, cs.content_hash[:12]
"""

from __future__ import annotations

import hashlib

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ctrobust._registry import did_you_mean
from ctrobust.attacks import split_list
from ctrobust.data import (DATASETS, DataUnavailableError, EvalSet, SubsetError, _imagenet_list, content_hash,
                           default_data_dir, network_timeout, offline, parse_dataset,
                           removing_new_folders_on_error)
from ctrobust.errors import ConfigError

__all__ = [
    "CorruptionEvalSet",
    "load_corruption_eval_set",
    "CORRUPTIONS",
    "SEVERITIES",
    "CorruptionSet",
    "CorruptionDataUnavailableError",
    "MissingFile",
    "list_corruptions",
    "parse_corruptions",
    "parse_severities",
    "corruption_dir",
    "load_corruption_set",
    "missing_corruption_files",
]

#: ``robustbench.data.CORRUPTIONS`` of RobustBench 1.1.1, in its order (its list for CIFAR-10, CIFAR-100 and
#: ImageNet; ``tests/test_corruptions_data.py`` checks it against the installed package)
CORRUPTIONS: tuple[str, ...] = ("shot_noise", "motion_blur", "snow", "pixelate", "gaussian_noise", "defocus_blur",
                                "brightness", "fog", "zoom_blur", "frost", "glass_blur", "impulse_noise",
                                "contrast", "jpeg_compression", "elastic_transform")
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

#: ``robustbench.data.CORRUPTIONS_DIR_NAMES`` (the ``corruptions`` threat model)
DIR_NAMES = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C", "imagenet": "ImageNet-C"}
#: ``n_total_cifar`` in ``robustbench.data.load_corruptions_cifar``: images per severity block
CIFAR_PER_SEVERITY = 10000
#: RobustBench evaluates ImageNet(-C) on its 5000-image list
IMAGENET_C_IMAGES = 5000
#: ``robustbench.data.ZENODO_CORRUPTIONS_LINKS``: dataset -> (Zenodo record, archive)
ZENODO_CIFAR_C = {"cifar10": ("2535967", "CIFAR-10-C.tar"), "cifar100": ("3555552", "CIFAR-100-C.tar")}
#: Hendrycks & Dietterich's ImageNet-C release: Zenodo record and the archive holding each corruption
IMAGENET_C_RECORD = "2235448"
IMAGENET_C_ARCHIVES = {
    "noise.tar": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur.tar": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather.tar": ("snow", "frost", "fog", "brightness"),
    "digital.tar": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}

_LABELS_FILE = "labels.npy"


class CorruptionDataUnavailableError(DataUnavailableError):
    """Corruption files are missing (and could not be downloaded): the message lists every one, one a line,
    with where RobustBench gets it. ``missing`` holds the :class:`MissingFile` entries."""

    all_lines = True  # the CLI prints every line of the message

    def __init__(self, dataset: str, missing: list[MissingFile], data_dir: Path, reason: str = ""):
        self.dataset = dataset
        self.missing = list(missing)
        self.data_dir = Path(data_dir)
        label = DIR_NAMES.get(dataset, dataset)
        head = (f"{label} data missing: {len(self.missing)} file(s) or folder(s) under {self.data_dir}"
                f"{' (' + reason + ')' if reason else ''}; place them as listed (RobustBench's layout) under --data-dir "
                f"(or $CTROBUST_DATA_DIR):")
        lines = [f"  {m.path}  <- {m.source}" for m in self.missing]
        super().__init__("\n".join([head, *lines]))


class MissingFile(NamedTuple):
    """A missing corruption file or folder (``path``) and where RobustBench gets it (``source``)."""

    path: Path
    source: str


@dataclass(frozen=True, eq=False)
class CorruptionSet(EvalSet):
    """One corruption at one severity: an :class:`~ctrobust.data.EvalSet` (``x, y, ids = cs``) plus its name.

    ``data`` is ``"corruptions"``; ``subset`` is ``"first"`` or ``"shuffled"`` (``seed`` says which draw);
    ``source_dir`` is the ``.npy`` file (CIFAR-C) or the severity folder (ImageNet-C) read.
    """

    corruption: str = ""
    severity: int = 0
    seed: int | None = None

    def __repr__(self) -> str:
        return (f"CorruptionSet(dataset={self.dataset!r}, corruption={self.corruption!r}, "
                f"severity={self.severity}, subset={self.subset!r}, n={self.n}, x={tuple(self.x.shape)} "
                f"{self.x.dtype}, content_hash={self.content_hash[:12]}...)")


# ---------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------


def list_corruptions(dataset: str = "cifar10") -> tuple[str, ...]:
    """RobustBench's corruptions of ``dataset`` (``robustbench.data.CORRUPTIONS_DICT``), in its order."""
    parse_dataset(dataset)
    return CORRUPTIONS


def parse_corruptions(spec="all", dataset: str = "cifar10") -> tuple[str, ...]:
    """Canonical corruption names, in RobustBench's order (so that equal selections compare and hash equal).

    Args:
        spec: ``"all"`` (default), names as a comma / space separated string or a list (``"fog, snow"``);
            case-insensitive, ``-`` reads as ``_`` (``gaussian-noise``).
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``.

    Raises:
        UnknownNameError: an unknown corruption ("did you mean ...?").
        ConfigError: nothing given, ``all`` mixed with names, or a name given twice.
    """
    known = list_corruptions(dataset)
    names = [t.lower().replace("-", "_") for t in split_list(spec)]
    if not names:
        raise ConfigError(f"no corruptions given: use 'all' or names such as {known[0]},{known[1]}")
    if "all" in names:
        if len(names) > 1:
            raise ConfigError(f"corruptions: 'all' cannot be combined with names ({', '.join(names)})")
        return known
    for n in names:
        if n not in known:
            raise did_you_mean("corruption", n, known, show=len(known))
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"corruptions: {', '.join(twice)} given more than once")
    return tuple(c for c in known if c in names)


def parse_severities(spec="all") -> tuple[int, ...]:
    """Severities as ascending ints in 1..5: ``"all"`` (default), ``3``, ``"1,3 5"`` or ``[1, 5]``.

    Raises:
        ConfigError: not an integer, outside 1..5, given twice, or nothing given.
    """
    items = split_list([str(s) for s in spec] if isinstance(spec, (list, tuple)) else str(spec))
    if not items:
        raise ConfigError("no severities given: use 'all' or integers 1..5, e.g. 1,3,5")
    if [t.lower() for t in items] == ["all"]:
        return SEVERITIES
    out = []
    for t in items:
        try:
            s = int(t)
        except ValueError:
            raise ConfigError(f"severity {t!r} is not an integer: severities are 1..5 (or 'all')") from None
        if s not in SEVERITIES:
            raise ConfigError(f"severity {s} is out of range: corruption severities are 1..5")
        if s in out:
            raise ConfigError(f"severity {s} given more than once")
        out.append(s)
    return tuple(sorted(out))


def _one(values: tuple, what: str, spec):
    if len(values) != 1:
        raise ConfigError(f"one {what} per set: got {spec!r} ({len(values)})")
    return values[0]


# ---------------------------------------------------------------------------------------------------
# Layout and sources
# ---------------------------------------------------------------------------------------------------


def _root(data_dir) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def corruption_dir(dataset: str, data_dir=None) -> Path:
    """The folder RobustBench reads: ``<data_dir>/CIFAR-10-C``, ``.../CIFAR-100-C`` or ``.../ImageNet-C``."""
    return _root(data_dir) / DIR_NAMES[parse_dataset(dataset)]


def _zenodo_url(record: str, name: str) -> str:
    return f"https://zenodo.org/records/{record}/files/{name}"


def _source(dataset: str, corruption: str, root: Path) -> str:
    if dataset == "imagenet":
        archive = next(a for a, cs in IMAGENET_C_ARCHIVES.items() if corruption in cs)
        return (f"{_zenodo_url(IMAGENET_C_RECORD, archive)} (ImageNet-C, Hendrycks & Dietterich; extract into "
                f"{root / DIR_NAMES[dataset]}; RobustBench does not download it)")
    record, archive = ZENODO_CIFAR_C[dataset]
    return f"{_zenodo_url(record, archive)} (Zenodo record {record}; extract into {root})"


def _imagenet_missing(folder: Path, rel: list[str], positions: np.ndarray, source: str) -> MissingFile | None:
    """The severity folder as one entry when it, or any of the listed images at ``positions``, is missing."""
    if not folder.is_dir():
        return MissingFile(folder, source)
    absent = [rel[i] for i in positions if not (folder / rel[i]).is_file()]
    if not absent:
        return None
    return MissingFile(folder, f"{source}; {len(absent)} of the {len(positions)} listed images needed are not "
                               f"there (first: {absent[0]})")


def _n_total(dataset: str) -> int:
    return IMAGENET_C_IMAGES if dataset == "imagenet" else CIFAR_PER_SEVERITY


def _count(n_examples, dataset: str) -> int:
    total = _n_total(dataset)
    if n_examples is None:
        return total
    n = int(n_examples)
    if n != n_examples or n <= 0:
        raise SubsetError(f"n_examples must be a positive integer or None (all), got {n_examples!r}")
    if n > total:
        what = "RobustBench's ImageNet-C list has" if dataset == "imagenet" else "a CIFAR-C severity block has"
        raise SubsetError(f"n_examples={n} but {what} only {total} images; use n_examples<={total} (or None)")
    return n


def missing_corruption_files(dataset: str, corruptions="all", severities="all", data_dir=None, *,
                             n_examples: int | None = None) -> list[MissingFile]:
    """Every missing file or folder of the requested sets, with where RobustBench gets it. Reads only.

    Args:
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``.
        corruptions: as :func:`parse_corruptions`.
        severities: as :func:`parse_severities` (CIFAR-C holds every severity in one file per corruption).
        data_dir: the folder holding ``CIFAR-10-C`` / ``CIFAR-100-C`` / ``ImageNet-C``; default
            ``$CTROBUST_DATA_DIR``, else ``~/.cache/ctrobust/data``.
        n_examples: ImageNet-C only: check the first ``n_examples`` listed images (default all 5000).

    Returns:
        ``[MissingFile(path, source), ...]``, empty when everything is there. CIFAR-C: each missing
        ``<corruption>.npy`` (in RobustBench's order), then ``labels.npy``. ImageNet-C: each
        ``<corruption>/<severity>`` folder that is missing or lacks listed images (one entry per folder).
    """
    dataset = parse_dataset(dataset)
    names = parse_corruptions(corruptions, dataset)
    sevs = parse_severities(severities)
    root = _root(data_dir)
    folder = root / DIR_NAMES[dataset]
    out = []
    if dataset == "imagenet":
        rel, _ = _imagenet_list()
        positions = np.arange(_count(n_examples, dataset))
        for c in names:
            for s in sevs:
                m = _imagenet_missing(folder / c / str(s), rel, positions, _source(dataset, c, root))
                if m is not None:
                    out.append(m)
        return out
    source = _source(dataset, "", root)
    for p in [*(folder / f"{c}.npy" for c in names), folder / _LABELS_FILE]:
        if not p.is_file():
            out.append(MissingFile(p, source))
    return out


# ---------------------------------------------------------------------------------------------------
# Download (CIFAR-C only, through RobustBench's helper)
# ---------------------------------------------------------------------------------------------------


def _download_cifar_c(dataset: str, root: Path) -> None:
    """Fetch and extract RobustBench's Zenodo archive of ``dataset`` into ``root``; leave no trace on failure."""
    from ctrobust._compat import import_robustbench

    import_robustbench()  # robustbench's package __init__ imports its model zoo (and autoattack)
    from robustbench import zenodo_download as zd
    from robustbench.data import ZENODO_CORRUPTIONS_LINKS
    from robustbench.model_zoo.enums import BenchmarkDataset

    key = {"cifar10": BenchmarkDataset.cifar_10, "cifar100": BenchmarkDataset.cifar_100}[dataset]
    record, names = ZENODO_CORRUPTIONS_LINKS[key]
    archives = [root / n for n in sorted(names)]
    extracted = root / DIR_NAMES[dataset]
    new = [p for p in (*archives, extracted) if not p.exists()]
    with removing_new_folders_on_error(root):
        try:
            with network_timeout():
                zd.zenodo_download(record, set(names), save_dir=root)
        except BaseException:
            # RobustBench writes the archive under its final name and keeps a partial one (then skips it)
            for p in new:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                elif p.exists():
                    p.unlink()
            raise


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


def _check_npy(path: Path, arr: np.ndarray, shape: tuple, integer: bool, source: str) -> None:
    ok_dtype = np.issubdtype(arr.dtype, np.integer) if integer else arr.dtype == np.uint8
    if tuple(arr.shape) != shape or not ok_dtype:
        want = "integer" if integer else "uint8"
        raise DataUnavailableError(
            f"{path} is not a RobustBench corruption file: shape {tuple(arr.shape)} {arr.dtype}, expected "
            f"{shape} {want} ({CIFAR_PER_SEVERITY} images per severity, severities 1..5 stacked). Replace it "
            f"from {source}")


def _read_cifar_c(dataset: str, corruption: str, severity: int, positions: np.ndarray, root: Path):
    folder = root / DIR_NAMES[dataset]
    path, labels_path = folder / f"{corruption}.npy", folder / _LABELS_FILE
    source = _source(dataset, corruption, root)
    total = CIFAR_PER_SEVERITY * len(SEVERITIES)
    images = np.load(path, mmap_mode="r")  # only the rows asked for are read
    _check_npy(path, images, (total, 32, 32, 3), False, source)
    labels = np.load(labels_path, mmap_mode="r")
    _check_npy(labels_path, labels, (total,), True, source)
    block = images[(severity - 1) * CIFAR_PER_SEVERITY: severity * CIFAR_PER_SEVERITY]
    # RobustBench's conversion, step for step: NHWC uint8 -> NCHW -> float32 / 255
    x = np.transpose(np.asarray(block[positions]), (0, 3, 1, 2)).astype(np.float32) / 255
    y = np.asarray(labels[:CIFAR_PER_SEVERITY][positions]).astype(np.int64)  # the first block, as RobustBench
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), str(path)


def _res224():
    # robustbench.data.PREPROCESSINGS["Res224"], built here to avoid importing robustbench
    from torchvision import transforms

    return transforms.Compose([transforms.Resize([224, 224]), transforms.ToTensor()])


def _read_imagenet_c(corruption: str, severity: int, positions: np.ndarray, root: Path):
    from PIL import Image

    rel, labels = _imagenet_list()
    folder = root / DIR_NAMES["imagenet"] / corruption / str(severity)
    tf = _res224()
    xs = []
    for i in positions:
        with open(folder / rel[i], "rb") as f:  # robustbench.loaders.pil_loader
            img = Image.open(f)
            img = img.convert("RGB")
        xs.append(tf(img))
    x = torch.stack(xs) if xs else torch.empty(0, 3, 224, 224)
    return x, torch.from_numpy(labels[positions].astype(np.int64)), str(folder)


def load_corruption_set(dataset: str, corruption: str, severity: int, n_examples: int | None,
                        data_dir: str | os.PathLike | None = None, *, shuffle: bool = False,
                        seed: int = 0) -> CorruptionSet:
    """Load one corruption at one severity as RobustBench 1.1.1 does (see the module docstring for its rules).

    Args:
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"`` (case-insensitive).
        corruption: one of :data:`CORRUPTIONS` (``"fog"``; did-you-mean otherwise).
        severity: 1..5.
        n_examples: number of images, at most 10000 (CIFAR-C) or 5000 (ImageNet-C); ``None`` for all.
        data_dir: the folder holding ``CIFAR-10-C`` / ``CIFAR-100-C`` / ``ImageNet-C``; default
            ``$CTROBUST_DATA_DIR``, else ``~/.cache/ctrobust/data``. Missing CIFAR-C files are downloaded from
            Zenodo through RobustBench when the network allows and ``CTROBUST_OFFLINE`` is unset.
        shuffle: RobustBench's ``shuffle`` rule, drawn from ``seed`` (CIFAR-C: the first ``n_examples`` rows
            permuted; ImageNet-C: ``n_examples`` of the 5000 listed images in random order).
        seed: the draw of ``shuffle=True`` (``np.random.RandomState(seed)``); unused otherwise.

    Returns:
        :class:`CorruptionSet`: ``x`` float32 ``(N, 3, H, W)`` in [0, 1], ``y`` int64 ``(N,)``, ``ids`` int64
        ``(N,)`` (index in the severity block / the ImageNet list), ``content_hash``, ``corruption``,
        ``severity``.

    Raises:
        CorruptionDataUnavailableError: files missing and not downloadable (every missing one listed).
        DataUnavailableError: a file that is there but not a RobustBench corruption file (wrong shape or dtype).
        UnknownNameError: unknown dataset or corruption.
        ConfigError: severity outside 1..5, more than one corruption or severity, ``n_examples`` out of range.
    """
    dataset = parse_dataset(dataset)
    corruption = _one(parse_corruptions(corruption, dataset), "corruption", corruption)
    severity = _one(parse_severities(severity), "severity", severity)
    n = _count(n_examples, dataset)
    root = _root(data_dir)
    if shuffle:
        rng = np.random.RandomState(int(seed))
        positions = rng.permutation(_n_total(dataset))[:n] if dataset == "imagenet" else rng.permutation(n)
    else:
        positions = np.arange(n)
    positions = positions.astype(np.int64)

    def missing():
        if dataset != "imagenet":
            return missing_corruption_files(dataset, corruption, severity, root)
        rel, _ = _imagenet_list()
        folder = root / DIR_NAMES[dataset] / corruption / str(severity)
        m = _imagenet_missing(folder, rel, positions, _source(dataset, corruption, root))
        return [m] if m is not None else []

    absent = missing()
    if absent:
        reason = ""
        if dataset == "imagenet":
            reason = "RobustBench has no download for ImageNet-C"
        elif offline():
            reason = "CTROBUST_OFFLINE is set"
        else:
            try:
                _download_cifar_c(dataset, root)
            except Exception as exc:  # noqa: BLE001 - any download failure becomes the listing below
                reason = f"download failed: {type(exc).__name__}: {exc}"
            absent = missing()
            if absent and not reason:
                archive = root / ZENODO_CIFAR_C[dataset][1]
                reason = (f"{archive} is there but not extracted: extract it into {root}" if archive.is_file()
                          else "the download did not provide them")
        if absent:
            raise CorruptionDataUnavailableError(dataset, absent, root, reason)

    if dataset == "imagenet":
        x, y, src = _read_imagenet_c(corruption, severity, positions, root)
    else:
        x, y, src = _read_cifar_c(dataset, corruption, severity, positions, root)
    ids = torch.from_numpy(positions)
    x = x.contiguous()
    tag = f"{dataset}-c/{corruption}/{severity}"
    return CorruptionSet(x=x, y=y, ids=ids, dataset=dataset, num_classes=DATASETS[dataset],
                         content_hash=content_hash(x, y, ids, tag), data="corruptions",
                         subset="shuffled" if shuffle else "first", source_dir=src, corruption=corruption,
                         severity=severity, seed=int(seed) if shuffle else None)


# ---------------------------------------------------------------------------------------------------
# Every (corruption, severity) pair of a sweep as one evaluation set, read pair by pair
# ---------------------------------------------------------------------------------------------------


class _PairRows:
    """The images of a :class:`CorruptionEvalSet`, read one (corruption, severity) pair at a time.

    Indexing (``rows[idx]``, ``rows[:k]``) returns a float32 tensor like a tensor would; only the pairs the
    index touches are read (the last one is kept), so ImageNet-C's 75 pairs never sit in memory at once.
    """

    def __init__(self, load_pair, n_pairs: int, per_pair: int, item_shape: tuple):
        self._load, self._per, self._n_pairs = load_pair, per_pair, n_pairs
        self.shape = torch.Size((n_pairs * per_pair, *item_shape))
        self.dtype = torch.float32
        self._cache: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return int(self.shape[0])

    def _pair(self, k: int) -> torch.Tensor:
        if self._cache is None or self._cache[0] != k:
            self._cache = (k, self._load(k))
        return self._cache[1]

    def __getitem__(self, idx) -> torch.Tensor:
        rows = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx, dtype=np.int64).reshape(-1)
        out = torch.empty((rows.size, *self.shape[1:]), dtype=torch.float32)
        for k in np.unique(rows // self._per):
            sel = np.flatnonzero(rows // self._per == k)
            out[torch.as_tensor(sel)] = self._pair(int(k))[torch.as_tensor(rows[sel] % self._per)]
        return out


@dataclass(frozen=True, eq=False)
class CorruptionEvalSet(EvalSet):
    """Every requested (corruption, severity) pair, ``n`` images each, as one evaluation set.

    Rows are pair-major in RobustBench's corruption order, then severity: row ``r`` is image ``r % n`` of pair
    ``r // n``; ``ids`` are ``pair index * 10**6 + image index`` (unique per row, so per-example outcomes of
    different pairs never collide), ``corruption`` / ``severity`` the pair of each row. ``x`` is read pair by pair
    (:class:`_PairRows`). ``content_hash`` covers every pair's images, labels and ids.
    """

    corruption: np.ndarray = field(default=None, repr=False)
    severity: np.ndarray = field(default=None, repr=False)
    pairs: tuple = ()
    per_pair: int = 0

    def columns(self, pos) -> dict:
        """The per-row columns a unit stores beside the outcomes (``corruption``, ``severity``)."""
        pos = np.asarray(pos, dtype=np.int64)
        return {"corruption": self.corruption[pos].astype(str), "severity": self.severity[pos].astype(np.int64)}


#: ids of a :class:`CorruptionEvalSet` row: pair index times this plus the image index
PAIR_STRIDE = 10 ** 6


def load_corruption_eval_set(dataset: str, corruptions="all", severities="all", n_examples: int | None = 1000,
                             data_dir=None) -> CorruptionEvalSet:
    """Every (corruption, severity) pair, RobustBench's first ``n_examples`` images of each (its
    ``corruptions_evaluation``: ``shuffle=False``), as one evaluation set read pair by pair.

    Every missing file of every pair is listed at once (:class:`CorruptionDataUnavailableError`, nothing written)
    unless the network can fetch them (CIFAR-C, through RobustBench's Zenodo download).
    """
    dataset = parse_dataset(dataset)
    names = parse_corruptions(corruptions, dataset)
    sevs = parse_severities(severities)
    n = _count(n_examples, dataset)
    root = _root(data_dir)
    absent = missing_corruption_files(dataset, names, sevs, root, n_examples=n if dataset == "imagenet" else None)
    if absent and (dataset == "imagenet" or offline()):
        raise CorruptionDataUnavailableError(
            dataset, absent, root, "RobustBench has no download for ImageNet-C" if dataset == "imagenet"
            else "CTROBUST_OFFLINE is set")
    pairs = tuple((c, s) for c in names for s in sevs)
    hashes, ys = [], []
    first = None
    for c, s in pairs:  # once through every pair: the content hash, the labels, and any download
        cs = load_corruption_set(dataset, c, s, n, root)
        hashes.append(cs.content_hash)
        ys.append(cs.y)
        if first is None:
            first = cs
    digest = hashlib.sha256("|".join([dataset, str(n), *hashes]).encode()).hexdigest()

    def load_pair(k: int) -> torch.Tensor:
        c, s = pairs[k]
        return load_corruption_set(dataset, c, s, n, root).x

    x = _PairRows(load_pair, len(pairs), n, tuple(first.x.shape[1:]))
    pos = np.arange(n, dtype=np.int64)
    ids = torch.from_numpy(np.concatenate([k * PAIR_STRIDE + pos for k in range(len(pairs))]))
    return CorruptionEvalSet(x=x, y=torch.cat(ys), ids=ids, dataset=dataset, num_classes=DATASETS[dataset],
                             content_hash=digest, data="corruptions", subset="first", source_dir=str(root),
                             corruption=np.repeat(np.array([c for c, _ in pairs]), n),
                             severity=np.repeat(np.array([s for _, s in pairs], dtype=np.int64), n),
                             pairs=pairs, per_pair=n)
