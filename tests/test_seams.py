"""The seams between modules: one config parsed once (its fields drive the CLI, the YAML reader and the key),
engines that own their outcome (costs counted the same way by both), and run dirs read from their path alone."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

from ctrobust.attacks import AttackSuite
from ctrobust.cli import add_config_options, main
from ctrobust.config import SweepConfig, option
from ctrobust.ct import apply_ct
from ctrobust.engines import get_engine
from ctrobust.store import RunReader, load_config

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--model", "bundled/resnet18-cifar10", "--data", "bundled", "--subset", "first", "--device", "cpu", "--quiet",
        "--n-examples", "4", "--betas", "0.8", "--attacks", "apgd-ce", "--eps", "2/255", "--seeds", "0",
        "--batch-size", "8"]


# -- config ----------------------------------------------------------------------------------------------------


def _config_with_a_new_field(determining: bool):
    return dataclasses.make_dataclass(
        "WiderConfig", [("temperature_k", float, option(1.5, help="a new knob for the test [1.5]",
                                                          determining=determining, type=float))],
        bases=(SweepConfig,))


def test_a_new_config_field_reaches_help_yaml_and_key(tmp_path):
    """No hand-kept key lists: a field added to (a copy of) SweepConfig is an option of the CLI, a key of the
    YAML reader and part of the experiment key, from its metadata alone."""
    wider = _config_with_a_new_field(determining=True)
    p = argparse.ArgumentParser(prog="t")
    add_config_options(p, wider)
    assert "--temperature-k" in p.format_help() and "a new knob for the test" in p.format_help()
    assert p.parse_args(["--temperature-k", "2.5"]).temperature_k == 2.5

    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"model": "bundled/resnet18-cifar10", "temperature_k": 3.0}))
    cfg = wider.from_yaml(f)
    assert cfg.temperature_k == 3.0
    assert cfg.determining()["temperature_k"] == 3.0
    assert "temperature_k" in wider.determining_fields()
    other = wider.from_yaml(f, temperature_k=4.0)
    assert other.determining() != cfg.determining()

    # a field that says where the work runs is an option but not part of the key
    plain = _config_with_a_new_field(determining=False)
    cfg2 = plain.from_yaml(f)
    assert cfg2.temperature_k == 3.0 and "temperature_k" not in cfg2.determining()
    # and the stock config's CLI is built the same way: every field is an option
    stock = argparse.ArgumentParser(prog="t")
    add_config_options(stock)
    text = stock.format_help()
    assert all("--" + name.replace("_", "-") in text for name in SweepConfig.field_names())


def test_the_suite_is_parsed_once_and_a_worker_gets_a_copy():
    cfg = SweepConfig(model="bundled/resnet18-cifar10", attacks="apgd-ce, square", device="auto").validate()
    assert isinstance(cfg.suite, AttackSuite) and cfg.suite.attacks == ("apgd-ce", "square")
    assert cfg.attacks == "apgd-ce,square"  # the canonical label, as written to config.yaml
    assert "suite" not in cfg.to_dict()
    worker = cfg.replace(device="cpu")
    assert worker.device == "cpu" and cfg.device == "auto" and worker.suite == cfg.suite
    assert worker.determining() == cfg.determining()


def test_a_failed_validation_leaves_the_config_as_given():
    from ctrobust.errors import ConfigError

    cfg = SweepConfig(model="bundled/resnet18-cifar10", threat="linf", eps="8/255", device="tpu")
    with pytest.raises(ConfigError, match="bad device"):
        cfg.validate()
    assert cfg.threat == "linf" and cfg.eps == "8/255" and cfg.suite is None


# -- engines ---------------------------------------------------------------------------------------------------


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 10)).eval()


def test_reference_engine_counts_pyautoattack_model_calls():
    """The reference engine's forward/backward passes are pyautoattack's actual model calls (counted here with
    hooks on the model itself), in example passes as the fast engine counts them."""
    model = apply_ct(_small_cnn(), 1.0)
    seen = {"fwd": 0, "bwd": 0}

    def on_forward(mod, inp, out):
        seen["fwd"] += inp[0].shape[0]
        if out.requires_grad:
            out.register_hook(lambda g, n=inp[0].shape[0]: seen.__setitem__("bwd", seen["bwd"] + n))

    handle = model.register_forward_hook(on_forward)
    try:
        torch.manual_seed(1)
        x = torch.rand(6, 3, 8, 8)
        y = torch.randint(0, 10, (6,))
        suite = AttackSuite("custom", ("apgd-ce", "square"), n_iter=4, n_queries=5)
        out = get_engine("reference").run(model, x, y, ids=torch.arange(6), betas=torch.ones(6, dtype=torch.float64),
                                          seed=0, threat="Linf", eps=0.5 / 255, suite=suite, batch_size=6,
                                          device="cpu")
    finally:
        handle.remove()
    assert out.accounting == "call"
    assert out.forward_passes > 0 and out.backward_passes > 0
    assert (out.forward_passes, out.backward_passes) == (seen["fwd"], seen["bwd"])
    assert out.peak_mem_mb is None  # CPU: nothing to measure on an accelerator


def test_fast_engine_counts_per_row_and_says_so():
    model = apply_ct(_small_cnn(), 1.0)
    x = torch.rand(4, 3, 8, 8)
    y = torch.randint(0, 10, (4,))
    out = get_engine("fast").run(model, x, y, ids=torch.arange(4), betas=torch.tensor([1.0, 1.0, 0.9, 0.9]),
                                 seed=0, threat="Linf", eps=1 / 255, suite=AttackSuite("custom", ("apgd-ce",), n_iter=3),
                                 batch_size=4, device="cpu")
    assert out.accounting == "row"
    assert out.forward_passes == int(out.row_forward_passes.sum()) > 0
    assert out.backward_passes == int(out.row_backward_passes.sum())


# -- run dirs read from their path alone -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def foreign_run(tmp_path_factory):
    """A finished run whose config.yaml names a model family (and an option) this install does not know."""
    out = tmp_path_factory.mktemp("runs") / "foreign"
    assert main(["sweep", *TINY, "--out", str(out)]) == 0
    doc = yaml.safe_load((out / "config.yaml").read_text())
    doc["model"] = "someday-family/net-9000"
    doc["_experiment"]["model"] = "someday-family/net-9000"
    doc["option_of_a_later_version"] = 7
    (out / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def test_status_and_report_read_a_run_dir_of_an_unknown_model_family(foreign_run, capsys):
    with pytest.raises(Exception):
        SweepConfig.from_dict(RunReader(foreign_run).options())  # not a config this install can run
    assert main(["status", str(foreign_run)]) == 0
    out = capsys.readouterr().out
    assert "2 done" in out
    assert main(["report", str(foreign_run)]) == 0
    out = capsys.readouterr().out
    assert "someday-family/net-9000" in out
    rc = load_config(foreign_run)
    assert rc.model == "someday-family/net-9000" and rc.attack_names == ("apgd-ce",)
    assert rc.options["option_of_a_later_version"] == 7


def test_reader_needs_only_the_path(foreign_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(foreign_run, copy)
    reader = RunReader(copy)
    assert reader.is_run_dir() and reader.experiment_key()
    st = reader.status()
    assert st.count("done") == len(st.plan) == 2
    outcomes = reader.outcomes()
    assert set(np.unique(outcomes["beta"])) == {0.8, 1.0}
    assert len(reader.results()) == 2
    (copy / "outcomes.npz").unlink()  # merged again from the units
    again = reader.outcomes()
    assert all(np.array_equal(again[k], outcomes[k], equal_nan=outcomes[k].dtype.kind == "f") for k in outcomes)


# -- small typed results -----------------------------------------------------------------------------------------


def test_coverage_keeps_its_old_dict_keys_and_names_to_dict():
    from ctrobust.ct import ct_coverage

    cov = ct_coverage(_small_cnn(), torch.rand(1, 3, 8, 8))
    assert cov["missed"] == cov.missed == 0 and cov["relu_modules"] == cov.relu_modules == 1
    with pytest.raises(KeyError, match="to_dict"):
        cov["tuned"]


def test_stats_results_are_typed_and_unpack_as_before():
    from ctrobust import stats

    iv = stats.wilson_interval(5, 10)
    lo, hi = iv
    assert (iv.lo, iv.hi) == (lo, hi) and isinstance(iv, stats.Interval)
    mc = stats.mcnemar_exact([False] * 6 + [True], [True] * 6 + [False])
    assert mc.p_value == mc["p_value"] == 0.125 and (mc.b01, mc.b10) == (6, 1)
    m, s = stats.mean_std([1.0, 3.0])
    assert stats.mean_std([1.0, 3.0]).mean == m == 2.0 and s == 1.0
