"""Both engines behind one interface: suites instead of attack lists, model state given back as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from ctrobust.attacks import SUITES, AttackSuite
from ctrobust.ct import apply_ct, get_beta
from ctrobust.engines import get_engine, list_engines

pytestmark = pytest.mark.usefixtures("one_thread")


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.parametrize("engine", list_engines())
def test_a_train_mode_model_is_attacked_in_eval_mode_and_given_back(engine):
    """A train-mode model would update its BatchNorm statistics while attacked (and attack a different
    function); both engines evaluate it in eval mode and restore every module's flag and the beta."""
    model = apply_ct(_bn_model(), 1.0)
    model.train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(6, 1, 3, 4)
    y = torch.randint(0, 4, (6,))
    suite = AttackSuite("custom", ("apgd-ce",), n_iter=3)
    out = get_engine(engine).run(model, x, y, ids=torch.arange(6), betas=torch.full((6,), 0.9, dtype=torch.float64),
                                 seed=0, threat="Linf", eps=0.05, suite=suite, batch_size=6, device="cpu")
    assert all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, stats[k]), f"{k} changed during the attack"
    assert any("train mode" in w for w in out.warnings)
    assert get_beta(model).dim() == 0 and float(get_beta(model)) == 1.0  # not the attacked 0.9
    assert out.robust.shape == (6,) and not (out.robust & ~out.clean_correct).any()


@pytest.mark.parametrize("engine", list_engines())
def test_engines_declare_whether_they_batch_betas(engine):
    eng = get_engine(engine)
    assert isinstance(eng.batches_betas, bool)
    assert eng.batches_betas == (engine == "fast")


def test_the_reference_engine_runs_the_suite_parameters():
    """The suite's parameters reach pyautoattack's attack objects (standard: exactly AutoAttack's own)."""
    from ctrobust.engines.reference import _make_autoattack
    from pyautoattack import AutoAttack

    model = _bn_model().eval()
    ours = _make_autoattack(model, "Linf", 8 / 255, 0, torch.device("cpu"), SUITES["standard"])
    theirs = AutoAttack(model, norm="Linf", eps=8 / 255, seed=0, device="cpu", version="standard")
    for att in ("apgd", "apgd_targeted", "fab", "square"):
        for attr in ("n_iter", "n_restarts", "n_target_classes", "n_queries", "eot_iter", "rho", "p_init"):
            if hasattr(getattr(theirs, att), attr):
                assert getattr(getattr(ours, att), attr) == getattr(getattr(theirs, att), attr), (att, attr)
    rand = _make_autoattack(model, "Linf", 8 / 255, 0, torch.device("cpu"), SUITES["rand"])
    theirs = AutoAttack(model, norm="Linf", eps=8 / 255, seed=0, device="cpu", version="rand")
    assert rand.apgd.eot_iter == theirs.apgd.eot_iter == 20 and rand.apgd.n_restarts == theirs.apgd.n_restarts
    small = _make_autoattack(model, "Linf", 8 / 255, 0, torch.device("cpu"),
                             AttackSuite("custom", ("apgd-ce", "square"), n_iter=7, n_queries=11))
    assert small.apgd.n_iter == 7 and small.square.n_queries == 11
    assert np.isclose(small.square.p_init, 0.8)


def test_largest_fitting_batch_stops_at_oom_or_headroom():
    """The auto batch probe (used on CUDA): largest size that neither raises OOM nor passes the headroom."""
    from ctrobust.engines.base import largest_fitting_batch

    peak = {"now": 0}
    tried = []

    def step(n):  # 1 MB per row; "CUDA out of memory" above 3000 rows
        tried.append(n)
        if n > 3000:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        peak["now"] = n * 2 ** 20

    sizes = (512, 1024, 2048, 4096, 8192)
    kw = dict(peak_bytes=lambda: peak["now"], reset_peak=lambda: peak.update(now=0))
    assert largest_fitting_batch(step, sizes, total_bytes=10 * 2 ** 30, **kw) == 2048
    assert tried == [512, 1024, 2048, 4096]  # stops at the first failure
    # 1.5 GiB device: 1024 rows need 1 GiB > 80 % of 1.5 GiB? no (1.2 GiB limit); 2048 rows do
    assert largest_fitting_batch(step, sizes, total_bytes=int(1.5 * 2 ** 30), **kw) == 1024
    # nothing fits: the smallest candidate (the run's own back-off takes over)
    assert largest_fitting_batch(step, sizes, total_bytes=2 ** 20, **kw) == 512
    with pytest.raises(ValueError, match="not a memory problem"):  # other errors propagate
        largest_fitting_batch(lambda n: (_ for _ in ()).throw(ValueError("not a memory problem")), sizes,
                              total_bytes=2 ** 30, **kw)


@pytest.mark.gpu
def test_auto_batch_on_cuda_is_probed_once_and_outcomes_match_a_fixed_block():
    """On CUDA ``batch_size="auto"`` is the largest probe size that fits (once per model); the outcomes are
    those of a fixed batch of that size."""
    from ctrobust.ct import apply_ct
    from ctrobust.engines.fast.engine import CUDA_PROBE_SIZES, FastEngine

    torch.manual_seed(0)
    model = apply_ct(nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4)), 1.0).eval()
    x, y = torch.rand(40, 3, 2, 2), torch.randint(0, 4, (40,))
    kw = dict(ids=torch.arange(40), betas=torch.full((40,), 0.8, dtype=torch.float64), seed=0, threat="Linf",
              eps=0.05, suite="apgd-ce,apgd-t", device="cuda")
    eng = FastEngine()
    a = eng.run(model, x, y, batch_size="auto", **kw)
    assert a.batch_size in CUDA_PROBE_SIZES and len(eng._probed[model]) == 1
    eng.run(model, x, y, batch_size="auto", **kw)
    assert len(eng._probed[model]) == 1  # not probed again
    b = FastEngine().run(model, x, y, batch_size=a.batch_size, **kw)
    assert np.array_equal(a.robust, b.robust) and np.array_equal(a.broken_by, b.broken_by)
    assert torch.equal(a.x_adv, b.x_adv)
