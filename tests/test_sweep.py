"""The sweep end to end through the CLI (``main([...])``) on shipped assets: run dir contents, resume,
regression checks, bad input, the RobustBench loading path, and parity of the reference engine with a
direct pyautoattack run."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ctrobust.cli import main
from ctrobust.store import load_outcomes, load_results

BUNDLED = ["--model", "bundled/resnet18-cifar10", "--data", "bundled", "--subset", "first", "--device", "cpu",
           "--quiet"]
# tiny: 4 images, baseline + one beta, APGD-CE only; the naturally trained model breaks within a few steps
TINY = BUNDLED + ["--n-examples", "4", "--betas", "0.8", "--attacks", "apgd-ce", "--eps", "2/255",
                  "--seeds", "0", "--batch-size", "8"]
GOLDEN = Path(__file__).parent / "golden" / "tiny_bundled.json"


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["sweep", *TINY, "--out", str(out)]) == 0
    return out


def test_run_dir_holds_config_results_outcomes_and_figures(tiny_run):
    assert (tiny_run / "config.yaml").is_file()
    for f in ("results.csv", "results.json", "outcomes.npz", "figures/sweep.png", "figures/sweep.pdf"):
        assert (tiny_run / f).is_file() and (tiny_run / f).stat().st_size > 0, f
    with open(tiny_run / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["beta"]) for r in rows] == [1.0, 0.8]
    required = {"beta", "coeff", "seed", "n", "clean_acc", "robust_acc", "robust_lo", "robust_hi",
                "broken_apgd-ce", "ct_relu_functional", "ct_missed", "seconds", "device", "batch_size", "engine"}
    assert required <= set(rows[0])
    for r in rows:
        n = int(r["n"])
        assert n == 4 and r["engine"] == "fast" and r["device"] == "cpu"
        lo, acc, hi = float(r["robust_lo"]), float(r["robust_acc"]), float(r["robust_hi"])
        assert 0.0 <= lo <= acc <= hi <= 1.0
        assert float(r["robust_acc"]) <= float(r["clean_acc"])
        assert int(r["ct_relu_functional"]) == 17 and int(r["ct_missed"]) == 0
        # the arithmetic is recorded: float32 on the CPU (TF32 settings on CUDA); no accelerator memory
        assert r["precision"] == "fp32" and r["peak_mem_mb"] == ""
        assert r["protocol"] == "valid" and r["threat_note"] == "" and float(r["in_ball_frac"]) == 1.0
        assert float(r["pixel_linf_max"]) <= 2 / 255 + 1e-6
    o = load_outcomes(tiny_run)
    assert len(o["id"]) == 8  # 4 examples x 2 betas
    # per-example outcomes agree with the accuracies and with "which attack broke it"
    for r in load_results(tiny_run):
        m = o["beta"] == r["beta"]
        assert o["robust"][m].mean() == pytest.approx(r["robust_acc"])
        assert ((o["broken_by"][m] == "apgd-ce").sum()) == r["broken_apgd-ce"]
        assert not (o["robust"][m] & ~o["clean_correct"][m]).any()
        assert ((o["broken_by"][m] == "") == o["robust"][m]).all()


def test_rerun_skips_finished_units(tiny_run, capsys):
    before = _snapshot(tiny_run / "units")
    assert main(["sweep", *TINY, "--out", str(tiny_run)]) == 0
    assert "ran 0 unit(s), 2 already done" in capsys.readouterr().out
    assert _snapshot(tiny_run / "units") == before


def test_check_against_committed_golden(tiny_run, capsys):
    """Our own regression pin: the tiny bundled sweep must reproduce the committed per-example outcomes."""
    assert main(["check", str(tiny_run), "--against", str(GOLDEN)]) == 0


def test_check_names_changed_betas_and_examples(tiny_run, tmp_path, capsys):
    golden = tmp_path / "g.json"
    assert main(["check", str(tiny_run), "--write-golden", str(golden)]) == 0
    doc = json.loads(golden.read_text())
    key = next(k for k in doc["groups"] if doc["groups"][k]["beta"] == 0.8)
    g = doc["groups"][key]
    g["clean_correct"][1] = 1 - g["clean_correct"][1]
    golden.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["check", str(tiny_run), "--against", str(golden)]) == 1
    out = capsys.readouterr().out
    assert "beta=0.8" in out and f"{g['id'][1]} (" in out
    # within a tolerance that admits one changed example out of 4
    assert main(["check", str(tiny_run), "--against", str(golden), "--tolerance", "0.3"]) == 0


@pytest.mark.parametrize("args,needle", [
    (["--model", "Standrad"], "did you mean 'Standard'"),
    (["--eps", "8/0"], "eps"),
    (["--eps", "abc"], "eps"),
    (["--betas", "0.9,1.5"], "outside (0, 1]"),
    (["--betas", "0"], "outside (0, 1]"),
    (["--n-examples", "21"], "21"),
    (["--attacks", "apgd"], "did you mean"),
    (["--device", "gpu"], "device"),
])
def test_bad_input_is_a_one_line_error_with_exit_2(tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    argv = ["sweep", *TINY, "--out", str(out), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (out / "units").exists()


def test_unknown_config_key_is_rejected(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: bundled/resnet18-cifar10\nn_exmaples: 4\n")
    assert main(["sweep", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert "did you mean 'n_examples'" in capsys.readouterr().err


def test_out_pointing_at_another_experiment_is_refused_and_untouched(tiny_run, capsys):
    before = _snapshot(tiny_run)
    argv = ["sweep", *TINY, "--out", str(tiny_run)]
    argv[argv.index("2/255")] = "4/255"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "different settings" in err and "eps" in err
    assert _snapshot(tiny_run) == before


def test_standard_without_network_or_checkpoint_exits_2_naming_the_path(tmp_path, monkeypatch, capsys):
    import gdown

    def no_network(*a, **k):
        raise ConnectionError("Failed to establish a new connection: network is unreachable")

    monkeypatch.setattr(gdown, "download", no_network)
    model_dir = tmp_path / "models"
    out = tmp_path / "run"
    code = main(["sweep", "--model", "Standard", "--eps", "8/255", "--model-dir", str(model_dir),
                 "--out", str(out), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(model_dir / "cifar10" / "Linf" / "Standard.pt") in err
    assert not model_dir.exists()  # no partial or HTML file, not even the folders made for the download
    assert not out.exists()


def test_random_weight_standard_checkpoint_runs_end_to_end(tmp_path):
    """RobustBench's real loader, offline: a random WRN-28-10 placed in its model_dir layout."""
    from ctrobust._compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo.cifar10 import linf

    torch.manual_seed(0)
    net = linf["Standard"]["model"]()
    path = tmp_path / "models" / "cifar10" / "Linf" / "Standard.pt"
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    out = tmp_path / "run"
    code = main(["sweep", "--model", "Standard", "--model-dir", str(tmp_path / "models"), "--data", "bundled",
                 "--n-examples", "2", "--subset", "first", "--betas", "0.9", "--attacks", "apgd-ce",
                 "--device", "cpu", "--out", str(out), "--quiet"])
    assert code == 0
    rows = load_results(out)
    assert [r["beta"] for r in rows] == [1.0, 0.9]
    assert rows[0]["ct_relu_modules"] == 25 and rows[0]["ct_missed"] == 0


def _sweep_cmd(out: Path) -> list[str]:
    args = [a for a in TINY]
    args[args.index("4")] = "6"
    args[args.index("2/255")] = "8/255"  # every point breaks within a few steps: a quick 12-unit sweep
    return [sys.executable, "-m", "ctrobust.cli", "sweep", *args, "--chunk-size", "1", "--out", str(out)]


def test_sigkilled_sweep_resumes_only_missing_units_with_identical_results(tmp_path, capsys):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(_sweep_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((killed / "units").glob("*.npz"))) < 3 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((killed / "units").glob("*.npz")))
    assert 0 < done < 12, "the sweep must be killed mid-way for this test to mean something"
    assert not list((killed / "units").glob("*.npz.tmp")) or True  # temp files are not results
    capsys.readouterr()
    argv = _sweep_cmd(killed)[3:]
    assert main(argv) == 0
    assert f"ran {12 - done} unit(s), {done} already done" in capsys.readouterr().out
    assert not list(killed.rglob(".*.tmp"))  # the dead writer's temp files were cleaned up
    assert main(_sweep_cmd(clean)[3:]) == 0
    a, b = load_outcomes(killed), load_outcomes(clean)
    for k in ("id", "beta", "clean_correct", "robust", "broken_by", "transfer_broken"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    strip = ("seconds", "device", "call_seconds")
    ra = [{k: v for k, v in r.items() if k not in strip} for r in load_results(killed)]
    rb = [{k: v for k, v in r.items() if k not in strip} for r in load_results(clean)]
    assert ra == rb


def test_reference_engine_at_beta_1_equals_direct_pyautoattack(tmp_path):
    """Same model, images, seed and batch size: ctrobust's reference engine reproduces a direct pyautoattack
    run exactly (robust flags and the adversarial images themselves). 2 images at 1/255: one robust, one
    not; APGD-CE only, since pyautoattack always runs its 100 iterations (~1 min on 2 CPU cores)."""
    from pyautoattack import AutoAttack

    from ctrobust.data import load_eval_set
    from ctrobust.models import load_model

    n, eps = 2, 1 / 255
    out = tmp_path / "ref"
    assert main(["sweep", *BUNDLED, "--n-examples", str(n), "--betas", "1", "--attacks", "apgd-ce",
                 "--eps", "1/255", "--engine", "reference", "--batch-size", "2", "--seeds", "3",
                 "--out", str(out)]) == 0
    o = load_outcomes(out)
    base = o["beta"] == 1.0
    model = load_model("bundled/resnet18-cifar10")
    x, y, _ = load_eval_set("cifar10", n, data="bundled")
    aa = AutoAttack(model, norm="Linf", eps=eps, seed=3, version="custom", attacks=["apgd-ce"])
    aa.apgd.n_restarts = 1  # the standard version's APGD-CE setting
    x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=n)
    direct = (y_adv == y).numpy()
    np.testing.assert_array_equal(o["robust"][base], direct)
    assert results_robust_acc(out, 1.0) == direct.mean()
    unit = next(p for p in (out / "units").glob("*.npz") if "x_adv" in np.load(p).files)
    torch.testing.assert_close(torch.from_numpy(np.load(unit)["x_adv"]), x_adv, rtol=0, atol=0)


def results_robust_acc(run_dir, beta):
    return next(r["robust_acc"] for r in load_results(run_dir) if r["beta"] == beta)


def test_masking_flags_do_not_fire_on_the_bundled_resnet18(tiny_run):
    """A normally trained ReLU network: gradients are healthy at every beta and nothing looks masked."""
    from ctrobust.diagnostics import masking_flags

    o = load_outcomes(tiny_run)
    assert not o["grad_zero"].any() and not o["grad_nonfinite"].any()
    flags = masking_flags(o, attacks=["apgd-ce"])
    assert flags and not any(v["masking_suspected"] for v in flags.values())


def test_rand_into_a_run_dir_of_the_same_attacks_without_eot_is_refused(tmp_path, capsys):
    """``rand`` is APGD-CE + APGD-DLR with 20 EOT draws: the same attack list with EOT 1 is another
    experiment, so its units are never reused for it; the refusal names the setting that differs."""
    out = tmp_path / "ce_dlr"
    argv = ["sweep", *TINY, "--out", str(out)]
    argv[argv.index("apgd-ce")] = "apgd-ce,apgd-dlr"
    assert main(argv) == 0
    before = _snapshot(out)
    capsys.readouterr()
    argv[argv.index("apgd-ce,apgd-dlr")] = "rand"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "attacks.eot_iter: 1 (run) vs 20 (now)" in err, err
    assert _snapshot(out) == before
    # the same attacks spelled with spaces are the same experiment: resumed, nothing to run
    argv[argv.index("rand")] = "apgd-ce apgd-dlr"
    assert main(argv) == 0
    assert "ran 0 unit(s), 2 already done" in capsys.readouterr().out


def test_list_options_take_commas_and_spaces(tmp_path):
    from ctrobust.cli import build_parser
    from ctrobust.config import SweepConfig

    def cfg(*args):
        a = build_parser().parse_args(["sweep", *args])
        return SweepConfig.from_cli({k: getattr(a, k) for k in ("seeds", "betas", "attacks")}).validate()

    for form in (["0,1"], ["0", "1"], ["0, 1"]):
        assert cfg("--seeds", *form).seeds == [0, 1]
    for form in (["0.8,0.9"], ["0.8", "0.9"], ["0.8 0.9"]):
        assert cfg("--betas", *form).betas == [1.0, 0.9, 0.8]
    for form in (["apgd-ce,square"], ["apgd-ce", "square"], ["apgd-ce, square"]):
        assert cfg("--attacks", *form).attacks == "apgd-ce,square"


def test_timing_workload_is_flagged_in_results_report_and_figure(tmp_path, capsys, monkeypatch):
    """``--data timing``: any number of rows offline, and every output says the accuracies measure nothing."""
    from ctrobust.data import TIMING_NOTE

    out = tmp_path / "timing"
    args = [a if a != "bundled" else "timing" for a in TINY]
    args[args.index("--n-examples") + 1] = "24"  # more rows than the 20 bundled images
    assert main(["sweep", *args, "--out", str(out)]) == 0
    rows = load_results(out)
    assert all(r["n"] == 24 and r["data"] == "timing" and TIMING_NOTE in r["warnings"] for r in rows)
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "accuracies are not a measurement" in capsys.readouterr().out
    # the figure: its title says so; overlaid with the same sweep by the reference engine, the legend tells
    # the two engines apart
    import matplotlib.pyplot as plt

    from ctrobust import plots

    ref = tmp_path / "timing_ref"
    ref_args = list(args)
    ref_args[ref_args.index("--n-examples") + 1] = "2"  # (the reference engine does not exit early: keep it small)
    assert main(["sweep", *ref_args, "--engine", "reference", "--out", str(ref)]) == 0
    titles, labels = [], []
    real_title, real_legend = plt.Figure.suptitle, plt.Axes.legend
    monkeypatch.setattr(plt.Figure, "suptitle", lambda self, t, *a, **k: (titles.append(t), real_title(self, t, *a, **k))[1])

    def legend(self, *a, **k):
        labels.extend(self.get_legend_handles_labels()[1])
        return real_legend(self, *a, **k)
    monkeypatch.setattr(plt.Axes, "legend", legend)
    plots.plot_runs([out, ref], out_dir=tmp_path / "fig", formats=("png",))
    assert any("TIMING WORKLOAD" in t for t in titles)
    assert any("[fast engine]" in lab for lab in labels) and any("[reference engine]" in lab for lab in labels)
