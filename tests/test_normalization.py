import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from problems import mlp
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, RobustScaler, StandardScaler

import surrogate_bridge as sb

TOL = {"rtol": 1e-12, "atol": 1e-12}

SCALERS = {
    "minmax": MinMaxScaler(),
    "minmax(-1,1)": MinMaxScaler(feature_range=(-1, 1)),
    "minmax(2,7)": MinMaxScaler(feature_range=(2, 7)),
    "standard": StandardScaler(),
    "standard-no-mean": StandardScaler(with_mean=False),
    "standard-no-std": StandardScaler(with_std=False),
    "maxabs": MaxAbsScaler(),
    "robust": RobustScaler(),
    "robust-no-center": RobustScaler(with_centering=False),
    "robust-no-scale": RobustScaler(with_scaling=False),
}


@pytest.fixture
def data(rng):
    X = rng.normal(size=(50, 3)) * [1.0, 10.0, 0.01] + [0.0, 5.0, -2.0]
    X[:, 2] = 4.0  # a constant feature: sklearn gives it scale 1
    return X


@pytest.mark.parametrize("name", list(SCALERS), ids=list(SCALERS))
def test_from_sklearn_matches_transform(name, data):
    scaler = SCALERS[name].fit(data)
    aff = sb.Affine.from_sklearn(scaler)
    np.testing.assert_allclose(aff.transform(data), scaler.transform(data), **TOL)
    z = scaler.transform(data)
    np.testing.assert_allclose(aff.inverse_transform(z), scaler.inverse_transform(z), **TOL)


def test_minmax_records_data_range(data):
    aff = sb.Affine.from_sklearn(MinMaxScaler().fit(data))
    np.testing.assert_array_equal(aff.data_min, data.min(0))
    np.testing.assert_array_equal(aff.data_max, data.max(0))


@pytest.mark.parametrize("kind", ["minmax", "standard"])
def test_fit_matches_sklearn(kind, data):
    ref = {"minmax": MinMaxScaler(), "standard": StandardScaler()}[kind].fit(data)
    np.testing.assert_allclose(
        sb.Affine.fit(data, kind=kind).transform(data), ref.transform(data), **TOL
    )


def test_fit_constant_feature_has_unit_scale(data):
    assert sb.Affine.fit(data, "minmax").scale[2] == 1.0
    assert sb.Affine.fit(data, "standard").scale[2] == 1.0


def test_dict_round_trip(data):
    aff = sb.Affine.fit(data, "minmax")
    back = sb.Affine.from_dict(aff.to_dict())
    np.testing.assert_array_equal(back.shift, aff.shift)
    np.testing.assert_array_equal(back.data_max, aff.data_max)


def test_unfitted_scaler_is_type_error():
    with pytest.raises(TypeError, match="not fitted"):
        sb.Affine.from_sklearn(StandardScaler())


def test_unsupported_scaler_names_supported():
    from sklearn.preprocessing import PowerTransformer

    with pytest.raises(TypeError, match="MinMaxScaler.*StandardScaler|MaxAbsScaler"):
        sb.Affine.from_sklearn(PowerTransformer())


def test_clipping_minmax_refused(data):
    clipping = MinMaxScaler(clip=True).fit(data)
    with pytest.raises(ValueError, match="clip=True"):
        sb.Affine.from_sklearn(clipping)
    unclipped = copy.copy(clipping)  # what the message says to pass
    unclipped.clip = False
    inside = np.asarray(data, dtype=float)
    got = sb.Affine.from_sklearn(unclipped).transform(inside)
    np.testing.assert_allclose(got, clipping.transform(inside), **TOL)  # the same, inside


@pytest.mark.parametrize("in_pipeline", [False, True], ids=["alone", "in-a-pipeline"])
def test_a_clipping_minmax_output_scaler_is_its_inverse_transform(in_pipeline):
    """clip=True acts in transform only; an output scaler is applied by inverse_transform,
    which never clips: taken as it is (was: refused), beyond the targets' range too, and the
    caller's scaler is left clipping."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    rng = np.random.default_rng(5)
    X, Y = rng.uniform(-1, 1, (40, 2)), rng.uniform(1, 50, (40, 1))
    minmax = MinMaxScaler(clip=True)
    out = make_pipeline(FunctionTransformer(np.log, np.exp), minmax) if in_pipeline else minmax
    out.fit(Y)
    model = mlp([2, 8, 1], torch.nn.Tanh)
    with torch.no_grad():
        model[-1].bias.fill_(1.5)  # normalized outputs beyond [0, 1]: beyond the targets' range
    sur = sb.Surrogate(model, StandardScaler().fit(X), out)
    with pytest.raises(ValueError, match="clip=True"):  # the input side still clips: refused
        sb.Surrogate(model, MinMaxScaler(clip=True).fit(X))
    P = rng.uniform(-1, 1, (6, 2))
    with torch.no_grad():
        z = model(torch.as_tensor(StandardScaler().fit(X).transform(P))).numpy()
    assert z.min() > 1.0
    np.testing.assert_allclose(sur(P), out.inverse_transform(z)[:, 0], rtol=1e-13)
    h = 1e-6
    fd = (sur(P[0] + h * np.eye(2)) - sur(P[0] - h * np.eye(2))) / (2 * h)
    np.testing.assert_allclose(sur.grad(P[0]), fd, rtol=1e-6)
    assert minmax.clip is True


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shift": [0.0, 1.0], "scale": [1.0]}, "must match"),
        ({"shift": [0.0], "scale": [0.0]}, "zero entries"),
        ({"shift": [[0.0]], "scale": [[1.0]]}, "1-D"),
        ({"shift": [np.nan], "scale": [1.0]}, "non-finite"),
    ],
    ids=["length", "zero-scale", "rank", "nan"],
)
def test_bad_affine(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sb.Affine(**kwargs)


def test_unknown_fit_kind_lists_valid():
    with pytest.raises(ValueError, match="minmax.*standard"):
        sb.Affine.fit([[1.0]], kind="robust")


def test_affine_pipeline_composes_into_one_affine(data):
    from sklearn.pipeline import make_pipeline

    pipe = make_pipeline(MinMaxScaler(), StandardScaler()).fit(data)
    a = sb.Affine.from_sklearn(pipe)
    np.testing.assert_allclose(a.transform(data), pipe.transform(data), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(a.data_min, data.min(0))  # the MinMax step's range
    sur = sb.Surrogate(torch.nn.Identity(), pipe, n_in=data.shape[1])
    np.testing.assert_allclose(sur(data[:3]), pipe.transform(data[:3]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["QuantileTransformer", "PowerTransformer", "Normalizer"])
def test_non_affine_transforms_are_refused_with_what_to_do(data, name):
    import sklearn.preprocessing as skp

    kwargs = {"n_quantiles": 10} if name == "QuantileTransformer" else {}
    est = getattr(skp, name)(**kwargs).fit(data)
    with pytest.raises(TypeError, match=f"{name} is not an affine.*torch code inside the model"):
        sb.Affine.from_sklearn(est)


def _column_data():
    rng = np.random.default_rng(3)
    return rng.uniform(1, 3, (40, 3)) * [1.0, 100.0, 0.01] + [0.0, -50.0, 2.0]


@pytest.mark.parametrize(
    "parts",
    [
        [("a", MinMaxScaler(), [0]), ("b", StandardScaler(), [1, 2])],
        [("a", MinMaxScaler(), slice(0, 2)), ("b", "passthrough", [2])],
        [("a", RobustScaler(), [0, 1])],  # and the remainder, passed through
    ],
    ids=["two-scalers", "passthrough", "remainder"],
)
def test_column_transformer_in_column_order_is_one_affine(parts):
    from sklearn.compose import ColumnTransformer

    X = _column_data()
    ct = ColumnTransformer(parts, remainder="passthrough").fit(X)
    np.testing.assert_allclose(sb.Affine.from_sklearn(ct).transform(X), ct.transform(X), 1e-14)
    net = mlp([3, 8, 1])
    sur = sb.Surrogate(net, ct)
    with torch.no_grad():
        want = net(torch.as_tensor(ct.transform(X[:4])))[:, 0].numpy()
    np.testing.assert_allclose(sur(X[:4]), want, rtol=1e-13)


def test_column_transformer_by_column_names_keeps_the_data_range():
    from sklearn.compose import ColumnTransformer

    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(_column_data(), columns=["p", "T", "c"])
    ct = ColumnTransformer([("a", MinMaxScaler(), ["p", "T"]), ("b", MinMaxScaler(), ["c"])])
    a = sb.Affine.from_sklearn(ct.fit(X))
    # (sklearn computes x * scale_ + min_, which cancels on a narrow column offset from zero)
    np.testing.assert_allclose(a.transform(X.to_numpy()), ct.transform(X), rtol=1e-12)
    np.testing.assert_array_equal(a.data_min, X.min().to_numpy())  # every part recorded one
    np.testing.assert_array_equal(a.data_max, X.max().to_numpy())


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        (
            [("b", StandardScaler(), [1]), ("a", MinMaxScaler(), [0, 2])],
            r"order \[1, 0, 2\].*pass the ColumnTransformer itself to Surrogate or fit",
        ),
        ([("a", MinMaxScaler(), [0, 1, 2]), ("b", StandardScaler(), [1])], r"columns \[1\] more"),
        ([("a", MinMaxScaler(), [0, 1])], r"drops columns \[2\]"),  # the remainder
        ([("a", MinMaxScaler(), [0, 1]), ("f", "log", [2])], "FunctionTransformer"),
    ],
    ids=["reordered", "repeated", "dropped", "not-affine"],
)
def test_column_transformers_that_are_not_per_feature_are_refused(parts, match):
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import FunctionTransformer

    parts = [(n, FunctionTransformer(np.log) if p == "log" else p, c) for n, p, c in parts]
    ct = ColumnTransformer(parts).fit(_column_data())
    with pytest.raises(TypeError, match=match):
        sb.Affine.from_sklearn(ct)


REORDERED = [("b", StandardScaler(), [1]), ("a", MinMaxScaler(), [2, 0])]


@pytest.mark.parametrize("route", ["torch", "numpy", "casadi"])
def test_a_column_transformer_out_of_column_order_gives_the_model_its_order(route, tmp_path):
    """Each column scaled in place, then permuted, as the ColumnTransformer hands them to the
    model it trained: the same values, and derivatives against central differences, on every
    route, loaded, and with new weights."""
    from sklearn.compose import ColumnTransformer

    pytest.importorskip("casadi")
    X = _column_data()
    ct = ColumnTransformer(REORDERED).fit(X)
    net = mlp([3, 8, 2], seed=1)
    sur = sb.Surrogate(net, ct, point_route=route)
    assert sur.point_route == route
    with torch.no_grad():
        want = net(torch.as_tensor(ct.transform(X[:6]))).numpy()
    np.testing.assert_allclose(sur(X[:6]), want, rtol=1e-13)
    for x, w in zip(X[:3], want, strict=False):  # one point at a time: the route's answers
        np.testing.assert_allclose(sur(x), w, rtol=1e-13)
        h = 1e-5 * np.ptp(X, axis=0)  # of each feature's range (the third's is 0.02 wide)
        fd = np.stack([(sur(x + e) - sur(x - e)) / (2 * e.sum()) for e in np.diag(h)], -1)
        np.testing.assert_allclose(sur.jac(x), fd, rtol=1e-6, atol=1e-9)
        H = sur.hess(x)
        fdh = np.stack([(sur.jac(x + e) - sur.jac(x - e)) / (2 * e.sum()) for e in np.diag(h)], -1)
        np.testing.assert_allclose(H, fdh, rtol=1e-5, atol=1e-7)
    sb.save(sur, tmp_path / "ct.sbz")
    np.testing.assert_array_equal(sb.load(tmp_path / "ct.sbz")(X[:6]), sur(X[:6]))
    new = mlp([3, 8, 2], seed=2)
    sb.update_weights(sur, new)  # the model's own weights, not the wrapper's
    with torch.no_grad():
        np.testing.assert_allclose(sur(X[:6]), new(torch.as_tensor(ct.transform(X[:6]))), 1e-13)


def test_fit_trains_the_model_on_the_column_transformers_order():
    from sklearn.compose import ColumnTransformer

    X = _column_data()
    y = X[:, 0] * X[:, 2]
    ct = ColumnTransformer(REORDERED)  # unfitted: fit fits a copy
    net = mlp([3, 8, 1], seed=0)
    sur = sb.fit(net, X, y, input_scaler=ct, epochs=50, progress=False, seed=0)
    fitted = ColumnTransformer(REORDERED).fit(X)
    out = sur.output_scaler
    with torch.no_grad():  # the caller's model, trained in place, on X as the transformer orders it
        z = net(torch.as_tensor(fitted.transform(X[:5])))[:, 0].numpy()
    np.testing.assert_allclose(sur(X[:5]), z * out.scale[0] + out.shift[0], rtol=1e-12)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_column_transformers_in_any_order_match_sklearn(n, seed):
    """Random groups of columns, in a random order, each with its own scaler kind."""
    from sklearn.compose import ColumnTransformer

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(30, n)) * rng.uniform(0.01, 100, n) + rng.uniform(-50, 50, n)
    cols = rng.permutation(n)
    cuts = sorted(rng.choice(np.arange(1, n), size=rng.integers(0, n), replace=False).tolist())
    kinds = (MinMaxScaler, StandardScaler, RobustScaler, lambda: "passthrough")
    parts = [
        (f"p{i}", kinds[rng.integers(4)](), g.tolist()) for i, g in enumerate(np.split(cols, cuts))
    ]
    ct = ColumnTransformer(parts).fit(X)
    net = mlp([n, 5, 2], seed=seed)
    sur = sb.Surrogate(net, ct)
    with torch.no_grad():
        want = net(torch.as_tensor(ct.transform(X[:4]))).numpy()
    np.testing.assert_allclose(sur(X[:4]), want, rtol=1e-12, atol=1e-13)


def test_a_pipeline_of_a_column_transformer_out_of_order_and_affine_steps():
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PowerTransformer

    X = _column_data()
    xs = make_pipeline(ColumnTransformer(REORDERED), MaxAbsScaler(), StandardScaler()).fit(X)
    net = mlp([3, 8, 1], seed=0)
    with torch.no_grad():
        want = net(torch.as_tensor(xs.transform(X[:5])))[:, 0].numpy()
    np.testing.assert_allclose(sb.Surrogate(net, xs)(X[:5]), want, rtol=1e-13)
    bad = make_pipeline(ColumnTransformer(REORDERED), PowerTransformer()).fit(X)
    with pytest.raises(TypeError, match="out of order, the Pipeline's PowerTransformer step"):
        sb.Surrogate(net, bad)


@pytest.mark.parametrize("cls", [StandardScaler, sb.Affine])
def test_a_scaler_class_is_refused_saying_to_pass_a_fitted_instance(cls):
    made = "Affine.fit" if cls is sb.Affine else "StandardScaler\\(\\).fit"
    with pytest.raises(TypeError, match=rf"output_scaler is the class {cls.__name__}, .*{made}"):
        sb.Surrogate(mlp([2, 4, 1]), None, cls)
