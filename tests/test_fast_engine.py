"""The fast engine as a whole: batch invariance of per-example outcomes, the ``AttackOutcome`` contract,
per-row beta wiring, errors, and restoring the model.

The model is a tiny CNN trained in the test on scikit-learn's digits (8x8 grey images in [0, 1]) with CT
applied through ``ctrobust.ct.apply_ct``. Attack budgets are cut down (the invariance property does not
depend on them) so the file runs in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from ctrobust._registry import UnknownNameError
from ctrobust.ct import apply_ct, set_beta
from ctrobust.engines import get_engine
from ctrobust.engines.base import AttackOutcome
from ctrobust.engines.fast.engine import FastEngine
from ctrobust.threat import distances
from ctrobust.toy import train_digits_cnn

BETAS = [1.0, 0.8, 0.5]
N_EX = 8
ORDER = ["square", "fab-t", "apgd-t", "apgd-ce"]  # weak attacks first, so that every attack breaks something
SMALL = dict(n_iter=4, n_target_classes=1, n_queries=20)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ct_digits(tmp_path_factory):
    """(CT model, x_test, y_test) with CT applied to the digits CNN."""
    model, x, y, _ = train_digits_cnn(cache_dir=tmp_path_factory.getbasetemp())
    return apply_ct(model, 1.0), x, y


def _rows(x, y, n_ex, betas):
    """Rows of ``n_ex`` examples x ``betas`` (beta-major), as the sweep builds them."""
    reps = len(betas)
    return (x[:n_ex].repeat(reps, 1, 1, 1), y[:n_ex].repeat(reps), torch.arange(n_ex).repeat(reps),
            torch.tensor(np.repeat(np.asarray(betas, dtype=np.float64), n_ex)))


def _run(engine, model, x, y, ids, betas, batch_size, threat="Linf", eps=0.12, attacks=ORDER, seed=0):
    return engine.run(model, x, y, ids=ids, betas=betas, seed=seed, threat=threat, eps=eps, attacks=attacks,
                      batch_size=batch_size, device="cpu")


def _cat(outs):
    return (np.concatenate([o.clean_correct for o in outs]), np.concatenate([o.robust for o in outs]),
            np.concatenate([o.broken_by for o in outs]), torch.cat([o.x_adv for o in outs]))


def _assert_same(a, b, what):
    for name, u, v in zip(("clean_correct", "robust", "broken_by"), a[:3], b[:3]):
        assert np.array_equal(u, v), f"{what}: {name} differs at rows {np.flatnonzero(u != v).tolist()}"
    assert torch.equal(a[3], b[3]), f"{what}: x_adv differs"


def _informative(out, ids) -> bool:
    """Several attacks broke rows, some rows are robust, and some example's outcome depends on beta."""
    kinds = set(out.broken_by) - {"", "clean"}
    per_example = [set(out.broken_by[(ids == i).numpy()]) for i in range(N_EX)]
    return len(kinds) >= 3 and out.robust.any() and any(len(s) > 1 for s in per_example)


@pytest.mark.parametrize("threat,radii", [("Linf", (0.12, 0.1, 0.14, 0.08)), ("L2", (0.6, 0.5, 0.7, 0.4))],
                         ids=["Linf", "L2"])
def test_outcomes_do_not_depend_on_batch_size_chunking_or_beta_batching(ct_digits, threat, radii):
    model, x, y = ct_digits
    X, Y, I, B = _rows(x, y, N_EX, BETAS)
    # block_size fixes the shape of every model call, so batch size 3 vs 64 changes no float bit
    eng = FastEngine(**SMALL, block_size=8)
    for eps in radii:  # the first radius where the comparison is informative (trained weights vary by CPU)
        whole = _run(eng, model, X, Y, I, B, 64, threat, eps)
        if _informative(whole, I):
            break
    else:
        pytest.fail(f"no radius in {radii} gives outcomes from several attacks, robust rows and "
                    f"beta-dependent outcomes: last {dict(zip(*np.unique(whole.broken_by, return_counts=True)))}")
    ref = _cat([whole])
    _assert_same(ref, _cat([_run(eng, model, X, Y, I, B, 3, threat, eps)]), "batch size 3 vs 64")
    # chunking: two halves of the examples (each with all its betas) vs the whole
    h = N_EX // 2
    outs, order = [], []
    for lo, hi in ((0, h), (h, N_EX)):
        sel = (I >= lo) & (I < hi)
        outs.append(_run(eng, model, X[sel], Y[sel], I[sel], B[sel], 64, threat, eps))
        order.append(np.flatnonzero(sel.numpy()))
    order = np.concatenate(order)
    ref_reordered = tuple(a[order] for a in ref[:3]) + (ref[3][torch.as_tensor(order)],)
    _assert_same(ref_reordered, _cat(outs), "two halves vs whole")
    # beta-batching off: one call per beta, with the engine's default block (on CPU min(batch size, 32))
    eng_default = FastEngine(**SMALL)
    together = _cat([_run(eng_default, model, X, Y, I, B, 16, threat, eps)])
    apart = _cat([_run(eng_default, model, X[sel], Y[sel], I[sel], B[sel], 16, threat, eps)
                  for sel in (B == b for b in BETAS)])
    _assert_same(together, apart, "betas batched vs one call per beta")


def test_outcome_contract_and_per_row_beta(ct_digits):
    model, x, y = ct_digits
    betas = [1.0, 0.1]  # beta = 0.1 changes clean predictions of this CNN
    X, Y, I, B = _rows(x, y, 40, betas)
    eng = FastEngine(**SMALL)
    out = _run(eng, model, X, Y, I, B, 32, "Linf", 0.1, attacks=["apgd-ce", "square"])
    assert isinstance(out, AttackOutcome)
    n = X.shape[0]
    assert out.clean_correct.dtype == bool and out.clean_correct.shape == (n,)
    assert out.robust.dtype == bool and out.robust.shape == (n,)
    assert out.broken_by.shape == (n,) and set(out.broken_by) <= {"", "clean", "apgd-ce", "square"}
    assert out.x_adv.device.type == "cpu" and out.x_adv.dtype == torch.float32 and out.x_adv.shape == X.shape
    assert (out.robust <= out.clean_correct).all()
    assert ((out.broken_by == "clean") == ~out.clean_correct).all()
    assert ((out.broken_by == "") == out.robust).all()
    assert out.batch_size == 32 and isinstance(out.warnings, list)
    assert out.forward_passes > n and 0 < out.backward_passes < out.forward_passes
    assert (distances(X, out.x_adv, "Linf") <= 0.1 + 1e-5).all()
    # each row was evaluated at its own beta: clean flags and adversarial points agree with a direct
    # evaluation of the model at that beta
    for b in betas:
        sel = (B == b).numpy()
        set_beta(model, b)
        with torch.no_grad():
            clean = (model(X[sel]).argmax(1) == Y[sel]).numpy()
            adv_pred = model(out.x_adv[torch.as_tensor(sel)]).argmax(1).numpy()
        assert np.array_equal(out.clean_correct[sel], clean)
        broken = ~out.robust[sel] & out.clean_correct[sel]
        assert (adv_pred[broken] != Y[sel].numpy()[broken]).all()
    assert not np.array_equal(out.clean_correct[:40], out.clean_correct[40:]), "beta 0.1 should change some"
    set_beta(model, 1.0)


def test_seed_determines_the_draws(ct_digits):
    model, x, y = ct_digits
    X, Y, I, B = _rows(x, y, 12, [1.0])
    eng = FastEngine(**SMALL)
    a = _run(eng, model, X, Y, I, B, 16, attacks=["apgd-ce"], eps=0.1, seed=1)
    b = _run(eng, model, X, Y, I, B, 16, attacks=["apgd-ce"], eps=0.1, seed=1)
    c = _run(eng, model, X, Y, I, B, 16, attacks=["apgd-ce"], eps=0.1, seed=2)
    assert torch.equal(a.x_adv, b.x_adv) and np.array_equal(a.broken_by, b.broken_by)
    broken = torch.as_tensor((a.broken_by == "apgd-ce") & (c.broken_by == "apgd-ce"))
    assert broken.any() and not torch.equal(a.x_adv[broken], c.x_adv[broken])


def test_errors_and_model_state_are_handled(ct_digits):
    model, x, y = ct_digits
    X, Y, I, B = _rows(x, y, 4, [1.0])
    eng = get_engine("fast")
    assert isinstance(eng, FastEngine) and eng.name == "fast"
    with pytest.raises(UnknownNameError, match="apgd-ce"):
        _run(eng, model, X, Y, I, B, 4, attacks=["apgd-cee"])
    with pytest.raises(ValueError, match="beta"):
        _run(eng, model, X, Y, I, B * 0 + 1.5, 4, attacks=["apgd-ce"])
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    with pytest.raises(ValueError, match="CT"):
        _run(eng, plain, X, Y, I, B * 0.5, 4, attacks=["apgd-ce"])
    assert FastEngine._canon_attacks(["rand"], False) == (["apgd-ce", "apgd-dlr"], True)
    # a model in train mode is attacked in eval mode and given back as it was
    model.train()
    req = [p.requires_grad for p in model.parameters()]
    out = _run(FastEngine(**SMALL), model, X, Y, I, B, 4, attacks=["apgd-ce"])
    assert model.training and [p.requires_grad for p in model.parameters()] == req
    assert any("train mode" in w for w in out.warnings)
    model.eval()
