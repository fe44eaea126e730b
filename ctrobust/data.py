"""Evaluation sets: CIFAR-10/100 and ImageNet test images, full or bundled, with deterministic subsets.

``load_eval_set`` returns an :class:`EvalSet` that unpacks as ``x, y, ids``:

- ``x``: float32 tensor ``(N, C, H, W)`` in [0, 1] (no normalization: models normalize inside);
  ``(N, 3, 32, 32)`` for CIFAR, ``(N, 3, 224, 224)`` for ImageNet.
- ``y``: int64 tensor ``(N,)`` of class labels.
- ``ids``: int64 tensor ``(N,)``, the index of each image in its source list: the CIFAR test set
  (0..9999), RobustBench's 5000-image ImageNet list (``robustbench/helper_files/imagenet_test_image_ids.txt``),
  or, for bundled ImageNet samples, foolbox's sample number (0..19; these are *not* validation-set indices).

Sources (``data=``):

- ``"full"``: CIFAR-10/100 test sets read from ``data_dir`` (torchvision's layout; downloaded when the network
  allows, md5-checked); ImageNet from ``<data_dir>/val/<wnid>/<file>.JPEG`` (RobustBench's layout and image
  list; you supply the images), preprocessed as RobustBench's ``Res256Crop224`` (Resize 256, CenterCrop 224).
- ``"bundled"``: the test images shipped in the foolbox wheel (``foolbox/data``): the first 20 CIFAR-10 and
  the first 20 CIFAR-100 test images (32x32 PNG, ids 0..19 = test-set indices), and 20 ImageNet samples (JPEG,
  mostly 512x512) resized and center-cropped like the full set (Resize 256, CenterCrop 224). Works offline.
- ``"timing"``: a *timing workload*, not an evaluation set: ``n`` rows made of the bundled images repeated
  (row ``i`` is bundled image ``i mod 20``, id ``i``), so any ``n`` can be swept offline. Rows are distinct
  examples to the engines (their random draws are keyed by the id), but the images repeat: accuracies of such
  a run are not an estimate of anything, and results and reports say so (``TIMING_NOTE``).

Subsets (``subset=``): ``"first"`` takes the first ``n`` images in source order; ``"balanced"`` takes the first
``n / num_classes`` images of every class (the protocol of the CT paper), returned in source order.

``EvalSet.content_hash`` is the sha256 over the chosen images' bytes, labels and ids (and the shapes), so
two sets with the same hash contain the same examples; sweep keys use it to refuse mixing data.

Example:
    >>> es = load_eval_set("cifar10", 20, data="bundled")
    >>> x, y, ids = es
    >>> x.shape, es.num_classes, es.content_hash[:12]
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import pickle
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ctrobust._registry import did_you_mean
from ctrobust.errors import ConfigError

__all__ = [
    "DATASETS",
    "EvalSet",
    "DataUnavailableError",
    "load_eval_set",
    "select_indices",
    "content_hash",
    "parse_dataset",
    "parse_subset",
    "parse_source",
    "num_classes",
    "default_data_dir",
    "user_cache_dir",
    "bundled_data_dir",
    "network_timeout",
    "offline",
]

#: dataset name -> number of classes
DATASETS: dict[str, int] = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
SUBSETS = ("first", "balanced")
SOURCES = ("full", "bundled", "timing")
#: how results, reports and figures flag a run on the ``timing`` source
TIMING_NOTE = ("timing workload: the bundled images repeated as distinct rows; accuracies are not a "
               "measurement")

_ALIASES = {"cifar-10": "cifar10", "cifar_10": "cifar10", "cifar-100": "cifar100", "cifar_100": "cifar100",
            "imagenet-1k": "imagenet", "imagenet1k": "imagenet", "ilsvrc2012": "imagenet"}

#: seconds a socket may wait (connect or read) during a download before giving up
DEFAULT_NET_TIMEOUT = 15.0

# foolbox's sample file names: <prefix>_<NN>_<label>.<ext>
_BUNDLED_PREFIX = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet"}


class SubsetError(ConfigError):
    """The requested subset cannot be drawn (n too large, not divisible by the classes, ...): bad input."""


class DataUnavailableError(RuntimeError):
    """The requested images are not on disk and could not be downloaded (the message says where to put them)."""


# ---------------------------------------------------------------------------------------------------
# Names and directories
# ---------------------------------------------------------------------------------------------------


def parse_dataset(name: str) -> str:
    """Canonical dataset name (``"cifar10"``, ``"cifar100"`` or ``"imagenet"``), case-insensitive.

    Raises:
        UnknownNameError: with "did you mean ...?" for an unknown name.
    """
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key in DATASETS:
        return key
    raise did_you_mean("dataset", str(name), list(DATASETS))


def num_classes(dataset: str) -> int:
    """Number of classes of ``dataset`` (10, 100 or 1000)."""
    return DATASETS[parse_dataset(dataset)]


def user_cache_dir(*parts: str) -> Path:
    """Per-user cache folder ``$XDG_CACHE_HOME/ctrobust/...`` (else ``~/.cache/ctrobust/...``); never the cwd."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base.joinpath("ctrobust", *parts)


def default_data_dir() -> Path:
    """``$CTROBUST_DATA_DIR`` if set, else the per-user cache folder ``.../ctrobust/data``."""
    env = os.environ.get("CTROBUST_DATA_DIR")
    return Path(env).expanduser() if env else user_cache_dir("data")


def _net_timeout() -> float:
    try:
        return float(os.environ.get("CTROBUST_NET_TIMEOUT", DEFAULT_NET_TIMEOUT))
    except ValueError:
        return DEFAULT_NET_TIMEOUT


@contextlib.contextmanager
def network_timeout(seconds: float | None = None):
    """Bound every socket operation (connect, each read) made inside the block to ``seconds``.

    gdown (through requests), torchvision and torch.hub (through urllib) open connections without a timeout,
    which on a machine whose packets are silently dropped means waiting forever. For the duration of the block
    (default ``$CTROBUST_NET_TIMEOUT`` or 15 s) this sets the process-wide default socket timeout (used by
    urllib) and gives every ``requests.Session.request`` without an explicit timeout this one (requests passes
    ``timeout=None`` down to its sockets, ignoring the socket default). Both are restored afterwards; not
    thread-safe with respect to other threads doing network I/O at the same time. The read timeout bounds
    each wait for data, not the whole download.
    """
    t = _net_timeout() if seconds is None else float(seconds)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(t)
    patched = None
    try:
        import requests

        original = requests.Session.request

        def request(self, method, url, *args, **kwargs):
            if kwargs.get("timeout") is None and len(args) < 7:  # timeout: 7th positional after url
                kwargs["timeout"] = t
            return original(self, method, url, *args, **kwargs)

        requests.Session.request = request
        patched = (requests.Session, original)
    except ImportError:  # pragma: no cover - requests comes with robustbench/gdown
        pass
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)
        if patched is not None:
            patched[0].request = patched[1]


@contextlib.contextmanager
def removing_new_folders_on_error(folder: Path):
    """Create ``folder`` (and missing parents); if the block raises, remove the ones created here again.

    A failed download must leave no trace, not even empty folders in a user's model or data directory.
    Folders that existed before, or that something else has filled meanwhile, are kept.
    """
    folder = Path(folder)
    created = [d for d in (folder, *folder.parents) if not d.exists()]  # innermost first
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for d in created:
            try:
                d.rmdir()
            except OSError:  # not empty (or gone): keep it and everything above it
                break
        raise


def offline() -> bool:
    """True when ``CTROBUST_OFFLINE`` is set to a true value: never try a download."""
    return os.environ.get("CTROBUST_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EvalSet:
    """Images, labels and ids of an evaluation set; unpacks as ``x, y, ids = eval_set``.

    Attributes:
        x: float32 ``(N, C, H, W)`` in [0, 1].
        y: int64 ``(N,)`` labels in ``[0, num_classes)``.
        ids: int64 ``(N,)`` index of each image in its source list (see the module docstring).
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``.
        num_classes: 10, 100 or 1000.
        content_hash: hex sha256 over the images' bytes, labels and ids (see :func:`content_hash`).
        data: ``"full"``, ``"bundled"`` or ``"timing"``.
        subset: ``"first"`` or ``"balanced"``.
    """

    x: torch.Tensor
    y: torch.Tensor
    ids: torch.Tensor
    dataset: str
    num_classes: int
    content_hash: str
    data: str = "full"
    subset: str = "first"
    source_dir: str = field(default="", repr=False)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.x, self.y, self.ids))

    @property
    def n(self) -> int:
        """Number of examples."""
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return (f"EvalSet(dataset={self.dataset!r}, data={self.data!r}, subset={self.subset!r}, n={self.n}, "
                f"x={tuple(self.x.shape)} {self.x.dtype}, content_hash={self.content_hash[:12]}...)")


def content_hash(x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, dataset: str = "") -> str:
    """Hex sha256 over ``dataset``, the shapes, and the raw bytes of ``x`` (as float32), ``y`` and ``ids`` (int64).

    Equal hashes mean the same images (bit for bit, in the same order) with the same labels and ids.
    """
    h = hashlib.sha256()
    h.update(b"ctrobust-evalset-v1\0")
    h.update(dataset.encode() + b"\0")
    xs = x.detach().to("cpu", torch.float32).contiguous()
    ys = y.detach().to("cpu", torch.int64).contiguous()
    ii = ids.detach().to("cpu", torch.int64).contiguous()
    h.update(repr((tuple(xs.shape), tuple(ys.shape), tuple(ii.shape))).encode())
    for t in (xs, ys, ii):
        h.update(t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------
# Subsets
# ---------------------------------------------------------------------------------------------------


def select_indices(labels, n_examples: int | None, subset: str = "first", n_classes: int | None = None,
                   *, what: str = "the set") -> np.ndarray:
    """Positions (into ``labels``) of a deterministic subset.

    Args:
        labels: 1-D int array of all labels of the source, in source order.
        n_examples: how many to take; ``None`` means all (only with ``subset="first"``).
        subset: ``"first"`` (the first ``n``) or ``"balanced"`` (the first ``n / n_classes`` of every class).
        n_classes: number of classes (required for ``balanced``).
        what: how to name the source in error messages.

    Returns:
        int64 array of positions, ascending (source order).

    Raises:
        ValueError: ``n`` larger than what exists, not divisible by the number of classes (balanced), or a
            class with too few examples.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    total = labels.shape[0]
    subset = parse_subset(subset)
    if n_examples is None:
        if subset == "balanced":
            raise SubsetError("subset='balanced' needs n_examples (a multiple of the number of classes); "
                             "n_examples=None (all) only goes with subset='first'")
        return np.arange(total, dtype=np.int64)
    n = int(n_examples)
    if n != n_examples or n <= 0:
        raise SubsetError(f"n_examples must be a positive integer or None (all), got {n_examples!r}")
    if n > total:
        raise SubsetError(f"n_examples={n} but {what} has only {total} examples; use n_examples<={total} "
                         f"(or None for all)")
    if subset == "first":
        return np.arange(n, dtype=np.int64)
    if not n_classes:
        raise SubsetError("subset='balanced' needs the number of classes")
    if n % n_classes:
        lo, hi = (n // n_classes) * n_classes, (n // n_classes + 1) * n_classes
        raise SubsetError(f"subset='balanced' takes n_examples/num_classes per class: n_examples={n} is not "
                         f"divisible by {n_classes} classes (try {lo or hi} or {hi})")
    per = n // n_classes
    chosen = []
    for c in range(n_classes):
        pos = np.flatnonzero(labels == c)
        if pos.shape[0] < per:
            raise SubsetError(f"subset='balanced' needs {per} examples of each class but class {c} has only "
                             f"{pos.shape[0]} in {what} (n_examples={n}); use a smaller n_examples "
                             f"or subset='first'")
        chosen.append(pos[:per])
    return np.sort(np.concatenate(chosen))


def _parse_choice(kind: str, value: str, choices) -> str:
    v = str(value).strip().lower()
    if v in choices:
        return v
    raise did_you_mean(kind, str(value), choices)


def parse_subset(name: str) -> str:
    """Canonical subset name: ``"first"`` or ``"balanced"`` (case-insensitive; did-you-mean otherwise)."""
    return _parse_choice("subset", name, SUBSETS)


def parse_source(name: str) -> str:
    """Canonical data source: ``"full"``, ``"bundled"`` or ``"timing"`` (case-insensitive; did-you-mean
    otherwise)."""
    return _parse_choice("data source", name, SOURCES)


# ---------------------------------------------------------------------------------------------------
# Bundled images (foolbox wheel)
# ---------------------------------------------------------------------------------------------------


def bundled_data_dir() -> Path:
    """The folder of test images shipped in the installed foolbox wheel (``<site-packages>/foolbox/data``).

    Found without importing foolbox (slow, prints warnings); falls back to importing it.
    """
    spec = importlib.util.find_spec("foolbox")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / "data"
            if p.is_dir():
                return p
    try:  # pragma: no cover - only for unusual installs (zipped, namespace)
        import foolbox  # noqa: F401

        p = Path(foolbox.__file__).parent / "data"
        if p.is_dir():
            return p
    except ImportError:
        pass
    raise DataUnavailableError("bundled images come with the foolbox wheel, which is not installed: "
                               "run `pip install foolbox==3.3.4` (or use data='full')")


def _bundled_files(dataset: str) -> list[tuple[int, int, Path]]:
    """(sample number, label, path) of the bundled images of ``dataset``, sorted by sample number."""
    folder = bundled_data_dir()
    pat = re.compile(rf"^{_BUNDLED_PREFIX[dataset]}_(\d+)_(\d+)\.(png|jpe?g)$", re.IGNORECASE)
    found = []
    for p in folder.iterdir():
        m = pat.match(p.name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), p))
    if not found:
        raise DataUnavailableError(f"no bundled {dataset} images ({_BUNDLED_PREFIX[dataset]}_NN_LABEL.*) in {folder}")
    found.sort(key=lambda t: t[0])
    return found


def _imagenet_transform():
    # identical to robustbench.data.PREPROCESSINGS["Res256Crop224"] (built here to avoid importing robustbench)
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])


def _read_image(path: Path, dataset: str) -> torch.Tensor:
    """One image as float32 ``(3, H, W)`` in [0, 1] (ImageNet: Resize 256 + CenterCrop 224)."""
    from PIL import Image

    with open(path, "rb") as f:
        img = Image.open(f)
        img = img.convert("RGB")
    if dataset == "imagenet":
        return _imagenet_transform()(img)
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


def _load_timing(dataset: str, n_examples, subset):
    """The timing workload: ``n`` rows cycling through the bundled images, ids ``0..n-1``."""
    if subset != "first":
        raise SubsetError(f"data='timing' repeats the bundled images in order: subset={subset!r} does not apply; "
                          "use subset='first'")
    if n_examples is None or int(n_examples) != n_examples or int(n_examples) <= 0:
        raise SubsetError(f"data='timing' needs n_examples (any positive number of rows), got {n_examples!r}")
    n = int(n_examples)
    x, y, _, src = _load_bundled(dataset, None, "first")
    pos = torch.arange(n) % x.shape[0]
    return x[pos].clone(), y[pos].clone(), torch.arange(n, dtype=torch.int64), src


def _load_bundled(dataset: str, n_examples, subset):
    files = _bundled_files(dataset)
    labels = np.array([lab for _, lab, _ in files], dtype=np.int64)
    pos = select_indices(labels, n_examples, subset, DATASETS[dataset],
                         what=f"the bundled {dataset} set ({bundled_data_dir()})")
    x = torch.stack([_read_image(files[i][2], dataset) for i in pos]) if len(pos) else torch.empty(0)
    y = torch.from_numpy(labels[pos])
    ids = torch.tensor([files[i][0] for i in pos], dtype=torch.int64)
    if dataset != "imagenet":
        shape = tuple(x.shape[1:])
        if shape != (3, 32, 32):
            raise DataUnavailableError(f"bundled {dataset} images should be 32x32 RGB, got {shape}")
    return x, y, ids, str(bundled_data_dir())


# ---------------------------------------------------------------------------------------------------
# Full CIFAR-10/100 (torchvision layout)
# ---------------------------------------------------------------------------------------------------


def _cifar_info(dataset: str) -> dict:
    from torchvision import datasets

    cls = datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100
    test_name, test_md5 = cls.test_list[0]
    return {"cls": cls, "folder": cls.base_folder, "test": test_name, "md5": test_md5, "url": cls.url,
            "archive": cls.filename, "archive_md5": cls.tgz_md5,
            "label_key": "labels" if dataset == "cifar10" else "fine_labels"}


def _cifar_test_path(data_dir: Path, info: dict) -> Path:
    return data_dir / info["folder"] / info["test"]


def _download_cifar(data_dir: Path, info: dict) -> None:
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    archive = data_dir / info["archive"]
    with removing_new_folders_on_error(data_dir):
        try:
            with network_timeout():
                download_and_extract_archive(info["url"], str(data_dir), filename=info["archive"],
                                             md5=info["archive_md5"])
        finally:
            # torchvision writes the archive straight to its final name: never keep a partial one
            if archive.exists() and not check_integrity(str(archive), info["archive_md5"]):
                archive.unlink()


def _load_cifar_full(dataset: str, data_dir: Path):
    from torchvision.datasets.utils import check_integrity

    info = _cifar_info(dataset)
    path = _cifar_test_path(data_dir, info)
    if not check_integrity(str(path), info["md5"]):
        state = "is corrupted (md5 mismatch)" if path.exists() else "is missing"
        reason = "CTROBUST_OFFLINE is set"
        if not offline():
            try:
                _download_cifar(data_dir, info)
                reason = ""
            except Exception as exc:  # noqa: BLE001 - any download failure becomes the clear error below
                reason = f"download failed: {type(exc).__name__}: {exc}"
        if not check_integrity(str(path), info["md5"]):
            raise DataUnavailableError(
                f"{dataset} test set not found: {path} {state} and {reason or 'the download did not provide it'}. "
                f"Place the test file there: extract {info['archive']} ({info['url']}) into {data_dir} "
                f"(only {info['folder']}/{info['test']} is needed), or pass data_dir / set CTROBUST_DATA_DIR. "
                f"For an offline smoke test use data='bundled' (20 images).")
    with open(path, "rb") as f:  # md5 verified above: this is the official file
        entry = pickle.load(f, encoding="latin1")
    images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(entry[info["label_key"]], dtype=np.int64)
    return images, labels, str(path)


# ---------------------------------------------------------------------------------------------------
# Full ImageNet (RobustBench's 5000-image list)
# ---------------------------------------------------------------------------------------------------


def _robustbench_helper(name: str) -> Path:
    spec = importlib.util.find_spec("robustbench")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError("robustbench is not installed: run `pip install robustbench==1.1.1`")
    return Path(list(spec.submodule_search_locations)[0]) / "helper_files" / name


def _imagenet_list() -> tuple[list[str], np.ndarray]:
    rel = _robustbench_helper("imagenet_test_image_ids.txt").read_text().split()
    class_to_idx = json.loads(_robustbench_helper("imagenet_class_to_id_map.json").read_text())
    labels = np.array([class_to_idx[r.split("/")[0]] for r in rel], dtype=np.int64)
    return rel, labels


def _load_imagenet_full(data_dir: Path, n_examples, subset):
    rel, labels = _imagenet_list()
    val = data_dir / "val"
    pos = select_indices(labels, n_examples, subset, 1000, what="RobustBench's ImageNet list")
    paths = [val / rel[i] for i in pos]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataUnavailableError(
            f"ImageNet validation images missing: {len(missing)} of the {len(paths)} needed are not in {val} "
            f"(first: {missing[0]}). ctrobust reads RobustBench's 5000-image list "
            f"({_robustbench_helper('imagenet_test_image_ids.txt')}) from <data_dir>/val/<wnid>/<file>.JPEG; "
            f"place the ILSVRC2012 validation images there (sorted into wnid folders) and pass data_dir "
            f"or set CTROBUST_DATA_DIR. For an offline smoke test use data='bundled' (20 images).")
    x = torch.stack([_read_image(p, "imagenet") for p in paths])
    return x, torch.from_numpy(labels[pos]), torch.from_numpy(pos.astype(np.int64)), str(val)


# ---------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------


def load_eval_set(dataset: str, n_examples: int | None, subset: str = "first", data: str = "full",
                  data_dir: str | os.PathLike | None = None) -> EvalSet:
    """Load a deterministic evaluation subset as [0, 1] float32 images.

    Args:
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"`` (case-insensitive).
        n_examples: number of examples; ``None`` for all the source has (with ``subset="first"``).
        subset: ``"first"`` (first ``n`` in source order) or ``"balanced"`` (first ``n / num_classes`` of each
            class; ``n`` must be divisible by the number of classes).
        data: ``"full"`` (test set in ``data_dir``), ``"bundled"`` (foolbox's 20 sample images, offline) or
            ``"timing"`` (``n_examples`` rows repeating the bundled images: a timing workload, see above).
        data_dir: folder of the full data; default ``$CTROBUST_DATA_DIR``, else ``~/.cache/ctrobust/data``.
            CIFAR: torchvision layout (``cifar-10-batches-py/test_batch``, ``cifar-100-python/test``), downloaded
            when missing and the network allows. ImageNet: ``<data_dir>/val/<wnid>/<file>.JPEG``.

    Returns:
        :class:`EvalSet` (``x`` float32 ``(N, C, H, W)`` in [0, 1], ``y`` int64 ``(N,)``, ``ids`` int64 ``(N,)``,
        plus ``content_hash``, ``num_classes``, ``dataset``).

    Raises:
        DataUnavailableError: the data is missing and cannot be downloaded (names the folder and the files).
        ValueError: ``n_examples`` larger than available, not divisible (balanced), or a class runs out.
        UnknownNameError: unknown dataset, subset or data source.
    """
    dataset = parse_dataset(dataset)
    subset = parse_subset(subset)
    data = parse_source(data)
    k = DATASETS[dataset]
    if data == "bundled":
        x, y, ids, src = _load_bundled(dataset, n_examples, subset)
    elif data == "timing":
        x, y, ids, src = _load_timing(dataset, n_examples, subset)
    else:
        root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        if dataset == "imagenet":
            x, y, ids, src = _load_imagenet_full(root, n_examples, subset)
        else:
            images, labels, src = _load_cifar_full(dataset, root)
            pos = select_indices(labels, n_examples, subset, k, what=f"the {dataset} test set")
            x = torch.from_numpy(images[pos]).to(torch.float32).div_(255.0)
            y = torch.from_numpy(labels[pos])
            ids = torch.from_numpy(pos.astype(np.int64))
    x = x.contiguous()
    return EvalSet(x=x, y=y.to(torch.int64), ids=ids.to(torch.int64), dataset=dataset, num_classes=k,
                   content_hash=content_hash(x, y, ids, dataset), data=data, subset=subset, source_dir=src)
