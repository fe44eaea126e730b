"""Robustness curves through the whole pipeline: min-norm suites in sweeps, their storage, checks and keys.

The minimum-norm attacks themselves are tested in tests/test_minnorm.py (analytic optimum, adv-lib); here:
the suite and its key, a sweep with ``--attacks min-norm`` alone and with a bounded suite beside it, every
stored distance verified (a corrupted one is refused), ``--save-adv``, and FMN on the bundled ResNet-18 with CT
against adv-lib's FMN on the same network with CT written from the paper's formula.
"""

from __future__ import annotations

import csv
import sys
import types

import numpy as np
import pytest
import torch

from ctrobust.attacks import parse_suite
from ctrobust.cli import main
from ctrobust.config import SweepConfig
from ctrobust.curves import parse_curve_eps, robust_at
from ctrobust.store import RunReader, load_outcomes, load_results, stable_hash

pytestmark = pytest.mark.usefixtures("one_thread")

BUNDLED = ["--model", "bundled/resnet18-cifar10", "--data", "bundled", "--subset", "first", "--device", "cpu",
           "--quiet", "--seeds", "0", "--batch-size", "8"]
MIN_NORM = BUNDLED + ["--n-examples", "3", "--betas", "0.8", "--attacks", "min-norm",
                      "--min-norm-params", "fmn=6,fab-mn=2", "--curve-eps", "0:4/255:1/255"]


def test_keys_of_existing_suites_are_unchanged():
    """Adding attacks to the registry leaves every existing suite's settings key as it was (hashes of
    ``SweepConfig.determining()`` recorded before the minimum-norm attacks existed; versions and data are not
    part of them)."""
    pinned = {"standard": "7e7685fe8e30d39d", "rand": "0df3c6cfb14cfb64", "apgd-ce,square": "968b214f85e2a5f9"}
    for attacks, key in pinned.items():
        cfg = SweepConfig(model="bundled/resnet18-cifar10", attacks=attacks).validate()
        assert stable_hash(cfg.determining()) == key, attacks
    # the golden run's settings (tests/test_sweep.py TINY)
    golden = SweepConfig(model="bundled/resnet18-cifar10", data="bundled", subset="first", device="cpu", quiet=True,
                         n_examples="4", betas=["0.8"], attacks=["apgd-ce"], eps="2/255", seeds=["0"],
                         batch_size="8").validate()
    assert stable_hash(golden.determining()) == "bcd1c2c2709bfccc"


def test_min_norm_parameters_enter_the_key_only_when_it_runs():
    plain = parse_suite("standard").params()
    both = parse_suite("standard,min-norm").params()
    assert "min_norm" not in plain and both["min_norm"]["fmn"] == {"steps": 100}
    assert {k: v for k, v in both.items() if k != "min_norm"} == plain
    only = parse_suite("min-norm").params()
    assert set(only) == {"min_norm"}  # AutoAttack's block does not run, so it is not in the key
    assert parse_suite("min-norm").with_min_norm_steps(5).params() != only
    assert parse_suite("standard min-norm").label == "standard,min-norm"


def test_curve_eps_grids():
    assert parse_curve_eps(None, "Linf")[-1] == pytest.approx(16 / 255) and len(parse_curve_eps(None, "Linf")) == 17
    assert parse_curve_eps(None, "L2") == pytest.approx([i / 10 for i in range(16)])
    assert parse_curve_eps("0,2/255, 1/255", "Linf") == pytest.approx([0, 1 / 255, 2 / 255])
    with pytest.raises(ValueError):
        parse_curve_eps("-1/255", "Linf")


def test_min_norm_with_a_reference_engine_or_protocol_is_refused(capsys):
    assert main(["sweep", *MIN_NORM, "--engine", "reference", "--out", "/nonexistent/x"]) == 2
    assert "--engine fast" in capsys.readouterr().err


@pytest.fixture(scope="module")
def min_norm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "mn"
    assert main(["sweep", *MIN_NORM, "--save-adv", "--out", str(out)]) == 0
    return out


def test_min_norm_alone_gives_distances_curves_and_columns(min_norm_run, capsys):
    o = load_outcomes(min_norm_run)
    d = o["min_norm"]
    assert d.dtype == np.float32 and d.shape == o["id"].shape == (6,)
    assert np.all(np.isfinite(d) | np.isinf(d)) and np.all(d >= 0)
    assert np.all((d == 0) == ~o["clean_correct"])
    # robust at the run's eps (8/255 by default) is derived from the distance
    assert np.array_equal(o["robust"], o["clean_correct"] & robust_at(d, 8 / 255))
    rows = load_results(min_norm_run)
    assert len(rows) == 2
    for r in rows:
        sel = o["beta"] == r["beta"]
        assert r["median_min_norm"] == pytest.approx(float(np.median(d[sel].astype(np.float64))), rel=1e-6)
        assert r["median_min_norm_lo"] <= r["median_min_norm"] <= r["median_min_norm_hi"]
    with (min_norm_run / "curves.csv").open() as f:
        curves = list(csv.DictReader(f))
    assert list(curves[0]) == ["beta", "seed", "threat", "eps", "n", "robust_acc", "robust_lo", "robust_hi"]
    assert len(curves) == 2 * 5  # 2 betas x eps 0..4/255
    for c in curves:
        sel = o["beta"] == float(c["beta"])
        assert float(c["robust_acc"]) == pytest.approx(robust_at(d[sel], float(c["eps"])).mean(), abs=1e-6)
    # re-running does no work
    assert main(["sweep", *MIN_NORM, "--save-adv", "--out", str(min_norm_run)]) == 0
    assert "ran 0 unit(s)" in capsys.readouterr().out
    assert (min_norm_run / "figures" / "curves.png").is_file()


def test_saved_points_give_the_stored_distances(min_norm_run):
    o = load_outcomes(min_norm_run)
    reader = RunReader(min_norm_run)
    advs = sorted(reader.units_dir.glob("*.adv.npz"))
    assert len(advs) == 2
    from ctrobust.data import load_eval_set

    x, _, ids = load_eval_set("cifar10", 3, subset="first", data="bundled")
    for p in advs:
        z = np.load(p)
        d = z["min_norm"]
        got = (torch.from_numpy(z["x_adv"]) - x).abs().flatten(1).amax(1).numpy()
        fin = np.isfinite(d) & (d > 0)
        assert np.allclose(got[fin], d[fin], rtol=1e-5)
        assert z["x_adv"].dtype == np.float32 and np.all(z["x_adv"] >= 0) and np.all(z["x_adv"] <= 1)
        assert set(np.round(d, 6)) <= set(np.round(o["min_norm"], 6))


def test_a_corrupted_distance_is_refused_and_not_stored(tmp_path, monkeypatch, capsys):
    """The runner re-checks every distance before storing a unit: norm recomputed, point in [0, 1] and
    misclassified at that beta; an engine that hands back a distance that is not its point's is refused."""
    from ctrobust.engines.fast.engine import FastEngine

    original = FastEngine._run_min_norm

    def corrupt(self, ctx, suite, bs, out):
        original(self, ctx, suite, bs, out)
        fin = np.flatnonzero(np.isfinite(out.min_norm) & (out.min_norm > 0))
        out.min_norm[fin[0]] *= 0.5  # a distance smaller than its point's

    monkeypatch.setattr(FastEngine, "_run_min_norm", corrupt)
    out = tmp_path / "bad"
    assert main(["sweep", *MIN_NORM, "--max-retries", "0", "--out", str(out)]) == 1
    assert "not the Linf norm of their points" in capsys.readouterr().err
    assert not [p for p in (out / "units").glob("*.npz")]


@pytest.fixture(scope="module")
def both_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "both"
    args = BUNDLED + ["--n-examples", "3", "--betas", "0.8", "--attacks", "apgd-ce,min-norm", "--eps", "1/255",
                      "--min-norm-params", "fmn=6,fab-mn=2"]
    assert main(["sweep", *args, "--out", str(out)]) == 0
    return out


def test_a_bounded_suite_and_min_norm_in_one_sweep(both_run):
    o = load_outcomes(both_run)
    rows = load_results(both_run)
    assert {"robust_acc", "median_min_norm", "broken_apgd-ce"} <= set(rows[0])
    # robust flags come from the bounded attack; distances are measured beside them
    assert set(np.unique(o["broken_by"])) <= {"", "clean", "apgd-ce"}
    assert np.all(np.isfinite(o["min_norm"]) | np.isinf(o["min_norm"]))
    assert (both_run / "curves.csv").is_file()
    assert (both_run / "figures" / "sweep.png").is_file() and (both_run / "figures" / "curves.png").is_file()


def test_bounded_runs_hold_no_distances(tmp_path):
    out = tmp_path / "b"
    args = BUNDLED + ["--n-examples", "2", "--betas", "0.8", "--attacks", "apgd-ce", "--eps", "2/255"]
    assert main(["sweep", *args, "--out", str(out)]) == 0
    assert np.all(np.isnan(load_outcomes(out)["min_norm"]))
    assert not (out / "curves.csv").exists() and "median_min_norm" not in load_results(out)[0]


def _adv_lib_fmn():
    pytest.importorskip("adv_lib", reason="pip install --no-deps adv-lib==0.2.8 (see README, Install)")
    sys.modules.setdefault("visdom", types.ModuleType("visdom"))
    from adv_lib.attacks import fmn

    return fmn


def test_fmn_on_the_bundled_resnet18_with_ct_is_no_worse_than_adv_lib(monkeypatch):
    """FMN as the fast engine runs it (ctrobust's CT at beta 0.9, per-row betas, fixed-shape blocks) against
    adv-lib's FMN run directly on the same network with CT written here from the paper's formula, same steps:
    the median distance is no larger (up to 1 %)."""
    fmn = _adv_lib_fmn()
    from ctrobust.ct import apply_ct
    from ctrobust.data import load_eval_set
    from ctrobust.engines import get_engine
    from ctrobust.models import load_model

    steps, beta, c, eps = 30, 0.9, 0.5, 1e-6
    x, y, ids = load_eval_set("cifar10", 6, subset="first", data="bundled")
    model = load_model("bundled/resnet18-cifar10", "cifar10")
    suite = parse_suite("fmn").with_min_norm_steps(steps)
    ours = get_engine("fast").run(apply_ct(model, 1.0), x, y, ids=ids, betas=torch.full((6,), beta, dtype=torch.float64),
                                  seed=0, threat="Linf", eps=8 / 255, suite=suite, batch_size=8, device="cpu")

    def phi(t, inplace=False):  # the paper's formula: c sigmoid(b t/(1-b+eps)) t + (1-c)(1-b+eps) softplus(t/(1-b+eps))
        s = 1 - beta + eps
        return c * torch.sigmoid(beta * t / s) * t + (1 - c) * s * torch.nn.functional.softplus(t / s)

    monkeypatch.setattr(torch.nn.functional, "relu", phi)  # the bundled ResNet-18 calls F.relu
    model.eval()
    theirs_adv = fmn(model, x, y, norm=float("inf"), steps=steps)
    with torch.no_grad():
        fooled = model(theirs_adv).argmax(1) != y
    theirs = (theirs_adv - x).abs().flatten(1).amax(1)
    theirs = torch.where(fooled, theirs, torch.full_like(theirs, float("inf"))).numpy()
    ours_d = ours.min_norm.astype(np.float64)
    assert np.all(np.isfinite(ours_d))
    assert np.median(ours_d) <= np.median(theirs) * 1.01
