"""Tests of ctrobust.ct: the CT activation, its coverage of every form of ReLU, and per-example beta.

Issue 2 ("Done when"): phi's limits and branches, gradients, validation, coverage of each ReLU form on
tiny models, model plumbing (no_grad, grads, .to, deepcopy, wrappers), no mutation of the original,
per-example beta, the two reference networks (pyautoattack ResNet-18, RobustBench Standard WRN-28-10)
and activation_curves. Then: every kernel path on the same inputs (``fused`` only on CUDA), the typed
``Coverage`` (verdict, legacy dict), and the ``modules`` scope of the CT reference code.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.functional import relu as relu_alias  # bound at import time, before any apply_ct

from ctrobust._registry import UnknownNameError
from ctrobust.ct import (
    EPS,
    KERNEL_PATHS,
    SCOPES,
    VERDICTS,
    Coverage,
    CTActivation,
    CTCoverageError,
    CTModel,
    activation_curves,
    apply_ct,
    beta_context,
    ct_coverage,
    ct_phi,
    get_beta,
    get_kernel_path,
    kernel_path,
    set_beta,
    set_kernel_path,
)

# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------


def plain_phi(x: torch.Tensor, beta: float, c: float = 0.5) -> torch.Tensor:
    """The CT formula written out, differentiated by autograd (threshold 50: exact in float64)."""
    d = 1.0 - beta + EPS
    return c * torch.sigmoid(beta * x / d) * x + (1.0 - c) * d * F.softplus(x / d, threshold=50)


def grid(lo=-10.0, hi=10.0, n=4001, dtype=torch.float64):
    return torch.linspace(lo, hi, n, dtype=dtype)


def input_grad(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).square().sum(), x)
    return g


# ---------------------------------------------------------------------------------------------------
# phi
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_phi_near_one_is_relu(dtype):
    x = grid(dtype=dtype)
    out = ct_phi(x, 1 - 1e-9)
    assert out.dtype == dtype
    assert (out - F.relu(x)).abs().max().item() < 1e-5
    assert torch.equal(ct_phi(x, 1.0), F.relu(x))  # beta = 1 is ReLU bit for bit


def test_curvature_shrinks_as_beta_decreases():
    # max |phi''| from finite differences of the analytic derivative (the custom backward), float64
    x = grid(-1.0, 1.0, 40001)
    curves = activation_curves([0.99, 0.95, 0.9, 0.7, 0.5, 0.3, 0.1], x=x)
    h = float(x[1] - x[0])
    curv = [float(np.abs(np.diff(curves["dphi"][b])).max() / h) for b in [0.99, 0.95, 0.9, 0.7, 0.5, 0.3, 0.1]]
    assert all(a > b for a, b in zip(curv, curv[1:])), curv
    assert curv[0] > 10 * curv[-1]
    # and the analytic second derivative (double backward) agrees with the finite differences
    xs = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ct_phi(xs, 0.9).sum(), xs, create_graph=True)
    (g2,) = torch.autograd.grad(g.sum(), xs)
    assert abs(g2.abs().max().item() - curv[2]) / curv[2] < 1e-3


@pytest.mark.parametrize("beta", [1e-6, 0.3, 0.7, 0.9, 0.99, 1 - 1e-6])
def test_c_branches_match_direct_formulas(beta):
    x = grid(-20, 20, 8001)
    d = 1.0 - beta + EPS
    # c = 1: sigmoid(beta x / d) x ; c = 0: d softplus(x / d)
    torch.testing.assert_close(ct_phi(x, beta, 1.0), torch.sigmoid(beta * x / d) * x, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(ct_phi(x, beta, 0.0), d * F.softplus(x / d, threshold=50), atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(ct_phi(x, beta, 0.3), plain_phi(x, beta, 0.3), atol=1e-10, rtol=1e-9)
    # float32 agrees with the float64 formula to float32 precision
    x32 = x.float()
    for c in (0.0, 0.5, 1.0):
        err = (ct_phi(x32, beta, c).double() - plain_phi(x, beta, c)).abs() / (1 + x.abs())
        assert err.max().item() < 1e-6, (c, err.max().item())


@pytest.mark.parametrize("beta", [1e-6, 0.5, 0.99, 1 - 1e-6, 1.0])
@pytest.mark.parametrize("c", [0.0, 0.5, 1.0])
def test_gradients_finite_on_large_float32_inputs(beta, c):
    x = torch.cat([torch.linspace(-1e4, 1e4, 20001), torch.tensor([0.0, -0.0, 1e-30, -1e-30])])
    act = CTActivation(beta, c)
    xs = x.clone().requires_grad_(True)
    y = act(xs)
    (g,) = torch.autograd.grad(y.sum(), xs)
    assert torch.isfinite(y).all() and torch.isfinite(g).all()
    # phi' is bounded: between min silu' (~ -0.1) and its max (~1.1)
    assert g.min().item() > -0.2 and g.max().item() < 1.2
    # far tails: phi(x) -> relu(x), phi'(x) -> step(x)
    assert g[0].abs().item() < 1e-3 or beta < 1e-3
    assert abs(g[20000].item() - 1.0) < 1e-3 or beta < 1e-3


def test_per_example_gradients_finite_on_large_inputs():
    betas = torch.tensor([1e-6, 0.5, 0.99, 1 - 1e-6, 1.0])
    x = torch.linspace(-1e4, 1e4, 5 * 4001).reshape(5, 4001).requires_grad_(True)
    y = ct_phi(x, betas)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(y).all() and torch.isfinite(g).all()


@pytest.mark.parametrize("beta", [0.2, 0.7, 0.95])
@pytest.mark.parametrize("c", [0.0, 0.5, 1.0])
def test_analytic_backward_matches_autograd(beta, c):
    x = torch.randn(64, dtype=torch.float64) * 3
    assert torch.autograd.gradcheck(lambda t: ct_phi(t, beta, c), (x.clone().requires_grad_(True),))
    xs = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ct_phi(xs, beta, c).sum(), xs)
    xr = x.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(plain_phi(xr, beta, c).sum(), xr)
    torch.testing.assert_close(g, gr, atol=1e-12, rtol=1e-9)


def test_per_example_and_leaky_backward_gradcheck():
    x = (torch.randn(4, 6, dtype=torch.float64) * 3).requires_grad_(True)
    betas = torch.tensor([1.0, 0.9, 0.6, 0.3], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: ct_phi(t, betas, 0.5, 0.1), (x,))
    assert torch.autograd.gradcheck(lambda t: ct_phi(t, 0.8, 0.5, 0.2), (x,))
    assert torch.autograd.gradgradcheck(lambda t: ct_phi(t, betas), (x,))


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.1, float("nan"), "abc", torch.ones(2, 2) * 0.5,
                                 torch.tensor([0.5, 1.5]), torch.tensor([])])
def test_invalid_beta_rejected(bad):
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with pytest.raises(ValueError):
        apply_ct(net, bad)
    with pytest.raises(ValueError):
        CTActivation(bad)
    with pytest.raises(ValueError):
        ct_phi(torch.zeros(2), bad)
    ct = apply_ct(net, 0.9)
    with pytest.raises(ValueError):
        set_beta(ct, bad)
    assert float(get_beta(ct)) == pytest.approx(0.9)  # unchanged by the failed call


@pytest.mark.parametrize("bad", [-0.1, 1.5, "abc", float("nan")])
def test_invalid_coeff_rejected(bad):
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with pytest.raises(ValueError):
        apply_ct(net, 0.9, coeff=bad)
    with pytest.raises(ValueError):
        CTActivation(0.9, bad)
    with pytest.raises(ValueError):
        ct_phi(torch.zeros(2), 0.9, bad)


def test_beta_and_coeff_are_buffers_not_parameters():
    act = CTActivation(0.8, 0.3)
    assert list(act.parameters()) == []
    assert set(dict(act.named_buffers())) == {"beta", "coeff"}
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    ct = apply_ct(net, 0.8)
    assert sum(p.numel() for p in ct.parameters()) == sum(p.numel() for p in net.parameters())
    assert all(n.endswith(("beta", "coeff")) for n, _ in ct.named_buffers())
    assert any(n.endswith("beta") for n in ct.state_dict())


def test_beta_buffer_changes_are_picked_up():
    # the activation caches host-side values of beta/coeff: every way of changing the buffers must show
    x = torch.linspace(-2, 2, 9)
    act = CTActivation(0.9)
    y09 = act(x)
    act.load_state_dict({"beta": torch.tensor(0.5), "coeff": torch.tensor(0.5)})
    torch.testing.assert_close(act(x), ct_phi(x, 0.5))
    with torch.no_grad():
        act.beta.fill_(0.9)
    torch.testing.assert_close(act(x), y09)
    act.coeff.fill_(1.0)
    torch.testing.assert_close(act(x), ct_phi(x, 0.9, 1.0))
    act.beta = torch.tensor(1.0)
    assert torch.equal(act(x), F.relu(x))


def test_leaky_activation_formula():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    act = CTActivation(0.75, negative_slope=0.1).double()  # 0.75: exact in the float32 buffer
    torch.testing.assert_close(act(x), 0.1 * x + 0.9 * plain_phi(x, 0.75), atol=1e-10, rtol=1e-9)
    assert torch.equal(CTActivation(1.0, negative_slope=0.1)(x), F.leaky_relu(x, 0.1))


def test_inplace_activation_writes_into_input():
    act = CTActivation(0.8, inplace=True)
    base = torch.randn(4, 5)
    x = base.clone()
    out = act(x)
    assert out is x
    torch.testing.assert_close(x, ct_phi(base, 0.8))
    # with autograd: the input tensor holds the result and the gradient is phi'
    leaf = base.clone().requires_grad_(True)
    h = leaf * 1.0
    out = act(h)
    assert out is h
    (g,) = torch.autograd.grad(out.sum(), leaf)
    ref = base.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(ct_phi(ref, 0.8).sum(), ref)
    torch.testing.assert_close(g, gr)


# ---------------------------------------------------------------------------------------------------
# coverage of every form of ReLU (tiny models)
# ---------------------------------------------------------------------------------------------------


class FuncNet(nn.Module):
    """Linear -> act -> Linear -> act -> Linear, the activation called in one functional form."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.l1, self.l2, self.l3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def act(self, h):
        f = self.form
        if f == "F.relu":
            return F.relu(h)
        if f == "F.relu(inplace)":
            return F.relu(h, inplace=True)
        if f == "F.relu_":
            return F.relu_(h)
        if f == "torch.relu":
            return torch.relu(h)
        if f == "torch.relu_":
            return torch.relu_(h)
        if f == "x.relu()":
            return h.relu()
        if f == "x.relu_()":
            h.relu_()  # relies on the in-place semantics: the result is read from h
            return h
        if f == "alias":
            return relu_alias(h)
        raise AssertionError(f)

    def forward(self, x):
        return self.l3(self.act(self.l2(self.act(self.l1(x)))))


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(2)])
        self.heads = nn.ModuleDict({"a": nn.Sequential(nn.ReLU(), nn.Linear(16, 4))})

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = b(h)
        return self.heads["a"](h)


class Reused(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.l3(self.act(self.l2(self.act(self.l1(x)))) + self.act(x).sum(1, keepdim=True))


def _module_net(inplace=False):
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=inplace), nn.Linear(16, 16), nn.ReLU(inplace=inplace),
                         nn.Linear(16, 4))


FORMS = {  # name -> (builder, expected relu_modules, expected relu_functional)
    "nn.ReLU": (lambda: _module_net(), 2, 0),
    "nn.ReLU(inplace)": (lambda: _module_net(True), 2, 0),
    "reused instance": (Reused, 3, 0),
    "nested containers": (Nested, 3, 0),
    **{f: ((lambda f=f: FuncNet(f)), 0, 2) for f in
       ["F.relu", "F.relu(inplace)", "F.relu_", "torch.relu", "torch.relu_", "x.relu()", "x.relu_()", "alias"]},
}


def _build(form):
    torch.manual_seed(0)
    builder, n_mod, n_fun = FORMS[form]
    return builder().eval(), n_mod, n_fun


@pytest.mark.parametrize("form", list(FORMS))
def test_coverage_each_relu_form(form):
    net, n_mod, n_fun = _build(form)
    x = torch.randn(5, 8)
    cov = ct_coverage(net, x)
    assert cov.to_dict() == {"relu_modules": n_mod, "relu_functional": n_fun, "leaky_relu": 0, "missed": 0,
                             "unsupported": {}}
    assert cov.verdict == "full" and cov.tuned == n_mod + n_fun and cov.untouched == 0
    with torch.no_grad():
        ref = net(x)
        tuned = apply_ct(net, 0.7)(x)
        same = apply_ct(net, 1.0)(x)
    assert not torch.allclose(tuned, ref, atol=1e-4)
    assert torch.equal(same, ref)
    # also with autograd enabled (the in-place forms go through the custom Function's in-place path)
    g = input_grad(apply_ct(net, 0.7), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert torch.equal(input_grad(apply_ct(net, 1.0), x), input_grad(net, x))


def test_reused_instance_stays_shared():
    ct = apply_ct(Reused(), 0.8)
    acts = [m for m in ct.net.modules() if isinstance(m, CTActivation)]
    assert len(acts) == 1 and ct.net.act is acts[0]


class LeakyNet(nn.Module):
    def __init__(self, functional: bool):
        super().__init__()
        self.functional = functional
        self.l1, self.l2, self.l3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x):
        a = (lambda h: F.leaky_relu(h, 0.1)) if self.functional else self.act
        return self.l3(a(self.l2(a(self.l1(x)))))


@pytest.mark.parametrize("functional", [False, True])
def test_leaky_relu_module_and_functional(functional):
    torch.manual_seed(0)
    net = LeakyNet(functional).eval()
    x = torch.randn(5, 8)
    cov = ct_coverage(net, x)
    assert cov.leaky_relu == 2 and cov.missed == 0 and cov.relu_modules + cov.relu_functional == 0
    with torch.no_grad():
        assert torch.equal(apply_ct(net, 1.0)(x), net(x))
        out = apply_ct(net, 0.7)(x)
        # reference: the same network with a * x + (1 - a) * phi(x) written out
        h = net.l1(x)
        h = 0.1 * h + 0.9 * plain_phi(h, 0.7)
        h = net.l2(h)
        h = 0.1 * h + 0.9 * plain_phi(h, 0.7)
        ref = net.l3(h)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, net(x), atol=1e-4)


class SiLUNet(nn.Module):
    def __init__(self, functional: bool):
        super().__init__()
        self.functional = functional
        self.l1, self.l2 = nn.Linear(8, 8), nn.Linear(8, 4)
        self.act1, self.act2 = nn.SiLU(), nn.SiLU()

    def forward(self, x):
        if self.functional:
            return self.l2(F.silu(self.l1(F.silu(x))))
        return self.l2(self.act2(self.l1(self.act1(x))))


@pytest.mark.parametrize("functional", [False, True])
def test_silu_only_model_refused(functional):
    net = SiLUNet(functional).eval()
    x = torch.randn(2, 8)
    cov = ct_coverage(net, x)
    assert cov.unsupported == {"SiLU": 2} and cov.verdict == "none" and cov.tuned == 0
    with pytest.raises(CTCoverageError, match="SiLU x 2"):
        apply_ct(net, 0.9, example_input=x)
    # without an example input: refused at apply_ct (modules) or at the first forward (functional)
    with pytest.raises(CTCoverageError, match="SiLU x 2"):
        apply_ct(net, 0.9)(x)
    assert issubclass(CTCoverageError, ValueError)


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


def test_custom_swish_counted_as_unsupported():
    net = nn.Sequential(nn.Linear(8, 8), Swish(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), Swish())
    x = torch.randn(2, 8)
    cov = ct_coverage(net, x)
    assert cov.unsupported == {"Swish": 2} and cov.relu_modules == 1 and cov.missed == 0
    assert cov.verdict == "partial"
    swish_only = nn.Sequential(nn.Linear(8, 8), Swish(), nn.Linear(8, 8), Swish())
    with pytest.raises(CTCoverageError, match="Swish x 2"):
        apply_ct(swish_only, 0.9, example_input=x)
    with pytest.raises(CTCoverageError):
        apply_ct(swish_only, 0.9)(x)


def test_function_mode_does_not_leak():
    net = FuncNet("F.relu")
    ct = apply_ct(net, 0.5)
    ct(torch.randn(2, 8))
    x = torch.randn(10)
    assert torch.equal(F.relu(x), x.clamp_min(0))  # outside the forward, relu is relu again
    assert not torch._C._is_torch_function_mode_enabled()


# ---------------------------------------------------------------------------------------------------
# model plumbing
# ---------------------------------------------------------------------------------------------------


class ConvNet(nn.Module):
    """A tiny image model mixing module and functional ReLUs, with BatchNorm (train/eval matters)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        h = self.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.conv2(h))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


class Normalized(nn.Module):
    def __init__(self, net, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26)):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


class NormalizeLayer(Normalized):
    def __init__(self):
        super().__init__(nn.Identity())


@pytest.fixture()
def convnet():
    torch.manual_seed(0)
    net = ConvNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        net.bn1.running_mean.uniform_(-0.2, 0.2)
        net.bn1.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_no_grad_and_input_gradients(convnet):
    x = torch.rand(3, 3, 8, 8)
    ct = apply_ct(convnet, 0.8)
    with torch.no_grad():
        a = ct(x)
    b = ct(x)
    torch.testing.assert_close(a, b.detach())
    g = input_grad(ct, x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert not torch.allclose(g, input_grad(convnet, x))


def test_to_device_and_dtype(convnet):
    x = torch.rand(2, 3, 8, 8)
    ct = apply_ct(convnet, 0.8)
    ref = ct(x)
    moved = ct.to(torch.device("cpu"))
    torch.testing.assert_close(moved(x), ref)
    ct64 = copy.deepcopy(ct).double()
    torch.testing.assert_close(ct64(x.double()).float(), ref, atol=1e-5, rtol=1e-5)
    assert get_beta(ct64).dtype == torch.float64


def test_deepcopy_is_independent(convnet):
    x = torch.rand(2, 3, 8, 8)
    ct = apply_ct(convnet, 0.8)
    with torch.no_grad():
        ref = ct(x)
        dup = copy.deepcopy(ct)
        torch.testing.assert_close(dup(x), ref)
        set_beta(dup, 0.5)
        assert not torch.allclose(dup(x), ref)
        assert torch.equal(ct(x), ref)
    assert float(get_beta(ct)) == pytest.approx(0.8)
    assert float(get_beta(dup)) == pytest.approx(0.5)


def test_state_dict_and_pickle_round_trip(convnet, tmp_path):
    x = torch.rand(2, 3, 8, 8)
    ct = apply_ct(convnet, 0.8)
    with torch.no_grad():
        ref = ct(x)
        other = apply_ct(convnet, 0.5)
        other(x)  # caches derived values for beta = 0.5, which the load must invalidate
        other.load_state_dict(ct.state_dict())
        torch.testing.assert_close(other(x), ref)
        path = tmp_path / "ct.pt"
        torch.save(ct, path)
        loaded = torch.load(path, weights_only=False)
        torch.testing.assert_close(loaded(x), ref)


@pytest.mark.parametrize("wrap", ["module", "sequential"])
def test_wrapped_models(convnet, wrap):
    model = Normalized(convnet) if wrap == "module" else nn.Sequential(NormalizeLayer(), convnet)
    model.eval()
    x = torch.rand(2, 3, 8, 8)
    cov = ct_coverage(model, x)
    assert (cov.relu_modules, cov.relu_functional, cov.missed) == (1, 1, 0)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(apply_ct(model, 1.0)(x), ref)
        assert not torch.allclose(apply_ct(model, 0.7)(x), ref, atol=1e-4)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_original_model_untouched(convnet, mode):
    convnet.train(mode == "train")
    x = torch.rand(4, 3, 8, 8)
    before = copy.deepcopy(convnet.state_dict())
    with torch.no_grad():
        out_before = convnet.eval()(x)
    convnet.train(mode == "train")
    ct = apply_ct(convnet, 0.6)
    assert ct.training == (mode == "train") and convnet.training == (mode == "train")
    assert isinstance(ct, CTModel) and ct.net is not convnet
    assert not any(isinstance(m, CTActivation) for m in convnet.modules())
    after = convnet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(convnet.eval()(x), out_before)
    with pytest.raises(ValueError, match="already"):
        apply_ct(ct, 0.5)


def test_per_example_beta(convnet):
    x = torch.rand(3, 3, 8, 8)
    betas = torch.tensor([1.0, 0.9, 0.8])
    ct = apply_ct(convnet, 0.5)
    set_beta(ct, betas)
    with torch.no_grad():
        out = ct(x)
        ref = convnet(x)
        assert torch.equal(out[0], ref[0])
        for i, b in enumerate(betas.tolist()):
            torch.testing.assert_close(out[i], apply_ct(convnet, b)(x)[i], atol=1e-6, rtol=1e-5)
    # gradients per row equal the scalar-beta gradients
    g = input_grad(ct, x)
    for i, b in enumerate(betas.tolist()):
        torch.testing.assert_close(g[i], input_grad(apply_ct(convnet, b), x)[i], atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match="per-example beta has 4 entries"):
        set_beta(ct, torch.tensor([1.0, 0.9, 0.8, 0.7]))
        ct(x)
    with pytest.raises(ValueError):
        set_beta(ct, torch.tensor([0.9, 0.0, 0.8]))


def test_set_beta_copies_and_beta_context(convnet):
    x = torch.rand(2, 3, 8, 8)
    ct = apply_ct(convnet, 0.9)
    betas = torch.tensor([0.6, 0.7])
    set_beta(ct, betas)
    with torch.no_grad():
        out = ct(x)
        betas.fill_(0.99)  # editing the caller's tensor afterwards does not change the model
        assert torch.equal(ct(x), out)
        with beta_context(ct, 1.0):
            assert torch.equal(ct(x), convnet(x))
        assert torch.equal(ct(x), out)
    with pytest.raises(ValueError, match="no CT activation"):
        set_beta(convnet, 0.5)


# ---------------------------------------------------------------------------------------------------
# reference networks
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18():
    from ctrobust.models import load_model

    # pyautoattack's examples/model_test.pt: its forward calls F.relu 17 times, no nn.ReLU modules.
    return load_model("bundled/resnet18-cifar10")


@pytest.fixture(scope="module")
def wrn_standard():
    from ctrobust._compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import cifar10

    torch.manual_seed(0)
    return cifar10.linf["Standard"]["model"]().eval()


def test_pyautoattack_resnet18(resnet18):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cov = ct_coverage(resnet18, x[:1])
    assert cov.to_dict() == {"relu_modules": 0, "relu_functional": 17, "leaky_relu": 0, "missed": 0,
                             "unsupported": {}}
    # the CT reference code's scope (modules only) leaves every ReLU of this network untouched
    ref_scope = ct_coverage(resnet18, x[:1], scope="modules")
    assert (ref_scope.tuned, ref_scope.untouched, ref_scope.missed, ref_scope.verdict) == (0, 17, 0, "none")
    ct = apply_ct(resnet18, 1.0)
    with torch.no_grad():
        ref = resnet18(x)
        assert torch.equal(ct(x), ref)
        set_beta(ct, 0.8)
        assert (ct(x) - ref).abs().max().item() > 1e-3
        set_beta(ct, torch.tensor([1.0, 0.8]))
        out = ct(x)
        assert torch.equal(out[0], ref[0]) and (out[1] - ref[1]).abs().max().item() > 1e-3


def test_robustbench_standard_wrn(wrn_standard):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cov = ct_coverage(wrn_standard, x)
    assert cov.to_dict() == {"relu_modules": 25, "relu_functional": 0, "leaky_relu": 0, "missed": 0,
                             "unsupported": {}}


# ---------------------------------------------------------------------------------------------------
# curves
# ---------------------------------------------------------------------------------------------------


def test_activation_curves():
    res = activation_curves([0.5, 0.9, 1 - 1e-7])
    assert res["x"].shape == (401,)
    assert set(res["phi"]) == set(res["dphi"]) == {0.5, 0.9, 1 - 1e-7}
    for b in res["phi"]:
        assert res["phi"][b].shape == res["dphi"][b].shape == (401,)
    x = res["x"]
    assert np.abs(res["phi"][1 - 1e-7] - np.maximum(x, 0)).max() < 1e-5
    away = np.abs(x) > 1e-3
    assert np.abs(res["dphi"][1 - 1e-7][away] - (x[away] > 0)).max() < 1e-5
    custom = activation_curves([0.7], x=[-1.0, 0.0, 2.0], coeff=0.2)
    assert custom["x"].shape == (3,) and custom["phi"][0.7].shape == (3,)
    np.testing.assert_allclose(custom["phi"][0.7], plain_phi(torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64),
                                                             0.7, 0.2).numpy(), atol=1e-12)
    with pytest.raises(ValueError):
        activation_curves([1.5])


# ---------------------------------------------------------------------------------------------------
# kernel paths: the same inputs through every path
# ---------------------------------------------------------------------------------------------------

# (path, device): every path on the CPU; on a CUDA device also fused (its only home) and the other two
PATH_DEVICES = [
    pytest.param("aten", "cpu", id="aten-cpu"),
    pytest.param("formula", "cpu", id="formula-cpu"),
    pytest.param("fused", "cuda", id="fused-cuda", marks=pytest.mark.gpu),
    pytest.param("aten", "cuda", id="aten-cuda", marks=pytest.mark.gpu),
    pytest.param("formula", "cuda", id="formula-cuda", marks=pytest.mark.gpu),
]
PATH_BETAS = [1e-6, 0.01, 0.3, 0.7, 0.9, 0.99, 0.999, 1 - 1e-6]
PATH_COEFFS = [0.0, 0.3, 0.5, 1.0]


def plain_ct(x: torch.Tensor, beta, c: float, a: float) -> torch.Tensor:
    """The written-out formula (float64 reference), LeakyReLU form included; beta may be per row."""
    if isinstance(beta, torch.Tensor):
        beta = beta.to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))
    d = 1.0 - beta + EPS
    phi = c * torch.sigmoid(beta * x / d) * x + (1.0 - c) * d * F.softplus(x / d, threshold=50)
    return a * x + (1.0 - a) * phi


def _path_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """float32 points (dense around 0, far tails, signed zeros, tiny values) and an upstream gradient."""
    x = torch.cat([torch.linspace(-30, 30, 6001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e3, -1e3, 1e4, -1e4])])
    up = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) + 0.5
    return x, up


def _value_and_grad(x, up, beta, c, a, path, dev):
    xs = x.to(dev).requires_grad_(True)
    y = ct_phi(xs, beta.to(dev) if isinstance(beta, torch.Tensor) else beta, c, a, kernel=path)
    (g,) = torch.autograd.grad(y, xs, up.to(dev))
    return y.detach().cpu(), g.cpu()


def _assert_float32_close(y, g, ref, gref, x):
    # phi grows like |x|: its float32 error is relative to 1 + |x|; phi' lies in [-0.1, 1.1]
    assert ((y.double() - ref) / (1 + x.double().abs())).abs().max().item() < 2e-6
    assert (g.double() - gref).abs().max().item() < 1e-5


@pytest.mark.parametrize("path, device", PATH_DEVICES)
@pytest.mark.parametrize("a", [0.0, 0.1])
def test_kernel_paths_agree_with_the_formula(path, device, a):
    x, up = _path_inputs()
    for beta in PATH_BETAS:
        xr = x.double().requires_grad_(True)
        for c in PATH_COEFFS:
            ref = plain_ct(xr, beta, c, a)
            (gref,) = torch.autograd.grad(ref, xr, up.double())
            y, g = _value_and_grad(x, up, beta, c, a, path, device)
            assert y.dtype == torch.float32 and torch.isfinite(y).all() and torch.isfinite(g).all()
            _assert_float32_close(y, g, ref.detach(), gref, x)
    # beta = 1 is the original op, bit for bit, values and gradients, on every path
    y, g = _value_and_grad(x, up, 1.0, 0.5, a, path, device)
    xr = x.clone().requires_grad_(True)
    base = F.leaky_relu(xr, a) if a else F.relu(xr)
    (gb,) = torch.autograd.grad(base, xr, up)
    assert torch.equal(y, base.detach()) and torch.equal(g, gb)


@pytest.mark.parametrize("path, device", PATH_DEVICES)
def test_kernel_paths_agree_per_example(path, device):
    betas = torch.tensor([1.0, 0.9, 0.3, 0.99, 1e-6, 1.0, 1 - 1e-6, 0.7])
    x = torch.linspace(-12, 12, 8 * 801).reshape(8, 801)
    up = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) + 0.5
    for a in (0.0, 0.2):
        y, g = _value_and_grad(x, up, betas, 0.4, a, path, device)
        xr = x.double().requires_grad_(True)
        ref = plain_ct(xr, betas.double(), 0.4, a)
        (gref,) = torch.autograd.grad(ref, xr, up.double())
        rows = betas < 1
        _assert_float32_close(y[rows], g[rows], ref.detach()[rows], gref[rows], x[rows])
        exact = F.leaky_relu(x[~rows], a) if a else F.relu(x[~rows])
        assert torch.equal(y[~rows], exact)


@pytest.mark.parametrize("path, device", PATH_DEVICES)
def test_kernel_paths_on_a_model(convnet, path, device):
    dev = torch.device(device)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    net = copy.deepcopy(convnet).to(dev)
    x = x.to(dev)
    # the reference runs on the same device (so convolutions round alike, TF32 or not) with another path
    other = "formula" if path != "formula" else "aten"
    for beta in (0.3, 0.9, 0.99, torch.tensor([1.0, 0.9, 0.5])):
        b = beta.to(dev) if isinstance(beta, torch.Tensor) else beta
        ct, ref = apply_ct(net, b, kernel=path), apply_ct(net, b, kernel=other)
        assert all(m.kernel == path for m in ct.modules() if isinstance(m, CTActivation))
        with torch.no_grad():
            torch.testing.assert_close(ct(x), ref(x), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(input_grad(ct, x), input_grad(ref, x), atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        assert torch.equal(apply_ct(net, 1.0, kernel=path)(x), net(x))


@pytest.mark.parametrize("path, device", PATH_DEVICES)
def test_kernel_paths_inplace(path, device):
    dev = torch.device(device)
    base = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)).to(dev) * 4
    act = CTActivation(0.8, inplace=True, kernel=path).to(dev)
    x = base.clone()
    assert act(x) is x
    torch.testing.assert_close(x, ct_phi(base, 0.8, kernel=path))
    leaf = base.clone().requires_grad_(True)
    h = leaf * 1.0
    assert act(h) is h
    (g,) = torch.autograd.grad(h.sum(), leaf)
    ref = base.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(ct_phi(ref, 0.8, kernel=path).sum(), ref)
    torch.testing.assert_close(g, gr)


def test_formula_path_double_backward_matches_aten():
    x = (torch.randn(4, 6, dtype=torch.float64) * 3).requires_grad_(True)
    betas = torch.tensor([1.0, 0.9, 0.6, 0.3], dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda t: ct_phi(t, betas, kernel="formula"), (x,))
    second = {}
    for path in ("aten", "formula"):
        (g,) = torch.autograd.grad(ct_phi(x, 0.8, 0.3, 0.1, kernel=path).sum(), x, create_graph=True)
        (second[path],) = torch.autograd.grad(g.sum(), x)
    torch.testing.assert_close(second["formula"], second["aten"], atol=1e-10, rtol=1e-8)


def _ran_custom_function(y: torch.Tensor) -> bool:
    return "_CTFunction" in type(y.grad_fn).__name__


def test_kernel_path_selection():
    assert KERNEL_PATHS == ("fused", "aten", "formula") and get_kernel_path() in KERNEL_PATHS
    x = torch.linspace(-3, 3, 61).requires_grad_(True)
    act = CTActivation(0.8)
    pinned = CTActivation(0.8, kernel="formula")
    assert "kernel=formula" in repr(pinned)
    before = get_kernel_path()
    with kernel_path("aten") as name:
        assert name == get_kernel_path() == "aten"
        assert _ran_custom_function(act(x)) and not _ran_custom_function(pinned(x))  # pinned wins
        with kernel_path("formula"):
            assert not _ran_custom_function(act(x))  # the cached spec follows the path
        assert _ran_custom_function(act(x))
    assert get_kernel_path() == before
    # "fused" on the CPU is the aten path, as before paths existed: same graph, same bits
    fused, aten = ct_phi(x, 0.8, kernel="fused"), ct_phi(x, 0.8, kernel="aten")
    assert _ran_custom_function(fused) and torch.equal(fused, aten)
    previous = set_kernel_path("formula")
    try:
        assert previous == before and get_kernel_path() == "formula"
        assert not _ran_custom_function(act(x)) and not _ran_custom_function(ct_phi(x, 0.8))
        with pytest.raises(RuntimeError, match="boom"), kernel_path("aten"):
            raise RuntimeError("boom")
        assert get_kernel_path() == "formula"  # restored after an error too
    finally:
        set_kernel_path(previous)


def test_kernel_path_default_from_environment(monkeypatch):
    from ctrobust.ct import _kernels

    for value, expected in (("0", "aten"), ("off", "aten"), ("1", "fused"), ("", "fused")):
        monkeypatch.setenv("CTROBUST_CT_FUSED", value)
        assert _kernels._initial_path() == expected
    monkeypatch.delenv("CTROBUST_CT_FUSED")
    assert _kernels._initial_path() == "fused"


@pytest.mark.parametrize("call", [
    lambda: set_kernel_path("fusd"),
    lambda: kernel_path("fusd").__enter__(),
    lambda: ct_phi(torch.zeros(2), 0.9, kernel="fusd"),
    lambda: CTActivation(0.9, kernel="fusd"),
    lambda: apply_ct(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), 0.9, kernel="fusd"),
])
def test_unknown_kernel_path_suggests(call):
    before = get_kernel_path()
    with pytest.raises(UnknownNameError, match="did you mean 'fused'"):
        call()
    assert get_kernel_path() == before
    assert issubclass(UnknownNameError, ValueError)


# ---------------------------------------------------------------------------------------------------
# the Coverage type
# ---------------------------------------------------------------------------------------------------


def _legacy_status(d: dict) -> str:
    """The rule models.coverage_table applied to the legacy dict (its "missed" status is a partial)."""
    if d["relu_modules"] + d["relu_functional"] + d["leaky_relu"] == 0:
        return "none"
    if d["missed"] or d["unsupported"]:
        return "partial"
    return "full"


def test_coverage_verdict_is_the_legacy_rule():
    import itertools

    for rm, rf, lk, mi, un in itertools.product((0, 2), (0, 3), (0, 1), (0, 1), ({}, {"SiLU": 1})):
        cov = Coverage(rm, rf, lk, mi, un)
        assert cov.verdict == _legacy_status(cov.to_dict()) and cov.verdict in VERDICTS
        assert cov.tuned == rm + rf + lk and cov.untouched == 0
    # a scope that leaves ReLUs untouched is partial while it tunes some, none when it tunes none
    assert Coverage(1, 2, 0, 0, {}, scope="modules", untouched=2).verdict == "partial"
    assert Coverage(0, 17, 0, 0, {}, scope="modules", untouched=17).verdict == "none"


def test_coverage_legacy_dict_and_records():
    import dataclasses
    import json
    import pickle

    net = nn.Sequential(nn.Linear(8, 8), Swish(), nn.Linear(8, 8), nn.ReLU(), nn.SiLU(), nn.Linear(8, 8), Swish())
    cov = ct_coverage(net, torch.randn(2, 8))
    assert isinstance(cov, Coverage) and cov.scope == "all" and cov.untouched == 0
    legacy = cov.to_dict()
    assert list(legacy) == ["relu_modules", "relu_functional", "leaky_relu", "missed", "unsupported"]
    assert json.dumps(legacy) == ('{"relu_modules": 1, "relu_functional": 0, "leaky_relu": 0, "missed": 0, '
                                  '"unsupported": {"SiLU": 1, "Swish": 2}}')
    legacy["unsupported"]["SiLU"] = 99  # a copy: the record does not change
    assert cov.unsupported == {"SiLU": 1, "Swish": 2}
    rec = cov.as_record()
    assert rec == {**cov.to_dict(), "scope": "all", "untouched": 0}
    # round trips: through JSON (results.json), the full record, pickle; frozen and hashable
    assert Coverage.from_dict(json.loads(json.dumps(cov.to_dict()))) == cov
    mod = Coverage(1, 2, 0, 0, {}, scope="modules", untouched=2)
    assert Coverage.from_dict(json.loads(json.dumps(mod.as_record()))) == mod
    assert "scope" not in mod.to_dict() and "untouched" not in mod.to_dict()
    assert pickle.loads(pickle.dumps(cov)) == cov and hash(cov) == hash(Coverage.from_dict(cov.to_dict()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cov.missed = 1


def test_coverage_from_dict_is_tolerant():
    # a results.csv row (ct_ prefix, strings, summary string) and a coverage_table-style summary
    row = {"model": "m", "ct_relu_modules": "0", "ct_relu_functional": "17", "ct_leaky_relu": "0",
           "ct_missed": "0", "ct_unsupported": "SiLU x 2;GELU x 1"}
    assert Coverage.from_dict(row) == Coverage(0, 17, 0, 0, {"SiLU": 2, "GELU": 1})
    assert Coverage.from_dict({"relu_modules": 25, "unsupported": "Swish x 67, GELU x 1"}).unsupported == {
        "Swish": 67, "GELU": 1}
    assert Coverage.from_dict({"relu_modules": 3.0, "missed": None, "unsupported": None}) == Coverage(3)
    assert Coverage.from_dict({}) == Coverage() and Coverage().verdict == "none"
    with pytest.raises(ValueError, match="unsupported"):
        Coverage.from_dict({"unsupported": "SiLU twice"})
    with pytest.raises(UnknownNameError, match="did you mean 'modules'"):
        Coverage.from_dict({"scope": "module"})


# ---------------------------------------------------------------------------------------------------
# scope: "modules" reproduces the CT reference code (module swap only)
# ---------------------------------------------------------------------------------------------------


class MixedNet(nn.Module):
    """One ``nn.ReLU`` submodule, one ``F.relu`` call and one ``nn.ReLU()`` built inside ``forward``."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3, self.l4 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        self.act = nn.ReLU()

    def forward(self, x):
        h = self.act(self.l1(x))
        h = F.relu(self.l2(h))
        h = nn.ReLU()(self.l3(h))  # not a submodule: no module swap reaches it
        return self.l4(h)


def test_scope_modules_tunes_only_relu_modules():
    assert SCOPES == ("all", "modules")
    torch.manual_seed(0)
    net = MixedNet().eval()
    x = torch.randn(5, 8)
    mods = ct_coverage(net, x, scope="modules")
    assert (mods.relu_modules, mods.relu_functional, mods.missed) == (1, 2, 0)
    assert (mods.tuned, mods.untouched, mods.scope, mods.verdict) == (1, 2, "modules", "partial")
    assert mods.to_dict() == {"relu_modules": 1, "relu_functional": 2, "leaky_relu": 0, "missed": 0,
                              "unsupported": {}}  # the legacy dict: no scope columns
    assert mods.as_record()["untouched"] == 2 and mods.as_record()["scope"] == "modules"
    full = ct_coverage(net, x)
    assert (full.tuned, full.untouched, full.missed, full.scope, full.verdict) == (3, 0, 0, "all", "full")
    assert full.to_dict() == mods.to_dict()

    with torch.no_grad():
        ref = net(x)
        ct_mods, ct_all = apply_ct(net, 0.7, scope="modules"), apply_ct(net, 0.7)
        assert ct_mods.scope == "modules" and ct_all.scope == "all"
        out_mods, out_all = ct_mods(x), ct_all(x)
        assert not torch.allclose(out_mods, out_all, atol=1e-4)
        assert not torch.allclose(out_mods, ref, atol=1e-4)
        # scope modules = CT on the submodule only, the other two ReLUs as they were
        beta = float(get_beta(ct_mods))
        hand = net.l4(F.relu(net.l3(F.relu(net.l2(ct_phi(net.l1(x), beta))))))
        torch.testing.assert_close(out_mods, hand)
        assert torch.equal(apply_ct(net, 1.0, scope="modules")(x), ref)
        assert torch.equal(apply_ct(net, 1.0)(x), ref)
    g = input_grad(apply_ct(net, 0.7, scope="modules"), x)
    assert torch.isfinite(g).all() and not torch.allclose(g, input_grad(net, x))


def test_scope_modules_on_functional_and_silu_networks():
    net = FuncNet("F.relu").eval()
    x = torch.randn(3, 8)
    cov = ct_coverage(net, x, scope="modules")
    assert (cov.tuned, cov.untouched, cov.missed, cov.verdict) == (0, 2, 0, "none")
    ct = apply_ct(net, 0.7, scope="modules", example_input=x)  # accepted: the reference code's behaviour
    with pytest.warns(RuntimeWarning, match="tunes nothing"):
        with torch.no_grad():
            out = ct(x)
    with torch.no_grad():
        assert torch.equal(out, net(x))
    # no ReLU at all is refused whatever the scope
    with pytest.raises(CTCoverageError, match="SiLU x 2"):
        apply_ct(SiLUNet(False), 0.9, scope="modules")
    with pytest.raises(CTCoverageError, match="SiLU x 2"):
        apply_ct(SiLUNet(True), 0.9, scope="modules")(torch.randn(2, 8))
    with pytest.raises(CTCoverageError, match="SiLU x 2"):
        apply_ct(SiLUNet(True), 0.9, scope="modules", example_input=torch.randn(2, 8))


@pytest.mark.parametrize("call", [
    lambda net, x: apply_ct(net, 0.9, scope="module"),
    lambda net, x: ct_coverage(net, x, scope="Modules"),
    lambda net, x: CTModel(net, 0.9, scope="moduls"),
])
def test_unknown_scope_suggests(call):
    with pytest.raises(UnknownNameError, match="did you mean 'modules'"):
        call(MixedNet(), torch.randn(2, 8))


# ---------------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    dev = torch.device("cuda")
    x = (torch.randn(6, 3, 7, 5, dtype=dtype) * 4)
    g = torch.randn_like(x)
    for beta, c, a in [(0.9, 0.5, 0.0), (0.3, 0.0, 0.0), (0.99, 1.0, 0.0), (0.7, 0.5, 0.1), (1.0, 0.5, 0.0),
                       (torch.tensor([1.0, 0.9, 0.5, 0.99, 1e-6, 1.0]), 0.5, 0.0),
                       (torch.tensor([1.0, 0.9, 0.5, 0.99, 1e-6, 1.0]), 0.4, 0.2)]:
        outs, grads = [], []
        for d in (torch.device("cpu"), dev):
            xs = x.to(d).requires_grad_(True)
            b = beta.to(d) if isinstance(beta, torch.Tensor) else beta
            y = ct_phi(xs, b, c, a)
            (gx,) = torch.autograd.grad(y, xs, g.to(d))
            outs.append(y.detach().cpu())
            grads.append(gx.cpu())
        tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(outs[1], outs[0], **tol)
        torch.testing.assert_close(grads[1], grads[0], **tol)
        if isinstance(beta, torch.Tensor):
            assert torch.equal(outs[1][0], F.relu(x[0]) if a == 0 else F.leaky_relu(x[0], a))


@pytest.mark.gpu
def test_cuda_model(convnet):
    dev = torch.device("cuda")
    x = torch.rand(3, 3, 8, 8)
    ct_cpu = apply_ct(convnet, 0.8)
    ct = copy.deepcopy(ct_cpu).to(dev)  # moved after apply_ct
    assert get_beta(ct).device.type == "cuda"
    with torch.no_grad():
        torch.testing.assert_close(ct(x.to(dev)).cpu(), ct_cpu(x), atol=1e-4, rtol=1e-4)
    net = copy.deepcopy(convnet).to(dev)
    with torch.no_grad():
        assert torch.equal(apply_ct(net, 1.0)(x.to(dev)), net(x.to(dev)))
    g = input_grad(ct, x.to(dev))
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g.cpu(), input_grad(ct_cpu, x), atol=1e-4, rtol=1e-3)
    # per-example beta set without validation (as the engines do) and an attack step: no host sync
    set_beta(ct, 0.9)
    ct(x.to(dev))  # first forward runs the coverage check
    betas = torch.tensor([1.0, 0.9, 0.8], device=dev)
    xd = x.to(dev)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        set_beta(ct, betas, validate=False)
        xs = xd.clone().requires_grad_(True)
        out = ct(xs)
        (gx,) = torch.autograd.grad(out.square().sum(), xs)
        set_beta(ct, 0.7)
        out2 = ct(xd)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    with torch.no_grad():
        assert torch.equal(out[0], net(x.to(dev))[0])
        torch.testing.assert_close(out2, apply_ct(net, 0.7)(x.to(dev)))
    assert torch.isfinite(gx).all()


@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_mixed_beta_rows_on_cpu_do_not_depend_on_the_other_rows(slope):
    """A block mixing beta = 1 and beta < 1 rows (the fast engine's beta-batching): the CPU path runs CT on
    the beta < 1 rows only. Those rows get, bit for bit, what they get in a block where every row has
    beta < 1 (forward and input gradient), and the beta = 1 rows are exactly the original op."""
    from ctrobust.ct import ct_phi

    torch.manual_seed(0)
    x0 = torch.randn(6, 5, 4, 4) * 3
    go = torch.randn(6, 5, 4, 4)
    mixed = torch.tensor([1.0, 0.9, 1.0, 0.5, 0.9, 1.0], dtype=torch.float64)
    one = mixed == 1.0
    outs = {}
    for name, b in (("mixed", mixed), ("all below 1", torch.where(one, torch.tensor(0.7, dtype=torch.float64),
                                                                     mixed))):
        x = x0.clone().requires_grad_(True)
        y = ct_phi(x, b, negative_slope=slope, kernel="aten")
        outs[name] = (y.detach(), torch.autograd.grad(y, x, go)[0])
    (ym, gm), (ya, ga) = outs["mixed"], outs["all below 1"]
    assert torch.equal(ym[~one], ya[~one]) and torch.equal(gm[~one], ga[~one])
    base = torch.nn.functional.leaky_relu(x0, slope) if slope else torch.relu(x0)
    slope_grad = torch.where(x0 > 0, go, go * slope)
    assert torch.equal(ym[one], base[one]) and torch.equal(gm[one], slope_grad[one])
