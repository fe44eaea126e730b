"""Tests for the robustness-curve figure (ctrobust.plots.plot_curves, curve_table) on hand-made outcomes.

The store is replaced by a stand-in module (its contract: load_outcomes / load_config / load_results), as in
tests/test_report.py, so no run dir is written.
"""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from ctrobust import plots  # noqa: E402
from ctrobust.config import RunConfig  # noqa: E402

U = 1 / 255
INF = np.inf
EPS = 8 / 255


def _outcomes(dist_by_seed_beta, bounded=None):
    """Outcome columns from ``{(seed, beta): distances}`` (ids 0..N-1, labels id % 2); ``robust`` from the
    distances at eps unless ``bounded`` ({(seed, beta): flags}) gives the bounded suite's flags."""
    cols = {k: [] for k in ("id", "label", "beta", "seed", "clean_correct", "robust", "broken_by", "min_norm")}
    for (seed, beta), d in dist_by_seed_beta.items():
        d = np.asarray(d, dtype=np.float64)
        n = d.size
        robust = np.asarray(bounded[(seed, beta)]) if bounded else d > EPS
        cols["id"] += list(range(n))
        cols["label"] += [i % 2 for i in range(n)]
        cols["beta"] += [beta] * n
        cols["seed"] += [seed] * n
        cols["clean_correct"] += list(d > 0)
        cols["robust"] += list(robust)
        cols["broken_by"] += ["" if r else "apgd-ce" for r in robust]
        cols["min_norm"] += list(d)
    out = {k: np.asarray(v) for k, v in cols.items()}
    out["min_norm"] = out["min_norm"].astype(np.float32)
    return out


# distances between grid points (k + 0.5)/255, so float32 storage cannot move one across an eps
TOY = {(0, 1.0): [0, 0.5 * U, 1.5 * U, INF], (0, 0.9): [0.5 * U, 2.5 * U, 3.5 * U, INF],
       (1, 1.0): [0, 0.5 * U, 2.5 * U, INF], (1, 0.9): [0.5 * U, 2.5 * U, INF, INF]}
GRID = [0.0, 1 * U, 2 * U, 3 * U, 4 * U]


def test_curve_table_against_hand_counts():
    table = plots.curve_table(_outcomes(TOY), GRID)
    assert list(table) == [0.9, 1.0]
    # beta 1, seed 0: robust at 0 / 1 / 2 / 3 / 4 (/255): 3, 2, 1, 1, 1 of 4; seed 1: 3, 2, 2, 1, 1 of 4
    assert table[1.0].tolist() == pytest.approx([0.75, 0.5, 0.375, 0.25, 0.25])
    # beta 0.9, seed 0: 4, 3, 3, 2, 1; seed 1: 4, 3, 3, 2, 2
    assert table[0.9].tolist() == pytest.approx([1.0, 0.75, 0.75, 0.5, 0.375])
    # a distance not measured (NaN) is left out of its seed's accuracy, not counted as broken
    nan = _outcomes({(0, 1.0): [0, 0.5 * U, np.nan, INF]})
    assert plots.curve_table(nan, [0.0, 1 * U])[1.0].tolist() == pytest.approx([2 / 3, 1 / 3])


def test_median_band_is_never_nan_with_infinities():
    out = _outcomes({(0, 1.0): [U, 2 * U, INF, INF], (0, 0.9): [INF] * 4, (1, 1.0): [U, 2 * U, 3 * U, INF],
                     (1, 0.9): [INF] * 4})
    betas, med, lo, hi = plots._median_by_beta(out, n_boot=200)
    assert betas.tolist() == [0.9, 1.0]
    assert med[0] == INF and lo[0] == INF and hi[0] == INF
    # beta 1: seed 0's median (2 + inf) / 2 = inf, seed 1's 2.5/255: their mean is inf, not nan
    assert med[1] == INF and not any(math.isnan(x) for x in np.r_[med, lo, hi])


def test_curve_grid_from_the_run_option():
    assert plots._curve_grid(RunConfig(threat="L2", options={"curve_eps": "0:1:1/2"})) == [0.0, 0.5, 1.0]
    assert len(plots._curve_grid(RunConfig(threat="Linf"))) == 17  # 0..16/255


def _fake_store(monkeypatch, runs):
    """Install a stand-in ``ctrobust.store`` serving ``{run name: (outcomes, config, results)}``."""
    fake = types.ModuleType("ctrobust.store")
    name = lambda rd: str(rd).rstrip("/").rsplit("/", 1)[-1]  # noqa: E731
    fake.load_outcomes = lambda rd: runs[name(rd)][0]
    fake.load_config = lambda rd: runs[name(rd)][1]
    fake.load_results = lambda rd: runs[name(rd)][2]
    monkeypatch.setitem(sys.modules, "ctrobust.store", fake)


def _results(outcomes, cfg):
    """results.json rows (one per (beta, seed)) as plot_runs reads them."""
    rows = []
    for s in np.unique(outcomes["seed"]):
        for b in np.unique(outcomes["beta"]):
            m = (outcomes["seed"] == s) & (outcomes["beta"] == b)
            rob, cl = outcomes["robust"][m].mean(), outcomes["clean_correct"][m].mean()
            rows.append({"model": cfg.model, "dataset": cfg.dataset, "threat": cfg.threat, "eps": cfg.eps,
                         "engine": "fast", "attacks": "standard", "coeff": 0.5, "data": "full", "n": int(m.sum()),
                         "seed": int(s), "beta": float(b), "clean_acc": cl, "clean_lo": cl, "clean_hi": cl,
                         "robust_acc": rob, "robust_lo": rob, "robust_hi": rob,
                         "broken_apgd-ce": int((~outcomes["robust"][m]).sum())})
    return rows


AA = RunConfig(model="toynet", dataset="cifar10", threat="Linf", eps=EPS, coeff=0.5,
               attack_names=("apgd-ce", "apgd-t", "fab-t", "square"))


def test_plot_curves_writes_every_format(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    dist = {(s, b): np.where(rng.random(50) < 0.1, INF, rng.exponential((1.5 - b) * 10 * U, 50))
            for s in (0, 1) for b in (0.8, 0.9, 1.0)}
    bounded = {k: (d > EPS) & (rng.random(50) > 0.1) for k, d in dist.items()}
    with_d = _outcomes(dist, bounded)
    without = {k: v for k, v in with_d.items() if k != "min_norm"}
    _fake_store(monkeypatch, {"a": (with_d, AA, None), "b": (without, AA, None),
                              "c": (with_d, RunConfig(model="other", threat="L2", eps=0.5, attack_names=()), None)})
    paths = plots.plot_curves([tmp_path / "a", tmp_path / "b"], out_dir=tmp_path / "fig")
    assert [p.name for p in paths] == ["curves.png", "curves.pdf"]
    assert all(p.exists() and p.stat().st_size > 1000 for p in paths)
    # two runs with distances: one row each; the run without distances is skipped
    two = plots.plot_curves([tmp_path / "a", tmp_path / "b", tmp_path / "c"], out_dir=tmp_path / "fig",
                            name="two", formats=("png",))
    assert [p.name for p in two] == ["two.png"] and two[0].stat().st_size > paths[0].stat().st_size
    with pytest.raises(ValueError, match="no run has minimum-norm distances"):
        plots.plot_curves([tmp_path / "b"], out_dir=tmp_path / "fig")


def test_plot_runs_adds_the_curves_only_for_runs_with_distances(tmp_path, monkeypatch):
    with_d = _outcomes(TOY)
    without = {k: v for k, v in with_d.items() if k != "min_norm"}
    bounded_only = dict(with_d, min_norm=np.full(with_d["id"].size, np.nan, np.float32))
    _fake_store(monkeypatch, {"mn": (with_d, AA, _results(with_d, AA)),
                              "aa": (without, AA, _results(without, AA)),
                              "aa_nan": (bounded_only, AA, _results(bounded_only, AA))})
    got = plots.plot_runs([tmp_path / "mn"], out_dir=tmp_path / "f1", formats=("png",))
    assert [p.name for p in got] == ["sweep.png", "curves.png"]
    assert all(p.stat().st_size > 1000 for p in got)
    for run in ("aa", "aa_nan"):
        got = plots.plot_runs([tmp_path / run], out_dir=tmp_path / run, formats=("png",))
        assert [p.name for p in got] == ["sweep.png"]
    # a named figure gets a named curve figure beside it
    got = plots.plot_runs([tmp_path / "mn"], out_dir=tmp_path / "f2", name="cmp", formats=("png",))
    assert [p.name for p in got] == ["cmp.png", "cmp_curves.png"]
