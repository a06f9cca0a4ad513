"""Scalers that mix features (PCA, TruncatedSVD, PolynomialFeatures), held as layers around the
model: the same function as sklearn's transform and inverse_transform around the network, on
every route."""

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from problems import mlp
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import (
    MinMaxScaler,
    PolynomialFeatures,
    PowerTransformer,
    StandardScaler,
)

import surrogate_bridge as sb

RNG = np.random.default_rng(0)
X = RNG.uniform(0.0, 1.0, (120, 3))
GRID = np.linspace(0.0, 1.0, 12)
Y = np.sin(np.outer(3 * X[:, 0], GRID)) * X[:, 1:2] + X[:, 2:3] * GRID  # a 12-point field

CASES = {
    "out-pca": lambda: (MinMaxScaler(), PCA(4)),
    "out-std-pca-whiten-std": lambda: (
        MinMaxScaler(),
        make_pipeline(StandardScaler(), PCA(4, whiten=True), StandardScaler()),
    ),
    "in-std-pca": lambda: (make_pipeline(StandardScaler(), PCA(2)), StandardScaler()),
    "in-svd": lambda: (TruncatedSVD(2, random_state=0), None),
    "in-columns-out-of-order-pca": lambda: (
        make_pipeline(
            ColumnTransformer([("s", StandardScaler(), [2, 0]), ("m", MinMaxScaler(), [1])]),
            PCA(2),
        ),
        StandardScaler(),
    ),
    "both": lambda: (
        make_pipeline(MinMaxScaler(), PCA(2, whiten=True)),
        make_pipeline(PCA(3), MinMaxScaler()),
    ),
    "in-minmax-poly-std": lambda: (
        make_pipeline(MinMaxScaler(), PolynomialFeatures(3), StandardScaler()),
        StandardScaler(),
    ),
    "in-poly-interactions": lambda: (
        PolynomialFeatures((2, 3), interaction_only=True, include_bias=False),
        PCA(3),
    ),
}


def _fitted(name):
    xs, ys = CASES[name]()
    return xs.fit(X), None if ys is None else ys.fit(Y)


def _reference(net, xs, ys, x):
    """sklearn's own transforms around the network."""
    with torch.no_grad():
        z = net(torch.as_tensor(xs.transform(x))).numpy()
    return z if ys is None else ys.inverse_transform(z)


def _net(xs, ys, seed=0):
    k_in = xs.transform(X[:1]).shape[1]
    k_out = Y.shape[1] if ys is None else ys.transform(Y[:1]).shape[1]
    return mlp([k_in, 16, k_out], seed=seed)


@pytest.mark.parametrize("route", ["torch", "numpy", "casadi"])
@pytest.mark.parametrize("name", list(CASES))
def test_a_projection_is_the_same_function_on_every_route(name, route):
    pytest.importorskip("casadi")
    xs, ys = _fitted(name)
    net = _net(xs, ys)
    sur = sb.Surrogate(net, xs, ys, point_route=route)
    assert (sur.n_in, sur.n_out, sur.point_route) == (3, 12, route)
    want = _reference(net, xs, ys, X[:6])
    np.testing.assert_allclose(sur(X[:6]), want, rtol=1e-13, atol=1e-14 * np.abs(want).max())
    h = 1e-6
    for x, w in zip(X[:2], want, strict=False):  # one point at a time: the route's answers
        np.testing.assert_allclose(sur(x), w, rtol=1e-13, atol=1e-14 * np.abs(w).max())
        fd = np.stack([(sur(x + e) - sur(x - e)) / (2 * h) for e in np.eye(3) * h], -1)
        np.testing.assert_allclose(sur.jac(x), fd, atol=1e-8 * np.abs(fd).max())
        fdh = np.stack([(sur.jac(x + e) - sur.jac(x - e)) / (2 * h) for e in np.eye(3) * h], -1)
        np.testing.assert_allclose(sur.hess(x), fdh, atol=1e-7 * np.abs(fdh).max())


@pytest.mark.parametrize("name", list(CASES))
def test_a_projection_saves_translates_and_takes_new_weights(name, tmp_path):
    ca = pytest.importorskip("casadi")
    xs, ys = _fitted(name)
    sur = sb.Surrogate(_net(xs, ys), xs, ys)
    sb.save(sur, tmp_path / "p.sbz")
    np.testing.assert_array_equal(sb.load(tmp_path / "p.sbz")(X[:5]), sur(X[:5]))
    F = sb.casadi_function(sur, mode="symbolic")
    x = ca.MX.sym("x", 3)
    J = ca.Function("J", [x], [ca.jacobian(F(x), x)])
    np.testing.assert_allclose(np.array(J(X[7])), sur.jac(X[7]), rtol=1e-12, atol=1e-14)
    new = _net(xs, ys, seed=3)
    sb.update_weights(sur, new.state_dict())  # the network's own names, not our layers'
    np.testing.assert_allclose(sur(X[:5]), _reference(new, xs, ys, X[:5]), rtol=1e-13, atol=1e-14)
    if xs.transform(X[:1]).shape[1] == 3:  # the input side per-feature: its range is the domain
        np.testing.assert_array_equal(sur.domain[0], X.min(0))


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(2, 5),
    m=st.integers(2, 6),
    width=st.integers(2, 12),
    whiten=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_projections_of_random_sizes_match_sklearn(n, m, width, whiten, seed):
    rng = np.random.default_rng(seed)
    A, B = rng.normal(size=(40, n)) * rng.uniform(0.1, 10, n), rng.normal(size=(40, m))
    k_in, k_out = rng.integers(1, n + 1), rng.integers(1, m + 1)
    xs = make_pipeline(StandardScaler(), PCA(int(k_in), whiten=whiten)).fit(A)
    ys = PCA(int(k_out), whiten=not whiten).fit(B)
    net = mlp([int(k_in), width, int(k_out)], seed=seed)
    sur = sb.Surrogate(net, xs, ys)
    want = _reference(net, xs, ys, A[:5])
    np.testing.assert_allclose(sur(A[:5]), want, rtol=1e-12, atol=1e-13 * np.abs(want).max())


class _Identity(torch.nn.Module):
    def forward(self, z):
        return z


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 4),
    low=st.integers(0, 2),
    extra=st.integers(0, 2),
    interaction_only=st.booleans(),
    include_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_polynomial_features_are_sklearns_bit_for_bit_with_exact_derivatives(
    n, low, extra, interaction_only, include_bias, seed
):
    """Monomials multiplied in sklearn's order: its values exactly; derivatives against the
    closed form d/dx_i x^p = p_i x^(p - e_i)."""
    rng = np.random.default_rng(seed)
    A = rng.uniform(-2.0, 2.0, (30, n))
    poly = PolynomialFeatures((low, low + extra), interaction_only=interaction_only,
                              include_bias=include_bias)  # fmt: skip
    try:
        poly.fit(A)
    except ValueError:  # sklearn's own refusal of a map with no features (degree 0, n = 1, ...)
        assume(False)
    if poly.n_output_features_ == 0:  # (interactions of degree >= 2 of one input)
        with pytest.raises(TypeError, match="PolynomialFeatures makes no features"):
            sb.Surrogate(_Identity(), poly, n_in=n)
        return
    sur = sb.Surrogate(_Identity(), poly, n_in=n)
    np.testing.assert_array_equal(sur(A).reshape(len(A), -1), poly.transform(A))
    P = poly.powers_
    x = A[0]
    lowered = P[:, None, :] - np.eye(n, dtype=int)[None]  # (k, n, n): exponents of d/dx_i
    want = P * np.where(lowered >= 0, x ** np.maximum(lowered, 0), 0.0).prod(-1)
    np.testing.assert_allclose(sur.jac(x).reshape(want.shape), want, rtol=1e-14, atol=1e-14)


def test_polynomial_features_cannot_unscale_outputs():
    with pytest.raises(TypeError, match="output_scaler: PolynomialFeatures has no inverse"):
        sb.Surrogate(mlp([3, 4, 10]), None, PolynomialFeatures(2).fit(Y[:, :3]))


def test_fit_trains_through_a_projection_of_the_outputs():
    """The caller's network learns the coefficients: with the fitted pipeline around it, it is
    the surrogate (trained on the field, which for an orthonormal PCA is the coefficients' loss
    plus a constant)."""
    net = mlp([3, 32, 4], seed=0)
    ys = make_pipeline(StandardScaler(), PCA(4))  # unfitted: fit fits a copy
    sur = sb.fit(net, X, Y, output_scaler=ys, epochs=600, progress=False, seed=0)
    assert (sur.n_in, sur.n_out) == (3, 12)
    fitted = make_pipeline(StandardScaler(), PCA(4)).fit(Y)
    np.testing.assert_allclose(sur(X[:5]), _reference(net, sur.input_scaler, fitted, X[:5]), 1e-12)
    assert np.abs(sur(X) - Y).max() < 0.1 * np.abs(Y).max()


@pytest.mark.parametrize(
    ("scaler", "match"),
    [
        (lambda: make_pipeline(PCA(3), PCA(2)).fit(X), r"2 steps that mix features \(PCA, PCA"),
        (lambda: make_pipeline(PolynomialFeatures(2), PCA(2)).fit(X), "2 steps that mix"),
        (lambda: PolynomialFeatures(2), "PolynomialFeatures is not fitted"),
        (lambda: make_pipeline(PCA(2), PowerTransformer()).fit(X), "PowerTransformer step must"),
        (lambda: PCA(2), "PCA is not fitted"),
    ],
    ids=["two", "poly-pca", "poly-unfitted", "nonlinear-after", "unfitted"],
)
def test_projections_that_cannot_be_one_layer_are_refused(scaler, match):
    with pytest.raises(TypeError, match=f"Surrogate: input_scaler: .*{match}"):
        sb.Surrogate(mlp([2, 4, 1]), scaler())


def test_a_model_returning_other_than_the_projections_components_is_refused():
    ys = PCA(4).fit(Y)
    with pytest.raises(ValueError, match="returns 5 outputs, but the output scaler's projection"):
        sb.Surrogate(mlp([3, 8, 5]), MinMaxScaler().fit(X), ys)


def test_a_scripted_model_inside_a_projection_is_converted_like_any_other():
    """TorchScript is converted before our layers go around it (its input count read from
    the input scaler, an Affine here)."""
    net = mlp([3, 8, 4], seed=0)
    ys = PCA(4).fit(Y)
    xs = sb.Affine.fit(X)
    sur = sb.Surrogate(torch.jit.script(net), xs, ys)
    want = _reference(net, xs, ys, X[:4])
    np.testing.assert_allclose(sur(X[:4]), want, rtol=1e-13, atol=1e-14)


def test_the_input_count_is_read_from_the_projection_and_layers_named_as_the_callers():
    xs = PCA(2).fit(X)  # no per-feature step: the count is the projection's
    assert sb.Surrogate(mlp([2, 4, 1]), xs).n_in == 3
    with pytest.raises(ValueError, match=r"read from the first Linear layer, '0'"):
        sb.Surrogate(mlp([3, 4, 5]), None, PCA(4).fit(Y))  # '0' in the caller's model
