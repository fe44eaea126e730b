"""Model registry: RobustBench's loading path offline, safe downloads, bundled ResNet-18, coverage table."""

from __future__ import annotations

import copy
import pickle
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
import torch

import ctrobust.models as models
from ctrobust._registry import UnknownNameError
from ctrobust.data import load_eval_set, network_timeout
from ctrobust.models import (ModelLoadError, ModelUnavailableError, build_architecture, checkpoint_paths,
                             coverage_table, list_models, load_model)



def _zoo(dataset="cifar10", threat="Linf"):
    from ctrobust._compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)]


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def standard_ckpt(tmp_path_factory):
    """A random-weight WRN-28-10 (RobustBench's 'Standard' architecture) saved as a plain state_dict."""
    torch.manual_seed(0)
    ref = _zoo()["Standard"]["model"]().eval()
    with torch.no_grad():  # non-trivial BN statistics, so eval mode matters
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ckpt") / "Standard.pt"
    torch.save(ref.state_dict(), path)
    return path, ref


@pytest.fixture
def no_gdown(monkeypatch):
    """Fail the test if anything tries to download from Google Drive."""
    import gdown

    def boom(*a, **k):
        raise AssertionError("unexpected download attempt")

    monkeypatch.setattr(gdown, "download", boom)


# ---------------------------------------------------------------------------------------------------
# RobustBench's real loading path, offline
# ---------------------------------------------------------------------------------------------------


def test_load_standard_from_model_dir_layout(tmp_path, standard_ckpt, no_gdown):
    src, ref = standard_ckpt
    dest = tmp_path / "models" / "cifar10" / "Linf" / "Standard.pt"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(src.read_bytes())
    assert checkpoint_paths("Standard", "cifar10", "Linf", tmp_path / "models") == [dest]

    model = load_model("Standard", "cifar10", "Linf", model_dir=tmp_path / "models")
    assert not model.training and not any(m.training for m in model.modules())
    assert next(model.parameters()).device.type == "cpu"
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, expected = model(x), ref(x)
    assert out.shape == (4, 10)
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-5)
    # a differently seeded model would not match: the comparison is meaningful
    torch.manual_seed(123)
    other = _zoo()["Standard"]["model"]().eval()
    with torch.no_grad():
        assert not torch.allclose(other(x), expected, atol=1e-3)
    assert _files(tmp_path / "models") == [dest]


def test_model_dir_from_env(tmp_path, standard_ckpt, no_gdown, isolated_cache, monkeypatch):
    src, _ = standard_ckpt
    dest = tmp_path / "envmodels" / "cifar10" / "Linf" / "Standard.pt"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(src.read_bytes())
    monkeypatch.setenv("CTROBUST_MODEL_DIR", str(tmp_path / "envmodels"))
    assert models.default_model_dir() == tmp_path / "envmodels"
    assert not load_model("Standard").training
    monkeypatch.delenv("CTROBUST_MODEL_DIR")
    assert models.default_model_dir() == isolated_cache / "ctrobust" / "models"


# ---------------------------------------------------------------------------------------------------
# Downloads: failures leave nothing behind, successes are validated and atomic
# ---------------------------------------------------------------------------------------------------


def _fake_gdown(monkeypatch, behaviour):
    import gdown

    calls = []

    def fake(url=None, output=None, quiet=False, id=None, **kw):
        calls.append((id, output))
        # gdown writes to a temp file next to the output first: simulate leftovers from it too
        Path(output + "tmpabc123.part").write_bytes(b"\x80partial")
        return behaviour(id, output)

    monkeypatch.setattr(gdown, "download", fake)
    return calls


def test_no_network_gives_clear_error_and_leaves_no_file(tmp_path, monkeypatch):
    def no_network(gid, output):
        raise requests.exceptions.ConnectionError("Failed to resolve 'drive.google.com'")

    calls = _fake_gdown(monkeypatch, no_network)
    root = tmp_path / "models"
    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as err:
        load_model("Standard", "cifar10", "Linf", model_dir=root)
    assert time.perf_counter() - t0 < 30
    path = root / "cifar10" / "Linf" / "Standard.pt"
    gid = _zoo()["Standard"]["gdrive_id"]
    msg = str(err.value)
    assert str(path) in msg and gid in msg and "Failed to resolve" in msg
    assert calls and calls[0][0] == gid and Path(calls[0][1]).parent.parent == path.parent  # temp dir beside it
    assert _files(root) == []
    assert not root.exists()  # the folders made for the download are gone too


def test_failed_download_keeps_folders_that_existed_or_were_filled(tmp_path, monkeypatch):
    def no_network(gid, output):
        raise requests.exceptions.ConnectionError("Failed to resolve 'drive.google.com'")

    _fake_gdown(monkeypatch, no_network)
    root = tmp_path / "models"
    (root / "cifar10" / "L2").mkdir(parents=True)  # the user's: must survive
    with pytest.raises(ModelUnavailableError):
        load_model("Standard", "cifar10", "Linf", model_dir=root)
    assert (root / "cifar10" / "L2").is_dir() and not (root / "cifar10" / "Linf").exists()


def test_html_page_is_rejected_and_not_kept(tmp_path, monkeypatch):
    def quota_page(gid, output):
        Path(output).write_text("<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title>"
                                "</head><body>Too many users have viewed or downloaded this file</body></html>")
        return output

    _fake_gdown(monkeypatch, quota_page)
    root = tmp_path / "models"
    with pytest.raises(ModelUnavailableError) as err:
        load_model("Standard", model_dir=root)
    assert "HTML" in str(err.value) and str(root / "cifar10" / "Linf" / "Standard.pt") in str(err.value)
    assert _files(root) == [] and not root.exists()


def test_truncated_download_is_rejected(tmp_path, monkeypatch, standard_ckpt):
    src, _ = standard_ckpt
    data = src.read_bytes()

    def truncated(gid, output):
        Path(output).write_bytes(data[: len(data) // 2])
        return output

    _fake_gdown(monkeypatch, truncated)
    root = tmp_path / "models"
    with pytest.raises(ModelUnavailableError, match="incomplete|corrupted|fails"):
        load_model("Standard", model_dir=root)
    assert _files(root) == []


def test_valid_download_is_moved_into_place_and_loaded(tmp_path, monkeypatch, standard_ckpt):
    src, ref = standard_ckpt

    def ok(gid, output):
        Path(output).write_bytes(src.read_bytes())
        return output

    calls = _fake_gdown(monkeypatch, ok)
    root = tmp_path / "models"
    # a broken file left by an earlier (robustbench-style) download is replaced by a validated one
    dest = root / "cifar10" / "Linf" / "Standard.pt"
    dest.parent.mkdir(parents=True)
    dest.write_text("<html>virus scan warning</html>")
    model = load_model("Standard", model_dir=root)
    assert len(calls) == 1
    assert _files(root) == [dest] and dest.read_bytes() == src.read_bytes()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-5, rtol=1e-5)


def test_existing_html_file_and_no_network(tmp_path, monkeypatch):
    _fake_gdown(monkeypatch, lambda gid, out: (_ for _ in ()).throw(OSError("Network is unreachable")))
    dest = tmp_path / "cifar10" / "Linf" / "Standard.pt"
    dest.parent.mkdir(parents=True)
    dest.write_text("<!doctype html><html></html>")
    with pytest.raises(ModelUnavailableError, match="exists but is not a usable checkpoint") as err:
        load_model("Standard", model_dir=tmp_path)
    assert str(dest) in str(err.value)
    assert _files(tmp_path) == [dest]  # the user's file is left for them to inspect


def test_user_checkpoint_that_needs_unsafe_unpickling_is_refused(tmp_path, no_gdown):
    dest = tmp_path / "cifar10" / "Linf" / "Standard.pt"
    dest.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "args": Path("/x")}, dest)  # an arbitrary object: not weights-only loadable
    with pytest.raises(ModelLoadError, match="weights_only"):
        load_model("Standard", model_dir=tmp_path)


def test_ensemble_members_use_robustbench_names(tmp_path, monkeypatch):
    gids = _zoo()["Chen2020Adversarial"]["gdrive_id"]
    assert isinstance(gids, list) and len(gids) == 3
    paths = checkpoint_paths("Chen2020Adversarial", "cifar10", "Linf", tmp_path)
    assert [p.name for p in paths] == [f"Chen2020Adversarial.pt_m{i}.pt" for i in range(3)]

    def fail(gid, output):
        raise requests.exceptions.ConnectTimeout("timed out")

    calls = _fake_gdown(monkeypatch, fail)
    with pytest.raises(ModelUnavailableError) as err:
        load_model("Chen2020Adversarial", model_dir=tmp_path)
    assert str(paths[0]) in str(err.value) and gids[0] in str(err.value)
    assert calls[0][0] == gids[0]
    assert _files(tmp_path) == []


def test_offline_mode_does_not_try(tmp_path, monkeypatch, no_gdown):
    monkeypatch.setenv("CTROBUST_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="CTROBUST_OFFLINE") as err:
        load_model("Standard", model_dir=tmp_path)
    assert str(tmp_path / "cifar10" / "Linf" / "Standard.pt") in str(err.value)


def test_hub_hosted_entries_fail_clearly_offline(isolated_cache, monkeypatch):
    monkeypatch.setenv("CTROBUST_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError) as err:
        load_model("Standard_R50", "imagenet", "Linf")
    assert "resnet50-0676ba61.pth" in str(err.value) and str(isolated_cache / "torch") in str(err.value)
    with pytest.raises(ModelUnavailableError, match="debenedetti2022light-xcit-s-cifar10-linf"):
        load_model("Debenedetti2022Light_XCiT-S12", "cifar10", "Linf")


@pytest.fixture
def silent_server():
    """A local HTTP 'server' that accepts connections and never answers; yields its URL."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()
    conns = []

    def accept():
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}/file.pt"
    stop.set()
    th.join(2)
    for c in conns:
        c.close()
    srv.close()


def _in_thread(fn, limit):
    """Run fn in a daemon thread; return (finished, exception) after at most ``limit`` seconds."""
    box = {}

    def run():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001
            box["exc"] = exc

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(limit)
    return not th.is_alive(), box.get("exc")


def test_network_timeout_bounds_requests_and_urllib(silent_server):
    """gdown (requests) and torch.hub/torchvision (urllib) must give up after about the timeout, not hang.

    requests ignores the socket default timeout, so this fails if only socket.setdefaulttimeout is used.
    """
    import urllib.request

    before = socket.getdefaulttimeout()
    before_request = requests.Session.request

    def via_requests():
        with network_timeout(0.5):
            requests.Session().get(silent_server, stream=True)

    def via_urllib():
        with network_timeout(0.5):
            urllib.request.urlopen(silent_server)

    for fn, expected in ((via_requests, requests.exceptions.RequestException), (via_urllib, OSError)):
        t0 = time.perf_counter()
        finished, exc = _in_thread(fn, 20)
        assert finished, f"{fn.__name__} still waiting after 20 s: no timeout applied"
        assert isinstance(exc, expected), exc
        assert time.perf_counter() - t0 < 10
    assert socket.getdefaulttimeout() == before and requests.Session.request is before_request  # restored


# ---------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------


def test_list_models_matches_the_zoo_plus_bundled():
    names = list_models("cifar10", "Linf")
    zoo = list(_zoo("cifar10", "Linf"))
    assert names[: len(zoo)] == zoo and len(zoo) == 76
    assert names[len(zoo):] == ["bundled/resnet18-cifar10"]
    assert "bundled/resnet18-cifar10" in list_models("cifar10", "l2")
    assert list_models("cifar100", "Linf") == list(_zoo("cifar100", "Linf"))  # no bundled CIFAR-100 model
    imagenet = list_models("imagenet", "Linf")
    assert "Standard_R50" in imagenet and not any(n.startswith("bundled/") for n in imagenet)
    assert list_models("imagenet", "L2") == []  # RobustBench 1.1.1 has no ImageNet L2 leaderboard


def test_unknown_model_did_you_mean_and_where_to_list():
    with pytest.raises(UnknownNameError) as err:
        load_model("Standrad", "cifar10", "Linf")
    msg = str(err.value)
    assert "unknown model" in msg and "'Standrad'" in msg and "did you mean 'Standard'" in msg
    assert "ctrobust models --dataset cifar10 --threat Linf" in msg
    with pytest.raises(UnknownNameError, match="exists for imagenet/Linf"):
        load_model("Standard_R50", "cifar10", "Linf")
    with pytest.raises(UnknownNameError, match="did you mean 'cifar10'"):
        load_model("Standard", "cifar01")
    with pytest.raises(UnknownNameError, match="threat model"):
        load_model("Standard", "cifar10", "L1")
    with pytest.raises(UnknownNameError, match="is a cifar10 model"):
        load_model("bundled/resnet18-cifar10", "imagenet")


# ---------------------------------------------------------------------------------------------------
# Bundled ResNet-18
# ---------------------------------------------------------------------------------------------------


def test_bundled_resnet18_is_20_of_20_on_bundled_cifar10():
    model = load_model("bundled/resnet18-cifar10")
    assert not model.training
    x, y, _ = load_eval_set("cifar10", None, data="bundled")
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (20, 10)
    assert int((logits.argmax(1) == y).sum()) == 20
    # trained weights, not the random initialisation of the same architecture
    rand = build_architecture("bundled/resnet18-cifar10", "cifar10", "Linf")
    with torch.no_grad():
        assert int((rand(x).argmax(1) == y).sum()) < 20
    # picklable / deep-copyable (CT deep-copies models; executors may pickle them)
    clone = pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        assert torch.equal(clone(x), logits) and torch.equal(copy.deepcopy(model)(x), logits)


# ---------------------------------------------------------------------------------------------------
# Architectures and CT coverage (offline)
# ---------------------------------------------------------------------------------------------------


def test_coverage_table_named_entries():
    names = ["Standard", "Wang2023Better_WRN-28-10", "bundled/resnet18-cifar10"]
    seen = []
    rows = coverage_table("cifar10", "Linf", names=names, on_row=seen.append)
    assert [r["name"] for r in rows] == names and seen == rows
    std, silu, bundled = rows
    assert std["relu_modules"] == 25 and std["relu_functional"] == 0 and std["missed"] == 0
    assert std["reachable"] is True and std["status"] == "full" and std["error"] == ""
    assert silu["reachable"] is False and silu["status"] == "none" and "SiLU" in silu["unsupported"]
    assert silu["relu_modules"] + silu["relu_functional"] + silu["leaky_relu"] == 0
    assert bundled["relu_functional"] == 17 and bundled["relu_modules"] == 0 and bundled["reachable"] is True
    assert all(r["seconds"] >= 0 for r in rows)


def test_coverage_table_reports_build_failures_without_crashing(monkeypatch):
    real_zoo = models.robustbench._zoo

    def needs_download():
        socket.create_connection(("drive.google.com", 443), timeout=1)

    def broken():
        raise RuntimeError("Found no NVIDIA driver on your system")

    def fake_zoo(dataset, threat):
        zoo = dict(real_zoo(dataset, threat))
        zoo["FakeDownloading"] = {"model": needs_download, "gdrive_id": "x"}
        zoo["FakeBroken"] = {"model": broken, "gdrive_id": "y"}
        return zoo

    monkeypatch.setattr(models.robustbench, "_zoo", fake_zoo)
    rows = coverage_table("cifar10", "Linf", names=["FakeDownloading", "FakeBroken"])
    assert rows[0]["status"] == "skipped" and "download" in rows[0]["error"] and rows[0]["reachable"] is False
    assert rows[1]["status"] == "error" and "NVIDIA" in rows[1]["error"] and rows[1]["missed"] is None
    # the socket guard is lifted afterwards
    assert socket.create_connection is not None and socket.getaddrinfo("127.0.0.1", 80)


def test_build_architecture_hub_entries_offline():
    r50 = build_architecture("Standard_R50", "imagenet", "Linf")
    assert not r50.training and sum(p.numel() for p in r50.parameters()) > 20e6
    xcit = build_architecture("Debenedetti2022Light_XCiT-S12", "cifar10", "Linf")
    with torch.no_grad():
        assert xcit(torch.rand(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.network
def test_real_download_of_standard(tmp_path):
    """The real Google Drive download (about 140 MB); only with CTROBUST_NETWORK=1."""
    model = load_model("Standard", "cifar10", "Linf", model_dir=tmp_path)
    assert _files(tmp_path) == [tmp_path / "cifar10" / "Linf" / "Standard.pt"]
    x, y, _ = load_eval_set("cifar10", None, data="bundled")
    with torch.no_grad():
        assert int((model(x).argmax(1) == y).sum()) >= 18  # 94.8 % clean accuracy
