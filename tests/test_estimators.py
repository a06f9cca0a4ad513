"""Fitted sklearn estimators holding a torch model (skorch), read as model and scalers: the
surrogate of the estimator is its predict, in float64, with the scalers' derivatives."""

import numpy as np
import pytest
import torch
from sklearn.compose import TransformedTargetRegressor
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

import surrogate_bridge as sb

skorch = pytest.importorskip("skorch")

RNG = np.random.default_rng(0)
X = RNG.uniform([-2.0, 10.0], [2.0, 50.0], (64, 2)).astype(np.float32)
Y = (X[:, :1] ** 2 + 0.1 * X[:, 1:]).astype(np.float32)


def _net(seed=0):
    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    return skorch.NeuralNetRegressor(module, max_epochs=3, lr=0.05, verbose=0)


def _twin(module, xs, ys):
    """The surrogate built by hand from the parts: what reading the estimator must give."""
    return sb.Surrogate(module, xs, ys, point_route="torch")


def test_a_pipeline_ending_in_a_skorch_net_is_its_predict_with_exact_derivatives():
    pipe = Pipeline([("scale", MinMaxScaler()), ("net", _net())]).fit(X, Y)
    sur = sb.Surrogate(pipe)
    pts = X[:5].astype(np.float64)
    np.testing.assert_allclose(sur(pts), pipe.predict(X[:5])[:, 0], rtol=1e-5)  # (float32)
    twin = _twin(pipe[-1].module_, pipe[0], None)
    for x in pts:
        assert sur(x) == twin(x)
        np.testing.assert_array_equal(sur.grad(x), twin.grad(x))
        np.testing.assert_array_equal(sur.hess(x), twin.hess(x))
    lo, hi = sur.domain  # the MinMax step's data range
    np.testing.assert_allclose(lo, X.min(0), rtol=1e-6)
    np.testing.assert_allclose(hi, X.max(0), rtol=1e-6)
    assert isinstance(pipe[-1].module_[0].weight, torch.nn.Parameter)  # the user's net untouched
    assert pipe[-1].module_[0].weight.dtype == torch.float32


@pytest.mark.parametrize("targets", ["standard", "log"])
def test_a_transformed_target_regressor_gives_its_transformer_as_the_output_scaler(targets):
    inner = Pipeline([("scale", StandardScaler()), ("net", _net(1))])
    if targets == "standard":
        ttr = TransformedTargetRegressor(inner, transformer=StandardScaler())
    else:
        ttr = TransformedTargetRegressor(  # (float32 targets: exp(log y) is not y in float32)
            inner, func=np.log, inverse_func=np.exp, check_inverse=False
        )
    ttr.fit(X, Y + 1.0)
    sur = sb.Surrogate(ttr)
    pts = X[:5].astype(np.float64)
    np.testing.assert_allclose(sur(pts), ttr.predict(X[:5])[:, 0], rtol=1e-5)
    twin = _twin(ttr.regressor_[-1].module_, ttr.regressor_[0], ttr.transformer_)
    np.testing.assert_array_equal(sur.derivatives(pts)[2], twin.derivatives(pts)[2])
    assert isinstance(sur.output_scaler, sb.Affine if targets == "standard" else sb.Scaling)


def test_new_weights_from_a_skorch_net():
    pipe = Pipeline([("scale", MinMaxScaler()), ("net", _net())]).fit(X, Y)
    sur = sb.Surrogate(pipe)
    other = _net(seed=5).fit(pipe[0].transform(X), Y)
    sb.update_weights(sur, other)
    pts = X[:3].astype(np.float64)
    np.testing.assert_array_equal(sur(pts), _twin(other.module_, pipe[0], None)(pts))


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (
            lambda: sb.Surrogate(Pipeline([("s", MinMaxScaler()), ("n", _net())]).fit(X, Y),
                                 StandardScaler().fit(X)),
            ValueError, "steps before the net scale the inputs; input_scaler= would scale",
        ),
        (
            lambda: sb.Surrogate(
                TransformedTargetRegressor(_net(), transformer=StandardScaler()).fit(X, Y),
                output_scaler=StandardScaler().fit(Y),
            ),
            ValueError, "transformer scales the targets; output_scaler= would scale",
        ),
        (lambda: sb.Surrogate(_net()), ValueError, "NeuralNetRegressor that is not fitted"),
        (
            lambda: sb.Surrogate(TransformedTargetRegressor(LinearRegression()).fit(X, Y)),
            TypeError, "around a LinearRegression, not a neural network",
        ),
        (
            lambda: sb.Surrogate(
                skorch.NeuralNetClassifier(
                    torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Softmax(-1)),
                    max_epochs=1, verbose=0,
                ).fit(X, (Y[:, 0] > 2).astype(np.int64))
            ),
            TypeError, "predict is a class label",
        ),
        (
            lambda: sb.Surrogate(
                skorch.NeuralNetRegressor(
                    torch.nn.Linear(2, 1), max_epochs=1, verbose=0,
                    predict_nonlinearity=torch.sigmoid,
                ).fit(X, Y)
            ),
            TypeError, "through sigmoid",
        ),
    ],
    ids=["input-twice", "output-twice", "unfitted", "not-torch", "classifier", "nonlinearity"],
)  # fmt: skip
def test_what_cannot_be_read_is_refused_saying_why(make, exc, match):
    with pytest.raises(exc, match=match):
        make()
