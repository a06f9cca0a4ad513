"""Every derivative three independent ways: closed forms, central differences on the numpy
callable the solver calls, and torch's gradcheck/gradgradcheck, all in float64."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from problems import (
    P_SEED,
    SCALER_KINDS,
    Hand,
    KernelCdistRBF,
    Linear,
    Quadratic,
    SinSum,
    fit_full_batch,
    fitted_scalers,
    mlp,
)
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from torch import nn

import surrogate_bridge as sb

TOL = {
    "exact": {"rtol": 1e-12, "atol": 1e-12},  # closed forms: rounding only
    "fd": {"rtol": 1e-6, "atol": 1e-7},  # central differences, h ~ eps^(1/3)
    "fit": 0.02,  # a trained net's derivative against the true one (the 2%)
}

IN = sb.Affine(shift=[0.5, -1.0], scale=[2.0, 0.25])
OUT = sb.Affine(shift=[3.0], scale=[10.0])


def quad_truth(x):
    """f(x) = 10 z^T P z + 3 with z = (x - s) / c; exact gradient and Hessian."""
    s, c = IN.shift, IN.scale
    z = (x - s) / c
    D = np.diag(1 / c)
    return 10 * z @ P_SEED @ z + 3, 10 * D @ (2 * P_SEED @ z), 10 * D @ (2 * P_SEED) @ D


@pytest.fixture
def quad():
    return sb.Surrogate(Quadratic(P_SEED), IN, OUT)


POINTS = [np.array([0.1, 0.2]), np.array([-2.0, 3.0]), np.array([1.5, -1.25])]


@pytest.mark.parametrize("x", POINTS, ids=["a", "b", "c"])
def test_quadratic_closed_form(quad, x):
    f, g, H = quad_truth(x)
    assert quad(x) == pytest.approx(f, rel=1e-13)
    np.testing.assert_allclose(quad.grad(x), g, **TOL["exact"])
    np.testing.assert_allclose(quad.hess(x), H, **TOL["exact"])
    np.testing.assert_allclose(quad.hessp(x, [1.0, -2.0]), H @ [1.0, -2.0], **TOL["exact"])
    np.testing.assert_allclose(quad.lagrangian_hess(x, [0.5]), 0.5 * H, **TOL["exact"])
    np.testing.assert_allclose(quad.jac(x), g[None], **TOL["exact"])
    v, gg = quad.value_and_grad(x)
    assert v == pytest.approx(f, rel=1e-13)
    np.testing.assert_allclose(gg, g, **TOL["exact"])


def test_quadratic_batch_closed_form(quad):
    X = np.stack(POINTS)
    truth = [quad_truth(x) for x in X]
    np.testing.assert_allclose(quad(X), [t[0] for t in truth], **TOL["exact"])
    np.testing.assert_allclose(quad.grad(X), [t[1] for t in truth], **TOL["exact"])
    np.testing.assert_allclose(quad.hess(X), [t[2] for t in truth], **TOL["exact"])
    *_, T = quad.derivatives(X, order=3)
    assert T.shape == (3, 2, 2, 2)
    np.testing.assert_allclose(T, 0.0, atol=1e-10)


def test_linear_jacobian_and_zero_hessian():
    A, b = np.array([[1.0, 2.0], [3.0, -1.0], [0.0, 4.0]]), np.array([1.0, 0.0, -1.0])
    sur = sb.Surrogate(Linear(A, b), n_in=2)
    x = np.array([0.3, 0.7])
    np.testing.assert_allclose(sur(x), A @ x + b, **TOL["exact"])
    np.testing.assert_allclose(sur.jac(x), A, **TOL["exact"])
    np.testing.assert_allclose(sur.hess(x), np.zeros((3, 2, 2)), **TOL["exact"])
    np.testing.assert_allclose(sur.jac(np.stack([x, 2 * x])), [A, A], **TOL["exact"])


def test_sin_derivatives_up_to_order_four():
    sur = sb.Surrogate(SinSum(), n_in=2)
    x = np.array([0.4, -1.1])
    d = sur.derivatives(x, order=4)
    assert [t.shape for t in d] == [(2,), (2, 2), (2, 2, 2), (2, 2, 2, 2), (2, 2, 2, 2, 2)]
    np.testing.assert_allclose(d[0], [np.sin(x).sum(), (x**2).sum()], **TOL["exact"])
    np.testing.assert_allclose(d[1][0], np.cos(x), **TOL["exact"])
    np.testing.assert_allclose(d[2][0], np.diag(-np.sin(x)), **TOL["exact"])
    np.testing.assert_allclose(d[2][1], 2 * np.eye(2), **TOL["exact"])
    third = np.zeros((2, 2, 2))
    fourth = np.zeros((2, 2, 2, 2))
    for j in range(2):
        third[j, j, j] = -np.cos(x[j])
        fourth[j, j, j, j] = np.sin(x[j])
    np.testing.assert_allclose(d[3][0], third, **TOL["exact"])
    np.testing.assert_allclose(d[4][0], fourth, **TOL["exact"])
    np.testing.assert_allclose(d[4][1], 0.0, atol=1e-12)


def central(f, x, h=1e-5):
    cols = []
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        cols.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * h))
    return np.stack(cols, -1)


@pytest.mark.parametrize("n_out", [1, 3], ids=["scalar", "vector"])
def test_central_differences_on_numpy_callables(n_out):
    net = mlp([2, 16, 16, n_out], nn.Softplus)
    sur = sb.Surrogate(net, IN, sb.Affine(np.arange(n_out), np.arange(1, n_out + 1)))
    x = np.array([0.3, -0.8])
    np.testing.assert_allclose(sur.jac(x), central(lambda z: np.atleast_1d(sur(z)), x), **TOL["fd"])
    H = sur.hess(x).reshape(n_out, 2, 2)
    np.testing.assert_allclose(H, central(sur.jac, x), **TOL["fd"])
    report = sb.check_derivatives(sur, x)
    assert report.ok, str(report)
    assert "hessian" in str(report)


def test_gradcheck_and_gradgradcheck_on_function():
    sur = sb.Surrogate(mlp([3, 8, 8, 2], nn.SiLU), sb.Affine([1, 2, 3], [2, 3, 4]))
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sur.function, (x,))
    assert torch.autograd.gradgradcheck(sur.function, (x,))


def test_cubic_minmax_physical_derivative_vs_naive():
    """f(x) = x^3 + 7 - 3x on [0, 10] with MinMax scalers: a real report had every derivative
    10x too large from differentiating w.r.t. the normalized input."""
    x = np.linspace(0.0, 10.0, 201)[:, None]
    y = x**3 + 7 - 3 * x
    xs, ys = MinMaxScaler().fit(x), MinMaxScaler().fit(y)
    net = fit_full_batch(mlp([1, 32, 32, 1], seed=3), xs.transform(x), ys.transform(y))
    sur = sb.Surrogate(net, xs, ys)
    # where f' >= 24 (the report's x = 4.44 among them): near x = 1 a value fit's relative
    # slope error grows as f' -> 0, which is the fit's limit, not the bridge's
    pts = np.linspace(3.0, 9.5, 14)[:, None]
    exact = 3 * pts[:, 0] ** 2 - 3
    phys = sur.grad(pts)[:, 0]
    assert np.max(np.abs(phys / exact - 1)) < TOL["fit"]
    # the naive derivative: d model / d normalized input, output unscaled
    z = torch.tensor(xs.transform(pts), requires_grad=True)
    (dz,) = torch.autograd.grad(net(z).sum(), z)
    naive = dz.numpy()[:, 0] * (ys.data_max_ - ys.data_min_)[0]
    ratio = naive / phys
    np.testing.assert_allclose(ratio, 10.0, rtol=1e-9)  # wrong by exactly the input range


@pytest.mark.parametrize(
    ("act", "smooth"), [(nn.ReLU, False), (nn.Tanh, True)], ids=["relu", "tanh"]
)
def test_x_squared_second_derivative(act, smooth):
    x = np.linspace(-1, 1, 101)[:, None]
    xs, ys = StandardScaler().fit(x), StandardScaler().fit(x**2)
    net = fit_full_batch(mlp([1, 32, 1], act, seed=2), xs.transform(x), ys.transform(x**2))
    sur = sb.Surrogate(net, xs, ys)
    pts = np.array([[-0.5], [0.1], [0.6]])
    if smooth:
        np.testing.assert_allclose(sur.hess(pts)[:, 0, 0], 2.0, rtol=0.05)
    else:
        with pytest.warns(sb.SmoothnessWarning, match="relu"):
            H = sur.hess(pts)
        np.testing.assert_allclose(H, 0.0, atol=1e-12)  # the silent failure we warn about
        sur.hess(pts)  # warned once per surrogate: no second warning (warnings are errors here)


ACTS = {
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
}


@st.composite
def surrogates(draw):
    n_in = draw(st.integers(1, 4))
    n_out = draw(st.integers(1, 3))
    widths = draw(st.lists(st.integers(2, 12), min_size=1, max_size=3))
    act = ACTS[draw(st.sampled_from(sorted(ACTS)))]
    seed = draw(st.integers(0, 1000))
    scalers, data_x = fitted_scalers(draw(st.sampled_from(SCALER_KINDS)), n_in, n_out, seed)
    net = mlp([n_in, *widths, n_out], act, seed=seed)
    sur = sb.Surrogate(net, *scalers, extrapolation="ignore")
    return sur, net, scalers, data_x[:4]


def reference(net, scalers, n_in):
    """f_phys written independently from the scalers' numpy transforms."""
    ins, outs = (
        None if s is None else sb.Affine.from_sklearn(s) if not isinstance(s, sb.Affine) else s
        for s in scalers
    )

    def f(x):
        z = x if ins is None else (x - torch.as_tensor(ins.shift)) / torch.as_tensor(ins.scale)
        y = net(z[None])[0]
        return y if outs is None else y * torch.as_tensor(outs.scale) + torch.as_tensor(outs.shift)

    return f


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(surrogates())
def test_property_batched_equals_single_and_torch_func(case):
    sur, net, scalers, X = case
    f = reference(net, scalers, sur.n_in)
    xt = torch.as_tensor(X)
    J_ref = torch.func.vmap(torch.func.jacrev(f))(xt).detach().numpy()
    H_ref = torch.func.vmap(torch.func.jacfwd(torch.func.jacrev(f)))(xt).detach().numpy()
    J = sur.jac(X)
    H = sur.hess(X).reshape(H_ref.shape)
    np.testing.assert_allclose(J, J_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(H, H_ref, rtol=1e-9, atol=1e-12)
    for i in range(len(X)):  # single points: cache + replicated-rows route
        np.testing.assert_allclose(sur.jac(X[i]), J[i], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(
            sur.hess(X[i]).reshape(H_ref.shape[1:]), H[i], rtol=1e-10, atol=1e-13
        )
    if sur.n_out == 1:
        p = np.linspace(-1, 1, sur.n_in)
        np.testing.assert_allclose(sur.hessp(X[0], p), H[0, 0] @ p, rtol=1e-10, atol=1e-12)
    v = np.arange(1.0, sur.n_out + 1)
    np.testing.assert_allclose(
        sur.lagrangian_hess(X[1], v), np.einsum("i,ijk->jk", v, H[1]), rtol=1e-10, atol=1e-12
    )


def test_public_derivatives_against_nested_autograd():
    net = mlp([2, 8, 3], nn.Tanh, seed=3)
    x = torch.randn(5, 2, dtype=torch.float64)
    _, J, H = sb.derivatives(net, x, order=2)
    J_ref = torch.func.vmap(torch.func.jacrev(net))(x)
    H_ref = torch.func.vmap(torch.func.hessian(net))(x)
    torch.testing.assert_close(J, J_ref)
    torch.testing.assert_close(H, H_ref)
    assert J.requires_grad  # differentiable w.r.t. the parameters
    assert x.grad is None and all(p.grad is None for p in net.parameters())


def test_public_derivatives_refuse_batch_statistics_and_name_a_dtype_mismatch():
    """A BatchNorm on the batch's statistics makes each row depend on the others: the sum
    trick would add their cross terms, silently. In eval mode the rows are independent and the
    derivatives are each row's own (torch.func's per row)."""
    net = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1)).double()
    x = torch.randn(6, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="BatchNorm1d '1' normalizes with the batch's statis"):
        sb.derivatives(net, x, order=1)
    free = nn.BatchNorm1d(2, track_running_stats=False).double().eval()
    with pytest.raises(ValueError, match=r"BatchNorm1d '\(the module\)'"):
        sb.derivatives(free, x, order=1)
    net.eval()
    _, J = sb.derivatives(net, x, order=1)
    rows = [torch.autograd.functional.jacobian(lambda r: net(r[None])[0], r) for r in x]
    torch.testing.assert_close(J, torch.stack(rows))
    with pytest.raises(TypeError, match="x is torch.float32 but fn's weights are torch.float64"):
        sb.derivatives(net, x.float(), order=1)
    with pytest.raises(ValueError, match=r"x\[None\] for one point"):
        sb.derivatives(net, x[0], order=1)


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
def test_a_model_without_first_derivatives_gives_values_and_refuses_derivatives():
    """It used to fail at construction (the row-independence check took a Jacobian), and a
    value request failed too (values fill gradients in passing)."""
    model = Hand(lambda h: h + h // 0.5)  # aten::floor_divide has no derivative in torch
    sur = sb.Surrogate(model)
    X = np.random.default_rng(0).normal(size=(40, 2))
    with torch.no_grad():
        expect = model(torch.from_numpy(X))[:, 0].numpy()
    np.testing.assert_allclose([sur(x) for x in X], expect, rtol=1e-14)  # past auto's 32 points
    np.testing.assert_allclose(sur(X), expect, rtol=1e-14)
    for ask in (sur.grad, sur.value_and_grad, sur.hess, lambda x: sur.derivatives(x, order=1)):
        with pytest.raises(NotImplementedError, match="torch cannot take.*floor_divide"):
            ask(X[0])


class _OnceDifferentiable(torch.autograd.Function):
    """A user's custom cube whose backward torch cannot differentiate again."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * g


class _Cube(nn.Module):
    def forward(self, z):
        return _OnceDifferentiable.apply(z).sum(-1, keepdim=True)


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
@pytest.mark.parametrize(
    ("model", "named"),
    [
        (KernelCdistRBF(), "cdist"),  # (torch.cdist, F.hardsigmoid, F.celu: rewrites.py)
        (_Cube(), "once_differentiable"),
    ],
    ids=["cdist", "once-differentiable"],
)
def test_a_derivative_torch_cannot_take_is_named(model, named):
    sur = sb.Surrogate(model, point_route="torch")
    x = np.array([0.3, -0.2])
    g = sur.grad(x)  # first derivatives work
    np.testing.assert_allclose(g, [0.27, 0.12] if named != "cdist" else g)
    for ask in (
        lambda: sur.hess(x),
        lambda: sur.hess(np.stack([x, -x])),
        lambda: sur.hessp(x, np.ones(2)),
    ):
        with pytest.raises(NotImplementedError, match=f"torch cannot take.*{named}"):
            ask()


class _AdaptivePiecewiseLinear(nn.Module):
    """neuromancer's APLU as written: ``y = relu(x); y += ...`` changes in place the output
    that relu's derivative reads, so autograd fails on the model itself."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 4).double()

    def forward(self, z):
        h = self.a(z)
        y = torch.relu(h)
        y += 0.3 * torch.relu(-h + 0.5)
        return y.sum(-1, keepdim=True)


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
def test_a_forward_changing_in_place_what_autograd_keeps_is_named():
    """Values work; every derivative says why it cannot be taken (it was torch's own error,
    naming a version counter, at the first request)."""
    model = _AdaptivePiecewiseLinear()
    sur = sb.Surrogate(model)
    x = np.array([0.3, -0.2])
    with torch.no_grad():
        np.testing.assert_allclose(sur(x), model(torch.tensor(x[None]))[0, 0].item(), rtol=1e-15)
    for ask in (sur.grad, sur.jac, sur.hess, lambda p: sur.hessp(p, np.ones(2))):
        with pytest.raises(NotImplementedError, match=r"changes in place .* out of place"):
            ask(x)
