"""Shapes, I/O types, the user's model left untouched, row handling, cache, errors, warnings."""

import importlib.util
import pickle
import warnings

import numpy as np
import pytest
import torch
from problems import (
    P_SEED,
    FlatOutput,
    FuncGradHamiltonian,
    Hamiltonian,
    Hand,
    MixesRows,
    Quadratic,
    SinSum,
    StackedEnsemble,
    Unbatched,
    counting,
    mlp,
)
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from torch import nn

import surrogate_bridge as sb
from surrogate_bridge.physical import RowByRow


@pytest.fixture
def vec():
    return sb.Surrogate(mlp([2, 8, 3], nn.Tanh), sb.Affine([1, 2], [3, 4]))


@pytest.fixture
def scal():
    return sb.Surrogate(mlp([2, 8, 1], nn.Tanh))


SHAPES_SCALAR = {"call": (), "grad": (2,), "jac": (1, 2), "hess": (2, 2)}
SHAPES_VECTOR = {"call": (3,), "jac": (3, 2), "hess": (3, 2, 2)}


def _call(sur, name, x):
    return sur(x) if name == "call" else getattr(sur, name)(x)


@pytest.mark.parametrize("name", list(SHAPES_SCALAR))
def test_scalar_shapes(scal, name):
    x = np.array([0.1, 0.2])
    out = _call(scal, name, x)
    assert np.shape(out) == SHAPES_SCALAR[name]
    if name == "call":
        assert isinstance(out, float)
    batch = _call(scal, name, np.stack([x, x, x]))
    assert batch.shape == (3, *SHAPES_SCALAR[name])
    assert batch.dtype == np.float64


@pytest.mark.parametrize("name", list(SHAPES_VECTOR))
def test_vector_shapes(vec, name):
    x = np.array([0.1, 0.2])
    assert _call(vec, name, x).shape == SHAPES_VECTOR[name]
    assert _call(vec, name, np.stack([x] * 4)).shape == (4, *SHAPES_VECTOR[name])


def test_derivatives_shapes(vec, scal):
    x = np.array([0.1, 0.2])
    assert [d.shape for d in vec.derivatives(x, order=3)] == [(3,), (3, 2), (3, 2, 2), (3, 2, 2, 2)]
    assert [np.shape(d) for d in scal.derivatives(x, order=2)] == [(), (2,), (2, 2)]
    assert [d.shape for d in scal.derivatives(np.stack([x, x]), order=3)] == [
        (2,),
        (2, 2),
        (2, 2, 2),
        (2, 2, 2, 2),
    ]
    assert [np.shape(d) for d in scal.derivatives(x, order=0)] == [()]


def test_torch_in_torch_out(vec):
    x = torch.tensor([[0.1, 0.2], [0.3, 0.4]], dtype=torch.float32)
    J = vec.jac(x)
    assert isinstance(J, torch.Tensor) and J.dtype == torch.float64 and J.shape == (2, 3, 2)
    np.testing.assert_allclose(J.numpy(), vec.jac(x.numpy().astype(np.float64)), rtol=1e-6)
    assert isinstance(vec(x[0]), torch.Tensor)
    assert not J.requires_grad


def test_a_tensor_that_requires_grad_keeps_its_graph(vec, scal):
    """Torch code that differentiates through the surrogate (a design found by a torch optimizer,
    a loss on its derivatives) gets results with x's graph, exact to gradcheck: a detached
    result would drop the surrogate's part of a loss in silence."""
    X = torch.tensor([[0.1, 0.2], [0.3, -0.4]], dtype=torch.float64, requires_grad=True)
    for fn in (vec, vec.jac, scal, scal.grad, scal.hess, lambda x: vec.derivatives(x, 3)[3]):
        assert torch.autograd.gradcheck(fn, (X,))
    assert torch.autograd.gradgradcheck(scal, (X,))
    _, g, H = sb.derivatives(scal, X, 2)  # the surrogate as a torch callable (zeros, before)
    assert torch.equal(g[:, 0], scal.grad(X)) and torch.equal(H[:, 0], scal.hess(X))
    x = X[0].detach().clone().requires_grad_(True)
    (scal(x) + (x**2).sum()).backward()  # one point, in a sum with the caller's own terms
    np.testing.assert_allclose(
        x.grad.numpy(), scal.grad([0.1, 0.2]) + np.array([0.2, 0.4]), rtol=1e-14
    )
    p = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(scal.hessp, (x, p))  # the direction's graph too
    v = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(vec.lagrangian_hess, (x, v))
    xn = np.array([0.1, 0.2])  # numpy x: numpy out, whatever the direction is
    np.testing.assert_allclose(scal.hessp(xn, p), scal.hess(xn) @ [0.5, -1.0], rtol=1e-14)
    np.testing.assert_allclose(
        vec.lagrangian_hess(xn, v), np.einsum("i,ijk", [1, -2, 0.5], vec.hess(xn)), rtol=1e-13
    )
    x32 = torch.tensor([0.1, 0.2], requires_grad=True)  # a float32 leaf of a float64 surrogate
    scal(x32).backward()
    assert x32.grad.dtype == torch.float32
    np.testing.assert_allclose(x32.grad.numpy(), scal.grad([0.1, 0.2]), rtol=1e-6)
    with torch.no_grad():  # plain values where the caller asks for none
        assert not scal.grad(X).requires_grad and not scal(X).requires_grad
    assert all(not q.requires_grad for q in scal.function.parameters())  # frozen, as ever


def test_a_torch_optimizer_finds_the_seed_problems_minimum_through_the_surrogate():
    sur = sb.Surrogate(Quadratic(P_SEED), sb.Affine([1.0, -2.0], [2.0, 0.5]), n_in=2)
    x = torch.tensor([3.0, -1.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [x], max_iter=100, tolerance_grad=1e-12, tolerance_change=0.0, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        value = sur(x)
        value.backward()
        return value

    opt.step(closure)
    np.testing.assert_allclose(x.detach().numpy(), [1.0, -2.0], atol=1e-7)  # z = 0


def test_the_function_handed_out_is_a_copy_that_torch_code_may_change():
    """An enclosing module's .float(), .train(), .apply(init) and weight edits reach the copy
    handed out alone: the surrogate, its every route and its ODE right-hand side are as built."""
    import pickle

    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 1))
    sur = sb.Surrogate(net, sb.Affine([1, 2], [3, 4]), point_route="numpy")
    X = np.random.default_rng(0).normal(size=(5, 2))
    before = [sur(X), sur.hess(X), sur.hess(X[0]), sur.function(torch.tensor(X)).detach()]
    size = len(pickle.dumps(sur))
    outer = nn.Sequential(sur.function, nn.Linear(1, 1))
    assert sur.function is outer[0]  # the same copy at every access
    outer.float().train()
    outer.apply(lambda m: nn.init.zeros_(m.weight) if isinstance(m, nn.Linear) else None)
    with torch.no_grad():
        outer[0].rows.model[0].bias.add_(1.0)
    sur.cache_clear()
    after = [sur(X), sur.hess(X), sur.hess(X[0])]
    for old, new in zip(before, after, strict=False):
        assert np.array_equal(old, new)
    assert len(pickle.dumps(sur)) == size  # the copy is not saved with the surrogate
    changed = outer[0](torch.tensor(X, dtype=torch.float32)).double()
    assert not torch.allclose(changed, before[3])  # the copy did change
    sb.update_weights(sur, net)
    fresh = sur.function
    assert fresh is not outer[0] and torch.equal(fresh(torch.tensor(X)), before[3])


def test_editing_a_scaler_in_place_never_reaches_the_surrogate():
    """Scalers are values: the surrogate keeps copies of those it is given and hands out copies,
    so that an edit of the caller's Affine, Warp lambdas or ``sur.input_scaler`` in place
    changes neither its torch function nor its routes, now or when new weights rebuild it."""
    net = mlp([2, 8, 1], nn.Tanh)
    aff, lam = sb.Affine([1.0, 2.0], [3.0, 4.0]), np.array([0.5, 1.5])
    out = sb.Scaling([sb.Warp("yeo-johnson", lambdas=lam[:1]), sb.Affine([0.1], [2.0])])
    sur = sb.Surrogate(net, aff, out, point_route="numpy")
    X = np.random.default_rng(0).normal(size=(4, 2))
    before = [sur(X), sur.hess(X), sur(X[0]), sur.hess(X[0])]
    aff.shift[0], aff.scale[1], lam[0] = 10.0, -1.0, 2.0
    sur.input_scaler.shift[:] = 5.0
    sur.output_scaler.steps[1].scale[:] = 7.0
    sb.update_weights(sur, net)  # a rebuild reads the scalers again
    for old, new in zip(before, [sur(X), sur.hess(X), sur(X[0]), sur.hess(X[0])], strict=True):
        assert np.array_equal(old, new)
    assert sur.input_scaler.shift.tolist() == [1.0, 2.0]
    lb, ub = np.zeros(2), np.ones(2)  # the domain too: its arrays are the surrogate's own
    boxed = sb.Surrogate(net, domain=(lb, ub), extrapolation="raise")
    ub[:] = 0.1
    assert boxed.domain[1].tolist() == [1.0, 1.0] and np.isfinite(boxed([0.5, 0.5]))


def test_float32_surrogate():
    net = mlp([2, 8, 1])
    s32, s64 = sb.Surrogate(net, dtype=torch.float32), sb.Surrogate(net)
    x = np.array([0.1, 0.2])
    g = s32.grad(x)
    assert g.dtype == np.float32 and s32.hess(x).dtype == np.float32
    assert isinstance(s32(x), float)  # one point's value: a Python float, as for float64
    np.testing.assert_allclose(g, s64.grad(x), rtol=1e-5)  # float32 rounding, not another function
    np.testing.assert_allclose(s32.hess(x), s64.hess(x), rtol=1e-4, atol=1e-6)


def test_batched_equals_single_calls(vec):
    X = np.random.default_rng(1).normal(size=(6, 2))
    np.testing.assert_allclose(vec.hess(X), np.stack([vec.hess(x) for x in X]), rtol=1e-12)
    np.testing.assert_allclose(vec(X), np.stack([vec(x) for x in X]), rtol=1e-12)


def test_users_model_is_untouched():
    model = mlp([2, 8, 1], nn.Tanh, dtype=torch.float32)
    model.train()
    model[0].weight.requires_grad_(False)  # a user's own choice, kept
    model(torch.ones(1, 2)).sum().backward()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    sur = sb.Surrogate(model, StandardScaler().fit([[0, 0], [1, 2]]))
    x = np.array([0.3, 0.4])
    sur(x), sur.grad(x), sur.hess(x), sur.hessp(x, [1, 0]), sur.hess(np.stack([x, x]))
    sb.derivatives(sur.function, torch.ones(2, 2, dtype=torch.float64), order=2)
    assert model.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    for n, p in model.named_parameters():
        assert (p.grad is None) == (grads[n] is None)
        if p.grad is not None:
            assert torch.equal(p.grad, grads[n])
    assert all(not p.requires_grad for p in sur.function.parameters())


GRAD_MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


@pytest.mark.parametrize("mode", sorted(GRAD_MODES))
def test_derivatives_inside_the_callers_no_grad_or_inference_mode(mode, tmp_path):
    """Inference code runs under torch.no_grad() or torch.inference_mode(). Inside the latter,
    a surrogate built outside gave zero gradients silently (autograd records nothing there),
    one built inside was refused as a cut graph, and its numpy and CasADi routes as another
    function. Now each answers as outside, built inside or out, saved and loaded, with new
    weights, for torch tensors made there, and in the Lyapunov tools."""
    quad = Quadratic(P_SEED)  # V(x) = x^T P x (P a buffer): gradient 2 P x, Hessian 2 P
    X = np.random.default_rng(2).normal(size=(4, 2))
    outside = sb.Surrogate(quad, n_in=2)
    with GRAD_MODES[mode]():
        for route in ("torch", "numpy", "casadi"):
            for sur in (sb.Surrogate(quad, n_in=2, point_route=route), outside):
                for x in X:
                    np.testing.assert_allclose(sur.grad(x), 2 * P_SEED @ x, rtol=1e-12)
                    np.testing.assert_allclose(sur.hess(x), 2 * P_SEED, rtol=1e-12)
                    np.testing.assert_allclose(sur.hessp(x, [1.0, 2.0]), 2 * P_SEED @ [1, 2])
                np.testing.assert_allclose(sur.jac(X)[:, 0], 2 * X @ P_SEED, rtol=1e-12)
        t = torch.as_tensor(X)  # (an inference tensor in inference mode)
        _, J, H = sb.derivatives(outside.function, t, order=2)
        np.testing.assert_allclose(J[:, 0].numpy(), 2 * X @ P_SEED, rtol=1e-12)
        np.testing.assert_allclose(H[0, 0].numpy(), 2 * P_SEED, rtol=1e-12)
        sb.save(outside, tmp_path / "q.sbz")
        back = sb.load(tmp_path / "q.sbz")
        sb.update_weights(back, back._model.state_dict())
        np.testing.assert_allclose(back.grad(X[0]), 2 * P_SEED @ X[0], rtol=1e-12)
        stable = sb.Surrogate(lambda z: -z, n_in=2)  # dx/dt = -x: V decreases everywhere
        assert sb.lyapunov.falsify(outside, stable, [(-1, 1)] * 2, seed=0).certified
    assert outside.grad(X[0]) == pytest.approx(2 * P_SEED @ X[0], rel=1e-12)


@pytest.mark.parametrize("model", [FlatOutput(), Unbatched()], ids=["flat-output", "unbatched"])
def test_models_of_other_shapes(model):
    sur = sb.Surrogate(model, n_in=2)
    x = np.array([1.5, -2.0])
    assert sur.n_out == 1
    expect_H = np.diag([2.0, 2.0]) if isinstance(model, FlatOutput) else model.hessian(x)
    np.testing.assert_allclose(sur.hess(x), expect_H, atol=1e-12)
    np.testing.assert_allclose(sur.hess(np.stack([x, x])), [expect_H] * 2, atol=1e-12)


def test_row_mixing_model_is_evaluated_point_by_point():
    sur = sb.Surrogate(MixesRows())
    assert isinstance(sur.function.rows, RowByRow)
    X = np.random.default_rng(0).normal(size=(5, 2))
    np.testing.assert_allclose(sur(X), [sur(x) for x in X], rtol=1e-12)
    np.testing.assert_allclose(sur.jac(X)[:, 0], np.tile(sur.jac(X[0])[0], (5, 1)), rtol=1e-12)


def _piecewise(z):
    """For one point (2,): a different smooth formula on each side of z[0] = 0."""
    if z[0] > 0:
        return torch.stack([z[0] ** 2 * z[1], torch.sin(z[1])])
    return torch.stack([-(z[0] ** 3) + z[1], torch.cos(z[0] * z[1])])


def _piecewise_jacobian(x):
    a, b = x
    if a > 0:
        return np.array([[2 * a * b, a * a], [0.0, np.cos(b)]])
    s = -np.sin(a * b)
    return np.array([[-3 * a * a, 1.0], [s * b, s * a]])


class BranchesOnTheBatch(nn.Module):
    """Branches on a statistic of the whole batch: mixes rows, and vmap cannot trace it."""

    def forward(self, z):
        return z**2 if z.sum() > 0 else z**3


def test_a_forward_that_branches_on_its_values_is_evaluated_point_by_point(tmp_path):
    """vmap cannot trace a Python if on a tensor: such a model is called one point at a time,
    each point taking its own branch, and its derivatives stay exact; the graph consumers
    (save, symbolic CasADi) refuse it by saying why, and callback CasADi takes it."""
    sur = sb.Surrogate(_piecewise, n_in=2)
    X = np.array([[0.5, 0.2], [-0.5, 0.3], [1.5, -2.0]])
    with pytest.warns(sb.SmoothnessWarning, match="selects between branches"):
        sur.hess(X)  # (the comparison the branch takes is seen, and said)
    J = sur.jac(X)
    for x, j in zip(X, J, strict=True):
        np.testing.assert_allclose(j, _piecewise_jacobian(x), rtol=1e-14, atol=1e-15)
        h = 1e-6
        fd = np.stack([(sur.jac(x + h * e) - sur.jac(x - h * e)) / (2 * h) for e in np.eye(2)], -1)
        np.testing.assert_allclose(sur.hess(x), fd, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(sur(X), [sur(x) for x in X], rtol=0, atol=0)
    with pytest.raises(ValueError, match="branches on its input's values"):
        sb.save(sur, tmp_path / "s.sbz")
    with pytest.raises(NotImplementedError, match="branches on its input's values"):
        sb.casadi_function(sur, mode="symbolic")
    F = sb.casadi_function(sur, mode="callback")
    np.testing.assert_allclose(np.array(F(X[1])).ravel(), sur(X[1]), rtol=1e-15)

    mixing = sb.Surrogate(BranchesOnTheBatch(), n_in=2)
    assert isinstance(mixing.function.rows, RowByRow)
    Z = np.array([[1.0, 0.5], [-2.0, 0.5]])  # the first point squares, the second cubes
    np.testing.assert_allclose(mixing.jac(Z), [np.diag(2 * Z[0]), np.diag(3 * Z[1] ** 2)])


class SqueezesBatch(nn.Module):
    def forward(self, z):
        return (z**2).sum(-1).squeeze()[:, None]  # a batch of one loses its axis


@pytest.mark.parametrize("case", ["batch-statistics", "squeeze"])
def test_models_that_fail_on_one_point_alone_are_refused_naming_why(case):
    """Such a model worked on the probe batch, then failed with torch's bare error."""
    if case == "squeeze":
        model, words = SqueezesBatch(), "squeeze"
    else:
        norm = nn.BatchNorm1d(4, track_running_stats=False)
        model, words = nn.Sequential(nn.Linear(2, 4), norm, nn.Tanh(), nn.Linear(4, 1)), "'1'"
    with pytest.raises(ValueError, match="fails on one point alone") as err:
        sb.Surrogate(model.double().eval(), n_in=2)
    assert words in str(err.value)
    if case != "squeeze":
        assert "track_running_stats=False" in str(err.value)


class TwoNets(nn.Module):
    """Its first Linear layer reads only the first 3 of its 5 inputs."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(3, 4).double(), nn.Linear(2, 4).double()

    def forward(self, z):
        return (self.first(z[:, :3]) * self.second(z[:, 3:])).sum(-1, keepdim=True)


def test_a_wrong_n_in_from_the_first_linear_layer_says_where_it_came_from():
    with pytest.raises(ValueError, match="n_in=3 was read from the first Linear layer, 'first'"):
        sb.Surrogate(TwoNets())
    assert sb.Surrogate(TwoNets(), n_in=5).n_in == 5


def test_a_scaler_of_other_columns_than_the_input_layer_takes_is_named_with_both_counts():
    X = np.random.default_rng(0).normal(size=(20, 3))
    said = r"input_scaler has 3 features, but the model's first Linear layer, '0', takes 2"
    with pytest.raises(ValueError, match=said):
        sb.Surrogate(mlp([2, 4, 1]), StandardScaler().fit(X))
    with pytest.raises(ValueError, match=r"n_in=3 was given, but .* layer, '0', takes 2"):
        sb.Surrogate(mlp([2, 4, 1]), n_in=3)
    sb.Surrogate(TwoNets(), StandardScaler().fit(np.c_[X, X[:, :2]]))  # features built first


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 1)  # float32, as trained

    def forward(self, x, t):
        return self.a(torch.cat([x, t], -1))


def test_models_of_several_inputs_and_models_inside_functions_get_a_fitting_hint():
    model = TwoInputs()
    with pytest.raises(ValueError, match="missing 1 required positional") as err:
        sb.Surrogate(model)
    assert "pass a module that splits one" in str(err.value)
    assert "read from the first Linear" not in str(err.value)  # not an n_in question
    with pytest.raises(ValueError, match="cannot copy or convert a model called inside"):
        sb.Surrogate(lambda z: model(z[:, :2], z[:, 2:]), n_in=3)

    class Joined(nn.Module):  # what the hint says to write
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            return self.inner(z[:, :2], z[:, 2:])

    sur = sb.Surrogate(Joined(model), n_in=3)
    np.testing.assert_allclose(sur.grad([1.0, 2.0, 3.0]), model.a.weight.detach()[0], rtol=1e-7)
    assert model.a.weight.dtype == torch.float32  # the user's model is untouched


def test_n_in_inference():
    assert sb.Surrogate(mlp([3, 4, 1])).n_in == 3  # first Linear
    assert sb.Surrogate(FlatOutput(), sb.Affine([0, 0, 0, 0], [1, 1, 1, 1])).n_in == 4  # scaler
    lazy = sb.Surrogate(FlatOutput())  # parameter-free: learned from the first x
    assert lazy.n_in is None
    assert lazy([1.0, 2.0, 3.0]) == 14.0
    assert lazy.n_in == 3 and lazy.n_out == 1


def test_parameter_free_without_n_in_errors_clearly():
    with pytest.raises(ValueError, match="pass n_in="):
        sb.Surrogate(FlatOutput()).function  # noqa: B018


@pytest.mark.parametrize(
    ("x", "err", "match"),
    [
        (np.zeros(3), ValueError, r"x has 3 features.*takes 2.*shape \(2,\) or \(N, 2\)"),
        (np.zeros((2, 2, 2)), ValueError, "x has 3 dimensions"),
        (np.array(["a", "b"]), TypeError, "dtype <U1"),
        (np.array([1 + 1j, 2]), TypeError, "complex"),
        (np.array([np.nan, 1.0]), ValueError, r"non-finite.*\(0,\)"),
        (np.array([[1.0, 1.0], [1.0, np.inf]]), ValueError, r"non-finite.*\(1, 1\)"),
        (torch.tensor([1.0, float("nan")]), ValueError, "non-finite"),
        (torch.tensor([True, False]), TypeError, "torch.bool"),
        ([[1.0, 2.0], [3.0]], TypeError, "could not be read"),
    ],
    ids=["features", "rank", "strings", "complex", "nan", "inf", "torch-nan", "bool", "ragged"],
)
def test_bad_input_named(scal, x, err, match):
    calls = []
    scal.function.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(err, match=match):
        scal.grad(x)
    assert not calls  # raised before any torch work


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: s.grad([0.0, 0.0]), r"grad is for scalar surrogates.*n_out = 3.*jac"),
        (lambda s: s.hessp([0.0, 0.0], [1, 0]), "hessp is for scalar"),
        (lambda s: s.value_and_grad([0.0, 0.0]), "value_and_grad is for scalar"),
        (lambda s: s.lagrangian_hess([0.0, 0.0], [1.0]), r"v has shape \(1,\), expected \(3,\)"),
        (lambda s: s.lagrangian_hess([[0.0, 0.0]], [1.0, 2, 3]), "one point"),
        (lambda s: s.derivatives([0.0, 0.0], order=-1), "order must be an int >= 0"),
        (lambda s: s.bounds(), "no training domain is known"),
    ],
    ids=["grad", "hessp", "value_and_grad", "v-length", "lagr-batch", "order", "bounds"],
)
def test_documented_errors(vec, call, match):
    with pytest.raises(ValueError, match=match):
        call(vec)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"dtype": torch.int32}, TypeError, "torch.float64, torch.float32 or torch.float16"),
        ({"dtype": torch.bfloat16}, TypeError, "bfloat16 has no numpy counterpart"),
        ({"dtype": "float32"}, TypeError, "got 'float32'; pass torch.float32"),
        ({"extrapolation": "loud"}, ValueError, "warn.*ignore.*raise"),
        ({"cache_size": -1}, ValueError, "cache_size"),
        ({"n_in": 3}, ValueError, "failed on a probe batch"),
        ({"domain": ([0.0], [1.0])}, ValueError, "domain has 1 features"),
        ({"domain": ([1.0, 1.0], [0.0, 0.0])}, ValueError, "lb <= ub"),
        ({"input_scaler": "minmax"}, TypeError, "input_scaler.*not supported"),
        ({"input_scaler": MinMaxScaler()}, TypeError, "not fitted"),
        ({"output_scaler": sb.Affine([0, 0], [1, 1])}, ValueError, "output_scaler has 2"),
    ],
    ids=[
        "dtype",
        "bfloat16",
        "dtype-str",
        "policy",
        "cache",
        "n_in",
        "domain-len",
        "domain-order",
        "scaler-kind",
        "unfitted",
        "out-scaler",
    ],
)
def test_constructor_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        sb.Surrogate(mlp([2, 4, 1]), **kwargs)


def test_input_scaler_feature_mismatch_names_the_feature_counts():
    with pytest.raises(ValueError, match=r"probe batch of shape .*scalers. feature counts"):
        sb.Surrogate(mlp([2, 4, 1]), sb.Affine([0, 0, 0], [1, 1, 1]))


def test_a_cast_inside_forward_is_named():
    class Casts(torch.nn.Module):  # a user's forward that hard-codes float32
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, x):
            return self.lin(x.float())

    with pytest.raises(ValueError, match=r"float64: a cast inside its forward"):
        sb.Surrogate(Casts())
    sur = sb.Surrogate(Casts(), dtype=torch.float32)  # the dtype it casts to works
    assert sur.grad(np.zeros(2)).dtype == np.float32


def test_a_tuple_output_is_named_with_what_to_pass():
    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, x):
            return self.lin(x), x

    with pytest.raises(ValueError, match=r"returned a tuple.*lambda z: model\(z\)\[0\]"):
        sb.Surrogate(Pair())
    model = Pair().double()
    sur = sb.Surrogate(lambda z: model(z)[0], n_in=2)
    np.testing.assert_allclose(sur.grad(np.zeros(2)), model.lin.weight[0].detach().numpy())


def test_a_torch_compiled_model_is_the_module_it_compiles():
    """torch.compile's wrapper cannot be differentiated twice; the surrogate works on the
    module it wraps (the same function), and never runs the compiler."""
    net = mlp([2, 8, 1])
    with warnings.catch_warnings():  # torch's own import-time deprecation notes (inductor)
        warnings.simplefilter("ignore", DeprecationWarning)
        compiled = torch.compile(net)
    sur, plain = sb.Surrogate(compiled), sb.Surrogate(net)
    x = np.array([0.3, -0.4])
    np.testing.assert_array_equal(sur.hess(x), plain.hess(x))
    np.testing.assert_array_equal(sur.grad(np.ones((3, 2))), plain.grad(np.ones((3, 2))))


class _UnderNoGrad(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, x):
        with torch.no_grad():  # a user's evaluation habit, left in forward
            return self.lin(x)


class _Detached(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)).detach()) + 0.0 * x.sum(-1, keepdim=True)


class _ThroughNumpy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, x):
        return torch.as_tensor(np.tanh(self.lin(x).detach().numpy()))


@pytest.mark.parametrize("model", [_UnderNoGrad, _Detached, _ThroughNumpy])
def test_a_cut_graph_refuses_derivatives_instead_of_zeros(model):
    """Outputs that change with x but have no graph to x would give exact-zero derivatives;
    values still work, every derivative request says why it cannot."""
    sur = sb.Surrogate(model().double(), n_in=2, point_route="torch")
    x = np.array([0.3, -0.1])
    assert np.shape(sur(x)) == (() if sur.n_out == 1 else (2,))
    asks = [sur.jac, sur.hess, lambda z: sur.derivatives(z, 1), sur.jac]
    for ask, at in zip(asks, [x, x, x, np.stack([x, -x])], strict=True):
        with pytest.raises(ValueError, match="graph does not connect them to x"):
            ask(at)
    with pytest.raises(ValueError, match="graph does not connect"):
        sur.lagrangian_hess(x, np.ones(sur.n_out))


def test_a_partly_cut_graph_names_the_outputs():
    class PartlyDetached(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 3)

        def forward(self, x):
            y = torch.tanh(self.lin(x))
            return torch.cat([y[:, :2], y[:, 2:].detach()], -1)

    sur = sb.Surrogate(PartlyDetached().double())
    with pytest.raises(ValueError, match=r"outputs \[2\] change with x"):
        sur.jac(np.ones(2))


class _StopGradient(nn.Module):
    """tanh(a . x) * s(x), with s(x) = 1 + |x|^2 computed out of torch's graph: a .detach(),
    torch.no_grad(), .data, .item(); or the straight-through form s + (t - t.detach()), whose
    value is s but whose torch gradient is t's."""

    def __init__(self, how):
        super().__init__()
        self.how, self.lin = how, nn.Linear(2, 1)

    def forward(self, x):
        s = lambda z: 1.0 + (z**2).sum(-1, keepdim=True)  # noqa: E731
        if self.how == "detach":
            scale = s(x.detach())
        elif self.how == "no_grad":
            with torch.no_grad():
                scale = s(x)
        elif self.how == "data":
            scale = s(x.data)
        elif self.how == "item":  # (a statistic of the batch: called one point at a time)
            scale = s(x).sum().item()
        else:
            t = torch.sin(x).sum(-1, keepdim=True)
            scale = s(x).detach() + (t - t.detach())
        return torch.tanh(self.lin(x)) * scale


@pytest.mark.parametrize("how", ["detach", "no_grad", "data", "item", "straight-through"])
def test_torch_derivatives_that_are_not_the_values_derivatives_are_refused(how):
    """A forward that cuts part of its values from torch's graph: torch's derivatives exist but
    are not the function's (central differences of its values say so), so every derivative
    request is refused naming the cut; values still work."""
    sur = sb.Surrogate(_StopGradient(how).double(), n_in=2, point_route="torch")
    x = np.array([0.4, 1.3])
    z = x @ sur.function.model.lin.weight.detach().numpy()[0] + sur.function.model.lin.bias.item()
    assert sur(x) == pytest.approx(np.tanh(z) * (1 + x @ x), rel=1e-14)
    cut = {"detach": ".detach()", "no_grad": "torch.no_grad()", "data": ".data", "item": ".item()"}
    cut = cut.get(how)
    for ask in (sur.grad, sur.hess, lambda p: sur.hessp(p, np.ones(2))):
        with pytest.raises(ValueError, match=r"not the\s+derivatives of its values") as err:
            ask(x)
        assert cut is None or cut in str(err.value)


def test_a_detach_that_leaves_the_derivatives_exact_is_not_refused():
    """.detach() of a value that does not reach the outputs' derivatives (it multiplies zero)
    and torch.no_grad() on the weights alone change nothing: derivatives are given."""

    class Harmless(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, x):
            with torch.no_grad():
                w = self.lin.weight * 2.0  # the weights only
            return torch.tanh(x @ w.T) + 0.0 * x.detach().sum(-1, keepdim=True)

    sur = sb.Surrogate(Harmless().double(), point_route="torch")
    x = np.array([0.4, 1.3])
    w = 2.0 * sur.function.model.lin.weight.detach().numpy()[0]
    np.testing.assert_allclose(sur.grad(x), (1 - np.tanh(x @ w) ** 2) * w, rtol=1e-14)


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
@pytest.mark.parametrize("flat", ["clamp", "hardtanh", "where", "logit-eps"])
def test_a_function_saturated_at_every_probe_is_not_a_cut_graph(flat):
    """A narrow clamp (a physical limit) that every probe point meets on one side or the other:
    the output changes while its gradient is zero at each of them, which is that function's
    true derivative; derivatives are given, and where inside, they are 1."""
    f = {"clamp": lambda h: h.clamp(0.0, 1e-3),
         "hardtanh": lambda h: nn.functional.hardtanh(h, 0.0, 1e-3),
         "where": lambda h: torch.where(h < 0, 0.0, torch.where(h > 1e-3, 1e-3, h)),
         "logit-eps": lambda h: torch.logit(h + 0.4995, eps=0.4995)}  # fmt: skip
    f = f[flat]
    sur = sb.Surrogate(lambda x: f(x[:, :1] - 0.25), n_in=2, point_route="torch")
    np.testing.assert_array_equal(sur.grad(np.array([3.0, 0.0])), [0.0, 0.0])
    z = 0.2505 - 0.25 + 0.4995  # inside: logit's slope 1 / (z (1 - z)); the others' 1
    slope = 1.0 / (z * (1.0 - z)) if flat == "logit-eps" else 1.0
    np.testing.assert_allclose(sur.grad(np.array([0.2505, 0.0])), [slope, 0.0], rtol=1e-12)


def test_a_model_constant_in_x_keeps_its_zero_derivatives():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.ones(1, dtype=torch.float64))

        def forward(self, x):
            return self.p.expand(x.shape[0], 1)

    sur = sb.Surrogate(Constant(), n_in=2)
    np.testing.assert_array_equal(sur.grad(np.ones(2)), np.zeros(2))


def test_model_not_callable():
    with pytest.raises(TypeError, match="nn.Module or callable"):
        sb.Surrogate(42)


# cache (on the torch route, whose passes the hooks count) ---------------------------------
def test_value_then_grad_is_one_pass():
    model, calls = counting(mlp([2, 8, 1]))
    sur = sb.Surrogate(model, point_route="torch")
    calls.clear()
    x = np.array([0.1, 0.2])
    sur(x), sur.grad(x), sur(x), sur.grad(x)
    assert len(calls) == 1
    info = sur.cache_info()
    assert (info.hits, info.misses, info.passes, info.currsize) == (3, 1, 1, 1)


def test_prefetch_off_makes_value_only_pass():
    model, calls = counting(mlp([2, 8, 1]))
    sur = sb.Surrogate(model, point_route="torch", prefetch_grad=False)
    calls.clear()
    x = np.array([0.1, 0.2])
    sur(x), sur.grad(x)
    assert len(calls) == 2


@pytest.mark.parametrize(
    "order",
    [("H", "y", "J"), ("y", "J", "H"), ("J", "H", "p", "y")],
    ids=["hess-first", "value-first", "grad-first"],
)
def test_second_order_requests_cost_one_pass_per_point(order):
    model, calls = counting(mlp([2, 8, 1]))
    sur = sb.Surrogate(model, point_route="torch")
    calls.clear()
    ask = {"y": sur, "J": sur.grad, "H": sur.hess, "p": lambda x: sur.hessp(x, [1.0, 2.0])}
    for i in range(4):
        x = np.array([0.1 * i, 0.2])
        for k in order:
            ask[k](x)
    assert len(calls) == 4


def test_cached_hessian_serves_hessp_and_lagrangian():
    model, calls = counting(mlp([2, 8, 1]))
    sur = sb.Surrogate(model, point_route="torch")
    x = np.array([0.1, 0.2])
    H = sur.hess(x)
    calls.clear()
    np.testing.assert_allclose(sur.hessp(x, [1.0, -1.0]), H @ [1.0, -1.0], rtol=1e-13)
    np.testing.assert_allclose(sur.lagrangian_hess(x, [2.0]), 2 * H, rtol=1e-13)
    assert not calls


def test_large_n_hessp_uses_kept_graph():
    model, calls = counting(mlp([20, 8, 1], nn.Softplus))
    sur = sb.Surrogate(model, point_route="torch")
    x = np.linspace(-1, 1, 20)
    H = sur.hess(np.stack([x]))[0]
    calls.clear()
    for p in np.eye(20)[:3]:
        np.testing.assert_allclose(sur.hessp(x, p), H @ p, rtol=1e-12, atol=1e-14)
    assert len(calls) == 1  # one forward, then backward passes on the kept graph


def test_mutating_caller_array_cannot_poison_cache(scal):
    x = np.array([0.1, 0.2])
    v0 = scal(x)
    x[0] = 5.0  # Newton-CG and SLSQP do this to arrays they handed over
    assert scal(x) != v0
    assert scal(np.array([0.1, 0.2])) == v0
    g = scal.grad(x)
    g[:] = 0.0  # nor can mutating a returned result
    assert np.any(scal.grad(x) != 0.0)


@pytest.mark.parametrize("route", ["torch", "numpy", "casadi"])
@pytest.mark.parametrize("n_out", [1, 2])
def test_a_solvers_point_is_answered_as_any_other_one_point(route, n_out):
    """A float64 array of shape (n_in,) takes the direct path to the cache (also a strided
    view), with a float64 array as hessp's p or lagrangian_hess's v; a list or a tuple the
    general one: the same values, shapes and types, and every result a fresh array (editing
    one leaves the cache as it was)."""
    sur = sb.Surrogate(mlp([3, 6, n_out]), StandardScaler().fit(np.eye(3)), point_route=route)
    x, p, v = np.array([0.2, -0.4, 0.9]), np.array([1.0, 0.5, -2.0]), np.linspace(1, 2, n_out)
    asks = {"__call__": sur, "jac": sur.jac, "hess": sur.hess}
    asks["lagrangian_hess"] = lambda z: sur.lagrangian_hess(z, v if type(z) is np.ndarray else [*v])
    if n_out == 1:
        asks |= {"grad": sur.grad, "value_and_grad": sur.value_and_grad}
        asks["hessp"] = lambda z: sur.hessp(z, p if type(z) is np.ndarray else tuple(p))

    def parts(r):
        return list(r) if isinstance(r, tuple) else [r]

    for name, ask in asks.items():
        first = parts(ask(x))
        for other in (x.tolist(), tuple(x), np.stack([x, -x], axis=1)[:, 0]):
            again = parts(ask(other))
            assert [type(a) for a in first] == [type(b) for b in again], name
            for a, b in zip(first, again, strict=True):
                np.testing.assert_array_equal(a, b)
        for r in first:
            if isinstance(r, np.ndarray):
                r[...] = np.nan
        for a, b in zip(parts(ask(x)), parts(ask(x.tolist())), strict=True):
            assert np.isfinite(a).all(), name
            np.testing.assert_array_equal(a, b)


def test_cache_size_bound_and_clear(scal):
    sur = sb.Surrogate(mlp([2, 4, 1]), cache_size=3)
    for i in range(10):
        sur([float(i), 0.0])
    assert sur.cache_info().currsize == 3
    sur.cache_clear()
    assert sur.cache_info() == sb.CacheInfo(0, 0, 3, 0, 0)
    off = sb.Surrogate(mlp([2, 4, 1]), cache_size=0)
    off([0.0, 0.0]), off([0.0, 0.0])
    assert off.cache_info().currsize == 0


@pytest.mark.parametrize("order", [0, 1, 3])
def test_chunks_fill_every_order_as_one_pass_would(order):
    """Results allocated once and filled chunk by chunk (a last, shorter chunk too) equal one
    pass over all rows, for every order and a vector output."""
    sur = sb.Surrogate(mlp([3, 8, 2]))
    X = torch.randn(23, 3, dtype=torch.float64)
    whole = sur.derivatives(X, order=order)
    sur.chunk_size = 5
    for a, b in zip(sur.derivatives(X, order=order), whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


@pytest.mark.cuda
def test_cuda_memory_beyond_the_results_does_not_grow_with_n():
    """Chunking bounds GPU memory: beyond the input and the results (allocated once, filled
    chunk by chunk), 16 times the points take no more memory than one chunk's work."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    sur = sb.Surrogate(mlp([2, 64, 64, 1]), device="cuda")
    sur.chunk_size = 4096

    def extra(N):
        X = torch.randn(N, 2, dtype=torch.float64, device="cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        y, g, H = sur.derivatives(X, order=2)
        torch.cuda.synchronize()
        results = sum(t.numel() * t.element_size() for t in (y, g, H))
        return torch.cuda.max_memory_allocated() - base - results

    one, many = extra(4 * 4096), extra(64 * 4096)
    assert many <= one * 1.25 + 2**20, (one, many)


def test_auto_chunks_are_4096_rows_on_the_cpu_and_a_set_size_is_checked():
    model, calls = counting(mlp([2, 16, 1]))
    sur = sb.Surrogate(model, point_route="torch")
    assert sur.chunk_size == "auto"
    X = np.random.default_rng(0).normal(size=(2 * 4096 + 5, 2))
    calls.clear()
    H = sur.hess(X)
    assert calls == [4096, 4096, 5]
    sur.chunk_size = 3000
    calls.clear()
    np.testing.assert_array_equal(sur.hess(X), H)  # rows are independent: chunks change nothing
    assert calls == [3000, 3000, 2197]
    for bad in (0, -1, 2.5, True, "big", None):
        with pytest.raises(ValueError, match=r"chunk_size must be 'auto' or an int >= 1.*got"):
            sur.chunk_size = bad
    assert sur.chunk_size == 3000


def test_auto_chunk_rows_follow_the_bytes_per_row_and_are_measured_again_after_pickle():
    from surrogate_bridge.chunks import CHUNK_BYTES, MAX_ROWS, Chunks, rows_for

    assert rows_for(4.6 * 2**10, CHUNK_BYTES) == 455_680  # 2 GiB / 4.6 KiB, to 1024 rows
    assert rows_for(20 * 2**10, CHUNK_BYTES) == 104_448
    assert rows_for(2**31, CHUNK_BYTES) == 1 and rows_for(600, 500) == 1  # never none
    assert rows_for(0.0, CHUNK_BYTES) == rows_for(1e-3, 1e9) == MAX_ROWS
    assert rows_for(2**20, 700 * 2**20) == 700  # below 1024 rows: exact
    chunks = Chunks(torch.device("cuda", 0))
    chunks.per_row[2] = 1234.0
    again = pickle.loads(pickle.dumps(chunks))  # another machine's device: measured there
    assert again.per_row == again.bound == {} and again.to_measure(2)
    assert not chunks.to_measure(2)
    assert chunks.rows(1) == 16384  # not measured yet
    chunks._budget = lambda: CHUNK_BYTES  # (the device's free memory, on a machine without one)
    chunks.bound[1] = 1e6  # a loose upper bound: never below the fixed chunk...
    assert chunks.rows(1) == 16384 and chunks.to_measure(1)
    chunks.bound[1] = 16 * 2**10  # ...and above it where the bound allows
    assert chunks.rows(1) == rows_for(16 * 2**10, CHUNK_BYTES) == 131_072
    assert chunks.rows(2) == MAX_ROWS  # (1234 bytes a row, exact)
    cpu = Chunks(torch.device("cpu"))
    assert cpu.rows(2) == 4096 and not cpu.to_measure(1)


@pytest.mark.cuda
def test_cuda_auto_chunks_are_sized_by_the_measured_memory_and_bounded():
    """On a GPU the first chunk (4096 rows) is measured and the rest hold as many rows as fit
    the budget: same results as fixed chunks, and memory beyond the results within the budget.
    Where an earlier, higher peak hides the first chunk's own (here the user's 2 GiB, or the
    input check of the large batch itself), the sum of its allocations bounds it (never below
    the fixed 16384 rows), and the next batch measures again."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from surrogate_bridge.chunks import CHUNK_BYTES, FALLBACK_ROWS

    N = 2**21  # more than the first chunk and two sized ones (at most 2**20 rows each)
    X = torch.randn(N, 2, dtype=torch.float64, device="cuda")
    # hidden: a first batch of 2**21 rows after the user's own 2 GiB peak
    model, calls = counting(mlp([2, 64, 64, 1]))
    sur = sb.Surrogate(model, device="cuda")
    torch.empty(2**31, dtype=torch.uint8, device="cuda")
    calls.clear()
    y, g, H = sur.derivatives(X, order=2)
    bound, rows = sur._chunks.bound[2], sur._chunks.rows(2)
    assert 1e3 < bound < 1e5 and sur._chunks.per_row == {} and sur._chunks.to_measure(2)
    assert rows >= FALLBACK_ROWS and calls[0] == 4096 and set(calls[1:-1]) == {rows}
    # seen: a first batch of 8192 rows after a reset of the peak (the test's own reset; the
    # library never resets), then the large one, in chunks sized from the exact figure
    model, calls = counting(mlp([2, 64, 64, 1]))
    sur = sb.Surrogate(model, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    sur.derivatives(X[:8192], order=2)
    per_row, rows = sur._chunks.per_row[2], sur._chunks.rows(2)
    assert 1e3 < per_row <= bound and not sur._chunks.to_measure(2)  # (the bound holds)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    calls.clear()
    found = sur.derivatives(X, order=2)
    torch.cuda.synchronize()
    assert rows > FALLBACK_ROWS and set(calls[:-1]) == {rows} and sum(calls) == N
    results = sum(t.numel() * t.element_size() for t in found)
    assert torch.cuda.max_memory_allocated() - base - results <= CHUNK_BYTES * 1.25
    sur.chunk_size = 16384
    for a, b, c in zip(sur.derivatives(X, order=2), found, (y, g, H), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(a, c, rtol=1e-13, atol=1e-15)


def test_batches_bypass_cache(scal):
    scal(np.zeros((5, 2)))
    assert scal.cache_info().currsize == 0


def test_batched_memory_is_chunked():
    model, calls = counting(mlp([2, 16, 1]))
    sur = sb.Surrogate(model, point_route="torch")
    sur.chunk_size = 7
    X = np.random.default_rng(0).normal(size=(30, 2))
    ref = sb.Surrogate(mlp([2, 16, 1])).hess(X)
    calls.clear()
    np.testing.assert_allclose(sur.hess(X), ref, rtol=1e-12)
    assert calls == [7, 7, 7, 7, 2]  # the model never saw more rows than a chunk


# warnings -----------------------------------------------------------------------------------
@pytest.fixture
def bounded():
    data = np.array([[-3.0, -3.0], [3.0, 3.0]])
    return sb.Surrogate(Quadratic(P_SEED), MinMaxScaler().fit(data))


def test_bounds_from_minmax(bounded):
    b = bounded.bounds()
    np.testing.assert_array_equal(b.lb, [-3, -3])
    np.testing.assert_array_equal(b.ub, [3, 3])


def test_extrapolation_warns_once(bounded):
    bounded([0.0, 0.0])
    with pytest.warns(sb.ExtrapolationWarning, match=r"x\[1\] = 4 lies outside.*\[-3, 3\]"):
        bounded([0.0, 4.0])
    bounded([0.0, 5.0])  # once per surrogate: no second warning


def test_extrapolation_raise_and_ignore(bounded):
    bounded.extrapolation = "raise"
    with pytest.raises(sb.ExtrapolationError, match="outside the training domain"):
        bounded.grad(torch.tensor([[0.0, 0.0], [-4.0, 0.0]]))
    bounded.extrapolation = "ignore"
    bounded.grad([10.0, 10.0])


def test_one_point_is_checked_as_a_batch_is_at_the_domain_edges():
    """A solver's point (float64, shape (n_in,)) is checked on Python floats, a batch by numpy:
    the same decision for every point on, just inside and just outside each edge (the box's
    rounding tolerance; the open interval where a log input scaler is defined), in every
    policy, also after the policy changes."""
    from surrogate_bridge.convert import Points

    flip, log = sb.Affine([0.0, 1.0], [1.0, -2.0]), sb.Warp("log", n_features=2)
    scaler = sb.Scaling([flip, log, sb.Affine([0.0, 1.0], [2.0, 3.0])])
    np.testing.assert_array_equal(np.array(scaler.defined()), [[0, -np.inf], [np.inf, 1]])
    lb, ub = np.array([0.5, -1.0e6]), np.array([4.0, 0.5])
    tol = 1e-9 * np.maximum(ub - lb, 1.0)
    edges = np.concatenate([lb - tol, ub + tol, [0.0, 1.0]])  # (0 and 1: where the log stops)
    near = np.concatenate([np.nextafter(edges, -np.inf), edges, np.nextafter(edges, np.inf)])
    rows = np.array([[a, b] for a in near for b in (0.3, -2.0)] + [[2.0, b] for b in near])
    for policy in ("raise", "warn", "ignore", "raise"):
        sur = sb.Surrogate(mlp([2, 4, 1]), scaler, domain=(lb, ub), extrapolation="ignore")
        sur.extrapolation = policy  # (a changed policy is read at every check)
        d = sur._domain
        for row in rows:
            one = _verdict(d, d.check_point, row.copy())
            full = _verdict(d, d.check, Points(row[None].copy(), True, False))
            assert one == full, (policy, row)


def _verdict(domain, check, *args):
    """What ``check(*args, "f")`` says on a domain that has not warned yet: nothing, or the
    type and message of its warning or error."""
    domain._warned = False
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        try:
            check(*args, "f")
        except (ValueError, sb.ExtrapolationError) as err:
            return type(err), str(err)
    return [(w.category, str(w.message)) for w in said] or None


def test_explicit_domain():
    sur = sb.Surrogate(mlp([2, 4, 1]), domain=([0, 0], [1, 2]), extrapolation="raise")
    np.testing.assert_array_equal(sur.bounds().ub, [1, 2])
    with pytest.raises(sb.ExtrapolationError):
        sur([1.5, 0.0])


@pytest.mark.parametrize("act", [nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh, nn.PReLU])
def test_smoothness_warning_for_piecewise_linear(act):
    sur = sb.Surrogate(mlp([2, 4, 1], act))
    sur([0.1, 0.2]), sur.grad([0.1, 0.2])  # first derivatives are fine: no warning
    with pytest.warns(sb.SmoothnessWarning, match="piecewise-linear"):
        sur.hess([0.1, 0.2])


def test_functional_relu_detected():
    class F(nn.Module):
        def forward(self, z):
            return torch.relu(z).sum(-1)

    with pytest.warns(sb.SmoothnessWarning):
        sb.Surrogate(F(), n_in=2).derivatives([0.5, 0.5], order=2)


KINKS = {
    "abs": torch.abs,
    "builtin-abs": abs,
    "softshrink": nn.functional.softshrink,
    "threshold": lambda h: nn.functional.threshold(h, 0.1, 0.0),
}
PICKS = {
    "where": lambda h: torch.where(h > 0, h, 0.1 * h),  # a hand-written leaky ReLU
    "maximum": lambda h: torch.maximum(h, torch.tanh(h)),
    "hardswish": nn.functional.hardswish,
    "mask": lambda h: h * (h > 0) + 0.1 * h * (h <= 0),  # the same, through masks
    # the greatest of several values: derivatives switch where two cross
    "amax": lambda h: h * h.amax(-1, keepdim=True),
    "max_pool": lambda h: nn.functional.max_pool1d(h[:, None], 2, 1, 1)[:, 0, 1:],
    "sort": lambda h: h * torch.sort(h, -1).values,
}
STEPS = {
    "floor": lambda h: h + torch.floor(h),
    "round": lambda h: h + torch.round(3 * h) / 3,
    "sign": lambda h: torch.tanh(h) * torch.sign(h),
    "remainder": lambda h: h + h % 0.5,
}


@pytest.mark.parametrize("name", [*KINKS, *PICKS, *STEPS])
def test_smoothness_warning_for_hand_written_non_smooth_functions(name):
    """Kinks and branch selections warn at second derivatives (their Hessian is zero, or the
    branch's taken); steps warn at the first derivative already: no derivative sees a jump."""
    f = {**KINKS, **PICKS, **STEPS}[name]
    sur, x = sb.Surrogate(Hand(f)), np.array([0.3, -0.4])
    words = "steps" if name in STEPS else "selects" if name in PICKS else "piecewise-linear"
    with warnings.catch_warnings():
        warnings.simplefilter("error", sb.SmoothnessWarning)
        sur(x)
        if name not in STEPS:
            sur.grad(x), sur.value_and_grad(x)
    with pytest.warns(sb.SmoothnessWarning, match=words):
        sur.hess(x) if name not in STEPS else sur.value_and_grad(x)


@pytest.mark.parametrize("step", ["round", "sign", "floor"])
def test_a_model_whose_outputs_are_steps_gives_zero_derivatives_with_a_warning(step):
    """A quantized input (a net of round(4 x) / 4): every derivative is zero, which is a step's
    true derivative, not a detached graph; values come, and derivatives with the warning (once
    per surrogate)."""
    f = getattr(torch, step)
    sur = sb.Surrogate(Hand(lambda h: torch.tanh(f(4 * h) / 4)), sb.Affine([0, 0], [2, 2]))
    x = np.array([0.3, -0.7])
    assert np.isfinite(sur(x))
    with pytest.warns(sb.SmoothnessWarning, match="steps"):
        g = sur.grad(x)
    assert g.shape == (2,) and not g.any() and not sur.hess(x).any()  # warned once, above


def test_smooth_models_do_not_warn():
    """No false alarm from the torch functions smooth layers call."""
    mha = nn.MultiheadAttention(6, 2, batch_first=True).double()

    def attention(h):
        return mha(h[:, None], h[:, None], h[:, None])[0][:, 0]

    def glu(h):
        return nn.functional.glu(torch.cat([h, h.flip(-1)], -1))

    def reads_a_dtype(h):  # (torchdiffeq's y.abs().dtype: an abs whose values go unused)
        return torch.tanh(h).to(h.abs().dtype)

    for f in (attention, nn.functional.normalize, glu, nn.Mish(), nn.GELU(), reads_a_dtype):
        with warnings.catch_warnings():
            warnings.simplefilter("error", sb.SmoothnessWarning)
            sb.Surrogate(Hand(f)).hess(np.array([0.3, -0.4]))
    for f in (torch.abs, lambda h: torch.tanh(h) + h.abs().sum(-1, keepdim=True)):
        with pytest.warns(sb.SmoothnessWarning, match="abs"):  # (used: warned)
            sb.Surrogate(Hand(f)).hess(np.array([0.3, -0.4]))


class ConstantPicks(nn.Module):
    """Non-smooth calls on constants alone (a mask of every other feature from arange and a
    remainder, a weight's rounded size), a torch.where on such a mask and on a mask buffer:
    the function of x is smooth."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(2, 6).double()
        self.register_buffer("odd", torch.arange(6) % 2 == 1)

    def forward(self, z):
        h = torch.tanh(self.a(z))
        even = torch.arange(6) % 2 == 0
        scale = self.a.weight.abs().max().floor() + 1.0
        return (torch.where(even, h, h * h) + torch.where(self.odd, h, -h) * scale).sum(-1)[:, None]


class WrittenPicks(nn.Module):
    """A constant mask overwritten in place by a comparison of the input, read through a view
    made before the write: a selection that depends on x."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(2, 6).double()

    def forward(self, z):
        h = self.a(z)
        mask = torch.zeros(h.shape[0], 6, dtype=torch.bool)
        seen = mask.view(-1, 6)
        mask[:] = h > 0
        return torch.where(seen, h, 0.1 * h).sum(-1)[:, None]


def test_calls_on_constants_alone_do_not_warn_but_what_x_writes_into_them_does():
    x = np.array([0.3, -0.4])
    sur = sb.Surrogate(ConstantPicks())
    assert sur.nonsmooth_ops == ()
    with warnings.catch_warnings():
        warnings.simplefilter("error", sb.SmoothnessWarning)
        H = sur.hess(x)
    assert np.abs(H).max() > 1e-3  # (the curvature of tanh and its square)
    sur = sb.Surrogate(WrittenPicks())
    assert "where" in sur.nonsmooth_ops
    with pytest.warns(sb.SmoothnessWarning, match="selects"):
        sur.hess(x)


def test_device_results_match_cpu(device):
    sur, ref = sb.Surrogate(mlp([2, 8, 1]), device=device), sb.Surrogate(mlp([2, 8, 1]))
    X = np.random.default_rng(0).normal(size=(3, 2))
    x = torch.tensor(X, dtype=torch.float64, device=device)
    H = sur.hess(x)
    assert H.device.type == device and H.dtype == torch.float64
    np.testing.assert_allclose(H.cpu().numpy(), ref.hess(X), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sur.hess(X[0]), ref.hess(X[0]), rtol=1e-12, atol=1e-15)


def test_a_closure_over_device_tensors_saves_and_translates(device, tmp_path):
    """A function that keeps a tensor of its own on the surrogate's device (a closure's, which
    no copy can move to the CPU) is captured there and its graph moved to the CPU: saved and
    loaded, exported and (where CasADi is present) translated, it is the CPU function."""
    P = torch.tensor([[2.0, -0.5], [-0.5, 1.0]], dtype=torch.float64)
    Pd = P.to(device)
    sur = sb.Surrogate(lambda x: torch.tanh(x @ Pd).pow(2).sum(-1), n_in=2, device=device)
    ref = sb.Surrogate(lambda x: torch.tanh(x @ P).pow(2).sum(-1), n_in=2)
    X = np.random.default_rng(0).normal(size=(5, 2))
    program = sur.export(one_point=True).module()
    got = torch.cat([program(torch.tensor(x[None])) for x in X]).reshape(-1)
    np.testing.assert_allclose(got.numpy(), ref(X), rtol=1e-14, atol=1e-15)
    sb.save(sur, tmp_path / "closure.sbz")
    loaded = sb.load(tmp_path / "closure.sbz")
    np.testing.assert_allclose(loaded(X), ref(X), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(loaded.hess(X[0]), ref.hess(X[0]), rtol=1e-12, atol=1e-14)
    if importlib.util.find_spec("casadi") is not None:
        F = sb.casadi_function(sur, mode="symbolic")
        np.testing.assert_allclose([float(F(x)) for x in X], ref(X), rtol=1e-14, atol=1e-15)


def test_pandas_inputs_are_checked_against_the_scalers_feature_names(tmp_path):
    """As sklearn refuses a DataFrame whose columns differ from those it was fitted on: a
    silent permutation of the inputs would be a wrong answer with no error."""
    pd = pytest.importorskip("pandas")
    X = np.random.default_rng(0).uniform([1, 100, 0], [5, 300, 1], (40, 3))
    df = pd.DataFrame(X, columns=["T", "P", "phi"])
    sur = sb.Surrogate(mlp([3, 8, 1], seed=0), StandardScaler().fit(df))
    assert sur.feature_names == ("T", "P", "phi")
    sb.save(sur, tmp_path / "named.sbz")
    for s in (sur, sb.load(tmp_path / "named.sbz")):
        assert s.feature_names == ("T", "P", "phi")
        np.testing.assert_array_equal(s(df.iloc[:4]), s(X[:4]))  # named and in order
        assert s.grad(df.iloc[2]).tolist() == s.grad(X[2]).tolist()  # a row: its index
        np.testing.assert_array_equal(s(pd.DataFrame(X[:4])), s(X[:4]))  # unnamed: as given
        for cols, why in (
            (["P", "T", "phi"], "has another order"),
            (["T", "P"], r"lacks \['phi'\]"),
            (["T", "P", "phi", "flow"], r"also has \['flow'\]"),
        ):
            other = df.assign(flow=1.0)[cols]
            with pytest.raises(ValueError, match=rf"x has the columns .*{why}\. Pass x\["):
                s(other.iloc[:4])
        with pytest.raises(ValueError, match=r"Surrogate.hess: x has the columns \['P', 'T'"):
            s.hess(df[["P", "T", "phi"]].iloc[0])
    with pytest.raises(ValueError, match=r"minimize: x0 has the columns \['P', 'T', 'phi'\]"):
        sb.minimize(sur, df[["P", "T", "phi"]].iloc[0])
    with pytest.raises(ValueError, match=r"multistart: x0 has the columns \['P', 'T', 'phi'\]"):
        sb.multistart(sur, df[["P", "T", "phi"]].iloc[:4])
    assert sb.minimize(sur, df.iloc[0], options={"maxiter": 2}).x.shape == (3,)  # in order: taken
    values = {"T": 2.0, "P": 150.0, "phi": 0.5}  # by name: a Series of them is checked
    with pytest.raises(TypeError, match=r"For values by feature name, pass pd.Series\(x\)"):
        sur(values)
    assert sur(pd.Series(values)) == sur([2.0, 150.0, 0.5])


def test_fit_keeps_a_dataframes_column_names_and_checks_them_against_a_fitted_scaler():
    pd = pytest.importorskip("pandas")
    X = np.random.default_rng(0).uniform(-1, 1, (40, 2))
    df = pd.DataFrame(X, columns=["a", "b"])
    sur = sb.fit(mlp([2, 4, 1]), df, X[:, 0], epochs=5, progress=False, seed=0)
    assert sur.feature_names == ("a", "b")
    with pytest.raises(ValueError, match=r"fit: X has the columns \['b', 'a'\].*\['a', 'b'\]"):
        sb.fit(mlp([2, 4, 1]), df[["b", "a"]], X[:, 0], input_scaler=MinMaxScaler().fit(df))


def test_the_memory_layout_of_x_does_not_change_a_bit():
    """A column-major array (a DataFrame's values) or a strided tensor gives the same bits as
    a row-major one: results are a function of the numbers alone."""
    X = np.random.default_rng(0).uniform([1, 100, 0], [5, 300, 1], (40, 3))
    sur = sb.Surrogate(mlp([3, 8, 1], seed=0), StandardScaler().fit(X))
    for kind in ("__call__", "grad", "hess"):
        f = getattr(sur, kind)
        np.testing.assert_array_equal(f(np.asfortranarray(X)), f(X))
        T = torch.as_tensor(X)
        assert torch.equal(f(T.T.contiguous().T), f(T))


def test_warnings_point_at_the_callers_line():
    """However deep inside the package a warning is issued, it names the line that called in."""
    X = np.random.default_rng(0).uniform(-1, 1, (20, 2))
    relu = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    calls = {
        "batch": lambda s: s.grad(np.array([[0.0, 3.0], [0.0, 0.0]])),
        "fast path": lambda s: s.value_and_grad(np.array([0.0, 3.0])),
        "one point": lambda s: s.hessp(np.array([0.0, 3.0]), np.ones(2)),
    }
    for name, call in calls.items():
        sur = sb.Surrogate(mlp([2, 4, 1]), MinMaxScaler().fit(X))
        with pytest.warns(sb.ExtrapolationWarning) as got:
            call(sur)
        assert got[0].filename == __file__, (name, got[0].filename)
    with pytest.warns(sb.SmoothnessWarning) as got:
        sb.Surrogate(relu, MinMaxScaler().fit(X)).hess(X[0])
    assert got[0].filename == __file__
    with pytest.warns(sb.PrecisionWarning) as got:
        sb.minimize(sb.Surrogate(mlp([2, 4, 1]), dtype=torch.float32), [0.0, 0.0])
    assert got[0].filename == __file__


def test_a_torch_func_ensemble_on_a_meta_base_works_on_every_route_and_saves(tmp_path):
    """PyTorch's ensembling recipe keeps a data-free base module on the meta device, which
    Module.to refuses to move; its vmap is written out as aten operations for save and CasADi.
    Truth: the members' mean, differentiated by torch.autograd.functional."""
    members = [mlp([2, 12, 1], nn.Tanh, seed=k) for k in range(3)]
    model = StackedEnsemble(members)
    sur = sb.Surrogate(model, sb.Affine([0.5, -0.5], [2.0, 1.5]))
    X = np.random.default_rng(0).uniform(-2, 2, (40, 2))

    def mean(x):
        z = (x - torch.tensor([0.5, -0.5], dtype=x.dtype)) / torch.tensor([2.0, 1.5])
        return sum(m(z[None])[0, 0] for m in members) / 3

    for x in X[:3]:
        xt = torch.tensor(x)
        np.testing.assert_allclose(sur(x), mean(xt).item(), rtol=1e-14)
        g = torch.autograd.functional.jacobian(mean, xt).numpy()
        np.testing.assert_allclose(sur.grad(x), g, rtol=1e-13, atol=1e-15)
        h = torch.autograd.functional.hessian(mean, xt).numpy()
        np.testing.assert_allclose(sur.hess(x), h, rtol=1e-12, atol=1e-14)
    for x in X:  # the measured routes, past their 32 points
        sur.hess(x)
    if importlib.util.find_spec("casadi"):
        assert "casadi route unavailable" not in sur.point_route_report["note"]
    np.testing.assert_allclose(sur.hess(X[:5]), [sur.hess(x) for x in X[:5]], rtol=1e-12)
    sb.save(sur, tmp_path / "ensemble.sbz")
    np.testing.assert_array_equal(sb.load(tmp_path / "ensemble.sbz").hess(X[:5]), sur.hess(X[:5]))
    if importlib.util.find_spec("casadi"):
        F = sb.casadi_function(sur, mode="symbolic")
        np.testing.assert_allclose(float(F(X[7])), sur(X[7]), rtol=1e-14)
    assert model.base[0].weight.is_meta  # the caller's model as it was


@pytest.mark.parametrize("model", [Hamiltonian(), FuncGradHamiltonian()], ids=["autograd", "func"])
def test_a_forward_that_differentiates_inside_has_every_route(model, tmp_path):
    """A Hamiltonian network computes J grad H in its forward (autograd.grad on an input it
    marks as requiring grad, or torch.func.grad): it works on one point alone (the probe
    passes copies, not no-grad views, which such a forward cannot differentiate), with exact
    derivatives, against the closed form through H and central differences. Traced through
    autograd (through_autograd.py), it also has the numpy and CasADi routes, a saved file and
    a symbolic CasADi translation (they once refused it)."""
    J = np.array([[0.0, 1.0], [-1.0, 0.0]])
    surs = {r: sb.Surrogate(model, point_route=r) for r in ("torch", "numpy", "casadi")}
    sb.save(surs["torch"], tmp_path / "h.sbz")
    surs["loaded"] = sb.load(tmp_path / "h.sbz")
    for x in np.random.default_rng(1).uniform(-1, 1, (3, 2)):
        xt = torch.tensor(x)
        grad_h = torch.autograd.functional.jacobian(lambda z: model.H(z[None])[0, 0], xt)
        hess_h = torch.autograd.functional.hessian(lambda z: model.H(z[None])[0, 0], xt)
        h = 1e-5
        for sur in surs.values():
            np.testing.assert_allclose(sur(x), J @ grad_h.numpy(), rtol=1e-14, atol=1e-16)
            np.testing.assert_allclose(sur.jac(x), J @ hess_h.numpy(), rtol=1e-13, atol=1e-15)
            fd = np.stack([(sur.jac(x + e) - sur.jac(x - e)) / (2 * h) for e in np.eye(2) * h], -1)
            np.testing.assert_allclose(sur.hess(x), fd, atol=1e-8)
            np.testing.assert_allclose(sur.hess(x), surs["torch"].hess(x), rtol=1e-12, atol=1e-14)
    if importlib.util.find_spec("casadi"):
        import casadi as ca

        F, z = sb.casadi_function(surs["torch"], mode="symbolic"), ca.MX.sym("z", 2)
        H = ca.Function("H", [z], [ca.hessian(ca.dot(ca.DM([1.0, -2.0]), F(z)), z)[0]])
        x = np.array([0.3, -0.4])
        want = surs["torch"].lagrangian_hess(x, np.array([1.0, -2.0]))
        np.testing.assert_allclose(np.array(H(x)), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("act", [nn.Softplus, nn.SiLU, nn.GELU, nn.ELU, nn.Sigmoid])
def test_the_traced_field_of_a_deeper_hamiltonian_on_every_route(act):
    """Two hidden layers and other activations: the traced backward operations (softplus's,
    silu's, gelu's, elu's, sigmoid's) read by the numpy route and CasADi, as torch computes."""
    model = Hamiltonian(seed=1, act=act, sizes=(2, 12, 12, 1))
    ref = sb.Surrogate(model, point_route="torch")
    v = np.array([1.0, -2.0])
    for route in ("numpy", "casadi"):
        sur = sb.Surrogate(model, point_route=route)
        for x in np.random.default_rng(2).uniform(-1, 1, (2, 2)):
            np.testing.assert_allclose(sur.jac(x), ref.jac(x), rtol=1e-12, atol=1e-14)
            got, want = sur.lagrangian_hess(x, v), ref.lagrangian_hess(x, v)
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)


# --- inside the caller's torch.func transforms ---------------------------------------------------
_S, _C = np.array([0.3, -1.0, 2.0]), np.array([1.5, 0.5, 4.0])
_YS, _YC = np.array([0.1, -2.0]), np.array([3.0, 0.25])


def _sinsum_truth(x):
    """f = yc * [sum sin z, sum z^2] + ys with z = (x - s) / c, and its J and H in closed form."""
    z = (x - _S) / _C
    f = _YC * np.array([np.sin(z).sum(), (z**2).sum()]) + _YS
    J = _YC[:, None] * np.stack([np.cos(z) / _C, 2 * z / _C])
    H = _YC[:, None, None] * np.stack([np.diag(-np.sin(z) / _C**2), np.diag(2 / _C**2)])
    return f, J, H


def _sinsum():
    return sb.Surrogate(SinSum(), sb.Affine(_S, _C), sb.Affine(_YS, _YC), n_in=3)


def test_torch_func_transforms_over_a_surrogate_give_the_closed_form():
    """vmap, jacrev, jacfwd, hessian and grad over a Surrogate (and over its grad, hess, hessp and
    lagrangian_hess) are the exact derivatives: the checks that read values (finite, training
    domain) read the transform's wrapped values, derivatives go by torch.func, and a forward-mode
    tangent is never detached (before, jacfwd(sur) silently gave a zero Jacobian)."""
    F = torch.func
    sur = _sinsum()
    rng = np.random.default_rng(0)
    X = torch.tensor(rng.uniform(-2, 2, (5, 3)))
    P, V = torch.tensor(rng.normal(size=(5, 3))), torch.tensor(rng.normal(size=(5, 2)))
    truth = [_sinsum_truth(x) for x in X.numpy()]
    f, J, H = (np.stack([t[k] for t in truth]) for k in range(3))
    first = lambda x: sur(x)[0]  # noqa: E731  a scalar function of one point
    got = {
        "vmap(sur)": (F.vmap(sur)(X), f),
        "vmap(jacrev)": (F.vmap(F.jacrev(sur))(X), J),
        "vmap(jacfwd)": (F.vmap(F.jacfwd(sur))(X), J),
        "jacfwd one point": (F.jacfwd(sur)(X[0]), J[0]),
        "vmap(hessian)": (F.vmap(F.hessian(sur))(X), H),
        "grad": (F.grad(first)(X[1]), J[1, 0]),
        "vmap(sur.jac)": (F.vmap(sur.jac)(X), J),
        "jacfwd(sur.jac)": (F.jacfwd(sur.jac)(X[2]), H[2]),
        "vmap(derivatives)": (F.vmap(lambda x: sur.derivatives(x)[2])(X), H),
        "vmap(lagrangian_hess)": (
            F.vmap(sur.lagrangian_hess)(X, V),
            np.einsum("ki,kijl->kjl", V, H),
        ),
        "vmap over v only": (
            F.vmap(lambda v: sur.lagrangian_hess(X[0].numpy(), v))(V),
            np.einsum("ki,ijl->kjl", V, H[0]),
        ),
    }
    for name, (a, b) in got.items():
        assert isinstance(a, torch.Tensor), name
        np.testing.assert_allclose(a.detach().numpy(), b, rtol=1e-12, atol=1e-12, err_msg=name)
    with pytest.raises(ValueError, match="n_out"):  # as outside a transform
        F.vmap(sur.grad)(X)
    scalar = sb.Surrogate(nn.Sequential(SinSum(), nn.Linear(2, 1).double()), n_in=3)
    Hs = scalar.hess(X.numpy())
    np.testing.assert_allclose(F.vmap(scalar.hess)(X).numpy(), Hs, rtol=1e-13, atol=1e-15)
    hp = F.vmap(scalar.hessp)(X, P).numpy()
    np.testing.assert_allclose(hp, np.einsum("kij,kj->ki", Hs, P.numpy()), rtol=1e-12, atol=1e-14)


def test_torch_func_transforms_keep_the_checks_that_read_values():
    F = torch.func
    sur = sb.Surrogate(
        SinSum(), sb.Affine(_S, _C), sb.Affine(_YS, _YC), n_in=3, domain=(_S - 1, _S + 1)
    )
    X = torch.tensor(np.tile(_S, (4, 1)))
    bad = X.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        F.vmap(F.jacrev(sur))(bad)
    with pytest.raises(ValueError, match=r"v has non-finite"):
        F.vmap(lambda p: sur.lagrangian_hess(X[0], p))(bad[:, :2])
    far = X.clone()
    far[3, 2] += 5.0
    with pytest.warns(sb.ExtrapolationWarning, match="outside the training domain"):
        F.vmap(F.jacrev(sur))(far)
    sur.extrapolation = "raise"
    with pytest.raises(sb.ExtrapolationError):
        F.vmap(sur)(far)


def test_a_numpy_point_inside_the_callers_transform_is_computed_as_outside_it():
    """A numpy x inside torch code that torch.func transforms (a constant there, as in a loss
    that weighs by the surrogate's gradient): the single-point cache and routes answer as
    outside the transform; before, their autograd was refused there."""
    sur = sb.Surrogate(nn.Sequential(SinSum(), nn.Linear(2, 1).double()), n_in=3)
    x = np.array([0.3, -0.2, 0.5])
    g, H = sur.grad(x), sur.hess(x)
    sur.cache_clear()

    def loss(t):  # every single-point request, inside the transform
        scale = sur.value_and_grad(x)[1] @ np.ones(3) + sur.hessp(x, np.ones(3)).sum()
        scale = scale + sur.lagrangian_hess(x, [1.0]).sum() + sur.grad(x).sum()
        return t.sum() * float(scale)

    want = g.sum() + 2 * H.sum() + g.sum()
    got = torch.func.vmap(torch.func.grad(loss))(torch.ones(2, 3, dtype=torch.float64))
    np.testing.assert_allclose(got.numpy(), np.full((2, 3), want), rtol=1e-13)


def test_sb_derivatives_inside_the_callers_vmap():
    """sb.derivatives inside the caller's vmap (where autograd.grad is refused) gives the rows'
    own derivatives, as outside it."""
    model = mlp((3, 8, 2), seed=1)
    X = torch.tensor(np.random.default_rng(1).uniform(-1, 1, (4, 3)))
    inside = torch.func.vmap(lambda x: sb.derivatives(model, x[None], 2)[2][0])(X)
    outside = sb.derivatives(model, X, 2, create_graph=False)[2]
    np.testing.assert_allclose(inside.detach().numpy(), outside.numpy(), rtol=1e-13, atol=1e-15)


def test_forward_mode_tangents_flow_through_a_surrogate():
    """torch.autograd.forward_ad: the tangent of sur(x) and of sur.jac(x) is the closed form's
    J t and H t (before, the tangent was dropped and came back None)."""
    import torch.autograd.forward_ad as fwAD

    sur = _sinsum()
    rng = np.random.default_rng(2)
    X, T = torch.tensor(rng.uniform(-2, 2, (4, 3))), torch.tensor(rng.normal(size=(4, 3)))
    truth = [_sinsum_truth(x) for x in X.numpy()]
    J, H = np.stack([t[1] for t in truth]), np.stack([t[2] for t in truth])
    with fwAD.dual_level():
        y, dy = fwAD.unpack_dual(sur(fwAD.make_dual(X, T)))
        _, dJ = fwAD.unpack_dual(sur.jac(fwAD.make_dual(X, T)))
    np.testing.assert_allclose(y.numpy(), [t[0] for t in truth], rtol=1e-13)
    np.testing.assert_allclose(dy.numpy(), np.einsum("kij,kj->ki", J, T), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dJ.numpy(), np.einsum("kijl,kl->kij", H, T), rtol=1e-12, atol=1e-13)


# --- torch.export programs -----------------------------------------------------------------------
def _exported(model, rows, dynamic=False):
    """A program exported from an example of ``rows`` rows (None: one unbatched point), saved
    and loaded back as a user ships it."""
    import io

    example = torch.zeros((3,) if rows is None else (rows, 3), dtype=torch.float64)
    dyn = ({0: torch.export.Dim("batch")},) if dynamic else None
    buf = io.BytesIO()
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=dyn), buf)
    buf.seek(0)
    return torch.export.load(buf)


@pytest.mark.parametrize(
    ("rows", "dynamic"), [(4, True), (1, False), (None, False)], ids=["dynamic", "one-row", "point"]
)
def test_an_exported_program_is_a_model_on_every_route(rows, dynamic, tmp_path):
    """An ExportedProgram (or its module()) is taken as it is: n_in read from the graph's input
    shape, and a graph exported from a one-row example (its guard allows batches of exactly one)
    called one point at a time. Every route and a saved file give the eager model's numbers."""
    net = mlp((3, 16, 2), seed=0)
    model = net if rows is not None else nn.Sequential(net, nn.Flatten(0))  # (3,) -> (2,)
    program = _exported(model, rows, dynamic)
    X = np.random.default_rng(0).uniform(-1, 1, (5, 3))
    truth = sb.Surrogate(net, point_route="torch")
    f, J, H = truth.derivatives(X)
    for given in (program, program.module()):
        for route in ("torch", "numpy"):
            sur = sb.Surrogate(given, point_route=route)
            assert sur.n_in == 3 and sur.point_route == route
            got = [sur.derivatives(x) for x in X]
            for k, want in enumerate((f, J, H)):
                np.testing.assert_allclose(
                    np.stack([g[k] for g in got]), want, rtol=1e-14, atol=1e-15
                )
            for k, batch in enumerate(sur.derivatives(X)):
                np.testing.assert_allclose(batch, (f, J, H)[k], rtol=1e-14, atol=1e-15)
    sb.save(sur, tmp_path / "exported.sbz")
    np.testing.assert_allclose(sb.load(tmp_path / "exported.sbz")(X), f, rtol=1e-14)
    if rows is not None:  # new weights from another program of the same architecture
        other = mlp((3, 16, 2), seed=1)
        sb.update_weights(sur, _exported(other, rows, dynamic))
        np.testing.assert_allclose(sur(X), sb.Surrogate(other)(X), rtol=1e-14)


def test_an_exported_program_for_a_fixed_batch_is_refused_saying_how_to_export_it():
    for rows in (3, 32):  # (3: the probe batch's size, which it then accepts)
        with pytest.raises(ValueError, match=rf"exactly {rows} rows; export it with a dynamic"):
            sb.Surrogate(_exported(mlp((3, 8, 1)), rows))
