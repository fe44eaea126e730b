"""Evaluation sets: bundled images, full-set readers (on synthetic files), subsets and content hash."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from ctrobust._registry import UnknownNameError
from ctrobust.data import (DataUnavailableError, EvalSet, bundled_data_dir, content_hash, default_data_dir,
                           load_eval_set, select_indices)

# first labels of the official test sets (CIFAR-10: cat, ship, ship, airplane, frog, ...)
CIFAR10_FIRST_LABELS = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
CIFAR100_FIRST_LABELS = [49, 33, 72, 51, 71, 92, 15, 14, 23, 0]


def _labels_in_file_names(prefix: str) -> list[int]:
    pat = re.compile(rf"^{prefix}_(\d+)_(\d+)\.(png|jpg)$")
    found = sorted((int(m.group(1)), int(m.group(2))) for p in bundled_data_dir().iterdir()
                   if (m := pat.match(p.name)))
    return [lab for _, lab in found]


# ---------------------------------------------------------------------------------------------------
# Bundled images
# ---------------------------------------------------------------------------------------------------


def test_bundled_cifar10_are_the_first_test_images():
    es = load_eval_set("cifar10", None, data="bundled")
    x, y, ids = es  # unpacks as a triple
    assert isinstance(es, EvalSet) and es.dataset == "cifar10" and es.num_classes == 10
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and ids.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.std()) > 0.1
    assert y.tolist() == CIFAR10_FIRST_LABELS
    assert ids.tolist() == list(range(20))
    # pixel values are k/255 exactly (lossless PNG)
    assert torch.equal(torch.round(x * 255) / 255, x)


def test_bundled_cifar100_shape_labels_range():
    x, y, ids = load_eval_set("CIFAR-100", 10, data="bundled")
    assert x.shape == (10, 3, 32, 32)
    assert y.tolist() == CIFAR100_FIRST_LABELS
    assert ids.tolist() == list(range(10))
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_bundled_imagenet_resized_and_cropped_to_224():
    es = load_eval_set("imagenet", None, data="bundled")
    assert es.x.shape == (20, 3, 224, 224) and es.num_classes == 1000
    assert es.y.tolist() == _labels_in_file_names("imagenet")
    assert bool(((es.y >= 0) & (es.y < 1000)).all())
    assert 0.0 <= float(es.x.min()) and float(es.x.max()) <= 1.0
    assert float(es.x.flatten(1).std(1).min()) > 0.02  # real images, not padding


def test_first_subset_and_hash():
    full = load_eval_set("cifar10", None, data="bundled")
    five = load_eval_set("cifar10", 5, data="bundled")
    assert torch.equal(five.x, full.x[:5]) and torch.equal(five.y, full.y[:5])
    assert five.content_hash == load_eval_set("cifar10", 5, data="bundled").content_hash  # stable
    assert re.fullmatch(r"[0-9a-f]{64}", five.content_hash)
    six = load_eval_set("cifar10", 6, data="bundled")
    assert len({five.content_hash, six.content_hash, full.content_hash}) == 3
    assert five.content_hash == content_hash(five.x, five.y, five.ids, "cifar10")
    # any change to pixels, labels or ids changes the hash
    x2 = five.x.clone()
    x2[0, 0, 0, 0] += 1 / 255
    y2 = five.y.clone()
    y2[0] = (y2[0] + 1) % 10
    assert content_hash(x2, five.y, five.ids, "cifar10") != five.content_hash
    assert content_hash(five.x, y2, five.ids, "cifar10") != five.content_hash
    assert content_hash(five.x, five.y, five.ids + 1, "cifar10") != five.content_hash


def test_too_many_examples_names_how_many_exist():
    with pytest.raises(ValueError, match="only 20 examples"):
        load_eval_set("cifar10", 21, data="bundled")
    with pytest.raises(ValueError, match="positive"):
        load_eval_set("cifar10", 0, data="bundled")


def test_balanced_on_bundled_cifar10_runs_out_of_a_class():
    # the first 20 CIFAR-10 test images contain no bird (2) and no deer (4)
    with pytest.raises(ValueError, match="class 2 has only 0"):
        load_eval_set("cifar10", 10, subset="balanced", data="bundled")


def test_unknown_names_are_helpful():
    with pytest.raises(UnknownNameError, match="did you mean 'cifar10'"):
        load_eval_set("cifra10", 5, data="bundled")
    with pytest.raises(UnknownNameError, match="did you mean 'balanced'"):
        load_eval_set("cifar10", 5, subset="balance", data="bundled")
    with pytest.raises(UnknownNameError, match="did you mean 'bundled'"):
        load_eval_set("cifar10", 5, data="bundle")


# ---------------------------------------------------------------------------------------------------
# Subset selection
# ---------------------------------------------------------------------------------------------------


def test_select_indices_balanced_takes_first_of_each_class_in_order():
    labels = [2, 0, 1, 0, 2, 1, 0, 1, 2]
    assert select_indices(labels, 3, "balanced", 3).tolist() == [0, 1, 2]
    assert select_indices(labels, 6, "balanced", 3).tolist() == [0, 1, 2, 3, 4, 5]
    assert select_indices(labels, 4, "first", 3).tolist() == [0, 1, 2, 3]
    assert select_indices(labels, None, "first", 3).tolist() == list(range(9))
    labels2 = [1, 1, 1, 0, 0, 1, 0]
    assert select_indices(labels2, 4, "balanced", 2).tolist() == [0, 1, 3, 4]


def test_select_indices_errors():
    labels = [0, 1, 0, 1, 0, 0]
    with pytest.raises(ValueError, match="not divisible by 2 classes"):
        select_indices(labels, 3, "balanced", 2)
    with pytest.raises(ValueError, match="class 1 has only 2"):
        select_indices(labels, 6, "balanced", 2)
    with pytest.raises(ValueError, match="only 6 examples"):
        select_indices(labels, 7, "first", 2)
    with pytest.raises(ValueError, match="needs n_examples"):
        select_indices(labels, None, "balanced", 2)


# ---------------------------------------------------------------------------------------------------
# Full CIFAR (synthetic test file with a patched md5) and ImageNet (synthetic folder)
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_cifar10(tmp_path, monkeypatch):
    """A 50-image CIFAR-10 'test_batch' in torchvision's layout; torchvision's md5 table patched to match."""
    from torchvision import datasets

    rng = np.random.default_rng(0)
    counts = [7, 5, 5, 5, 5, 5, 5, 5, 5, 3]  # class 9 is short
    labels = rng.permutation(np.repeat(np.arange(10), counts)).tolist()
    data = rng.integers(0, 256, size=(50, 3072), dtype=np.uint8)
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    path = folder / "test_batch"
    with open(path, "wb") as f:
        pickle.dump({"data": data, "labels": labels, "batch_label": "testing batch 1 of 1"}, f)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", md5]])
    images = data.reshape(50, 3, 32, 32)
    return tmp_path / "data", images, np.array(labels)


def test_full_cifar_first_and_balanced(fake_cifar10):
    root, images, labels = fake_cifar10
    first = load_eval_set("cifar10", 7, data_dir=root)
    assert first.ids.tolist() == list(range(7))
    assert torch.equal(first.x, torch.from_numpy(images[:7]).float() / 255)
    assert first.y.tolist() == labels[:7].tolist()

    bal = load_eval_set("cifar10", 20, subset="balanced", data_dir=root)
    ids = bal.ids.numpy()
    assert np.all(np.diff(ids) > 0)  # test-set order
    assert np.bincount(bal.y.numpy(), minlength=10).tolist() == [2] * 10
    for c in range(10):  # the first two of each class
        assert ids[bal.y.numpy() == c].tolist() == np.flatnonzero(labels == c)[:2].tolist()
    assert torch.equal(bal.x, torch.from_numpy(images[ids]).float() / 255)
    assert bal.y.tolist() == labels[ids].tolist()
    # same n, different subset -> different hash; same call -> same hash
    assert load_eval_set("cifar10", 20, data_dir=root).content_hash != bal.content_hash
    assert load_eval_set("cifar10", 20, subset="balanced", data_dir=root).content_hash == bal.content_hash
    with pytest.raises(ValueError, match="class 9 has only 3"):
        load_eval_set("cifar10", 40, subset="balanced", data_dir=root)
    with pytest.raises(ValueError, match="only 50 examples"):
        load_eval_set("cifar10", 51, data_dir=root)


def test_full_cifar_env_data_dir(fake_cifar10, monkeypatch):
    root, images, _ = fake_cifar10
    monkeypatch.setenv("CTROBUST_DATA_DIR", str(root))
    assert default_data_dir() == root
    assert load_eval_set("cifar10", 3).x.shape == (3, 3, 32, 32)


def test_full_cifar_missing_without_network_is_clear_and_leaves_nothing(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    calls = []

    def no_network(url, download_root, filename=None, md5=None, **kw):
        calls.append(url)
        Path(download_root).mkdir(parents=True, exist_ok=True)
        (Path(download_root) / filename).write_bytes(b"partial")  # torchvision writes straight to the final name
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tvu, "download_and_extract_archive", no_network)
    root = tmp_path / "cifar"
    with pytest.raises(DataUnavailableError) as err:
        load_eval_set("cifar10", 5, data_dir=root)
    msg = str(err.value)
    assert str(root / "cifar-10-batches-py" / "test_batch") in msg
    assert "cifar-10-python.tar.gz" in msg and "Name or service not known" in msg
    assert calls and not root.exists()  # no partial archive, not even the folder made for the download

    # offline mode does not even try
    monkeypatch.setenv("CTROBUST_OFFLINE", "1")
    calls.clear()
    with pytest.raises(DataUnavailableError, match="CTROBUST_OFFLINE"):
        load_eval_set("cifar100", 5, data_dir=root)
    assert calls == []


def test_full_cifar_corrupted_file_is_refused(fake_cifar10, monkeypatch):
    root, _, _ = fake_cifar10
    monkeypatch.setenv("CTROBUST_OFFLINE", "1")
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"not the test batch")
    with pytest.raises(DataUnavailableError, match="corrupted"):
        load_eval_set("cifar10", 5, data_dir=root)


def _robustbench_helper(name):
    import importlib.util

    spec = importlib.util.find_spec("robustbench")
    return Path(list(spec.submodule_search_locations)[0]) / "helper_files" / name


def test_full_imagenet_reads_robustbench_list(tmp_path):
    from PIL import Image

    rel = _robustbench_helper("imagenet_test_image_ids.txt").read_text().split()[:3]
    wnids = sorted(json.loads(_robustbench_helper("imagenet_class_to_id_map.json").read_text()))
    rng = np.random.default_rng(0)
    for r in rel:
        p = tmp_path / "val" / r
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)).save(p, format="JPEG")
    es = load_eval_set("imagenet", 3, data_dir=tmp_path)
    assert es.x.shape == (3, 3, 224, 224) and es.x.dtype == torch.float32
    assert es.ids.tolist() == [0, 1, 2]
    assert es.y.tolist() == [wnids.index(r.split("/")[0]) for r in rel]
    assert 0.0 <= float(es.x.min()) and float(es.x.max()) <= 1.0

    with pytest.raises(DataUnavailableError) as err:
        load_eval_set("imagenet", 4, data_dir=tmp_path)
    rel4 = _robustbench_helper("imagenet_test_image_ids.txt").read_text().split()[3]
    assert "1 of the 4" in str(err.value) and str(tmp_path / "val" / rel4) in str(err.value)


@pytest.mark.network
def test_real_cifar10_download_matches_bundled_images(tmp_path):
    """The bundled PNGs are the first 20 CIFAR-10 test images: same bytes, same hash. Needs CTROBUST_NETWORK=1."""
    full = load_eval_set("cifar10", 20, data_dir=tmp_path)
    bundled = load_eval_set("cifar10", 20, data="bundled")
    assert full.content_hash == bundled.content_hash


def test_timing_workload_repeats_the_bundled_images_as_distinct_rows():
    from ctrobust.data import TIMING_NOTE, SubsetError

    bundled = load_eval_set("cifar10", None, data="bundled")
    t = load_eval_set("cifar10", 45, data="timing")
    assert t.n == 45 and t.data == "timing"
    assert torch.equal(t.ids, torch.arange(45))  # distinct rows: their random draws differ
    k = torch.arange(45) % bundled.n
    assert torch.equal(t.x, bundled.x[k]) and torch.equal(t.y, bundled.y[k])
    assert t.content_hash != load_eval_set("cifar10", 44, data="timing").content_hash
    assert "not a measurement" in TIMING_NOTE
    with pytest.raises(SubsetError, match="subset='first'"):
        load_eval_set("cifar10", 40, subset="balanced", data="timing")
    with pytest.raises(SubsetError, match="needs n_examples"):
        load_eval_set("cifar10", None, data="timing")
