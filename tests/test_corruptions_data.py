"""Common-corruption sets (CIFAR-10-C, CIFAR-100-C, ImageNet-C): our reader against RobustBench's own loaders
on files written in the real layout, the missing-file listing, and the corruption / severity registry."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from corruption_files import robustbench_helper, write_cifar_c, write_imagenet_c
from ctrobust._registry import UnknownNameError
from ctrobust.corruptions import (CORRUPTIONS, IMAGENET_C_ARCHIVES, CorruptionDataUnavailableError, CorruptionSet,
                                  MissingFile, load_corruption_set, missing_corruption_files, parse_corruptions,
                                  parse_severities)
from ctrobust.data import DataUnavailableError, EvalSet, SubsetError
from ctrobust.errors import ConfigError


@pytest.fixture(scope="module")
def rb():
    """``robustbench.data``, importable with PyPI packages through ctrobust's shim."""
    from ctrobust._compat import import_robustbench

    import_robustbench()
    import robustbench.data

    return robustbench.data


@pytest.fixture(scope="module")
def cifar10c(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10c")
    return root, write_cifar_c(root, "cifar10", ("gaussian_noise", "fog"), n_per_severity=6, seed=0)


def _disk_bytes(path) -> int:
    return os.stat(path).st_blocks * 512


# ---------------------------------------------------------------------------------------------------
# CIFAR-C: exactly RobustBench's images
# ---------------------------------------------------------------------------------------------------


def test_test_files_have_the_real_shape_but_take_little_disk(cifar10c):
    root, written = cifar10c
    for c in ("gaussian_noise", "fog"):
        arr = np.load(written["folder"] / f"{c}.npy", mmap_mode="r")
        assert arr.shape == (50000, 32, 32, 3) and arr.dtype == np.uint8
        assert _disk_bytes(written["folder"] / f"{c}.npy") < 5 * 2 ** 20  # sparse: 150 MB apparent


@pytest.mark.parametrize("corruption,severity,n", [("gaussian_noise", 1, 6), ("fog", 3, 4), ("fog", 5, 1),
                                                   ("gaussian_noise", 4, 20), ("fog", 2, 6)])
def test_cifar10c_equals_robustbench_loader(rb, cifar10c, corruption, severity, n):
    root, written = cifar10c
    x_rb, y_rb = rb.load_cifar10c(n, severity, str(root), shuffle=False, corruptions=[corruption])
    cs = load_corruption_set("cifar10", corruption, severity, n, root)
    assert isinstance(cs, CorruptionSet) and isinstance(cs, EvalSet)
    assert cs.x.dtype == torch.float32 and cs.y.dtype == torch.int64 and cs.ids.dtype == torch.int64
    assert torch.equal(cs.x, x_rb)
    assert torch.equal(cs.y, y_rb.to(torch.int64))  # RobustBench keeps labels.npy's dtype
    assert cs.ids.tolist() == list(range(n))
    # and the rows are the ones the test wrote for this severity (not only RobustBench's say-so)
    k = min(n, 6)
    want = torch.from_numpy(written["images"][corruption][severity - 1][:k]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(cs.x[:k], want) and bool((cs.x[k:] == 0).all())
    assert cs.y.tolist() == written["labels"][:n].tolist()
    assert (cs.corruption, cs.severity, cs.dataset, cs.num_classes) == (corruption, severity, "cifar10", 10)


def test_cifar10c_shuffle_is_robustbench_rule_with_a_seed(rb, cifar10c):
    root, _ = cifar10c
    np.random.seed(7)
    x_rb, y_rb = rb.load_cifar10c(6, 2, str(root), shuffle=True, corruptions=["fog"])
    cs = load_corruption_set("cifar10", "fog", 2, 6, root, shuffle=True, seed=7)
    assert torch.equal(cs.x, x_rb) and torch.equal(cs.y, y_rb.to(torch.int64))
    first = load_corruption_set("cifar10", "fog", 2, 6, root)
    assert sorted(cs.ids.tolist()) == list(range(6)) and cs.ids.tolist() != list(range(6))
    assert torch.equal(cs.x, first.x[cs.ids]) and cs.subset == "shuffled" and cs.seed == 7
    assert cs.content_hash != first.content_hash  # order is part of the set


def test_content_hash_tells_corruption_severity_and_n_apart(cifar10c):
    root, _ = cifar10c
    hashes = {load_corruption_set("cifar10", c, s, n, root).content_hash
              for c, s, n in [("fog", 1, 6), ("fog", 2, 6), ("gaussian_noise", 1, 6), ("fog", 1, 5)]}
    assert len(hashes) == 4
    assert load_corruption_set("cifar10", "FOG", "1", 6, root).content_hash == \
        load_corruption_set("cifar10", "fog", 1, 6, root).content_hash


def test_cifar100c_equals_robustbench_loader(rb, tmp_path):
    written = write_cifar_c(tmp_path, "cifar100", ("snow",), n_per_severity=3, seed=1)
    x_rb, y_rb = rb.load_cifar100c(3, 4, str(tmp_path), shuffle=False, corruptions=["snow"])
    cs = load_corruption_set("cifar100", "snow", 4, 3, tmp_path)
    assert torch.equal(cs.x, x_rb) and torch.equal(cs.y, y_rb.to(torch.int64))
    assert cs.num_classes == 100 and cs.y.tolist() == written["labels"][:3].tolist()


def test_wrong_shape_file_is_named(tmp_path):
    folder = write_cifar_c(tmp_path, "cifar10", ("fog",), n_per_severity=1)["folder"]
    np.save(folder / "fog.npy", np.zeros((5 * 6, 32, 32, 3), dtype=np.uint8))  # not 10000 per severity
    with pytest.raises(DataUnavailableError, match=r"fog\.npy is not a RobustBench corruption file.*\(50000, 32"):
        load_corruption_set("cifar10", "fog", 1, 2, tmp_path)


# ---------------------------------------------------------------------------------------------------
# Missing files: all listed at once, nothing written
# ---------------------------------------------------------------------------------------------------


def test_missing_cifar_files_all_listed_and_nothing_written(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    missing = missing_corruption_files("cifar10", "fog,gaussian_noise", "1,5", data)
    folder = data / "CIFAR-10-C"
    assert all(isinstance(m, MissingFile) for m in missing)
    assert [m.path for m in missing] == [folder / "gaussian_noise.npy", folder / "fog.npy", folder / "labels.npy"]
    assert all("https://zenodo.org/records/2535967/files/CIFAR-10-C.tar" in m.source for m in missing)
    assert "3555552/files/CIFAR-100-C.tar" in missing_corruption_files("cifar100", "fog", 1, data)[0].source
    assert len(missing_corruption_files("cifar10", "all", "all", data)) == 16  # 15 corruptions + labels

    monkeypatch.setenv("CTROBUST_OFFLINE", "1")
    with pytest.raises(CorruptionDataUnavailableError) as err:
        load_corruption_set("cifar10", "fog", 1, 5, data)
    msg = str(err.value)
    assert msg.splitlines()[0].startswith("CIFAR-10-C data missing: 2 file(s)") and "CTROBUST_OFFLINE" in msg
    assert str(folder / "fog.npy") in msg and str(folder / "labels.npy") in msg and "zenodo.org" in msg
    assert err.value.all_lines and [m.path for m in err.value.missing] == [folder / "fog.npy", folder / "labels.npy"]
    assert isinstance(err.value, DataUnavailableError)
    assert list(data.iterdir()) == []


def test_failed_download_leaves_nothing_and_good_download_is_read(rb, tmp_path, monkeypatch):
    import robustbench.zenodo_download as zd

    calls = []

    def broken(record_id, filenames, save_dir):
        calls.append((record_id, set(filenames)))
        save_dir.mkdir(parents=True, exist_ok=True)
        (save_dir / "CIFAR-10-C.tar").write_bytes(b"partial")
        (save_dir / "CIFAR-10-C").mkdir()
        raise ConnectionError("network unreachable")

    data = tmp_path / "new" / "data"
    monkeypatch.delenv("CTROBUST_OFFLINE", raising=False)
    monkeypatch.setattr(zd, "zenodo_download", broken)
    with pytest.raises(CorruptionDataUnavailableError, match="download failed: ConnectionError"):
        load_corruption_set("cifar10", "fog", 1, 2, data)
    assert calls == [("2535967", {"CIFAR-10-C.tar"})]  # RobustBench's own record and archive
    assert list(tmp_path.iterdir()) == []  # no archive, no folder, not even data_dir

    def works(record_id, filenames, save_dir):
        write_cifar_c(save_dir, "cifar10", ("fog",), n_per_severity=2)

    monkeypatch.setattr(zd, "zenodo_download", works)
    cs = load_corruption_set("cifar10", "fog", 1, 2, data)
    assert cs.n == 2 and float(cs.x.max()) > 0


def test_missing_imagenet_c_folders_name_hendrycks_archives(tmp_path):
    missing = missing_corruption_files("imagenet", "gaussian_noise fog", [2, 5], tmp_path)
    assert [m.path for m in missing] == [tmp_path / "ImageNet-C" / c / str(s)
                                         for c in ("gaussian_noise", "fog") for s in (2, 5)]
    assert "zenodo.org/records/2235448/files/noise.tar" in missing[0].source
    assert "2235448/files/weather.tar" in missing[2].source
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------


def test_registry_is_robustbench_order_and_tables(rb):
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    import ctrobust.corruptions as corr

    assert CORRUPTIONS == tuple(rb.CORRUPTIONS) and len(CORRUPTIONS) == 15
    for ours, theirs in [("cifar10", BenchmarkDataset.cifar_10), ("cifar100", BenchmarkDataset.cifar_100),
                         ("imagenet", BenchmarkDataset.imagenet)]:
        assert parse_corruptions("all", ours) == tuple(rb.CORRUPTIONS_DICT[theirs][ThreatModel.corruptions])
        assert corr.DIR_NAMES[ours] == rb.CORRUPTIONS_DIR_NAMES[theirs][ThreatModel.corruptions]
        if ours != "imagenet":
            record, names = rb.ZENODO_CORRUPTIONS_LINKS[theirs]
            assert corr.ZENODO_CIFAR_C[ours] == (record, next(iter(names)))
    assert sorted(c for cs in IMAGENET_C_ARCHIVES.values() for c in cs) == sorted(CORRUPTIONS)


def test_parse_corruptions_and_severities():
    assert parse_corruptions("fog, Gaussian-Noise") == ("gaussian_noise", "fog")  # RobustBench's order
    assert parse_corruptions(["snow", "fog"], "imagenet") == ("snow", "fog")
    with pytest.raises(UnknownNameError, match="did you mean 'gaussian_noise'"):
        parse_corruptions("gausian_noise")
    with pytest.raises(ConfigError, match="more than once"):
        parse_corruptions("fog,fog")
    with pytest.raises(ConfigError, match="'all' cannot be combined"):
        parse_corruptions("all,fog")
    assert parse_severities("all") == (1, 2, 3, 4, 5)
    assert parse_severities("5, 1 3") == (1, 3, 5) and parse_severities(2) == (2,)
    assert parse_severities([4, 1]) == (1, 4)
    for bad, match in [("0", "out of range"), (6, "out of range"), ("1,6", "out of range"), ("x", "not an integer"),
                       ("2,2", "more than once"), ("", "no severities")]:
        with pytest.raises(ConfigError, match=match):
            parse_severities(bad)


def test_loader_refuses_bad_arguments_before_reading(tmp_path):
    for args, err in [(("cifar10", "fog", 0, 5), ConfigError), (("cifar10", "fog", 6, 5), ConfigError),
                      (("cifar10", "fogg", 1, 5), UnknownNameError), (("cifar10", "fog,snow", 1, 5), ConfigError),
                      (("cifar10", "fog", 1, 10001), SubsetError), (("imagenet", "fog", 1, 5001), SubsetError),
                      (("mnist", "fog", 1, 5), UnknownNameError)]:
        with pytest.raises(err):
            load_corruption_set(*args, tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------
# ImageNet-C
# ---------------------------------------------------------------------------------------------------


def test_imagenet_c_equals_robustbench_loader_and_pil(rb, tmp_path):
    import json

    from PIL import Image
    from torchvision.transforms import functional as F

    written = write_imagenet_c(tmp_path, "fog", 3, n_images=3)
    cs = load_corruption_set("imagenet", "fog", 3, 3, tmp_path)
    assert cs.x.shape == (3, 3, 224, 224) and cs.ids.tolist() == [0, 1, 2] and cs.num_classes == 1000
    class_to_id = json.loads(robustbench_helper("imagenet_class_to_id_map.json").read_text())
    assert cs.y.tolist() == [class_to_id[r.split("/")[0]] for r in written["rel"]]
    # RobustBench's own loader with the preprocessing its benchmark uses for corruptions (Res224)
    x_rb, y_rb = rb.load_imagenetc(3, 3, str(tmp_path), shuffle=False, corruptions=["fog"],
                                   prepr=rb.PREPROCESSINGS["Res224"])
    assert torch.equal(cs.x, x_rb) and torch.equal(cs.y, y_rb)
    # and independently: PIL decode, bilinear (antialiased) resize to 224x224, [0, 1]
    for i, p in enumerate(written["files"]):
        img = Image.open(p).convert("RGB")
        want = F.to_tensor(img.resize((224, 224), Image.BILINEAR))
        assert torch.equal(cs.x[i], want)

    missing = missing_corruption_files("imagenet", "fog", 3, tmp_path, n_examples=4)
    assert len(missing) == 1 and missing[0].path == written["folder"] and "1 of the 4" in missing[0].source
    with pytest.raises(CorruptionDataUnavailableError, match="RobustBench has no download for ImageNet-C"):
        load_corruption_set("imagenet", "fog", 3, 4, tmp_path)
    # shuffle draws 2 of the 5000 listed images (seeded): those are the ones checked, not the first 2
    with pytest.raises(CorruptionDataUnavailableError, match="of the 2 listed images needed"):
        load_corruption_set("imagenet", "fog", 3, 2, tmp_path, shuffle=True, seed=0)


def test_importing_the_module_does_not_import_robustbench():
    code = ("import sys, ctrobust.corruptions; "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('robustbench', 'autoattack', 'torchvision')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "[]"
