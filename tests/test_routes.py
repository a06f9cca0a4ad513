"""Single-point routes: every route gives the torch route's numbers (to 1e-12 relative) on the
same points, and "auto" chooses by measuring, per kind of request."""

import copy
import pickle
import time

import numpy as np
import pytest
import torch
from problems import KernelCdistRBF, mlp
from torch import nn

import surrogate_bridge as sb

pytest.importorskip("casadi")

TOL = {"rel": 1e-12}  # the bar: every route agrees with torch to 1e-12 relative


def models():
    rng = np.random.default_rng(0)
    return {
        "tanh-scalers": (
            mlp([2, 32, 32, 1], nn.Tanh, seed=0),
            sb.Affine([0.5, -1.0], [2.0, 3.0]),
            sb.Affine([10.0], [40.0]),
        ),
        "vector-silu": (
            mlp([3, 16, 3], nn.SiLU, seed=1),
            sb.Affine(rng.normal(size=3), [1, 2, 3]),
            None,
        ),
        "wide-softplus-20": (
            mlp([20, 24, 1], nn.Softplus, seed=2),
            None,
            None,
        ),  # hessp: kept graph
    }


MODELS = models()


def close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.abs(a - b).max(initial=0) <= TOL["rel"] * max(np.abs(b).max(initial=0), 1e-300)


@pytest.mark.parametrize("name", list(MODELS))
def test_casadi_route_agrees_with_torch_route(name):
    model, ins, outs = MODELS[name]
    t = sb.Surrogate(model, ins, outs, point_route="torch")
    c = sb.Surrogate(model, ins, outs, point_route="casadi")
    assert t.point_route == "torch" and c.point_route == "casadi"
    X = np.random.default_rng(1).normal(size=(4, t.n_in))
    for x in X:
        for name in ("__call__", "jac", "hess"):
            assert close(getattr(c, name)(x), getattr(t, name)(x)), name
        if t.n_out == 1:
            p = np.linspace(-1, 1, t.n_in)
            assert close(c.grad(x), t.grad(x)) and close(c.hessp(x, p), t.hessp(x, p))
            c.cache_clear(), t.cache_clear()  # hessp at a fresh point, after its gradient
            c.grad(x)
            assert close(c.hessp(x, p), t.hessp(x, p))
            # beyond 16 inputs the kept point's Hessian-vector product Function answers (no
            # new pass); up to 16, the dense Hessian (one pass of its Function, then cached)
            assert c.cache_info().passes == (1 if c.n_in > 16 else 2)
        else:
            v = np.arange(1.0, t.n_out + 1)
            assert close(c.lagrangian_hess(x, v), t.lagrangian_hess(x, v))
            c.cache_clear(), t.cache_clear()
            assert close(c.lagrangian_hess(x, v), t.lagrangian_hess(x, v))


def test_auto_measures_after_32_points_and_keeps_the_faster_route_per_kind():
    model, ins, outs = MODELS["tanh-scalers"]
    sur = sb.Surrogate(model, ins, outs)
    assert sur.point_route == "torch" and "measures after 32" in sur.point_route_report["note"]
    X = np.random.default_rng(2).normal(size=(40, 2))
    for x in X[:31]:
        sur.value_and_grad(x)
    assert "us" not in sur.point_route_report  # 31 single points: not yet
    for x in X[31:]:
        sur.hess(x)
    report = sur.point_route_report
    assert 0 < report["build_s"] and 0 < report["probe_s"] < 0.2  # the probe costs little
    for kind, us in report["us"].items():
        faster = min(us, key=us.get)
        assert sur._engine.route.choice[kind].name == faster, kind
    assert sur.point_route in repr(sur)
    # whatever was chosen, the numbers are the torch route's
    ref = sb.Surrogate(model, ins, outs, point_route="torch")
    assert close(sur.hess(X[0] + 0.1), ref.hess(X[0] + 0.1))


def test_float32_and_untranslatable_models_stay_on_torch():
    s32 = sb.Surrogate(mlp([2, 8, 1], seed=0), dtype=torch.float32)
    s32._engine.route.measure(np.zeros(2))
    assert s32.point_route == "torch" and "float64 on the CPU" in s32.point_route_report["note"]
    with pytest.raises(ValueError, match="float64 on the CPU"):
        sb.Surrogate(mlp([2, 8, 1], seed=0), dtype=torch.float32, point_route="casadi")

    class LogGamma(nn.Module):  # no CasADi translation
        def forward(self, z):
            return torch.lgamma(z.exp()).sum(1, keepdim=True)

    with pytest.raises(ValueError, match="did not translate.*lgamma"):
        sb.Surrogate(LogGamma(), n_in=2, point_route="casadi")


def test_point_route_option_is_checked():
    with pytest.raises(ValueError, match="auto.*torch.*casadi"):
        sb.Surrogate(mlp([2, 4, 1]), point_route="fastest")


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda s: pickle.loads(pickle.dumps(s))])
def test_copies_of_a_measured_surrogate_measure_again(clone):
    model, ins, outs = MODELS["tanh-scalers"]
    sur = sb.Surrogate(model, ins, outs, point_route="casadi")
    x = np.array([0.2, -0.4])
    c = clone(sur)
    assert c.point_route == "casadi"
    assert close(c.hess(x), sur.hess(x))


def _wrong_tanh_curvature(h):
    """tanh with its second derivative 5% off: values and gradients stay right."""
    t = np.tanh(h)
    d = 1.0 - t * t
    return t, d, -1.9 * t * d


def test_forced_route_that_is_not_the_same_function_is_refused(monkeypatch):
    """A route rewrites the user's layers: it is checked against torch at the probe points
    (value, Jacobian and Hessian) when it is built, so a wrong rule cannot answer a solver."""
    from surrogate_bridge import elementwise

    monkeypatch.setitem(elementwise.ACTIVATIONS, torch.ops.aten.tanh.default, _wrong_tanh_curvature)
    model, ins, outs = MODELS["tanh-scalers"]
    with pytest.raises(ValueError, match=r"Hessian differs from torch's by [0-9.e-]+ \(relative\)"):
        sb.Surrogate(model, ins, outs, point_route="numpy")


class Root(nn.Module):
    """sqrt of the first input plus ``shift``: NaN (with NaN derivatives) where that is
    negative, which the probe points reach (the first at z = 1.54, the next two below 0)."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, z):
        return torch.sqrt(z[:, :1] + self.shift) * torch.tanh(z[:, 1:2])


@pytest.mark.parametrize("route", ["numpy", "casadi"])
def test_a_route_is_checked_where_torch_is_finite_and_must_be_nan_where_torch_is(route):
    """Where torch's value or derivatives are NaN at a probe point, the route's must be NaN too
    (so it is the same function there); where they are finite, within the tolerance. A model
    NaN at every probe point leaves nothing to check against: refused, saying so. (Every probe
    point once had to be finite: 'differs from torch's by nan'.)"""
    sur = sb.Surrogate(Root(0.0), n_in=2, point_route=route)
    ref = sb.Surrogate(Root(0.0), n_in=2, point_route="torch")
    for x in ([1.0, 0.5], [0.3, -2.0]):
        assert close(sur.hess(np.array(x)), ref.hess(np.array(x)))
        assert close(sur.grad(np.array(x)), ref.grad(np.array(x)))
    assert np.isnan(sur(np.array([-1.0, 0.5])))
    # (CasADi's translation is refused by its own check first, for the same reason)
    with pytest.raises(ValueError, match="not finite at any probe point|finite at none of them"):
        sb.Surrogate(Root(-10.0), n_in=2, point_route=route)


@pytest.mark.parametrize("route", ["numpy", "casadi"])
def test_a_model_of_physical_inputs_is_checked_inside_its_domain(route):
    """Without an input scaler the probe points are drawn in ``domain=``, where the model is
    used: a model defined only there (a root of x - 10) is checked, not refused as NaN at
    standard normal points that lie outside it."""
    domain = ([10.0, -1.0], [20.0, 1.0])
    sur = sb.Surrogate(Root(-10.0), n_in=2, domain=domain, point_route=route)
    ref = sb.Surrogate(Root(-10.0), n_in=2, domain=domain, point_route="torch")
    probes = sur.function.probes(2).numpy()
    assert (probes >= domain[0]).all() and (probes <= domain[1]).all()
    for x in ([12.0, 0.5], [19.0, -0.3]):
        assert close(sur.hess(np.array(x)), ref.hess(np.array(x)))
        assert close(sur.grad(np.array(x)), ref.grad(np.array(x)))


def test_a_route_that_is_nan_where_torch_is_finite_is_not_the_same_function():
    from surrogate_bridge.routes import _gap

    a = np.array([1.0, np.nan, np.inf])
    assert _gap(a, a.copy()) == 0.0
    assert _gap(a, np.array([1.0 + 1e-12, np.nan, np.inf])) < 1e-11
    for b in ([1.0, 0.0, np.inf], [np.nan, np.nan, np.inf], [1.0, np.nan, -np.inf]):
        assert _gap(a, np.array(b)) == np.inf


def _casadi_off(engine):
    from surrogate_bridge.routes import RouteUnavailable

    raise RouteUnavailable("off for this test")


@pytest.mark.parametrize("casadi", [True, False])
def test_auto_leaves_a_route_that_is_not_the_same_function_unused(monkeypatch, casadi):
    """A numpy route with a wrong curvature rule: its Hessians disagree with torch's at the
    current point (named in the report) and, where it is the fastest at first derivatives
    (CasADi off), the check at the probe rows refuses it before it answers anything (its kept
    tapes would answer Hessians)."""
    from surrogate_bridge import elementwise
    from surrogate_bridge.derivatives import Engine

    monkeypatch.setitem(elementwise.ACTIVATIONS, torch.ops.aten.tanh.default, _wrong_tanh_curvature)
    if not casadi:
        monkeypatch.setattr(Engine, "_casadi_route", _casadi_off)
    model, ins, outs = MODELS["tanh-scalers"]
    sur = sb.Surrogate(model, ins, outs)
    exact = sb.Surrogate(model, ins, outs, point_route="torch", cache_size=0)
    X = np.random.default_rng(5).normal(size=(36, 2))
    for x in X:
        sur.value_and_grad(x)
    report = sur.point_route_report
    assert "numpy" in report["disagree"]["hessian"]
    if not casadi:
        assert "numpy route unavailable: its Hessian differs" in report["note"]
        assert sur.point_route == "torch"
    assert "numpy" not in sur.point_route
    for x in X[:4]:
        assert close(sur.hess(x + 0.1), exact.hess(x + 0.1))


def test_a_route_that_fails_unforeseen_is_left_out_and_the_evaluation_goes_on(monkeypatch):
    """Choosing a route is for speed: a reader's failure of any type on an unforeseen model (a
    RuntimeError of torch's, say) leaves that route out, named in the report, and never
    reaches the caller's evaluation."""
    from surrogate_bridge import numpy_route

    def fails(self, *args, **kwargs):
        raise RuntimeError("Cannot access data pointer of Tensor that doesn't have storage")

    monkeypatch.setattr(numpy_route.NumpyPointRoute, "__init__", fails)
    model, ins, outs = MODELS["tanh-scalers"]
    sur = sb.Surrogate(model, ins, outs)
    exact = sb.Surrogate(model, ins, outs, point_route="torch", cache_size=0)
    for x in np.random.default_rng(6).normal(size=(36, 2)):
        assert close(sur.hess(x), exact.hess(x))
    assert "numpy route unavailable: RuntimeError: Cannot access" in sur.point_route_report["note"]
    assert "numpy" not in sur.point_route


@pytest.mark.parametrize("model", [KernelCdistRBF], ids=["cdist"])
def test_auto_measures_models_whose_hessian_torch_cannot_take(model):
    """The routes' check and their timing ask torch for Hessians only where it can take them:
    a solver's 32nd point used to raise torch's error instead of an answer."""
    sur = sb.Surrogate(model())
    ref = sb.Surrogate(model(), point_route="torch")
    for x in np.random.default_rng(0).normal(size=(40, 2)):
        np.testing.assert_allclose(sur.value_and_grad(x)[1], ref.grad(x), rtol=1e-12)
    assert "hessian: torch cannot take it, not measured" in sur.point_route_report["note"]
    with pytest.raises(NotImplementedError, match="torch cannot take this derivative"):
        sur.hess(np.zeros(2))


class _Clamp01(nn.Module):
    def forward(self, h):
        return h.clamp(0.0, 1.0)


class _Relu6(nn.Module):  # F.relu6 calls aten.relu6 (nn.ReLU6 calls hardtanh)
    def forward(self, h):
        return nn.functional.relu6(h)


class _ClampMin(nn.Module):  # Tensor.clamp(min=...) calls aten.clamp_min
    def forward(self, h):
        return torch.ops.aten.clamp_min(h, 0.0)


class _ClampMax(nn.Module):
    def forward(self, h):
        return torch.ops.aten.clamp_max(h, 0.0)


class _Abs(nn.Module):
    def forward(self, h):
        return h.abs()


# activations and the points where their pieces meet (ties of the selection)
KINKS = {
    "relu": (nn.ReLU, [0.0]),
    "leaky": (lambda: nn.LeakyReLU(0.1), [0.0]),
    "prelu": (lambda: nn.PReLU(init=0.2), [0.0]),
    "rrelu": (nn.RReLU, [0.0]),
    "hardtanh": (nn.Hardtanh, [-1.0, 1.0]),
    "relu6": (nn.ReLU6, [0.0, 6.0]),
    "relu6_call": (_Relu6, [0.0, 6.0]),
    "hardsigmoid": (nn.Hardsigmoid, [-3.0, 3.0]),
    "hardswish": (nn.Hardswish, [-3.0, 3.0]),
    "clamp": (_Clamp01, [0.0, 1.0]),
    "clamp_min": (_ClampMin, [0.0]),
    "clamp_max": (_ClampMax, [0.0]),
    "abs": (_Abs, [0.0]),
    "elu": (lambda: nn.ELU(2.0), [0.0]),
    "celu": (lambda: nn.CELU(0.5), [0.0]),
    "selu": (nn.SELU, [0.0]),
    "softplus": (nn.Softplus, [0.0]),
    "logsigmoid": (nn.LogSigmoid, [0.0]),
    "mish": (nn.Mish, [0.0]),
    "softshrink": (lambda: nn.Softshrink(0.5), [-0.5, 0.5]),
    "hardshrink": (lambda: nn.Hardshrink(0.5), [-0.5, 0.5]),
    "threshold": (lambda: nn.Threshold(0.1, 2.0), [0.1]),
}


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
@pytest.mark.parametrize("name", list(KINKS))
def test_every_route_takes_torchs_derivatives_where_pieces_meet(name):
    """At a kink every derivative is a convention; the routes keep torch's (a bias-free net at
    x = 0, a clamp at its bound, where solvers do evaluate): CasADi's fmax and fmin would give
    the mean of the two slopes, and an ELU's second derivative at 0 is torch's 0."""
    import casadi as ca

    make, ties = KINKS[name]
    first = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        first.weight.copy_(torch.eye(2, dtype=torch.float64))  # x itself reaches the kink
    net = nn.Sequential(first, make().double(), nn.Linear(2, 1).double())
    torch.manual_seed(0)
    ref = sb.Surrogate(net, n_in=2, point_route="torch")
    num = sb.Surrogate(net, n_in=2, point_route="numpy")
    F = sb.casadi_function(ref, mode="symbolic")
    x = ca.MX.sym("x", 2)
    G = ca.Function("G", [x], [ca.jacobian(F(x), x)])
    H = ca.Function("H", [x], [ca.hessian(F(x), x)[0]])
    for t in ties:
        p = np.array([t, t + 0.25])  # one input on the kink, one beside it
        g, h = ref.grad(p), ref.hess(p)
        for got_g, got_h in ((num.grad(p), num.hess(p)), (np.array(G(p)).ravel(), H(p))):
            np.testing.assert_allclose(got_g, g, rtol=TOL["rel"], atol=1e-15)
            np.testing.assert_allclose(np.array(got_h), h, rtol=TOL["rel"], atol=1e-15)


def test_a_function_pickled_before_probes_had_a_reference_is_probed_as_then():
    """Pickles written before ``reference`` and ``box`` existed: through the scaler applied."""
    import pickle

    from surrogate_bridge.physical import probe_points

    X = np.random.default_rng(0).uniform(300, 400, (30, 2))
    for scaler in (
        sb.Affine.fit(X),
        sb.Scaling([sb.Warp("log", n_features=2), sb.Affine.fit(np.log(X))]),
    ):
        fn = sb.Surrogate(sb.mlp((2, 4, 1), seed=0), scaler).function
        old = pickle.loads(pickle.dumps(fn))
        del old.reference, old.box
        want = probe_points(2, 3, scaler, None)
        assert torch.equal(old.probes(2), want) and torch.equal(fn.probes(2), want)
        assert bool((want > 0).all())  # in the data's units (a log is defined), not near 0


def test_a_hopeless_route_is_timed_for_two_rounds_only():
    """Measuring times each route seven times, alternating; a route more than eight times
    slower than the fastest after two rounds cannot win and is timed no more (a wide net's
    CasADi Hessian cost a solver seconds to confirm); close ones are timed to the end."""
    from surrogate_bridge import routes

    counts = {"fast": 0, "close": 0, "slow": 0}

    def call(name, seconds):
        def run():
            counts[name] += 1
            time.sleep(seconds)

        return run

    us = routes._best_us(
        {"fast": call("fast", 0.002), "close": call("close", 0.003), "slow": call("slow", 0.05)}
    )
    assert counts == {"fast": 2 * routes._REPEATS, "close": 2 * routes._REPEATS, "slow": 4}
    assert us["slow"] >= 5e4 and us["fast"] < us["slow"] / routes._HOPELESS


class _Timed:
    """A route answering with fixed arrays (every route agrees), each kind after ``cost[kind]``
    seconds; counts its calls per kind."""

    def __init__(self, name: str, cost: dict) -> None:
        self.name, self.m, self.cost = name, 1, cost
        self.calls = dict.fromkeys(cost, 0)

    def _answer(self, kind, *parts):
        self.calls[kind] += 1
        time.sleep(self.cost[kind])
        return parts

    def value(self, x):
        return self._answer("value", np.ones((1, 1)))[0]

    def value_jac(self, x, keep_graph=False):
        return (*self._answer("value_jac", np.ones((1, 1)), np.ones((1, 1, 2))), None)

    def hessian(self, x):
        return self._answer("hessian", np.ones((1, 1)), np.ones((1, 1, 2)), np.eye(2)[None, None])

    def lagrangian_hessian(self, x, v):
        return self._answer("lagrangian_hessian", np.eye(2))[0]


def test_a_route_whose_first_call_is_hopeless_is_not_timed_for_that_kind():
    """Measuring checks each route against torch with one call per kind; a route whose call
    took more than eight times the fastest first call is timed no more for that kind (a wide
    net's CasADi Hessian cost a solver about a second to confirm), and is reported at that
    call's time; for the kinds where it is close, it is timed to the end and may win."""
    from surrogate_bridge import routes

    kinds = routes.MeasuredRoute.KINDS
    torch_route = _Timed("torch", dict.fromkeys(kinds, 0.002))
    fast = _Timed("numpy", dict.fromkeys(kinds, 0.001))
    wide = _Timed("casadi", {**dict.fromkeys(kinds, 0.0015), "hessian": 0.05})
    measured = routes.MeasuredRoute(torch_route, {"numpy": lambda: fast, "casadi": lambda: wide},
                                    "auto")  # fmt: skip
    measured.measure(np.zeros(2))
    assert wide.calls["hessian"] == 1  # the check against torch, timed: nothing more
    assert wide.calls["value_jac"] == fast.calls["value_jac"] == 1 + 2 * routes._REPEATS
    us = measured.report["us"]
    assert us["hessian"]["casadi"] >= 5e4 > 8 * us["hessian"]["numpy"]
    assert all(measured.choice[k] is fast for k in kinds)


def test_only_a_route_about_to_answer_is_checked_and_a_failing_one_gives_way():
    """The probe-row check (Hessians at every probe row: a second and more for a wide net's
    CasADi route) runs once per route, only for one that is the fastest of some kind; a route
    that fails it answers nothing, and each of its kinds goes to the next fastest."""
    from surrogate_bridge import routes

    kinds = routes.MeasuredRoute.KINDS
    torch_route = _Timed("torch", dict.fromkeys(kinds, 0.004))
    second = _Timed("casadi", dict.fromkeys(kinds, 0.002))  # between numpy and torch
    checked = []

    def check(route):
        checked.append(route.name)
        return route

    for fails in (False, True):
        fast, checked[:] = _Timed("numpy", dict.fromkeys(kinds, 0.001)), []

        def failing(route, fails=fails):
            check(route)
            if fails and route.name == "numpy":
                raise routes.RouteUnavailable("its Hessian differs from torch's")
            return route

        measured = routes.MeasuredRoute(
            torch_route, {"numpy": lambda f=fast: f, "casadi": lambda: second}, "auto", failing
        )
        measured.measure(np.zeros(2))
        assert checked == (["numpy", "casadi"] if fails else ["numpy"])
        assert all(measured.choice[k] is (second if fails else fast) for k in kinds)
        assert ("numpy route unavailable: its Hessian differs" in measured.report["note"]) == fails
