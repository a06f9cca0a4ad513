"""Rewrites of a user's layers in the surrogate's copy (rewrites.py): the same values bit for
bit (attention: to a few units of the last place), exact derivatives, and the user's model
untouched."""

import warnings

import casadi as ca
import numpy as np
import pytest
import torch
from problems import ATTENTION, CdistRBF
from torch import nn

import surrogate_bridge as sb
from surrogate_bridge import rewrites
from surrogate_bridge.rewrites import exact_layers

EDGES = [0.0, -0.0, 3.0, -3.0, 1e-300, -1e-300, float("inf"), float("-inf")]


def _grid(lo, hi):
    return torch.cat([torch.linspace(lo, hi, 200_001, dtype=torch.float64), torch.tensor(EDGES)])


@pytest.mark.parametrize(
    "layer", [nn.CELU(0.7), nn.CELU(), nn.CELU(2.5), nn.CELU(1e-3), nn.Hardsigmoid()]
)
def test_rewritten_layers_give_the_same_values_bit_for_bit(layer):
    x = _grid(-40.0, 8.0)
    new = exact_layers(nn.Sequential(layer))[0]
    assert type(new) is not type(layer)
    assert torch.equal(new(x), layer(x))


def test_celu_derivatives_are_exact_and_the_users_model_is_untouched():
    """torch's own CELU derivative takes 1 / alpha in single precision (off by ~1e-8 relative
    at alpha = 0.7); the surrogate's is the analytic exp(x / alpha) to float64 rounding, on
    every route."""
    alpha = 0.7
    model = nn.Sequential(nn.CELU(alpha))
    x = torch.tensor([[-0.3], [-1.2], [-2.0]], dtype=torch.float64, requires_grad=True)
    (g_torch,) = torch.autograd.grad(model(x).sum(), x)
    exact = torch.exp(x.detach() / alpha)
    assert (g_torch / exact - 1).abs().max() > 1e-9  # torch's own error, which is not ours
    for route in ("torch", "numpy", "casadi"):
        sur = sb.Surrogate(model, n_in=1, point_route=route)
        for xi in x.detach().numpy():
            e = np.exp(xi[0] / alpha)
            np.testing.assert_allclose(sur.grad(xi), [e], rtol=1e-15)
            np.testing.assert_allclose(sur.hess(xi), [[e / alpha]], rtol=1e-15)
    assert type(model[0]) is nn.CELU  # the rewrite is in the surrogate's copy only


def test_hardsigmoid_has_a_zero_second_derivative_with_the_smoothness_warning():
    torch.manual_seed(0)  # (unseeded, a cancelling sum now and then missed 1e-15 relative)
    model = nn.Sequential(nn.Linear(2, 4), nn.Hardsigmoid(), nn.Linear(4, 1)).double()
    sur = sb.Surrogate(model)
    x = np.array([0.2, -0.1])
    with pytest.warns(sb.SmoothnessWarning, match="hardtanh"):
        H = sur.hess(x)
    np.testing.assert_array_equal(H, np.zeros((2, 2)))
    with torch.no_grad():  # the gradient is torch's: W2 diag(1/6 inside (-3, 3)) W1
        pre = model[0](torch.as_tensor(x))
        inside = ((pre > -3) & (pre < 3)).double() / 6
        g = (model[2].weight * inside) @ model[0].weight
    np.testing.assert_allclose(sur.grad(x), g[0].numpy(), rtol=1e-14, atol=1e-16)
    assert type(model[1]) is nn.Hardsigmoid


def test_subclasses_and_functional_calls_are_not_rewritten():
    class MyCELU(nn.CELU):  # a subclass may change forward: left alone
        pass

    copy = exact_layers(nn.Sequential(MyCELU(0.7), nn.Tanh()))
    assert type(copy[0]) is MyCELU and type(copy[1]) is nn.Tanh


F = nn.functional
CALLS = {
    "F.celu": lambda h: F.celu(h, 0.7),
    "torch.celu": lambda h: torch.celu(h, 0.7),
    "F.celu in place": lambda h: F.celu(h.clone(), 0.7, inplace=True),
    "torch.celu_": lambda h: torch.celu_(h.clone(), 0.7),
    "F.hardsigmoid": lambda h: F.hardsigmoid(h),
    "F.hardsigmoid in place": lambda h: F.hardsigmoid(h * 1.0, inplace=True),
    "F.celu in place, then read": lambda h: (F.celu(h, 0.7, inplace=True), h)[1],
}


class Calls(nn.Module):
    """x -> linear -> the function called in the forward -> linear."""

    def __init__(self, name: str):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.call = nn.Linear(2, 5), nn.Linear(5, 1), CALLS[name]
        self.double()

    def forward(self, x):
        return self.b(self.call(2 * self.a(x)))


def _analytic(model, x: np.ndarray, name: str):
    """Gradient and Hessian of b(s(2 a(x))) from the activation's closed-form derivatives."""
    with torch.no_grad():
        W1, W2 = model.a.weight.numpy(), model.b.weight.numpy()[0]
        h = 2 * (W1 @ x + model.a.bias.numpy())
    if "celu" in name:
        d1 = np.where(h > 0, 1.0, np.exp(h / 0.7))
        d2 = np.where(h > 0, 0.0, np.exp(h / 0.7) / 0.7)
    else:
        d1, d2 = np.where((h > -3) & (h < 3), 1 / 6, 0.0), np.zeros_like(h)
    return 2 * (W2 * d1) @ W1, 4 * W1.T @ np.diag(W2 * d2) @ W1


@pytest.mark.filterwarnings("ignore::surrogate_bridge.SmoothnessWarning")
@pytest.mark.parametrize("name", sorted(CALLS))
def test_functions_called_in_a_forward_get_the_layers_rewrites(name):
    """F.celu, torch.celu and F.hardsigmoid called in a forward (in place or not): the same
    values as the user's model bit for bit, and derivatives from the closed forms, on every
    route (torch's own are off by ~1e-8: 1 / alpha and 1 / 6 in single precision); the user's
    model still runs torch's own."""
    model = Calls(name)
    X = np.random.default_rng(0).normal(size=(4, 2))
    with torch.no_grad():
        ours = torch.as_tensor(X)
        np.testing.assert_array_equal(sb.Surrogate(model)(X), model(ours)[:, 0].numpy())
    routes = ("torch", "casadi") + (("numpy",) if "celu" in name else ())
    for route in routes:
        sur = sb.Surrogate(model, point_route=route)
        for x in X:
            g, H = _analytic(model, x, name)
            np.testing.assert_allclose(sur.grad(x), g, rtol=1e-14, atol=1e-16)
            np.testing.assert_allclose(sur.hess(x), H, rtol=1e-13, atol=1e-15)
    x = torch.as_tensor(X[:1]).requires_grad_(True)
    (g_torch,) = torch.autograd.grad(model(x).sum(), x)
    assert np.abs(g_torch[0].numpy() - _analytic(model, X[0], name)[0]).max() > 1e-12


@pytest.mark.parametrize("name", ["F.celu in place, then read", "F.hardsigmoid in place"])
def test_in_place_calls_save_and_load_as_the_same_function(name, tmp_path):
    """export records an in-place call as aten.copy, which torch cannot differentiate: the
    saved graph runs it as a differentiable copy."""
    sur = sb.Surrogate(Calls(name))
    sb.save(sur, tmp_path / "inplace.sbz")
    back = sb.load(tmp_path / "inplace.sbz")
    X = np.random.default_rng(1).normal(size=(3, 2))
    np.testing.assert_array_equal(back(X), sur(X))
    np.testing.assert_allclose(back.grad(X), sur.grad(X), rtol=1e-15, atol=1e-17)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sb.SmoothnessWarning)
        np.testing.assert_allclose(back.hess(X), sur.hess(X), rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("name", sorted(ATTENTION))
def test_attention_gets_hessians_from_a_form_the_same_to_rounding(name, tmp_path):
    """torch's CPU attention kernel has no second derivative, so every Hessian of these models
    was refused. The surrogate runs torch's reference form of attention instead: the user's
    values to a few units of the last place on a dense sample, Hessians equal to CasADi's
    symbolic ones and to differences of the exact gradient, on every route and after a save;
    the user's model still runs torch's kernel, untouched."""
    model = ATTENTION[name]().double().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    shift, scale = np.array([0.5, -1.0, 2.0]), np.array([2.0, 0.5, 1.0])
    sur = sb.Surrogate(model, sb.Affine(shift, scale))
    X = np.random.default_rng(0).normal(size=(20_000, 3)) * scale + shift
    with torch.no_grad():
        want = model(torch.as_tensor((X - shift) / scale)).numpy()
    got = sur(X).reshape(want.shape)
    assert np.abs(got - want).max() <= 8 * np.spacing(np.abs(want).max())

    F = sb.casadi_function(sur, mode="symbolic")
    x = ca.MX.sym("x", 3)
    y = F(x)
    H = ca.Function("H", [x], [ca.hessian(y[i], x)[0] for i in range(sur.n_out)])
    back = sb.save(sur, tmp_path / "attention.sbz") or sb.load(tmp_path / "attention.sbz")
    step = 1e-5
    for p in X[:3]:
        h = np.reshape(sur.hess(p), (sur.n_out, 3, 3))
        fd = np.stack(  # central differences of the exact Jacobian: the Hessian to O(step^2)
            [(sur.jac(p + step * e) - sur.jac(p - step * e)) / (2 * step) for e in np.eye(3)], -1
        )
        np.testing.assert_allclose(h, fd.reshape(h.shape), rtol=1e-6, atol=1e-8)
        symbolic = H(p)
        for i, Hi in enumerate([symbolic] if sur.n_out == 1 else symbolic):
            np.testing.assert_allclose(np.array(Hi), h[i], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(np.reshape(back.hess(p), h.shape), h, rtol=1e-12, atol=1e-15)
    for route in ("casadi", "auto"):  # the single-point routes give the same Hessians
        other = sb.Surrogate(model, sb.Affine(shift, scale), point_route=route)
        for p in X[3:40]:
            h = np.reshape(sur.hess(p), (sur.n_out, 3, 3))
            np.testing.assert_allclose(np.reshape(other.hess(p), h.shape), h, rtol=1e-10,
                                       atol=1e-13)  # fmt: skip

    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    z = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(model(z).sum(), z, create_graph=True)
    with pytest.raises(RuntimeError, match="not implemented"):  # torch's own kernel, as before
        torch.autograd.grad(g.sum(), z)


# distances: torch.cdist and torch.pdist ---------------------------------------------------------
CDIST_MODES = ["use_mm_for_euclid_dist_if_necessary", "use_mm_for_euclid_dist",
               "donot_use_mm_for_euclid_dist"]  # fmt: skip


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, 0.5, float("inf")])
def test_distance_forms_are_torchs_kernels_to_rounding(p):
    """Both operands' row counts on either side of 25 (where torch's p = 2 kernel switches to
    matrix products), a batch axis, every compute mode, a zero distance: the rewrite gives
    torch's values to a few units of the last place."""
    g = torch.Generator().manual_seed(0)
    for rows1, rows2, cols in [(1, 5, 3), (30, 5, 3), (1, 40, 7), (26, 26, 2), (4, 3, 64)]:
        x1 = torch.randn(2, rows1, cols, dtype=torch.float64, generator=g)
        x2 = torch.randn(rows2, cols, dtype=torch.float64, generator=g)
        x2[0] = x1[0, 0]  # a zero distance
        for mode in CDIST_MODES:
            want = torch.cdist(x1, x2, p, compute_mode=mode)
            got = rewrites._cdist(x1, x2, p, mode)
            assert (got - want).abs().max() <= 4 * np.spacing(want.abs().max().item())
        want = torch.pdist(x1[0], p).numpy()
        got = rewrites._pdist(x1[0], p).numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max(initial=0) <= 4 * np.spacing(np.abs(want).max(initial=0))
    with pytest.raises(ValueError, match="compute_mode"):
        rewrites._cdist(x1, x2, 2.0, "fastest")


class Potential(nn.Module):
    """The energy of 4 particles in 3-D from their 6 pair distances (torch.pdist of a point's
    12 coordinates, as a potential-energy surrogate reads them), through a tanh MLP."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1)).double()

    def forward(self, x):
        return torch.cat([self.net(torch.pdist(r.view(4, 3))[None]) for r in x])


def _rbf_truth(model):
    """A CdistRBF's function written with the sum of squared differences (no root)."""

    def f(x):
        h = model.a(x)
        return model.out(torch.exp(-((h[None, :] - model.centers) ** 2).sum(-1)))

    return f


def _potential_truth(model):
    def f(x):
        r = x.view(4, 3)
        i, j = torch.triu_indices(4, 4, 1)
        return model.net(((r[i] - r[j]) ** 2).sum(-1).sqrt())

    return f


DISTANCES = {  # (model, truth, n_in, points): batches of more than 25 rows take the matrix path
    "cdist": (lambda: CdistRBF(3, 5, 2), _rbf_truth, 3, 5),
    "cdist, a batch of 40": (lambda: CdistRBF(3, 8, 1, seed=1), _rbf_truth, 3, 40),
    "pdist potential": (Potential, _potential_truth, 12, 5),
}


@pytest.mark.parametrize("name", sorted(DISTANCES))
def test_distances_get_hessians_from_a_form_the_same_to_rounding(name, tmp_path):
    """torch has no second derivative of cdist or pdist, so every Hessian of a radial basis
    function net or a pair-distance potential was refused. The surrogate runs torch's own
    arithmetic instead: Hessians equal the closed form's (squared distances summed, no
    distance kernel), on every route, in batches, in CasADi's translation and after a save;
    the user's model still runs torch's kernel, untouched."""
    make, truth, n, points = DISTANCES[name]
    model = make()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    f = truth(model)
    X = np.random.default_rng(0).normal(size=(points, n))
    want = np.stack([torch.func.jacrev(torch.func.jacrev(f))(x).detach().numpy()
                     for x in torch.as_tensor(X)])  # fmt: skip
    sur = sb.Surrogate(model, n_in=n)
    scale = np.abs(want).max()
    np.testing.assert_allclose(sur.hess(X).reshape(want.shape), want, rtol=0, atol=1e-13 * scale)
    with torch.no_grad():
        values = model(torch.as_tensor(X)).numpy()
    assert np.abs(sur(X).reshape(values.shape) - values).max() <= 8 * np.spacing(
        np.abs(values).max()
    )
    for route in ("torch", "casadi", "auto"):
        other = sb.Surrogate(model, n_in=n, point_route=route)
        for x, w in zip(X[:5], want[:5], strict=True):
            got = other.hess(x).reshape(w.shape)
            np.testing.assert_allclose(got, w, rtol=0, atol=1e-13 * scale)

    F = sb.casadi_function(sur, mode="symbolic")
    x = ca.MX.sym("x", n)
    y = F(x)
    H = ca.Function("H", [x], [ca.hessian(y[i], x)[0] for i in range(sur.n_out)])
    back = sb.save(sur, tmp_path / "distances.sbz") or sb.load(tmp_path / "distances.sbz")
    for p, w in zip(X[:5], want[:5], strict=True):
        symbolic = H(p)
        for i, Hi in enumerate([symbolic] if sur.n_out == 1 else symbolic):
            np.testing.assert_allclose(np.array(Hi), w[i], rtol=0, atol=1e-13 * scale)
        np.testing.assert_allclose(back.hess(p).reshape(w.shape), w, rtol=0, atol=1e-13 * scale)

    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    z = torch.as_tensor(X[:1]).requires_grad_(True)
    (g,) = torch.autograd.grad(model(z).sum(), z, create_graph=True)
    with pytest.raises(RuntimeError, match="not implemented"):  # torch's own kernel, as before
        torch.autograd.grad(g.sum(), z)
