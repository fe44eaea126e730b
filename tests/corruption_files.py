"""Tiny corruption datasets in RobustBench's real layout, for tests.

CIFAR-C files keep the released shape, ``(50000, 32, 32, 3)`` uint8 per corruption (10000 images per severity,
severities 1..5 stacked), because RobustBench's loader slices with a hard-coded 10000 per severity. They are
written with ``np.lib.format.open_memmap``: the file is sparse, only the ``n_per_severity`` first images of each
severity block hold (random, non-zero) pixels, so a 150 MB file takes a few hundred KB on disk and RobustBench's
own ``load_cifar10c`` can read it unmodified.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CIFAR_C_DIRS = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C"}
PER_SEVERITY = 10000
SEVERITIES = 5


def write_cifar_c(root, dataset: str = "cifar10", corruptions=("gaussian_noise", "fog"), n_per_severity: int = 6,
                  seed: int = 0) -> dict:
    """Write ``<root>/CIFAR-10-C/<corruption>.npy`` (or ``CIFAR-100-C``) and ``labels.npy``.

    Returns:
        ``{"folder": Path, "labels": (10000,) uint8 test labels (labels.npy holds them once per severity),
        "images": {corruption: (5, n_per_severity, 32, 32, 3) uint8, the non-zero images of each severity}}``.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / CIFAR_C_DIRS[dataset]
    folder.mkdir(parents=True, exist_ok=True)
    k = 10 if dataset == "cifar10" else 100
    block_labels = rng.integers(0, k, size=PER_SEVERITY, dtype=np.uint8)
    np.save(folder / "labels.npy", np.tile(block_labels, SEVERITIES))
    images = {}
    for c in corruptions:
        arr = np.lib.format.open_memmap(folder / f"{c}.npy", mode="w+", dtype=np.uint8,
                                        shape=(SEVERITIES * PER_SEVERITY, 32, 32, 3))
        content = rng.integers(1, 256, size=(SEVERITIES, n_per_severity, 32, 32, 3), dtype=np.uint8)
        for s in range(SEVERITIES):
            arr[s * PER_SEVERITY: s * PER_SEVERITY + n_per_severity] = content[s]
        arr.flush()
        del arr
        images[c] = content
    return {"folder": folder, "labels": block_labels, "images": images}


def robustbench_helper(name: str) -> Path:
    """A file of ``robustbench/helper_files`` (found without importing robustbench)."""
    import importlib.util

    spec = importlib.util.find_spec("robustbench")
    return Path(list(spec.submodule_search_locations)[0]) / "helper_files" / name


def write_imagenet_c(root, corruption: str = "fog", severity: int = 3, n_images: int = 3,
                     sizes=((224, 224), (240, 300), (300, 260)), seed: int = 0) -> dict:
    """Write the first ``n_images`` of RobustBench's ImageNet list as JPEGs under
    ``<root>/ImageNet-C/<corruption>/<severity>/<wnid>/<file>.JPEG`` (image ``i`` of size ``sizes[i % len]``,
    (height, width)), plus an empty folder for every other wnid: RobustBench's loader indexes classes by the
    wnid folders present and looks up every listed image's wnid, so it runs only on a 1000-folder tree.

    Returns:
        ``{"folder": the severity folder, "rel": the listed relative paths written, "files": their paths}``.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(root) / "ImageNet-C" / corruption / str(severity)
    for wnid in json.loads(robustbench_helper("imagenet_class_to_id_map.json").read_text()):
        (folder / wnid).mkdir(parents=True, exist_ok=True)
    rel = robustbench_helper("imagenet_test_image_ids.txt").read_text().split()[:n_images]
    files = []
    for i, r in enumerate(rel):
        h, w = sizes[i % len(sizes)]
        p = folder / r
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(p, format="JPEG")
        files.append(p)
    return {"folder": folder, "rel": rel, "files": files}
