"""Model families: the CT paper's CIFAR ResNets in the reference's key layout, torchvision / timm ImageNet
models offline, your own model (``py:`` and file factories, a module given to ``ctrobust.sweep_model``), and
the CT scopes (``all`` / ``modules``) they are tuned under.

Independent facts used here, not our modules: the reference ResNet-18's state_dict keys and shapes (written
from the layout the issue gives), a functional forward of that layout, the datasets' normalization constants,
torchvision's weights enum (file name of the hub checkpoint), and Hugging Face's cache layout.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ctrobust._registry import UnknownNameError
from ctrobust.cli import main
from ctrobust.ct import ct_coverage
from ctrobust.models import (ModelLoadError, ModelUnavailableError, Normalized, build_architecture, load_model,
                             weights_fingerprint)
from ctrobust.store import load_results

# the reference's data transforms (utils/utils.py of Leon-Leyang/curvature-tuning)
CIFAR10_MEAN, CIFAR10_STD = (0.491, 0.482, 0.447), (0.247, 0.244, 0.262)
CIFAR100_MEAN, CIFAR100_STD = (0.507, 0.487, 0.441), (0.267, 0.256, 0.276)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORM = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}

TINY_SWEEP = ["--data", "bundled", "--n-examples", "2", "--subset", "first", "--betas", "0.9", "--attacks",
              "apgd-ce", "--eps", "1/255", "--seeds", "0", "--device", "cpu", "--quiet"]


def normalize(x, mean, std):
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# ---------------------------------------------------------------------------------------------------
# The reference ResNet-18, from its layout: a key/shape table and a functional forward
# ---------------------------------------------------------------------------------------------------

STAGES = (("conv2_x", 64, 1), ("conv3_x", 128, 2), ("conv4_x", 256, 2), ("conv5_x", 512, 2))


def reference_resnet18_table(num_classes: int = 10) -> dict[str, tuple]:
    """Keys and shapes of the reference's ``ResNet18`` state_dict: conv1 = (conv 3x3, BN, ReLU); 4 stages of
    2 BasicBlocks with residual_function = (conv, BN, ReLU, conv, BN) and a (1x1 conv, BN) shortcut where
    the shape changes; fc."""
    t: dict[str, tuple] = {}

    def bn(prefix, c):
        for k in ("weight", "bias", "running_mean", "running_var"):
            t[f"{prefix}.{k}"] = (c,)
        t[f"{prefix}.num_batches_tracked"] = ()

    t["conv1.0.weight"] = (64, 3, 3, 3)
    bn("conv1.1", 64)
    cin = 64
    for stage, cout, stride in STAGES:
        for i in range(2):
            p = f"{stage}.{i}.residual_function"
            t[f"{p}.0.weight"] = (cout, cin, 3, 3)
            bn(f"{p}.1", cout)
            t[f"{p}.3.weight"] = (cout, cout, 3, 3)
            bn(f"{p}.4", cout)
            if i == 0 and (stride != 1 or cin != cout):
                t[f"{stage}.{i}.shortcut.0.weight"] = (cout, cin, 1, 1)
                bn(f"{stage}.{i}.shortcut.1", cout)
            cin = cout
    t["fc.weight"] = (num_classes, 512)
    t["fc.bias"] = (num_classes,)
    return t


def random_state(table: dict, seed: int = 0) -> dict:
    """Random tensors for a key/shape table: He-scaled convs, non-trivial BN statistics."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in table.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(200)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith("running_mean"):
            out[k] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1 and k.endswith("weight"):  # BN scale
            out[k] = 1 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:  # BN / fc bias
            out[k] = 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            out[k] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    return out


def reference_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """The reference ResNet-18 on *normalized* x, written with torch.nn.functional from the layout."""
    def bn(h, p):
        return F.batch_norm(h, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                            sd[f"{p}.bias"], False, 0.0, 1e-5)

    h = F.relu(bn(F.conv2d(x, sd["conv1.0.weight"], padding=1), "conv1.1"))
    for stage, _, stride in STAGES:
        for i in range(2):
            p, s = f"{stage}.{i}", (stride if i == 0 else 1)
            r = F.relu(bn(F.conv2d(h, sd[f"{p}.residual_function.0.weight"], stride=s, padding=1),
                          f"{p}.residual_function.1"))
            r = bn(F.conv2d(r, sd[f"{p}.residual_function.3.weight"], padding=1), f"{p}.residual_function.4")
            sc = (bn(F.conv2d(h, sd[f"{p}.shortcut.0.weight"], stride=s), f"{p}.shortcut.1")
                  if f"{p}.shortcut.0.weight" in sd else h)
            h = F.relu(r + sc)
    return F.linear(h.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


@pytest.fixture(scope="module")
def ref_ckpt(tmp_path_factory):
    """A randomly initialised checkpoint in the reference's layout, saved as a plain state_dict."""
    sd = random_state(reference_resnet18_table(10), seed=0)
    path = tmp_path_factory.mktemp("ckpts") / "resnet18_cifar10_epoch200.pth"
    torch.save(sd, path)
    return path, sd


def test_table_is_the_reference_layout_and_our_architecture_has_it():
    table = reference_resnet18_table(10)
    assert len(table) == 122 and table["conv3_x.0.shortcut.0.weight"] == (128, 64, 1, 1)
    assert "conv2_x.0.shortcut.0.weight" not in table  # stage 1 keeps the shape: empty shortcut
    ours = build_architecture("ct-paper/resnet18", "cifar10").inner.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == table


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_logits_equal_inner_of_normalized_input(tmp_path, dataset):
    n_classes = 10 if dataset == "cifar10" else 100
    sd = random_state(reference_resnet18_table(n_classes), seed=1)
    path = tmp_path / f"resnet18_{dataset}_epoch200.pth"
    torch.save(sd, path)
    model = load_model("ct-paper/resnet18", dataset, checkpoint=path)
    assert isinstance(model, Normalized) and not model.training
    assert model.mean == NORM[dataset][0] and model.std == NORM[dataset][1]
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    xn = normalize(x, *NORM[dataset])
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (3, n_classes)
        torch.testing.assert_close(logits, model.inner(xn), rtol=0, atol=0)
        torch.testing.assert_close(logits, reference_forward(sd, xn), rtol=1e-4, atol=1e-4)
        # the stored weights matter: another draw gives other logits
        assert not torch.allclose(logits, reference_forward(random_state(reference_resnet18_table(n_classes), 9),
                                                            xn), atol=1e-2)


def test_reference_checkpoint_sweeps_end_to_end_keyed_by_its_weights(tmp_path, ref_ckpt, capsys):
    path = tmp_path / "resnet18_cifar10_epoch200.pth"
    path.write_bytes(ref_ckpt[0].read_bytes())
    out = tmp_path / "run"
    argv = ["sweep", "--model", "ct-paper/resnet18", "--checkpoint", str(path), "--dataset", "cifar10",
            "--ct-scope", "modules", *TINY_SWEEP, "--out", str(out)]
    assert main(argv) == 0
    rows = load_results(out)
    assert [r["beta"] for r in rows] == [1.0, 0.9]
    for r in rows:
        assert r["model"] == "ct-paper/resnet18" and r["ct_scope"] == "modules"
        assert r["ct_relu_modules"] == 9 and r["ct_untouched"] == 8 and r["ct_missed"] == 0
    with open(out / "results.csv") as f:
        header = next(csv.reader(f))
    assert header.index("ct_untouched") > header.index("ct_unsupported") and "ct_scope" in header
    exp = yaml.safe_load((out / "config.yaml").read_text())["_experiment"]
    assert exp["ct_scope"] == "modules" and exp["checkpoint"] == str(path)
    assert len(exp["model_weights"]) == 64
    assert json.loads((out / "results.json").read_text())["coverage"]["untouched"] == 8
    # other weights in the same file are another experiment: refused, nothing touched
    torch.save(random_state(reference_resnet18_table(10), seed=5), path)
    before = sorted(p.name for p in (out / "units").iterdir())
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "model_weights" in err
    assert sorted(p.name for p in (out / "units").iterdir()) == before


def test_missing_or_misshaped_key_is_refused_naming_it(tmp_path, ref_ckpt, capsys):
    _, sd = ref_ckpt
    missing = dict(sd)
    del missing["conv3_x.0.shortcut.0.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ModelLoadError) as err:
        load_model("ct-paper/resnet18", "cifar10", checkpoint=tmp_path / "missing.pth")
    msg = str(err.value)
    assert "1 missing keys: conv3_x.0.shortcut.0.weight" in msg and "ct-paper/resnet18" in msg
    assert "ResNet-18" in msg and "10 classes" in msg

    wrong = dict(sd)
    wrong["fc.weight"] = torch.zeros(100, 512)  # a CIFAR-100 head
    torch.save(wrong, tmp_path / "wrong.pth")
    out = tmp_path / "run"
    assert main(["sweep", "--model", "ct-paper/resnet18", "--checkpoint", str(tmp_path / "wrong.pth"),
                 *TINY_SWEEP, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "fc.weight (100, 512) (expected (10, 512))" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_default_checkpoint_is_the_reference_file_name_in_model_dir(tmp_path, ref_ckpt):
    src, sd = ref_ckpt
    dest = tmp_path / "models" / "ct-paper" / "resnet18_cifar10_epoch200.pth"
    with pytest.raises(ModelUnavailableError) as err:
        load_model("ct-paper/resnet18", "cifar10", model_dir=tmp_path / "models")
    assert str(dest) in str(err.value) and "--checkpoint" in str(err.value)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(src.read_bytes())
    model = load_model("ct-paper/resnet18", "cifar10", model_dir=tmp_path / "models")
    torch.testing.assert_close(model.inner.fc.weight, sd["fc.weight"], rtol=0, atol=0)


@pytest.mark.parametrize("arch,blocks", [("resnet18", 2 + 2 + 2 + 2), ("resnet50", 3 + 4 + 6 + 3)])
def test_ct_coverage_scope_modules_leaves_the_block_output_relus(arch, blocks):
    model = build_architecture(f"ct-paper/{arch}", "cifar10")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mods = ct_coverage(model, x, scope="modules")
    assert mods.untouched == blocks and mods.relu_functional == blocks and mods.missed == 0
    relu_modules = sum(isinstance(m, nn.ReLU) for m in model.modules())  # stem + those in residual_function
    assert mods.tuned == mods.relu_modules == relu_modules and mods.verdict == "partial"
    full = ct_coverage(model, x, scope="all")
    assert full.untouched == 0 and full.missed == 0 and full.tuned == relu_modules + blocks
    assert full.verdict == "full"


def test_models_coverage_shows_both_scopes(capsys):
    assert main(["models", "--coverage", "--only", "ct-paper/resnet18", "--dataset", "cifar10"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "all:" in header and "modules:" in header and header.index("all:") < header.index("modules:")
    row = next(line for line in out.splitlines() if line.startswith("ct-paper/resnet18 "))
    # relu mod, relu fn, leaky | all: tuned untouched missed CT | modules: tuned untouched missed CT
    assert row.split()[1:12] == ["9", "8", "0", "17", "0", "0", "full", "9", "8", "0", "partial"]


def test_models_lists_the_families(capsys):
    assert main(["models", "--dataset", "cifar100", "--model-dir", "/some/models"]) == 0
    out = capsys.readouterr().out
    for needle in ("ct-paper/resnet18, ct-paper/resnet34, ct-paper/resnet50, ct-paper/resnet101, "
                   "ct-paper/resnet152", "/some/models/ct-paper/<arch>_<dataset>_epoch200.pth",
                   "torchvision/<name>", "timm/<name>", "py:package.module:factory", "path/to/file.py:factory"):
        assert needle in out, needle


# ---------------------------------------------------------------------------------------------------
# torchvision and timm (ImageNet), offline
# ---------------------------------------------------------------------------------------------------


def test_torchvision_resnet50_offline_names_the_hub_file_then_loads_it(isolated_cache, monkeypatch, capsys):
    import torchvision
    from torchvision.models import ResNet50_Weights

    url = ResNet50_Weights.IMAGENET1K_V1.url
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    assert str(isolated_cache) in str(hub_file)
    monkeypatch.setenv("CTROBUST_OFFLINE", "1")
    out = isolated_cache / "run"
    assert main(["sweep", "--model", "torchvision/resnet50", "--dataset", "imagenet", *TINY_SWEEP,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(hub_file) in err and url in err and len(err.splitlines()) == 1
    # with network allowed but unreachable: the same names, and nothing left behind
    monkeypatch.delenv("CTROBUST_OFFLINE")

    def unreachable(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    with pytest.raises(ModelUnavailableError) as e:
        load_model("torchvision/resnet50", "imagenet")
    assert str(hub_file) in str(e.value) and url in str(e.value) and "unreachable" in str(e.value)
    assert not hub_file.parent.exists() and not out.exists()

    torch.manual_seed(0)
    net = torchvision.models.resnet50()
    hub_file.parent.mkdir(parents=True)
    torch.save(net.state_dict(), hub_file)
    model = load_model("torchvision/resnet50", "imagenet")
    assert isinstance(model, Normalized) and isinstance(model.inner, torchvision.models.ResNet)
    assert model.mean == IMAGENET_MEAN and model.std == IMAGENET_STD
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), net.eval()(normalize(x, IMAGENET_MEAN, IMAGENET_STD)),
                                   rtol=1e-5, atol=1e-5)
    for scope in ("all", "modules"):  # the shared Bottleneck.relu is one module called 3 times: swapped once
        cov = ct_coverage(model, x, scope=scope)
        assert cov.verdict == "full" and cov.tuned == 49 and cov.untouched == 0, (scope, cov)


def test_timm_weights_from_the_hub_cache_or_a_checkpoint(isolated_cache, monkeypatch, tmp_path):
    import safetensors.torch
    import timm

    monkeypatch.setenv("CTROBUST_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    repo = timm.models.get_pretrained_cfg("resnet18").hf_hub_id  # timm's default tag: timm/resnet18.a1_in1k
    with pytest.raises(ModelUnavailableError) as err:
        load_model("timm/resnet18", "imagenet")
    assert repo in str(err.value) and str(tmp_path / "hf") in str(err.value)

    torch.manual_seed(0)
    net = timm.create_model("resnet18").eval()
    # Hugging Face's cache layout: models--<org>--<name>/refs/main -> snapshots/<revision>/<file>
    snap = tmp_path / "hf" / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    safetensors.torch.save_file(net.state_dict(), str(snap / "model.safetensors"))
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = net(normalize(x, IMAGENET_MEAN, IMAGENET_STD))
        model = load_model("timm/resnet18", "imagenet")
        assert model.mean == IMAGENET_MEAN and model.input_size == (224, 224)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        torch.save(net.state_dict(), tmp_path / "mine.pth")
        from_ckpt = load_model("timm/resnet18", "imagenet", checkpoint=tmp_path / "mine.pth")
        torch.testing.assert_close(from_ckpt(x), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Your own model
# ---------------------------------------------------------------------------------------------------

TINY_NET = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4 * 15 * 15, 10)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


def make():
    return TinyNet(SEED)


def make_normalized():
    from ctrobust.models import Normalized

    return Normalized(TinyNet(SEED), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def broken():
    raise RuntimeError("no weights here")


def wrong():
    return 42
'''


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """A package on sys.path (``ctrobust_test_nets``) and a plain file (``nets.py``) holding factories."""
    pkg = tmp_path / "site" / "ctrobust_test_nets"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("SEED = 0\n" + TINY_NET)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "nets.py").write_text("SEED = 0\n" + TINY_NET)
    yield tmp_path
    import sys

    sys.modules.pop("ctrobust_test_nets", None)


def test_py_and_file_factories_run_end_to_end(user_code, monkeypatch):
    monkeypatch.chdir(user_code)  # a relative file path starts at the current directory
    results = {}
    for spec in ("py:ctrobust_test_nets:make_normalized", "code/nets.py:make"):
        out = user_code / spec.split(":")[-1]
        assert main(["sweep", "--model", spec, *TINY_SWEEP, "--out", str(out)]) == 0, spec
        rows = load_results(out)
        assert [r["beta"] for r in rows] == [1.0, 0.9] and rows[0]["model"] == spec
        assert rows[0]["ct_relu_modules"] == 1 and rows[0]["ct_scope"] == "all"
        results[spec] = yaml.safe_load((out / "config.yaml").read_text())["_experiment"]["model_weights"]
    assert len(set(results.values())) == 2  # the normalization is part of the fingerprint
    assert not (user_code / "code" / "__pycache__").exists()  # no bytecode written next to the user's file
    model = load_model("py:ctrobust_test_nets:make_normalized", "cifar10")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.inner((x - 0.5) / 0.25), rtol=0, atol=0)
    # another model behind the same name is another experiment
    (user_code / "code" / "nets.py").write_text("SEED = 1\n" + TINY_NET)
    assert main(["sweep", "--model", "code/nets.py:make", *TINY_SWEEP, "--out", str(user_code / "make")]) == 2


@pytest.mark.parametrize("spec,needle", [
    ("py:ctrobust_test_nets:broken", "raised RuntimeError: no weights here"),
    ("py:ctrobust_test_nets:wrong", "returned int, not a torch.nn.Module"),
    ("py:ctrobust_test_nets:mak", "did you mean 'make'"),
    ("py:ctrobust_no_such_package:make", "cannot import 'ctrobust_no_such_package'"),
    ("{code}/nets.py:broken", "raised RuntimeError: no weights here"),
    ("{code}/missing.py:make", "not found"),
    ("torchvison/resnet50", "did you mean 'torchvision/'"),
])
def test_bad_factory_is_a_one_line_error(user_code, capsys, spec, needle):
    spec = spec.format(code=user_code / "code")
    out = user_code / "run"
    assert main(["sweep", "--model", spec, *TINY_SWEEP, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_checkpoint_for_a_named_release_is_refused_when_the_config_is_built(tmp_path, capsys):
    assert main(["sweep", "--model", "Standard", "--checkpoint", str(tmp_path / "x.pt"), "--out",
                 str(tmp_path / "r")]) == 2
    assert "--checkpoint does not apply to 'Standard'" in capsys.readouterr().err


def test_sweep_model_api_runs_a_module_built_here(tmp_path):
    import ctrobust
    from ctrobust.config import ConfigError

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 15 * 15, 10))
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opts = dict(data="bundled", n_examples=2, subset="first", betas="0.9", attacks="apgd-ce", eps="1/255",
                device="cpu", quiet=True)
    res = ctrobust.sweep_model(net, "cifar10", out=tmp_path / "api", **opts)
    assert [(r["beta"], r["seed"]) for r in res.rows] == [(1.0, 0), (0.9, 0)]
    assert all(0.0 <= r["robust_acc"] <= r["clean_acc"] <= 1.0 for r in res.rows)
    assert res.rows[0]["model"].startswith("module:Sequential-") and res.units_run == 2
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert ctrobust.sweep_model(net, "cifar10", out=tmp_path / "api", **opts).units_skipped == 2
    with pytest.raises(TypeError):
        ctrobust.sweep_model(net, "cifar10", **opts)  # out is required: nothing is written into the cwd
    with pytest.raises(ConfigError, match="did you mean 'n_examples'"):
        ctrobust.sweep_model(net, "cifar10", out=tmp_path / "x", n_exampels=2)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    with pytest.raises(ConfigError, match="different settings"):  # another model: its units are not reused
        ctrobust.sweep_model(net, "cifar10", out=tmp_path / "api", **opts)


def test_weights_fingerprint_is_over_tensors_dtypes_and_buffers():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    b = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    b.load_state_dict(a.state_dict())
    fa = weights_fingerprint(a)
    assert len(fa) == 64 and weights_fingerprint(b) == fa
    with torch.no_grad():
        b[1].running_mean[0] += 1e-3  # a buffer
    assert weights_fingerprint(b) != fa
    assert weights_fingerprint(a.double()) != weights_fingerprint(a.float())
    wrapped = weights_fingerprint(Normalized(a, (0.5,) * 3, (0.2,) * 3))
    assert wrapped != weights_fingerprint(Normalized(a, (0.5,) * 3, (0.3,) * 3))


def test_unknown_names_suggest():
    with pytest.raises(UnknownNameError, match="did you mean 'ct-paper/resnet18'"):
        load_model("ct-paper/resnet81", "cifar10")
    with pytest.raises(UnknownNameError, match="torchvision/resnet18"):
        load_model("ct-paper/resnet18", "imagenet")
    with pytest.raises(UnknownNameError, match="--dataset imagenet"):
        load_model("torchvision/resnet50", "cifar10")


def test_config_validates_scope_and_checkpoint_once(tmp_path, monkeypatch):
    from ctrobust.config import ConfigError, SweepConfig

    with pytest.raises(ConfigError, match="did you mean 'modules'"):
        SweepConfig(model="ct-paper/resnet18", ct_scope="module").validate()
    monkeypatch.chdir(tmp_path)
    cfg = SweepConfig(model="ct-paper/resnet18", checkpoint="ckpts/r18.pth", ct_scope="MODULES").validate()
    assert cfg.ct_scope == "modules" and cfg.checkpoint == str(tmp_path / "ckpts" / "r18.pth")
    assert {"checkpoint", "ct_scope"} <= set(cfg.determining())
    assert SweepConfig(ct_scope="all").validate().determining() != SweepConfig(ct_scope="modules").validate(
    ).determining()
    assert cfg.run_dir.parts[-1].startswith("ct-paper-resnet18_cifar10")
    assert SweepConfig(model="../nets.py:make").validate().run_dir.parts[-1].startswith("nets.py-make_")
