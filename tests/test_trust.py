"""Trust in the field: exact functions for every model, threads, copies, CasADi lifetimes, and a
catalogue of bad input, each case a clear error naming the argument (file safety: test_io.py)."""

import copy
import gc
import io
import pickle
import threading
import warnings

import numpy as np
import pytest
import torch
from problems import P_SEED, FlatOutput, Quadratic, mlp
from scipy.optimize import differential_evolution
from torch import nn

import surrogate_bridge as sb

# which request fills a point first decides which pass computed its value (one row, or n
# replicated rows for a Hessian): equal to rounding, not bitwise
TOL = {"exact": 1e-14, "thread": 1e-13}


def by_hand(model, ins, outs, x):
    """The physical function computed the user's way, with the user's own model object."""
    z = torch.as_tensor(ins.transform(np.atleast_2d(x)))
    with torch.no_grad():
        y = model(z).numpy()
    return outs.inverse_transform(y)


# the same function for every model (no rewrite of the user's layers) --------------------------
def _tied():
    lin = nn.Linear(2, 2).double()
    return nn.Sequential(lin, nn.Tanh(), lin)


def _weight_norm():
    first = nn.utils.parametrizations.weight_norm(nn.Linear(2, 8))
    return nn.Sequential(first, nn.Tanh(), nn.Linear(8, 2)).double()


def _spectral_norm():
    first = nn.utils.parametrizations.spectral_norm(nn.Linear(2, 8))
    return nn.Sequential(first, nn.Tanh(), nn.Linear(8, 2)).double().eval()


def _old_weight_norm():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates the old API
        first = nn.utils.weight_norm(nn.Linear(2, 8))
    return nn.Sequential(first, nn.Tanh(), nn.Linear(8, 2)).double()


@pytest.mark.parametrize("make", [_tied, _weight_norm, _spectral_norm, _old_weight_norm])
def test_surrogate_is_the_users_function_for_shared_and_parametrized_layers(make):
    torch.manual_seed(0)
    model = make()
    ins, outs = sb.Affine([1, 2], [3, 4]), sb.Affine([0.5, -1], [2, 5])
    sur = sb.Surrogate(model, ins, outs)
    X = np.random.default_rng(0).normal(size=(5, 2))
    np.testing.assert_allclose(sur(X), by_hand(model, ins, outs, X), rtol=TOL["exact"])
    np.testing.assert_allclose(sur(X[0]), by_hand(model, ins, outs, X[0])[0], rtol=TOL["exact"])


@pytest.mark.parametrize(("shift", "scale"), [(1e6, 1e-3), (1e6, 1e-6), (-3e8, 2e-2)])
def test_gradients_far_from_the_origin_keep_float64_accuracy(shift, scale):
    """Kelvin- or pascal-sized inputs with a small spread: (x - s) / c is exact where x is near
    s; a folded W/c x - (W/c) s cancels catastrophically."""
    net = mlp([2, 16, 1], nn.Tanh, seed=1)
    ins = sb.Affine([shift, shift], [scale, 2 * scale])
    sur = sb.Surrogate(net, ins)
    x = np.array([0.3, -0.7]) * ins.scale + ins.shift
    zt = torch.tensor(ins.transform(x), requires_grad=True)  # exact: x - s has no rounding here
    (gz,) = torch.autograd.grad(net(zt[None])[0, 0], zt)
    truth = gz.numpy() / ins.scale  # the chain rule by hand, in normalized units
    np.testing.assert_allclose(sur.grad(x), truth, rtol=1e-13)


# threads ------------------------------------------------------------------------------------------
def in_threads(work, n: int) -> None:
    """``work(k)`` for k < n, each in its own thread, all joined."""
    threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.parametrize("route", ["auto", "numpy"])
@pytest.mark.parametrize("n_in", [2, 20])
def test_shared_surrogate_under_threads_equals_a_cache_free_twin(n_in, route):
    net = mlp([n_in, 16, 1], nn.Softplus, seed=2)
    shared = sb.Surrogate(net, cache_size=8, point_route=route)
    twin = sb.Surrogate(net, cache_size=0, point_route="torch")
    points = np.random.default_rng(3).normal(size=(6, n_in))
    p = np.random.default_rng(4).normal(size=n_in)
    calls = {
        "value": lambda s, x: s(x),
        "grad": lambda s, x: s.grad(x),
        "hess": lambda s, x: s.hess(x),
        "hessp": lambda s, x: s.hessp(x, p),
        "value_and_grad": lambda s, x: s.value_and_grad(x)[1],
    }
    expected = {(k, i): f(twin, x) for k, f in calls.items() for i, x in enumerate(points)}
    errors, mismatches = [], []
    barrier = threading.Barrier(6)

    def work(seed):
        rng = np.random.default_rng(seed)
        barrier.wait()
        for _ in range(150):
            name, i = rng.choice(list(calls)), int(rng.integers(len(points)))
            try:
                got = calls[name](shared, points[i])
            except Exception as err:  # any failure is the test's finding
                errors.append(repr(err))
                continue
            if not np.allclose(got, expected[(name, i)], rtol=TOL["thread"], atol=1e-15):
                mismatches.append((name, i))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and mismatches == []


@pytest.mark.parametrize("route", ["torch", "numpy", "casadi"])
def test_update_weights_while_threads_evaluate(route):
    """A writer swaps weights A <-> B while readers ask for values, gradients and Hessians, at
    single points (the route and its cache) and in batches: every answer is all-A or all-B (an
    in-place load had readers mix layers of both, or fail on autograd's version check)."""
    if route == "casadi":
        pytest.importorskip("casadi")
    A, B = (mlp([3, 16, 16, 1], nn.Tanh, seed=s) for s in (0, 1))
    sur = sb.Surrogate(copy.deepcopy(A), point_route=route)
    truth = [sb.Surrogate(m, point_route="torch", cache_size=0) for m in (A, B)]
    pts = np.random.default_rng(0).normal(size=(4, 3))
    X = np.random.default_rng(1).normal(size=(64, 3))
    calls = {
        "value": lambda s, x: s(x),
        "grad": lambda s, x: s.grad(x),
        "hess": lambda s, x: s.hess(x),
        "batch values": lambda s, x: s(X),
        "batch Hessians": lambda s, x: s.hess(X),
    }
    expected = {
        (k, i): [f(t, x) for t in truth] for k, f in calls.items() for i, x in enumerate(pts)
    }
    done, errors, mixed, answered = threading.Event(), [], [], []

    def read(seed):
        rng = np.random.default_rng(seed)
        while not done.is_set():
            name, i = rng.choice(list(calls)), int(rng.integers(len(pts)))
            try:
                got = calls[name](sur, pts[i])
            except Exception as err:  # any failure is the test's finding
                errors.append(repr(err)[:200])
                continue
            answered.append(name)
            if not any(np.allclose(got, e, rtol=1e-12, atol=1e-14) for e in expected[(name, i)]):
                mixed.append(name)

    readers = [threading.Thread(target=read, args=(s,)) for s in range(3)]
    for t in readers:
        t.start()
    for k in range(20):
        sb.update_weights(sur, B if k % 2 == 0 else A)
    done.set()
    for t in readers:
        t.join()
    assert errors == [] and mixed == []
    assert len(answered) > 20
    np.testing.assert_array_equal(sur.hess(X), truth[0].hess(X))  # A, last swapped in


def test_casadi_callback_shared_by_threads():
    ca = pytest.importorskip("casadi")
    sur = sb.Surrogate(mlp([3, 8, 1], nn.Softplus, seed=0))
    F = sb.casadi_function(sur, mode="callback")
    x = ca.MX.sym("x", 3)
    H = ca.Function("H", [x], [ca.hessian(F(x), x)[0]])
    pts = np.random.default_rng(0).normal(size=(8, 3))
    ref = [sur.hess(q) for q in pts]
    errors = []

    def work(k):
        for j in range(40):
            q = pts[(k + j) % len(pts)]
            try:
                np.testing.assert_allclose(np.array(H(q)), ref[(k + j) % len(pts)], rtol=1e-12)
            except Exception as err:  # any failure is the test's finding
                errors.append(repr(err))

    in_threads(work, 4)
    assert errors == []


def test_graphs_captured_in_threads_at_once():
    """Saving, translating to CasADi and building the numpy route all capture the model with
    torch.export, which keeps process-wide state while it traces: two at once failed inside
    torch (a slot already occupied, a module hierarchy of None) and cost a route or a save."""
    pytest.importorskip("casadi")
    models = [mlp([2, 8, 1], nn.Tanh, seed=s) for s in range(3)]
    shared = sb.Surrogate(models[0])
    x = np.array([0.3, -0.4])
    errors, barrier = [], threading.Barrier(6)

    def work(k):
        barrier.wait()
        try:
            model = models[k % 3]
            if k % 3 == 0:
                buf = io.BytesIO()
                sb.save(shared, buf)
                buf.seek(0)
                np.testing.assert_allclose(sb.load(buf).hess(x), shared.hess(x), rtol=1e-13)
            elif k % 3 == 1:
                F = sb.casadi_function(sb.Surrogate(model), mode="symbolic")
                np.testing.assert_allclose(float(F(x)), sb.Surrogate(model)(x), rtol=1e-14)
            else:
                got = sb.Surrogate(model, point_route="numpy").hess(x)
                np.testing.assert_allclose(got, sb.Surrogate(model, point_route="torch").hess(x))
        except Exception as err:  # any failure is the test's finding
            errors.append(repr(err))

    in_threads(work, 6)
    assert errors == []


# copies, pickles, process pools --------------------------------------------------------------
@pytest.fixture
def evaluated():
    sur = sb.Surrogate(mlp([2, 8, 1], nn.Tanh, seed=0), domain=([-3, -3], [3, 3]))
    x = np.array([0.2, 0.1])
    sur(x), sur.grad(x), sur.hessp(x, [1.0, 0.0])  # a cache entry and a kept graph
    return sur


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda s: pickle.loads(pickle.dumps(s))])
def test_evaluated_surrogate_copies_and_pickles(evaluated, clone):
    c = clone(evaluated)
    x = np.array([0.4, -0.3])
    assert c.cache_info().currsize == 0  # copies start with an empty cache
    np.testing.assert_array_equal(c.hess(x), evaluated.hess(x))
    np.testing.assert_array_equal(c.grad(x), evaluated.grad(x))
    assert c.domain[1].tolist() == [3.0, 3.0]


def test_differential_evolution_with_process_workers():
    sur = sb.Surrogate(Quadratic(P_SEED), n_in=2, domain=([-2, -2], [2, 2]))
    sur([0.5, 0.5])  # evaluated before it is sent to the workers
    res = differential_evolution(
        sur, sur.bounds(), workers=2, updating="deferred", seed=0, tol=1e-10, maxiter=200
    )
    assert np.linalg.norm(res.x) < 1e-3


# CasADi callbacks that cannot die --------------------------------------------------------------
def _solver_from_helper(sur):
    """How users write it: F(x) inline, only the solver returned."""
    ca = pytest.importorskip("casadi")
    x = ca.MX.sym("x", 2)
    quiet = {"ipopt.print_level": 0, "print_time": False, "ipopt.sb": "yes"}
    return ca.nlpsol(
        "S", "ipopt", {"x": x, "f": sb.casadi_function(sur, mode="callback")(x)}, quiet
    )


def test_callback_solver_built_in_a_helper_survives_garbage_collection():
    sur = sb.Surrogate(Quadratic(P_SEED), sb.Affine([0.5, -0.5], [2.0, 3.0]))
    solver = _solver_from_helper(sur)
    gc.collect()
    res = solver(x0=[1.0, 2.0])
    assert solver.stats()["return_status"] == "Solve_Succeeded"
    np.testing.assert_allclose(np.array(res["x"]).ravel(), [0.5, -0.5], atol=1e-6)


# failed setup, first-call inference ------------------------------------------------------------
class TwoFeatures(nn.Module):
    def forward(self, z):
        return z[:, 0] * z[:, 1]


def test_failed_lazy_setup_leaves_no_state():
    sur = sb.Surrogate(TwoFeatures())
    with pytest.raises(ValueError, match="failed on a probe"):
        sur([1.0])
    assert sur.n_in is None
    assert sur([2.0, 3.0]) == 6.0  # the right width afterwards works
    with pytest.raises(ValueError, match="x has 1 features"):
        sur([1.0])


def test_ode_rhs_learns_the_state_count_from_the_first_state():
    torchdiffeq = pytest.importorskip("torchdiffeq")

    class Decay(nn.Module):  # inputs (t, y): dy/dt = -y, parameter free
        def forward(self, z):
            return -z[:, 1:]

    rhs = sb.ode_rhs(sb.Surrogate(Decay()), time_input=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y = torchdiffeq.odeint(rhs, torch.ones(3, dtype=torch.float64), t, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y[-1].numpy(), np.exp(-1.0), rtol=1e-8)


# check_derivatives at a stationary point --------------------------------------------------
def test_check_derivatives_passes_exact_derivatives_at_a_stationary_point():
    class Bowl(nn.Module):
        def forward(self, z):
            return ((z - 0.3) ** 2).sum(-1) + 5.0

    report = sb.check_derivatives(sb.Surrogate(Bowl(), n_in=2), [0.3, 0.3])
    assert report.ok, str(report)
    bad = sb.check_derivatives(sb.Surrogate(Bowl(), n_in=2), [0.3, 0.3], rtol=1e-30)
    assert not bad.ok  # the threshold still bites
    unsaid = sb.Surrogate(Bowl())  # n_in learned from the first x, here check_derivatives'
    assert sb.check_derivatives(unsaid, [0.1, 0.7]).ok and unsaid.n_in == 2
    # and from the start of minimize and multistart, as from a first evaluation
    np.testing.assert_allclose(sb.minimize(sb.Surrogate(Bowl()), [0.9, -1.0]).x, 0.3, atol=1e-7)
    starts = np.array([[1.0, 1.0], [-1.0, 0.5]])
    np.testing.assert_allclose(sb.multistart(sb.Surrogate(Bowl()), starts).x, 0.3, atol=1e-5)


# the bad-input catalogue ------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, z):
        return self.lin(z)


class Locked(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.lock = nn.Linear(2, 1), threading.Lock()

    def forward(self, z):
        return self.lin(z)


class ReturnsTuple(nn.Module):
    def forward(self, z):
        return z.sum(-1), z


class ReturnsField(nn.Module):  # a (3, 4) array per point
    def forward(self, z):
        return (z[:, :1] * torch.ones(12, dtype=z.dtype)).reshape(-1, 3, 4)


class RaisesKeyError(nn.Module):
    def forward(self, z):
        return {}["missing"]


def _scalar():
    return sb.Surrogate(mlp([2, 4, 1], seed=0))


def _vector():
    return sb.Surrogate(mlp([2, 4, 3], seed=0))


def _fit(model=None, **kw):
    X = np.random.default_rng(0).normal(size=(20, 2))
    args = {"y": X[:, 0], "epochs": 2, "progress": False, **kw}
    return lambda: sb.fit(mlp([2, 4, 1]) if model is None else model, X, **args)


def _casadi(**kw):
    return lambda: pytest.importorskip("casadi") and sb.casadi_function(_scalar(), **kw)


def _symbolic_nan():
    pytest.importorskip("casadi")
    return sb.casadi_function(_scalar(), mode="symbolic")(np.array([np.nan, 0.0]))


def _cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    return sb.Surrogate(mlp([2, 4, 1]), device="cuda")


def _mps():  # refused both where torch has no MPS and where it has (MPS has no float64)
    return sb.Surrogate(mlp([2, 4, 1]), device="mps")


def _check_columns():
    pd = pytest.importorskip("pandas")
    from sklearn.preprocessing import StandardScaler

    df = pd.DataFrame(np.random.default_rng(0).normal(size=(9, 2)), columns=["a", "b"])
    sur = sb.Surrogate(mlp([2, 4, 1]), StandardScaler().fit(df))
    return sb.check_derivatives(sur, df[["b", "a"]].iloc[0])


CATALOGUE = {
    # constructor
    "model-class": (lambda: sb.Surrogate(Net), TypeError, "class Net, not an instance"),
    "model-int": (lambda: sb.Surrogate(42), TypeError, "nn.Module or callable"),
    "model-lock": (lambda: sb.Surrogate(Locked()), TypeError, "could not be copied.*lock"),
    "model-tuple": (lambda: sb.Surrogate(ReturnsTuple(), n_in=2), ValueError, "returned a tuple"),
    "model-field": (
        lambda: sb.Surrogate(ReturnsField(), n_in=2),
        ValueError,
        r"array of shape \(3, 4\): pass nn.Sequential\(model, nn.Flatten\(1\)\)",
    ),
    "model-keyerror": (lambda: sb.Surrogate(RaisesKeyError(), n_in=2), ValueError, "KeyError"),
    "dtype": (lambda: sb.Surrogate(Net(), dtype=torch.int32), TypeError, "float64, torch.float32"),
    "device-bogus": (lambda: sb.Surrogate(Net(), device="bogus"), ValueError, "not a torch device"),
    "device-cuda": (_cuda, ValueError, "no CUDA device"),
    "device-meta": (lambda: sb.Surrogate(Net(), device="meta"), ValueError, "shapes, not numbers"),
    "device-mps": (_mps, ValueError, r"device='mps' cannot hold torch.float64 .*dtype=torch.fl"),
    "cache": (lambda: sb.Surrogate(Net(), cache_size=-1), ValueError, "cache_size"),
    "n_in": (lambda: sb.Surrogate(Net(), n_in=0), ValueError, "n_in must be a positive int"),
    "policy": (lambda: sb.Surrogate(Net(), extrapolation="loud"), ValueError, "warn.*ignore"),
    "domain-nan": (
        lambda: sb.Surrogate(Net(), domain=([np.nan, 0], [1, 1])),
        ValueError,
        "without NaN",
    ),
    "domain-order": (lambda: sb.Surrogate(Net(), domain=([1, 1], [0, 0])), ValueError, "lb <= ub"),
    "domain-shape": (lambda: sb.Surrogate(Net(), domain=([0], [1])), ValueError, "1 features"),
    "domain-kind": (lambda: sb.Surrogate(Net(), domain=5), TypeError, "pair"),
    # scalers
    "affine-strings": (lambda: sb.Affine("a", 1), TypeError, "shift has dtype"),
    "affine-zero": (lambda: sb.Affine([0], [0]), ValueError, "zero entries"),
    "affine-range-len": (
        lambda: sb.Affine([0, 0], [1, 1], data_min=[0, 0], data_max=[1]),
        ValueError,
        "data_min and data_max need 2",
    ),
    "affine-min-only": (
        lambda: sb.Affine([0], [1], data_min=[0]),
        ValueError,
        "pass both or neither",
    ),
    "scaler-kind": (lambda: sb.Surrogate(Net(), "minmax"), TypeError, "not supported"),
    # evaluation
    "x-features": (lambda: _scalar()(np.zeros(3)), ValueError, "x has 3 features"),
    "x-rank": (lambda: _scalar()(np.zeros((2, 2, 2))), ValueError, "3 dimensions"),
    "x-column": (lambda: _scalar()(np.zeros((2, 1))), ValueError, r"column vector: pass x.ravel"),
    "x-columns": (lambda: _scalar()(np.zeros((2, 5))), ValueError, r"as columns.*pass x\.T"),
    "x-strings": (lambda: _scalar()(["a", "b"]), TypeError, "dtype <U1"),
    "x-nan": (lambda: _scalar()([np.nan, 0]), ValueError, r"non-finite.*\(0,\)"),
    "x-masked": (
        lambda: _scalar().grad(np.ma.array([[1.0, 2.0], [3.0, 4.0]], mask=[[0, 1], [0, 0]])),
        ValueError,
        r"masked entries at \(0, 1\)",
    ),
    "x-ragged": (lambda: _scalar()([[1.0, 2.0], [3.0]]), TypeError, "could not be read"),
    "p-ragged": (lambda: _scalar().hessp([0, 0], [[1], [1, 2]]), TypeError, "p could not"),
    "p-length": (lambda: _scalar().hessp([0, 0], [1.0]), ValueError, r"p has shape \(1,\)"),
    "v-length": (lambda: _vector().lagrangian_hess([0, 0], [1.0]), ValueError, "v has shape"),
    "grad-vector": (lambda: _vector().grad([0, 0]), ValueError, "for scalar surrogates"),
    "hessp-batch": (lambda: _scalar().hessp(np.zeros((2, 2)), [1, 0]), ValueError, "one point"),
    "order": (lambda: _scalar().derivatives([0, 0], order=-1), ValueError, "order must be"),
    "bounds": (lambda: _scalar().bounds(), ValueError, "no training domain"),
    # scipy adapter
    "con-nan": (lambda: sb.scipy_constraint(_scalar(), lb=np.nan), ValueError, "NaN"),
    "con-str": (lambda: sb.scipy_constraint(_scalar(), lb="a"), TypeError, "lb must be a number"),
    "con-order": (lambda: sb.scipy_constraint(_scalar(), lb=1, ub=0), ValueError, "lb must be"),
    "con-len": (lambda: sb.scipy_constraint(_vector(), lb=[0, 1]), ValueError, "3 outputs"),
    "ode-shape": (lambda: sb.scipy_ode(_scalar()), ValueError, "as many outputs as states"),
    "min-method": (lambda: sb.minimize(_scalar(), [0, 0], method="x"), ValueError, "BFGS|bfgs"),
    "min-x0": (lambda: sb.minimize(_scalar(), [0, 0, 0]), ValueError, "x0 has 3 features"),
    # training
    "fit-epochs": (_fit(epochs=-1), ValueError, "epochs must be a positive int"),
    "fit-batch": (_fit(batch_size=0), ValueError, "batch_size must be a positive int"),
    "fit-weights": (_fit(weights=(0, 0)), ValueError, "not both zero"),
    "fit-lr": (_fit(lr=-1), ValueError, "lr must be a positive float"),
    "fit-width": (_fit(model=mlp([3, 4, 1])), ValueError, "must take 2 features"),
    "fit-outputs": (_fit(model=mlp([2, 4, 2])), ValueError, r"returns \(2, 2\).*1 output"),
    "fit-model": (_fit(model=lambda z: z), TypeError, "model must be a torch.nn.Module"),
    "fit-validation": (_fit(validation=1.0), ValueError, "validation must be in"),
    # CasADi adapter
    "ca-name": (_casadi(name=5), TypeError, "name must be a string"),
    "ca-mode": (_casadi(mode="fast"), ValueError, "auto.*symbolic.*callback"),
    "ca-device": (_casadi(device="cuda"), TypeError, "device belongs to the Surrogate"),
    "ca-batched": (_casadi(batched=True), TypeError, r"F\.map\(N\)"),
    "ca-nan": (_symbolic_nan, ValueError, "non-finite"),
    # files
    "save-kind": (lambda: sb.save(Net(), "x.sbz"), TypeError, "must be a Surrogate"),
    "load-device": (lambda: sb.load(__file__, device="bogus"), ValueError, "not a torch device"),
    # check_derivatives
    "check-batch": (
        lambda: sb.check_derivatives(_scalar(), np.zeros((2, 2))),
        ValueError,
        r"check_derivatives: x has shape \(2, 2\), expected one point of shape \(2,\)",
    ),
    "check-nan": (
        lambda: sb.check_derivatives(_scalar(), [np.nan, 0.0]),
        ValueError,
        "check_derivatives: x has non-finite",
    ),
    "check-columns": (_check_columns, ValueError, r"check_derivatives: x has the columns \['b'"),
    "load-text": (lambda: sb.load(__file__), ValueError, "not a surrogate_bridge file"),
    "load-missing": (lambda: sb.load("no/such/file.sbz"), FileNotFoundError, "no file"),
}


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_bad_input_catalogue(case):
    call, err, match = CATALOGUE[case]
    with pytest.raises(err, match=match):
        call()


def test_empty_batch_returns_empty_results_of_the_right_shape():
    sur, vec = _scalar(), _vector()
    empty = np.zeros((0, 2))
    assert sur(empty).shape == (0,) and sur.grad(empty).shape == (0, 2)
    assert vec.hess(empty).shape == (0, 3, 2, 2)
    assert sur.hess(torch.zeros(0, 2, dtype=torch.float64)).shape == (0, 2, 2)


def test_parameter_free_model_learns_n_in_and_caches():
    sur = sb.Surrogate(FlatOutput())
    assert sur.grad([1.0, 2.0]).tolist() == [2.0, 4.0]
    assert sur.cache_info().misses == 1


def test_a_field_model_flattened_as_the_refusal_says_is_a_surrogate():
    sur = sb.Surrogate(nn.Sequential(ReturnsField(), nn.Flatten(1)), n_in=2)
    assert sur.n_out == 12
    np.testing.assert_array_equal(sur([0.5, 2.0]), np.full(12, 0.5))
    np.testing.assert_array_equal(sur.jac([0.5, 2.0]), np.tile([1.0, 0.0], (12, 1)))
