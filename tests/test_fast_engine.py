"""The fast engine as a whole: batch invariance of per-example outcomes, the ``AttackOutcome`` contract,
per-row beta wiring, errors, and restoring the model.

The model is a tiny CNN trained in the test on scikit-learn's digits (8x8 grey images in [0, 1]) with CT
applied through ``ctrobust.ct.apply_ct``. Attack budgets are cut down (the invariance property does not
depend on them) so the file runs in seconds.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from ctrobust._registry import UnknownNameError
from ctrobust.attacks import AttackSuite, parse_suite
from ctrobust.ct import apply_ct, get_beta, set_beta
from ctrobust.engines import get_engine
from ctrobust.engines.base import AttackOutcome
from ctrobust.engines.fast._driver import Attack, RowState, run_attack
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


def _run(engine, model, x, y, ids, betas, batch_size, threat="Linf", eps=0.12, attacks=ORDER, seed=0,
         params=SMALL):
    suite = AttackSuite("custom", tuple(attacks), **params)
    return engine.run(model, x, y, ids=ids, betas=betas, seed=seed, threat=threat, eps=eps, suite=suite,
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
    eng = FastEngine(block_size=8)
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
    # beta-batching off: one call per beta, with the engine's default block (on CPU min(batch size, 16))
    eng_default = FastEngine()
    together = _cat([_run(eng_default, model, X, Y, I, B, 16, threat, eps)])
    apart = _cat([_run(eng_default, model, X[sel], Y[sel], I[sel], B[sel], 16, threat, eps)
                  for sel in (B == b for b in BETAS)])
    _assert_same(together, apart, "betas batched vs one call per beta")


@pytest.mark.parametrize("threat,radii", [("Linf", (0.06, 0.08, 0.04, 0.1)), ("L2", (0.3, 0.4, 0.2, 0.5))],
                         ids=["Linf", "L2"])
def test_speculative_phases_change_steps_not_outcomes(ct_digits, threat, radii):
    """Later target classes run in the padding of the last block: same flags, attack and points, fewer steps."""
    model, x, y = ct_digits
    X, Y, I, B = _rows(x, y, 6, [1.0, 0.8])  # 12 rows in blocks of 16: 4+ padding slots from the start
    kw = dict(n_iter=6, n_target_classes=4)
    attacks = ["apgd-t", "fab-t"]
    for eps in radii:  # a radius where targets beyond the first matter (weights vary slightly by CPU)
        on, off = FastEngine(block_size=16), FastEngine(block_size=16, speculate=False)
        a = _run(on, model, X, Y, I, B, 64, threat, eps, attacks=attacks, params=kw)
        b = _run(off, model, X, Y, I, B, 64, threat, eps, attacks=attacks, params=kw)
        _assert_same(_cat([a]), _cat([b]), "speculation on vs off")
        steps_on = {k: v["steps"] for k, v in on.last_stats["attacks"].items()}
        steps_off = {k: v["steps"] for k, v in off.last_stats["attacks"].items()}
        if a.robust.any() and steps_on != steps_off:
            break
    else:
        pytest.fail(f"no radius in {radii} leaves robust rows with several targets to try")
    assert all(steps_on[k] <= steps_off[k] for k in steps_off) and sum(steps_on.values()) < sum(steps_off.values())
    # without speculation every target of a robust row runs after the previous one: n_iter steps each
    assert steps_off["apgd-t"] >= kw["n_iter"] * kw["n_target_classes"]


def _chain_case(model, x, y, radii, threat="Linf"):
    """Rows, attacks, radius and budget where each of two chained APGD attacks breaks some rows and some
    rows stay robust (the first found over a few orders and budgets: trained weights vary by CPU)."""
    X, Y, I, B = _rows(x, y, 6, [1.0, 0.8])  # 12 rows in blocks of 16
    for attacks in (["apgd-ce", "apgd-t"], ["apgd-t", "apgd-ce"], ["apgd-dlr", "apgd-ce"]):
        for n_iter in (6, 3):
            kw = dict(n_iter=n_iter, n_target_classes=4)
            for eps in radii:
                out = _run(FastEngine(block_size=16, chain=False), model, X, Y, I, B, 64, threat, eps,
                           attacks=attacks, params=kw)
                if set(attacks) <= set(out.broken_by) and out.robust.any():
                    return (X, Y, I, B), attacks, eps, kw
    pytest.fail(f"no radius in {radii} has rows broken by each of two APGD attacks and robust ones")


@pytest.mark.parametrize("threat,radii", [("Linf", (0.07, 0.1, 0.11, 0.08, 0.09, 0.06, 0.12)),
                                          ("L2", (0.5, 0.6, 0.4, 0.3, 0.7))], ids=["Linf", "L2"])
def test_chained_apgd_changes_steps_not_outcomes(ct_digits, threat, radii):
    """Consecutive APGD attacks run as one chain (the second's phases in the first's padding): same flags,
    attack and points as one attack after the other, and fewer steps in all."""
    model, x, y = ct_digits
    (X, Y, I, B), attacks, eps, kw = _chain_case(model, x, y, radii, threat)
    runs = {}
    for label, eng in {"chain": FastEngine(block_size=16), "apart": FastEngine(block_size=16, chain=False),
                       "plain": FastEngine(block_size=16, speculate=False)}.items():
        runs[label] = (_cat([_run(eng, model, X, Y, I, B, 64, threat, eps, attacks=attacks, params=kw)]),
                       eng.last_stats["attacks"])
    _assert_same(runs["chain"][0], runs["apart"][0], "chained vs one attack after the other")
    _assert_same(runs["chain"][0], runs["plain"][0], "chained vs no speculation")
    chained, apart = runs["chain"][1], runs["apart"][1]
    assert chained[attacks[0]]["chain"] == "+".join(attacks) and "chain" not in apart[attacks[0]]
    for name in attacks:  # the per-attack bookkeeping stays that of the sequential order
        assert (chained[name]["rows"], chained[name]["broken"]) == (apart[name]["rows"], apart[name]["broken"])
    steps = {k: sum(v["steps"] for v in r[1].values()) for k, r in runs.items()}
    # the chain's steps overlap (the second attack runs during the first): its length is its longest
    # segment, less than one attack after the other
    assert max(v["steps"] for v in chained.values()) < steps["apart"] <= steps["plain"]


def test_chained_attack_reruns_later_attacks_of_a_row_whose_point_failed_verification(ct_digits, monkeypatch):
    """A randomized model can make a found point fail verification: the row stays robust and must still go
    through the later attacks, which the chain had dropped for it; outcomes equal the sequential order."""
    model, x, y = ct_digits
    (X, Y, I, B), attacks, eps, kw = _chain_case(model, x, y, (0.07, 0.1, 0.11, 0.08, 0.09, 0.06, 0.12))
    real = FastEngine._record
    voided = []

    def flaky(self, name, ctx, rows, hit, xa, *rest):
        if name == attacks[0] and bool(hit.any()):  # the first point found "fails verification"
            first = int(hit.nonzero()[0, 0])
            hit = hit.clone()
            hit[first] = False
            voided.append(int(rows[first]))
            return np.concatenate([real(self, name, ctx, rows, hit, xa, *rest), [int(rows[first])]])
        return real(self, name, ctx, rows, hit, xa, *rest)

    monkeypatch.setattr(FastEngine, "_record", flaky)
    chained = FastEngine(block_size=16)
    a = _cat([_run(chained, model, X, Y, I, B, 64, "Linf", eps, attacks=attacks, params=kw)])
    b = _cat([_run(FastEngine(block_size=16, chain=False), model, X, Y, I, B, 64, "Linf", eps,
                   attacks=attacks, params=kw)])
    assert len(voided) == 2 and voided[0] == voided[1]
    _assert_same(a, b, "chained vs sequential with a voided point")
    assert a[2][voided[0]] != attacks[0]
    # the rerun is counted: the second attack's entry covers the voided row
    second = chained.last_stats["attacks"][attacks[1]]
    assert second["rows"] == int((a[2] == attacks[1]).sum() + a[1].sum())


class _BatchDependent(nn.Module):
    """Logits whose last bits depend on the batch size unless it is a multiple of 4 (as kernels chosen by
    shape do)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(64, 10) / 8)

    def forward(self, x):
        z = x.flatten(1) @ self.w
        return z * (1.0 + 1e-6 * float(x.shape[0] % 4 != 0))


class _Elementwise(nn.Module):
    def forward(self, x):
        return torch.relu(x.flatten(1)[:, :10] * 3.0 - 1.0)


def test_invariant_grain_finds_the_shapes_at_which_numerics_match_a_full_block():
    from ctrobust.engines.fast._caller import invariant_grain

    torch.manual_seed(0)
    x, b = torch.rand(5, 1, 8, 8), torch.ones(5, dtype=torch.float64)
    assert invariant_grain(_BatchDependent().eval(), x, b, 16) == 4
    assert invariant_grain(_Elementwise().eval(), x, b, 16) == 1
    assert invariant_grain(_Elementwise().eval(), x, b, 1) == 1


def test_padding_to_the_invariant_grain_changes_cost_not_outcomes(ct_digits):
    """Short blocks padded only to the probed grain: same flags, attack and points as full blocks, less
    padding; a model whose numerics depend on the batch size keeps full blocks."""
    model, x, y = ct_digits
    X, Y, I, B = _rows(x, y, 6, [1.0, 0.8])  # 12 rows in blocks of 16: every call is short
    kw = dict(n_iter=6, n_target_classes=4)
    on, off = FastEngine(block_size=16), FastEngine(block_size=16, probe_shapes=False)
    a = _run(on, model, X, Y, I, B, 64, "Linf", 0.08, attacks=["apgd-ce", "apgd-t"], params=kw)
    b = _run(off, model, X, Y, I, B, 64, "Linf", 0.08, attacks=["apgd-ce", "apgd-t"], params=kw)
    _assert_same(_cat([a]), _cat([b]), "probed grain vs full blocks")
    assert off.last_stats["grain"] == 16
    grain = on.last_stats["grain"]
    assert 16 % grain == 0
    if grain < 16:
        assert on.last_stats["padded_rows"] < off.last_stats["padded_rows"]
    dep = FastEngine(block_size=16)
    _run(dep, _BatchDependent().eval(), X, Y, I, torch.ones_like(B), 64, "Linf", 0.08,
         attacks=["apgd-ce"], params=kw)
    assert dep.last_stats["grain"] == 4


class _ScriptedAttack(Attack):
    """An attack whose phases succeed or fail on a script: ``plan[row][phase]`` is the step (1-based, counted
    within the phase) at which that phase finds a point, or 0 if it fails after ``n_iter`` steps. The point
    found is the image filled with ``10 * row + phase``, so the winning phase can be read back."""

    name = "scripted"

    def __init__(self, plan, n_iter):
        self.plan, self.n_iter, self.n_phases = torch.as_tensor(plan), n_iter, len(plan[0])

    def start(self, ctx, rows, phase):
        return RowState(rows=rows, phase=phase, it=torch.zeros_like(rows))

    def step(self, ctx, st):
        it = st["it"] + 1
        st["it"] = it
        when = self.plan[st["rows"], st["phase"]]
        broken = (when > 0) & (when == it)
        x_eval = (10.0 * st["rows"] + st["phase"]).float().reshape(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
        return broken, x_eval, (it >= self.n_iter) & ~broken


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_speculative_phases_keep_the_sequential_winner(batch_size):
    """Driver semantics with a scripted attack: a later phase that succeeds first must not win over an
    earlier phase that also succeeds; rows with no successful phase stay robust."""
    plan = [[5, 1, 0, 2],   # phase 1 succeeds first, but phase 0 succeeds too: phase 0 wins
            [0, 0, 3, 1],   # phase 3 succeeds first, phase 2 later: phase 2 wins
            [0, 0, 0, 0],   # robust
            [0, 4, 0, 0]]   # only phase 1
    ctx = SimpleNamespace(x=torch.zeros(4, 1, 2, 2), caller=SimpleNamespace(block=8, fixed_shape=True))
    rows = torch.arange(4)
    res_seq = run_attack(_ScriptedAttack(plan, 6), ctx, rows, batch_size, speculate=False)
    res_spec = run_attack(_ScriptedAttack(plan, 6), ctx, rows, batch_size, speculate=True)
    for res in (res_seq, res_spec):
        assert res.broken.tolist() == [True, True, False, True]
        assert res.x_adv[:, 0, 0, 0].tolist() == [0.0, 12.0, 0.0, 31.0]  # clean (zeros) where robust
    # speculation fills free slots only (batch_size caps the rows in flight): none with one row in flight
    assert res_spec.steps < res_seq.steps if batch_size > 1 else res_spec.steps == res_seq.steps
    # and only padding that fixed-shape blocks compute anyway
    ctx.caller.fixed_shape = False
    assert run_attack(_ScriptedAttack(plan, 6), ctx, rows, batch_size, speculate=True).steps == res_seq.steps


def test_outcome_contract_and_per_row_beta(ct_digits):
    model, x, y = ct_digits
    betas = [1.0, 0.1]  # beta = 0.1 changes clean predictions of this CNN
    X, Y, I, B = _rows(x, y, 40, betas)
    eng = FastEngine()
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
    eng = FastEngine()
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
    rand = parse_suite("rand")
    assert rand.attacks == ("apgd-ce", "apgd-dlr") and rand.eot_iter == 20
    # a model in train mode is attacked in eval mode and given back as it was
    model.train()
    req = [p.requires_grad for p in model.parameters()]
    out = _run(FastEngine(), model, X, Y, I, B, 4, attacks=["apgd-ce"])
    assert model.training and [p.requires_grad for p in model.parameters()] == req
    assert any("train mode" in w for w in out.warnings)
    model.eval()


def test_the_per_row_betas_do_not_outlive_a_run(ct_digits):
    """After a run the model is at the beta it had before: a forward of another batch size works, and one
    of the block's size does not silently run at the last block's per-row betas."""
    model, x, y = ct_digits
    set_beta(model, 1.0)
    with torch.no_grad():
        before = model(x[:5])
    X, Y, I, B = _rows(x, y, 6, [0.7, 0.8])
    _run(FastEngine(block_size=4), model, X, Y, I, B, 4, attacks=["apgd-ce"])
    assert get_beta(model).dim() == 0 and float(get_beta(model)) == 1.0
    with torch.no_grad():
        assert torch.equal(model(x[:5]), before)
        model(x[:4])  # the block's size: would have run at per-row betas 0.7/0.8
