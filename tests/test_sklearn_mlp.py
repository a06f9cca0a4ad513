"""sklearn's own MLPRegressor, alone, after a Pipeline's scalers or inside a
TransformedTargetRegressor: the surrogate is its predict in physical units (to float64
rounding) with exact derivatives (``estimators.mlp_module``)."""

import warnings

import numpy as np
import pytest
from sklearn.compose import TransformedTargetRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

import surrogate_bridge as sb

RNG = np.random.default_rng(0)
X = RNG.uniform([-2.0, 10.0], [2.0, 50.0], (80, 2))
Y = np.c_[X[:, 0] ** 2 + 0.1 * X[:, 1], np.sin(X[:, 0]) * X[:, 1]]
P = RNG.uniform([-1.5, 15.0], [1.5, 45.0], (5, 2))


def fitted(estimator, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(X, y)


def mlp(activation="tanh", **kw):
    return MLPRegressor(
        hidden_layer_sizes=(12, 8), activation=activation, max_iter=60, random_state=0, **kw
    )


def central(f, x, h):
    return np.array([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(len(x))]).T


def check(estimator, sur, n_out):
    """Values against predict; the Jacobian against central differences of predict; the
    Hessian (of a random mix of the outputs) against central differences of the Jacobian."""
    pred = estimator.predict(P).reshape(len(P), n_out)
    np.testing.assert_allclose(sur(P).reshape(len(P), n_out), pred, rtol=1e-12, atol=1e-12)
    v = RNG.uniform(0.5, 1.5, n_out)
    for x in P:
        h = 1e-5 * (1 + np.abs(x))
        fd = np.array(
            [(estimator.predict([x + hk * e]) - estimator.predict([x - hk * e])) / (2 * hk)
             for e, hk in zip(np.eye(2), h, strict=True)]
        ).reshape(2, n_out).T  # fmt: skip
        np.testing.assert_allclose(sur.jac(x).reshape(n_out, 2), fd, rtol=1e-6, atol=1e-7)
        H = sur.lagrangian_hess(x, v)
        mixed = central(lambda p: v @ sur.jac(p).reshape(n_out, 2), x, 1e-4)
        np.testing.assert_allclose(H, mixed, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["tanh", "logistic", "identity"])
@pytest.mark.parametrize("n_out", [1, 2])
def test_an_mlp_regressor_alone_is_its_predict(activation, n_out):
    reg = fitted(mlp(activation), Y[:, 0] if n_out == 1 else Y)
    sur = sb.Surrogate(reg)
    assert (sur.n_in, sur.n_out) == (2, n_out)
    check(reg, sur, n_out)


def test_a_pipeline_and_target_transformer_around_it():
    pipe = Pipeline([("scale", MinMaxScaler()), ("mlp", mlp())])
    ttr = fitted(TransformedTargetRegressor(pipe, transformer=StandardScaler()), Y)
    sur = sb.Surrogate(ttr)
    check(ttr, sur, 2)
    np.testing.assert_allclose(sur.domain[0], X.min(0))  # the MinMax step's data range
    with pytest.raises(ValueError, match="scale them twice"):
        sb.Surrogate(ttr.regressor_, input_scaler=StandardScaler().fit(X))


def test_poisson_loss_predicts_through_exp():
    reg = fitted(mlp(loss="poisson"), np.exp(0.02 * X[:, 1]))
    assert reg.out_activation_ == "exp"
    check(reg, sb.Surrogate(reg), 1)


def test_relu_warns_about_its_hessian_and_new_weights_come_from_another_fit():
    reg = fitted(mlp("relu"), Y[:, 0])
    sur = sb.Surrogate(reg)
    with pytest.warns(sb.SmoothnessWarning, match="relu"):
        sur.hess(P[0])
    other = fitted(mlp("relu", alpha=1e-2), Y[:, 0] * 2)
    sb.update_weights(sur, other)
    np.testing.assert_allclose(sur(P), other.predict(P), rtol=1e-12)


def test_a_classifier_and_an_unfitted_regressor_are_refused():
    clf = fitted(MLPClassifier(hidden_layer_sizes=(4,), max_iter=20, random_state=0), Y[:, 0] > 2)
    with pytest.raises(TypeError, match="class label"):
        sb.Surrogate(clf)
    with pytest.raises(ValueError, match="not fitted"):
        sb.Surrogate(mlp())
