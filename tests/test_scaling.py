"""Nonlinear scalings (log and power transforms, sklearn's PowerTransformer and
FunctionTransformer): sklearn's own numbers to rounding, in numpy and torch; every route of a
surrogate built on them exact against closed forms, central differences and gradgradcheck."""

import json
import warnings
import zipfile

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from problems import Linear, mlp
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MinMaxScaler,
    PowerTransformer,
    QuantileTransformer,
    StandardScaler,
)

import surrogate_bridge as sb
from surrogate_bridge.scaling import ScalingMap

TOL = {
    "sklearn": 1e-13,  # relative: our expm1/log1p forms against sklearn's and scipy's, per value
    "route": 1e-13,  # relative: two routes' values and derivatives at one point
    # check_derivatives' scaled error: central differences of the gradient straddle
    # Yeo-Johnson's seam at 0, where its third derivative jumps (O(h) there, not O(h^2))
    "fd": 1e-5,
}

RNG = np.random.default_rng(0)
SIGNED = np.c_[RNG.lognormal(size=200), RNG.normal(size=200) * 3, -RNG.lognormal(size=200)]
POSITIVE = np.abs(SIGNED) + 0.05


def _fitted(name):
    """(fitted sklearn transformer, data it was fitted on)."""
    if name == "yeo-johnson":
        return PowerTransformer().fit(SIGNED), SIGNED
    if name == "yeo-johnson-raw":
        return PowerTransformer(standardize=False).fit(SIGNED), SIGNED
    if name == "box-cox":
        return PowerTransformer(method="box-cox").fit(POSITIVE), POSITIVE
    if name == "log-minmax":
        return make_pipeline(FunctionTransformer(np.log), MinMaxScaler()).fit(POSITIVE), POSITIVE
    if name == "log1p-standard":
        pipe = make_pipeline(FunctionTransformer(np.log1p, np.expm1), StandardScaler())
        return pipe.fit(POSITIVE), POSITIVE
    if name == "minmax-exp-standard":  # an inverse_func given as a lambda
        exp = FunctionTransformer(np.exp, lambda z: np.log(z))
        return make_pipeline(MinMaxScaler(), exp, StandardScaler()).fit(SIGNED), SIGNED
    if name == "nested":
        inner = make_pipeline(StandardScaler(), PowerTransformer())
        return make_pipeline(MinMaxScaler(), inner, "passthrough").fit(SIGNED), SIGNED
    if name == "log10-minmax":  # decades, undone by a lambda: 10 ** z
        ten = FunctionTransformer(np.log10, lambda z: 10.0**z)
        return make_pipeline(ten, MinMaxScaler()).fit(POSITIVE), POSITIVE
    if name == "log2-standard":
        return make_pipeline(FunctionTransformer(np.log2, np.exp2), StandardScaler()).fit(
            POSITIVE
        ), POSITIVE
    if name == "identity-log":  # FunctionTransformer(): sklearn's identity, a placeholder step
        pipe = make_pipeline(FunctionTransformer(), FunctionTransformer(np.log), StandardScaler())
        return pipe.fit(POSITIVE), POSITIVE
    raise KeyError(name)


SKLEARN = ["yeo-johnson", "yeo-johnson-raw", "box-cox", "log-minmax", "log1p-standard",
           "minmax-exp-standard", "nested", "identity-log", "log10-minmax",
           "log2-standard"]  # fmt: skip


def _close(a, b, rtol):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


@pytest.mark.parametrize("name", SKLEARN)
def test_readers_give_sklearns_transform_and_its_inverse_in_numpy_and_torch(name):
    est, X = _fitted(name)
    s = sb.Scaling.from_sklearn(est)
    Z = est.transform(X)
    _close(s.transform(X), Z, TOL["sklearn"])
    _close(s.inverse_transform(Z), X, TOL["sklearn"])  # (sklearn's own loses digits: log(exp))
    m = ScalingMap(s)
    _close(m(torch.as_tensor(X)).numpy(), Z, TOL["sklearn"])
    _close(m.inverse(torch.as_tensor(Z)).numpy(), X, TOL["sklearn"])
    h = 1e-6 * np.maximum(1.0, np.abs(X))
    fd = (s.transform(X + h) - s.transform(X - h)) / (2 * h)
    np.testing.assert_allclose(s.slope(X), fd, rtol=1e-6)


@pytest.mark.parametrize("method", ["yeo-johnson", "box-cox"])
def test_special_lambdas_take_scipys_special_forms(method):
    """lambda 0 (and 2 on Yeo-Johnson's negative side) are scipy's log1p / log cases."""
    lam = [0.0, 2.0, 1.0, -0.5] if method == "yeo-johnson" else [0.0, 0.5, -1.0, 2.0]
    x = np.linspace(-3, 4, 29) if method == "yeo-johnson" else np.linspace(0.1, 4, 29)
    w = sb.Warp(method, lambdas=lam)
    X = np.repeat(x[:, None], 4, axis=1)
    ref = np.stack(
        [scipy.stats.yeojohnson(x, lmbda=v) if method == "yeo-johnson"
         else scipy.special.boxcox(x, v) for v in lam], axis=1,
    )  # fmt: skip
    _close(w.transform(X), ref, TOL["sklearn"])
    _close(w.inverse_transform(ref), X, TOL["sklearn"])
    t = ScalingMap(sb.Scaling([w]))(torch.as_tensor(X)).numpy()
    _close(t, ref, TOL["sklearn"])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    lam=st.floats(-2.5, 4.5, allow_nan=False),
    x=st.lists(st.floats(-8, 8, allow_nan=False), min_size=1, max_size=8),
)
def test_yeo_johnson_is_scipys_and_inverts(lam, x):
    x = np.asarray(x)
    w = sb.Warp("yeo-johnson", lambdas=[lam])
    ref = scipy.stats.yeojohnson(x, lmbda=lam)
    z = w.transform(x[:, None])[:, 0]
    np.testing.assert_allclose(z, ref, rtol=1e-12, atol=1e-14)
    back = w.inverse_transform(z[:, None])[:, 0]
    np.testing.assert_allclose(back, x, rtol=1e-9, atol=1e-12)


def _power_law():
    """y = exp(sy (a . (log x - m) / s + b) + my): a Linear model between log scalers, with its
    closed-form gradient and Hessian."""
    xs = make_pipeline(FunctionTransformer(np.log), StandardScaler()).fit(POSITIVE[:, :2])
    y = POSITIVE[:, :1] * POSITIVE[:, 1:2]
    ys = make_pipeline(FunctionTransformer(np.log, np.exp), StandardScaler()).fit(y)
    a, b = np.array([0.7, -0.4]), 0.3
    sur = sb.Surrogate(Linear(a[None], [b]), xs, ys)
    s, sy = xs[1].scale_, ys[1].scale_[0]
    k = sy * a / s  # y = C prod x_j^k_j

    def truth(x):
        f = sur(x)
        g = f * k / x
        H = np.outer(g, k / x) - np.diag(f * k / x**2)
        return f, g, H

    return sur, truth


def test_a_power_law_between_log_scalers_has_its_closed_form_derivatives():
    sur, truth = _power_law()
    for x in RNG.uniform(0.3, 3.0, (5, 2)):
        _, g, H = truth(x)
        np.testing.assert_allclose(sur.grad(x), g, rtol=1e-13)
        np.testing.assert_allclose(sur.hess(x), H, rtol=1e-12, atol=1e-13 * np.abs(H).max())
    assert sb.Scaling.from_sklearn(_fitted("log-minmax")[0]).data_min is not None


@pytest.mark.parametrize(
    "name", ["yeo-johnson", "box-cox", "log1p-standard", "nested", "log10-minmax", "log2-standard"]
)
def test_a_surrogate_on_a_scaling_is_sklearns_composition_with_exact_derivatives(name):
    est, X = _fitted(name)
    n = X.shape[1]
    yest = PowerTransformer().fit(X[:, :1] * 2.0 + 1.0)
    net = mlp([n, 8, 1], seed=3)
    sur = sb.Surrogate(net, est, yest)
    assert isinstance(sur.input_scaler, sb.Scaling) and sur.n_in == n
    pts = 0.5 * (X[:4] + X.mean(0))  # inside the data range (a MinMaxScaler's domain)
    if name == "yeo-johnson":
        pts[-1] = 0.0  # Yeo-Johnson's seam
    with torch.no_grad():
        ref = yest.inverse_transform(net(torch.as_tensor(est.transform(pts))).numpy())[:, 0]
    _close(sur(pts), ref, TOL["sklearn"])
    for x in pts:
        assert sb.check_derivatives(sur, x).max_rel_error < TOL["fd"]
    xt = torch.as_tensor(pts, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(sur.function, (xt,))
    assert torch.autograd.gradgradcheck(sur.function, (xt,))


@pytest.mark.parametrize("name", ["yeo-johnson", "log10-minmax"])
def test_every_route_and_a_saved_file_agree_on_a_warped_surrogate(tmp_path, name):
    """The numpy route and the CasADi translation read the scaling from the graph; the branches
    of Yeo-Johnson are smooth, so no SmoothnessWarning (pytest turns one into an error)."""
    ca = pytest.importorskip("casadi")
    est, X = _fitted(name)
    if name == "yeo-johnson":
        yest = PowerTransformer().fit(X[:, :1] ** 2)
    else:  # the output in decades too
        yest = _fitted(name)[0].fit(X[:, :1] ** 2 + 1.0)
    args = (mlp([3, 8, 1], seed=4), est, yest)
    ref = sb.Surrogate(*args, point_route="torch")
    num = sb.Surrogate(*args, point_route="numpy")
    assert num.point_route == "numpy" and ref.nonsmooth_ops == ()
    F = sb.casadi_function(ref, mode="symbolic")
    xs = ca.MX.sym("x", 3)
    H = ca.Function("H", [xs], [ca.hessian(F(xs), xs)[0]])
    sb.save(ref, tmp_path / "yj.sbz")
    back = sb.load(tmp_path / "yj.sbz")
    assert back.input_scaler.to_dict() == ref.input_scaler.to_dict()
    seam = [[0.0, -0.5, 0.0]] if name == "yeo-johnson" else np.empty((0, 3))
    for x in np.r_[X[:3], seam]:
        f, g, h = ref(x), ref.grad(x), ref.hess(x)
        for other in (num, back):
            _close(other(x), f, TOL["route"])
            _close(other.grad(x), g, TOL["route"])
            _close(other.hess(x), h, TOL["route"])
        _close(float(F(x)), f, TOL["route"])
        _close(np.array(H(x)), h, 1e-11)  # CasADi's own Hessian, by its AD
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back.hess(X[0])


def test_the_domain_is_the_minmax_range_in_physical_units():
    est, X = _fitted("log-minmax")
    sur = sb.Surrogate(mlp([3, 4, 1], seed=0), est)
    lo, hi = sur.domain
    np.testing.assert_allclose(lo, X.min(0), rtol=1e-14)
    np.testing.assert_allclose(hi, X.max(0), rtol=1e-14)
    with pytest.warns(sb.ExtrapolationWarning, match="outside the training domain"):
        sur(X.max(0) * 2)


def test_fit_trains_through_log_scalers_with_gradients_by_the_chain_rule():
    """A power law is linear between log scalers: the value and gradient losses agree only if
    the gradients were normalized right, and then a Linear model fits both to rounding."""
    X = RNG.uniform(0.5, 4.0, (100, 2))
    y = 3.0 * X[:, :1] ** 1.5 * X[:, 1:] ** -0.5
    dydx = np.c_[1.5 * y[:, 0] / X[:, 0], -0.5 * y[:, 0] / X[:, 1]]
    xs = make_pipeline(FunctionTransformer(np.log), StandardScaler()).fit(X)
    ys = make_pipeline(FunctionTransformer(np.log, np.exp), StandardScaler()).fit(y)
    sur = sb.fit(torch.nn.Linear(2, 1).double(), X, y, dydx, input_scaler=xs, output_scaler=ys,
                 epochs=1500, lr=0.05, seed=0, validation=0.0, progress=False)  # fmt: skip
    assert sur.history["train"][-1] < 1e-20
    x = np.array([2.0, 1.5])
    np.testing.assert_allclose(sur(x), 3 * 2.0**1.5 / 1.5**0.5, rtol=1e-10)
    np.testing.assert_allclose(sur.grad(x), [1.5 * sur(x) / 2.0, -0.5 * sur(x) / 1.5], rtol=1e-9)


def test_fit_refuses_what_a_nonlinear_output_scaler_cannot_do():
    X = POSITIVE[:20, :2]
    ys = make_pipeline(FunctionTransformer(np.log), StandardScaler()).fit(X[:, :1])
    net = torch.nn.Linear(2, 1).double()
    with pytest.raises(ValueError, match="nonlinear output_scaler.*needs the values y"):
        sb.fit(net, X, dydx=X, output_scaler=ys, epochs=2, progress=False)
    with pytest.raises(ValueError, match="anchor.*leave anchor out"):
        sb.fit(net, X, X[:, :1], output_scaler=ys, anchor=([1, 1], [1.0]), epochs=2,
               progress=False)  # fmt: skip


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: FunctionTransformer(np.sqrt), r"func=sqrt.*not one of the warps.*torch code"),
        (lambda: FunctionTransformer(np.log, np.log, check_inverse=False), "not np.exp"),
        (lambda: FunctionTransformer(np.log1p, kw_args={"out": None}), "without kw_args"),
        (lambda: QuantileTransformer(n_quantiles=10), "not an affine.*PowerTransformer"),
        (
            lambda: make_pipeline(FunctionTransformer(np.log), QuantileTransformer(n_quantiles=10)),
            "QuantileTransformer is not an affine",
        ),
    ],
    ids=["sqrt", "wrong-inverse", "kw-args", "quantile", "pipeline-quantile"],
)
def test_unsupported_transforms_are_refused_naming_them(make, match):
    est = make().fit(POSITIVE)
    with pytest.raises(TypeError, match=match):
        sb.Surrogate(mlp([3, 4, 1]), est)


def test_an_identity_function_transformer_is_the_identity():
    """FunctionTransformer() (no func) alone or beside affine scalers is read as an Affine."""
    net = sb.mlp((3, 8, 1), seed=0)
    alone = sb.Surrogate(net, FunctionTransformer().fit(SIGNED))
    assert isinstance(alone.input_scaler, sb.Affine)
    np.testing.assert_array_equal(alone(SIGNED[:5]), sb.Surrogate(net)(SIGNED[:5]))
    pipe = make_pipeline(FunctionTransformer(), StandardScaler()).fit(SIGNED)
    both = sb.Surrogate(net, pipe)
    assert isinstance(both.input_scaler, sb.Affine)
    np.testing.assert_array_equal(both.input_scaler.transform(SIGNED), pipe.transform(SIGNED))


def test_an_unfitted_power_transformer_is_refused():
    with pytest.raises(TypeError, match="PowerTransformer is not fitted"):
        sb.Surrogate(mlp([3, 4, 1]), input_scaler=PowerTransformer())


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda: sb.Warp("sqrt", n_features=1), ValueError, "kind='sqrt' is not supported"),
        (lambda: sb.Warp("log"), ValueError, "needs n_features"),
        (lambda: sb.Warp("box-cox"), ValueError, "needs lambdas"),
        (lambda: sb.Warp("yeo-johnson", lambdas=[np.nan]), ValueError, "must be finite"),
        (
            lambda: sb.Scaling([sb.Warp("log", n_features=2), sb.Affine([0.0], [1.0])]),
            ValueError,
            r"different feature counts \[2, 1\]",
        ),
        (lambda: sb.Scaling(["log"]), TypeError, "Affine and Warp objects"),
    ],
    ids=["kind", "no-n", "no-lambdas", "nan", "features", "type"],
)
def test_warp_and_scaling_check_their_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_a_saved_file_with_an_unknown_scaling_step_is_refused(tmp_path):
    est, _ = _fitted("yeo-johnson")
    sb.save(sb.Surrogate(mlp([3, 4, 1]), est), tmp_path / "a.sbz")
    with zipfile.ZipFile(tmp_path / "a.sbz") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(members["meta.json"])
    meta["input_scaler"]["steps"][0]["warp"] = "__import__('os')"
    members["meta.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(tmp_path / "b.sbz", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(ValueError, match="damaged or was edited.*unknown step"):
        sb.load(tmp_path / "b.sbz")


def test_points_where_a_log_is_undefined_are_refused_naming_them(tmp_path):
    """sklearn would give NaN; the surrogate says which input, where, and why, also loaded."""
    est, _ = _fitted("log1p-standard")  # log1p: x > -1
    sur = sb.Surrogate(mlp([3, 4, 1]), est)
    assert sur(np.array([-0.5, 0.1, 2.0])) == pytest.approx(sur(torch.tensor([-0.5, 0.1, 2.0])))
    sb.save(sur, tmp_path / "log1p.sbz")
    for s in (sur, sb.load(tmp_path / "log1p.sbz")):
        with pytest.raises(ValueError, match=r"x\[1\] = -1 is outside where the input scaler"):
            s.grad(np.array([0.5, -1.0, 2.0]))
        with pytest.raises(ValueError, match=r"x\[1, 2\] = -3 .* \(-1 < x < inf for feature 2"):
            s(torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, -3.0]], dtype=torch.float64))
    shifted = sb.Scaling([sb.Affine([1.0], [-2.0]), sb.Warp("log", n_features=1)])
    np.testing.assert_array_equal(shifted.defined()[1], [1.0])  # log((x - 1) / -2): x < 1
    assert (
        sb.Scaling([sb.Warp("exp", n_features=1), sb.Warp("log1p", n_features=1)]).defined() is None
    )


def test_a_log_on_some_columns_only_is_refused_saying_where_it_can_go():
    from sklearn.compose import ColumnTransformer

    parts = [("log", FunctionTransformer(np.log), [0]), ("rest", MinMaxScaler(), [1, 2])]
    ct = ColumnTransformer(parts).fit(POSITIVE)
    with pytest.raises(TypeError, match=r"FunctionTransformer to columns \[0\] only.*Pipeline"):
        sb.Surrogate(mlp([3, 4, 1]), ct)
