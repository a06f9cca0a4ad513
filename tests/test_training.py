"""Value and Sobolev fitting, and differentiable derivatives for loss terms."""

import builtins

import numpy as np
import pytest
import torch
from problems import P_SEED, mlp
from torch import nn

import surrogate_bridge as sb

TOL = {"grad_median": 0.05, "min_dist": 0.2, "deriv": 0.05}


@pytest.fixture(scope="module")
def grid():
    g = np.linspace(-3, 3, 10)
    return np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)


@pytest.fixture(scope="module")
def gradient_only_v(grid):
    net = mlp([2, 32, 32, 1], nn.Tanh, seed=0)
    sur = sb.fit(
        net, grid, dydx=2 * grid @ P_SEED, epochs=3000, progress=False, seed=0, validation=0.0
    )
    return net, sur


def test_gradient_only_fit_of_v(gradient_only_v):
    _, sur = gradient_only_v
    Xt = np.random.default_rng(5).uniform(-2.5, 2.5, (200, 2))  # held out: off the grid
    gt = 2 * Xt @ P_SEED
    rel = np.linalg.norm(sur.grad(Xt) - gt, axis=1) / np.linalg.norm(gt, axis=1)
    assert np.median(rel) < TOL["grad_median"]
    res = sb.minimize(sur, [2.0, -2.0])
    assert np.linalg.norm(res.x) < TOL["min_dist"]
    assert sur([-3.0, -3.0]) == pytest.approx(0.0, abs=1e-12)  # default anchor: 0 at X[0]


def test_model_trained_in_place_surrogate_is_a_copy(gradient_only_v):
    net, sur = gradient_only_v
    assert all(p.grad is None for p in net.parameters())
    with torch.no_grad():
        net[0].bias.add_(1.0)  # changing the user's model afterwards ...
    try:
        x = torch.zeros(1, 2, dtype=torch.float64)
        assert not torch.equal(net(x), sur.function.model(x))  # ... leaves the surrogate as is
    finally:
        with torch.no_grad():
            net[0].bias.sub_(1.0)


def test_value_fit_cubic_derivative():
    X = np.linspace(1.0, 7.5, 200)[:, None]
    y = X**3 + 7 - 3 * X
    sur = sb.fit(
        mlp([1, 32, 32, 1], nn.Tanh, seed=1),
        X,
        y,
        epochs=3000,
        progress=False,
        seed=0,
        validation=0.0,
    )
    pts = np.linspace(2.0, 7.0, 26)[:, None]
    rel = np.abs(sur.grad(pts)[:, 0] / (3 * pts[:, 0] ** 2 - 3) - 1)
    assert rel.max() < TOL["deriv"]
    np.testing.assert_allclose(sur.bounds().lb, [1.0])  # the minmax input scaler's range


def test_values_and_gradients_together_and_vector_outputs():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (150, 2))
    Y = np.stack([np.sin(X[:, 0]) * X[:, 1], X[:, 0] ** 2 + X[:, 1]], 1)
    J = np.stack(
        [
            np.stack([np.cos(X[:, 0]) * X[:, 1], np.sin(X[:, 0])], 1),
            np.stack([2 * X[:, 0], np.ones(150)], 1),
        ],
        1,
    )  # (N, 2, 2)
    sur = sb.fit(mlp([2, 32, 2], nn.Tanh, seed=0), X, Y, J, epochs=1500, progress=False, seed=0)
    Xt = rng.uniform(-0.8, 0.8, (50, 2))
    Jt = np.stack(
        [
            np.stack([np.cos(Xt[:, 0]) * Xt[:, 1], np.sin(Xt[:, 0])], 1),
            np.stack([2 * Xt[:, 0], np.ones(50)], 1),
        ],
        1,
    )
    assert np.abs(sur.jac(Xt) - Jt).max() < 0.05
    h = sur.history
    assert len(h["validation"]) == len(h["train"]) and h["validation"][-1] < h["validation"][0]


def test_early_stopping_and_reproducibility(grid):
    V = np.einsum("ni,ij,nj->n", grid, P_SEED, grid)
    a = sb.fit(
        mlp([2, 8, 1], seed=3), grid, V, epochs=5000, patience=20, lr=0.05, progress=False, seed=7
    )
    b = sb.fit(
        mlp([2, 8, 1], seed=3), grid, V, epochs=5000, patience=20, lr=0.05, progress=False, seed=7
    )
    assert a.history["stopped_early"] and len(a.history["train"]) < 5000
    assert a.history["train"] == b.history["train"]
    assert a([0.5, 0.5]) == b([0.5, 0.5])


def test_patience_none_runs_every_epoch_and_keeps_the_best_weights(grid):
    """patience=None: every epoch runs where patience=5 stops early, and the best epoch (whose
    weights are restored) is the one of least validation loss."""
    V = np.einsum("ni,ij,nj->n", grid, P_SEED, grid)
    kw = dict(epochs=600, lr=0.05, progress=False, seed=7)
    short = sb.fit(mlp([2, 8, 1], seed=3), grid, V, patience=5, **kw)
    full = sb.fit(mlp([2, 8, 1], seed=3), grid, V, patience=None, **kw)
    assert short.history["stopped_early"] and len(short.history["train"]) < 600
    h = full.history
    assert not h["stopped_early"] and len(h["train"]) == 600
    assert h["validation"][h["best_epoch"]] == min(h["validation"])


def test_progress_plain_line_without_tqdm(grid, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    sb.fit(mlp([2, 4, 1]), grid, grid[:, 0], epochs=20, progress=True, seed=0)
    assert "fit: epoch 20/20" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        (dict(y=np.zeros(5)), ValueError, "X has 100 samples but y has 5"),
        (dict(y=np.full(100, np.nan)), ValueError, "y has non-finite"),
        (dict(dydx=np.zeros((100, 3))), ValueError, r"dydx has shape \(100, 3\)"),
        (dict(), ValueError, "pass values y, gradients dydx, or both"),
        (dict(y=np.zeros(100), input_scaler="robust"), ValueError, "minmax.*standard"),
        (dict(y=np.zeros(100), validation=1.5), ValueError, "validation must be in"),
    ],
    ids=["lengths", "nan", "grad-shape", "nothing", "scaler", "validation"],
)
def test_fit_errors(grid, kwargs, err, match):
    with pytest.raises(err, match=match):
        sb.fit(mlp([2, 4, 1]), grid, progress=False, **kwargs)


def test_gradients_are_not_fitted_through_batch_statistics(grid):
    """Values train as usual with a BatchNorm; a per-sample derivative does not exist when each
    sample is normalized by the batch's statistics, so dydx is refused, naming the layer."""
    net = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1)).double()
    y = (grid**2).sum(1)
    sur = sb.fit(net, grid, y, epochs=5, progress=False, seed=0)
    assert np.isfinite(sur(grid[:3])).all()
    with pytest.raises(ValueError, match="BatchNorm1d '1' normalizes with the batch's"):
        sb.fit(net, grid, y, dydx=2 * grid, epochs=5, progress=False)
    assert net.training  # left as it was


def test_an_unfitted_sklearn_scaler_is_fitted_as_a_copy(grid):
    from sklearn.preprocessing import PowerTransformer, StandardScaler

    X = grid + 4.0  # positive, for a Box-Cox step
    y = (X**2).sum(1)
    xs, ys = PowerTransformer(method="box-cox"), StandardScaler()
    a = sb.fit(mlp([2, 8, 1], seed=0), X, y, input_scaler=xs, output_scaler=ys, epochs=30,
               progress=False, seed=0)  # fmt: skip
    assert not hasattr(xs, "lambdas_") and not hasattr(ys, "mean_")  # the user's are left as is
    fitted = (PowerTransformer(method="box-cox").fit(X), StandardScaler().fit(y[:, None]))
    b = sb.fit(mlp([2, 8, 1], seed=0), X, y, input_scaler=fitted[0], output_scaler=fitted[1],
               epochs=30, progress=False, seed=0)  # fmt: skip
    assert a.input_scaler.to_dict() == b.input_scaler.to_dict()
    assert a.output_scaler.to_dict() == b.output_scaler.to_dict()
    np.testing.assert_array_equal(a(X[:7]), b(X[:7]))
    with pytest.raises(ValueError, match="output_scaler is an unfitted StandardScaler.*no values"):
        sb.fit(mlp([2, 4, 1]), X, dydx=2 * X, output_scaler=StandardScaler(), progress=False)


def test_a_stateless_function_transformer_is_fitted_as_a_copy(grid):
    """FunctionTransformer reads as fitted to sklearn before fit has counted its features."""
    from sklearn.preprocessing import FunctionTransformer

    X = grid + 4.0
    log, same = FunctionTransformer(np.log), FunctionTransformer()
    sur = sb.fit(mlp([2, 8, 1]), X, (X**2).sum(1), input_scaler=log, output_scaler=same,
                 epochs=5, progress=False, seed=0)  # fmt: skip
    np.testing.assert_allclose(sur.input_scaler.transform(X), np.log(X), rtol=1e-15)
    assert sur.output_scaler.to_dict() == sb.Affine([0.0], [1.0]).to_dict()
    assert not hasattr(log, "n_features_in_") and not hasattr(same, "n_features_in_")


def test_the_domain_is_where_the_model_was_trained(grid):
    """Whatever the scalers: a standard input scaler records no range, the data does."""
    y = grid[:, 0] * grid[:, 1]
    sur = sb.fit(mlp([2, 4, 1], seed=0), grid, y, input_scaler="standard", epochs=5,
                 progress=False, seed=0)  # fmt: skip
    np.testing.assert_array_equal(sur.bounds().lb, [-3.0, -3.0])
    np.testing.assert_array_equal(sur.bounds().ub, [3.0, 3.0])
    with pytest.warns(sb.ExtrapolationWarning, match=r"x\[0\] = 3.5 lies outside"):
        sur([3.5, 0.0])
    wide = sb.fit(mlp([2, 4, 1], seed=0), grid, y, input_scaler="standard", epochs=5,
                  progress=False, seed=0, domain=([-9, -9], [9, 9]))  # fmt: skip
    assert wide.domain[0].tolist() == [-9.0, -9.0]  # a domain passed is kept


def test_fit_names_the_two_readings_of_a_1d_x(grid):
    with pytest.raises(ValueError, match=r"X must be 2-D .* shape \(100,\); .* X\[:, None\]"):
        sb.fit(mlp([1, 4, 1]), grid[:, 0], grid[:, 1], progress=False)


# derivatives for loss terms ------------------------------------------------------------------
def test_derivatives_sin_closed_forms_to_order_four():
    x = torch.linspace(0, 2 * np.pi, 17, dtype=torch.float64)[:, None]
    d = sb.derivatives(torch.sin, x, order=4)
    truth = [torch.sin, torch.cos, lambda t: -torch.sin(t), lambda t: -torch.cos(t), torch.sin]
    for j, (dj, f) in enumerate(zip(d, truth, strict=True)):
        assert dj.shape == (17, 1) + (1,) * j
        torch.testing.assert_close(dj.reshape(17), f(x[:, 0]), rtol=1e-12, atol=1e-12)


def test_derivatives_match_nested_autograd_for_a_network():
    net = mlp([3, 8, 2], nn.SiLU, seed=4)
    x = torch.randn(4, 3, dtype=torch.float64)
    _, J, H, T = sb.derivatives(net, x, order=3)
    for i in range(4):  # hand-written nested autograd, one point and one output at a time
        xi = x[i].clone().requires_grad_(True)
        for k in range(2):
            y = net(xi[None])[0, k]
            (g,) = torch.autograd.grad(y, xi, create_graph=True)
            torch.testing.assert_close(J[i, k], g)
            for a in range(3):
                (h,) = torch.autograd.grad(g[a], xi, create_graph=True)
                torch.testing.assert_close(H[i, k, a], h)
                for b in range(3):
                    (t,) = torch.autograd.grad(h[b], xi, retain_graph=True)
                    torch.testing.assert_close(T[i, k, a, b], t)


def test_loss_on_derivatives_trains_parameters():
    """The PINN residual f'' + f: a detached derivative would give zero parameter gradients."""
    net = mlp([1, 8, 1], nn.Tanh, seed=0)
    x = torch.linspace(0, 1, 10, dtype=torch.float64)[:, None]
    f, _, d2f = sb.derivatives(net, x, order=2)
    loss = ((d2f[:, 0, 0, 0] + f[:, 0]) ** 2).mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert x.grad is None


def test_derivatives_errors():
    with pytest.raises(ValueError, match=r"x has shape \(3,\), expected \(N, n\)"):
        sb.derivatives(torch.sin, torch.zeros(3), order=1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        sb.derivatives(torch.sin, np.zeros((3, 1)), order=1)
    with pytest.raises(ValueError, match="order must be an int >= 0"):
        sb.derivatives(torch.sin, torch.zeros(3, 1), order=-1)


def test_an_unfitted_column_transformer_by_names_is_fitted_on_the_dataframe():
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.uniform([300, 1], [400, 5], (60, 2)), columns=["T", "P"])
    y = pd.Series(df["P"] * 2.0, name="y")
    ct = ColumnTransformer([("p", MinMaxScaler(), ["P"]), ("t", StandardScaler(), ["T"])])
    net = mlp([2, 4, 1], seed=0)
    sur = sb.fit(net, df, y, input_scaler=ct, epochs=5, progress=False, seed=0)
    assert sur.feature_names == ("T", "P")
    fitted = ColumnTransformer([("p", MinMaxScaler(), ["P"]), ("t", StandardScaler(), ["T"])])
    z = fitted.fit(df).transform(df.iloc[:3])  # the network sees the transformer's order
    out = sur.output_scaler
    with torch.no_grad():
        want = net(torch.as_tensor(z))[:, 0].numpy() * out.scale[0] + out.shift[0]
    np.testing.assert_allclose(sur(df.iloc[:3]), want, rtol=1e-12)
    bad = ColumnTransformer([("q", MinMaxScaler(), ["Q"])])
    with pytest.raises(ValueError, match="fit: input_scaler could not be fitted to the data"):
        sb.fit(mlp([2, 4, 1]), df, y, input_scaler=bad, progress=False)
