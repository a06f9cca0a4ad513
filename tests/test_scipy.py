"""scipy adapter against real scipy solvers: the Lyapunov acceptance tests (the seed problem)."""

import numpy as np
import pytest
import torch
from problems import (
    A_DYN,
    P_SEED,
    DecayInTime,
    ScaledQuadratic,
    counting,
    fit_full_batch,
    linear_field_surrogate,
    mlp,
    random_spd,
)
from problems import scaled_quadratic_surrogate as quad_sur
from scipy.integrate import solve_ivp
from scipy.linalg import expm
from scipy.optimize import brentq, least_squares, minimize
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from torch import nn

import surrogate_bridge as sb

TOL = {
    "facade_grad": 5e-6,
    "x": 1e-6,  # the target distance to the analytic optimum
    "same": 1e-6,  # different methods/starts to the same surrogate minimum
    "ivp": 1e-8,  # solve_ivp against expm(tA) y0 at rtol 1e-11
}

# method -> extra keywords; tolerances tight enough to resolve 1e-6 in x
METHODS = {
    "BFGS": dict(jac="grad", options={"gtol": 1e-10}),
    "L-BFGS-B": dict(jac="grad", bounds=True, options={"gtol": 1e-12, "ftol": 1e-16}),
    "CG": dict(jac="grad", options={"gtol": 1e-10}),
    "Newton-CG": dict(jac="grad", hess="hess", options={"xtol": 1e-12}),
    "Newton-CG-hessp": dict(jac="grad", hessp="hessp", options={"xtol": 1e-12}),
    # gtol 1e-8 (|x| <= 1e-8 here): tighter, scipy's own boundary solve divides by zero once the
    # quadratic is solved exactly
    "trust-ncg": dict(jac="grad", hess="hess", options={"gtol": 1e-8}),
    "trust-krylov": dict(jac="grad", hess="hess", options={"gtol": 1e-10}),
    "trust-exact": dict(jac="grad", hess="hess", options={"gtol": 1e-10}),
    "trust-constr": dict(jac="grad", hess="hess", options={"gtol": 1e-12, "xtol": 1e-14}),
    "SLSQP": dict(jac="grad", options={"ftol": 1e-16, "maxiter": 500}),
}


class Recorder:
    """Wraps the surrogate's callbacks, recording every distinct x scipy evaluated (as bytes at
    call time: scipy may mutate the array afterwards)."""

    def __init__(self, sur):
        self.sur, self.seen = sur, set()

    def wrap(self, name):
        method = self.sur if name == "fun" else getattr(self.sur, name)

        def call(x, *args):
            self.seen.add(np.asarray(x, dtype=np.float64).tobytes())
            return method(x, *args)

        return call


def run(sur, method, x0, rec=None):
    spec = dict(METHODS[method])
    name = method.replace("-hessp", "")
    wrap = rec.wrap if rec else (lambda k: sur if k == "fun" else getattr(sur, k))
    kw = {k: wrap(spec[k]) for k in ("jac", "hess", "hessp") if k in spec}
    if spec.get("bounds"):
        kw["bounds"] = sur.bounds()
    return minimize(wrap("fun"), x0, method=name, options=spec["options"], **kw)


@pytest.mark.parametrize("n", [2, 10], ids=["seed-2d", "spd-10d"])
@pytest.mark.parametrize("method", list(METHODS))
def test_exact_quadratic_reaches_origin_one_pass_per_point(method, n):
    P = P_SEED if n == 2 else random_spd(10)
    rng = np.random.default_rng(n)
    s, c = rng.normal(size=n), rng.uniform(0.3, 3.0, n)
    model, calls = counting(ScaledQuadratic(P, s, c, [5.0], [30.0]))
    sur = sb.Surrogate(
        model,
        sb.Affine(s, c),
        sb.Affine([5.0], [30.0]),
        domain=(-5 * np.ones(n), 5 * np.ones(n)),
        extrapolation="ignore",
        point_route="torch",  # the hooks count torch passes (the routes: test_routes.py)
    )
    calls.clear()
    rec = Recorder(sur)
    res = run(sur, method, np.full(n, 2.0) * (-1) ** np.arange(n), rec)
    assert np.linalg.norm(res.x) < TOL["x"], res
    if method == "trust-exact":
        assert res.nit <= 3
    # one model pass per distinct point, whatever the method asks for in whatever order
    assert len(calls) == len(rec.seen)


def test_least_squares_vector_residual():
    L = np.linalg.cholesky(P_SEED)  # |L^T x|^2 = x^T P x
    s, c = np.array([0.5, -0.5]), np.array([2.0, 3.0])

    class Residual(nn.Module):
        def forward(self, z):
            return (z * torch.as_tensor(c) + torch.as_tensor(s)) @ torch.as_tensor(L)

    sur = sb.Surrogate(Residual(), sb.Affine(s, c), sb.Affine([1.0, -1.0], [2.0, 2.0]))
    # physical residual = 2 * L^T x + [1, -1] - ... : solve for the exact zero instead
    target = np.array([1.0, -1.0])
    x_star = np.linalg.solve(2 * L.T, -target)
    jac_calls = []

    def jac(x):
        jac_calls.append(1)
        return sur.jac(x)

    res = least_squares(sur, [1.0, 1.0], jac=jac, xtol=1e-15, ftol=1e-15, gtol=1e-15)
    np.testing.assert_allclose(res.x, x_star, atol=TOL["x"])
    assert len(jac_calls) == res.njev >= 1  # the exact Jacobian, not finite differences


@pytest.fixture(scope="module")
def trained_v():
    """A softplus MLP trained on V = x^T P x on [-3, 3]^2. The output scaler is MinMax: its shift
    is V's minimum (0), so f near the minimum is computed without cancellation. A StandardScaler
    shift (~300) would leave f with ~3e-14 absolute resolution, too coarse for line searches to
    reach |grad| < 1e-8."""
    g = np.linspace(-3, 3, 31)
    X = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    return train_v(P_SEED, X, steps=500, domain=([-3, -3], [3, 3]))


@pytest.fixture(scope="module")
def trained_v10():
    X = np.random.default_rng(1).uniform(-3, 3, size=(3000, 10))
    return train_v(random_spd(10, seed=1), X, steps=300)


def train_v(P, X, steps, **kw):
    """A softplus MLP fitted to V = x^T P x at the rows of X (Adam, then L-BFGS)."""
    y = np.einsum("ni,ij,nj->n", X, P, X)[:, None]
    xs, ys = StandardScaler().fit(X), MinMaxScaler().fit(y)
    net = fit_full_batch(
        mlp([X.shape[1], 32, 32, 1], nn.Softplus, seed=0),
        xs.transform(X),
        ys.transform(y),
        adam_steps=steps,
        lbfgs_steps=steps,
    )
    return sb.Surrogate(net, xs, ys, extrapolation="ignore", **kw)


# 10-D: V spans ~10x more, so f's rounding and the reachable |grad| are ~10x coarser
@pytest.mark.parametrize(
    ("case", "starts", "near", "gtol", "xtol"),
    [("trained_v", 20, 0.25, 1e-5, 5e-6), ("trained_v10", 5, 0.6, 1e-5, 1e-5)],
    ids=["2d", "10d"],
)
def test_trained_mlp_all_methods_agree(case, starts, near, gtol, xtol, request):
    """Every method from every start ends at the surrogate's own minimum x*.

    x* is found by pure Newton steps with the exact Hessian (no function values), where
    |grad| < 1e-8. The methods themselves globalize with function values (line searches, trust
    ratios). f's rounding noise near x* is ~1e-13 here (measured: the output scale ~1e3 times
    the last layer's rounding), and a step at |grad| = g lowers f by ~g^2 / lambda, so they stop
    where g ~ sqrt(noise * lambda) ~ 1e-6 (scipy: "precision loss"), about g / lambda from x*.
    The trained net, and so its noise, differs with the CPU's rounding (6e-6 seen on one).
    """
    sur = request.getfixturevalue(case)
    n = sur.n_in
    rng = np.random.default_rng(42)
    ends = []
    for x0 in rng.uniform(-3, 3, size=(starts, n)):
        for method, kw in (
            ("trust-exact", dict(hess=sur.hess, options={"gtol": 1e-10})),
            ("Newton-CG", dict(hess=sur.hess, options={"xtol": 1e-14})),
            ("BFGS", dict(options={"gtol": 1e-10})),
        ):
            res = minimize(sur, x0, jac=sur.grad, method=method, **kw)
            assert np.linalg.norm(sur.grad(res.x)) < gtol, (method, res)
            ends.append(res.x)
    x_star = ends[0].copy()
    for _ in range(5):  # Newton polish: quadratic convergence from |grad| ~ 1e-7
        x_star = x_star - np.linalg.solve(sur.hess(x_star), sur.grad(x_star))
    assert np.linalg.norm(sur.grad(x_star)) < 1e-8
    np.testing.assert_allclose(np.array(ends), np.tile(x_star, (len(ends), 1)), atol=xtol)
    assert np.linalg.norm(x_star) < near  # the surrogate's own minimum, near the origin


@pytest.mark.parametrize(
    ("method", "hessian", "wired"),
    [
        ("trust-exact", "dense", {"grad", "hess"}),
        ("trust-ncg", "hessp", {"grad", "hessp"}),
        ("Newton-CG", "hessp", {"grad", "hessp"}),
        ("trust-constr", "none", {"grad"}),  # quasi-Newton Hessian: scipy's own
        ("BFGS", "dense", {"grad"}),
        ("Nelder-Mead", "dense", set()),
    ],
)
def test_facade_wires_exactly_the_derivatives_the_method_uses(
    trained_v, method, hessian, wired, monkeypatch
):
    # not trust-krylov here: scipy 1.17's trlib keeps state between solves in one process (given
    # bit-identical callback values its iterates diverge after an earlier trust-krylov solve and
    # overflow), so its second use in this module would test scipy, not the bridge
    used = {}

    def counted(name):
        method = getattr(trained_v, name)

        def call(*args):
            used[name] = used.get(name, 0) + 1
            return method(*args)

        return call

    for name in ("grad", "hess", "hessp"):  # instance attributes shadow the methods
        monkeypatch.setattr(trained_v, name, counted(name), raising=False)
    opts = {"Newton-CG": {"xtol": 1e-14}, "Nelder-Mead": {}}.get(method, {"gtol": 1e-10})
    res = sb.minimize(trained_v, [1.0, -2.0], method=method, hessian=hessian, options=opts)
    assert set(used) == wired
    if "hess" in wired:
        assert used["hess"] == res.nhev
    if method != "Nelder-Mead":
        # f carries ~1e-13 absolute rounding (summation order times the output scale, ~1e3):
        # BFGS's line search stalls from many starts at |grad| ~1e-6, on either point route
        assert np.linalg.norm(trained_v.grad(res.x)) < TOL["facade_grad"], method


# constraints --------------------------------------------------------------------------------
# trust-constr's interior point stops once its barrier subproblem meets gtol: from the default
# initial barrier (0.1) it stops at barrier ~3e-5 with x off by 2.5e-5 on this problem, with exact
# numpy callables just as with surrogates; a small initial barrier drives the error to ~1e-9
TC_OPTS = {
    "gtol": 1e-12,
    "xtol": 1e-14,
    "initial_barrier_parameter": 1e-6,
    "initial_constr_penalty": 1.0,
}
A_VEC = np.array([1.0, 2.0])
C_BALL, R_BALL = np.array([2.0, 1.0]), 1.0


class Affine1(nn.Module):
    """a^T z: a linear constraint surrogate."""

    def forward(self, z):
        return z @ torch.as_tensor(A_VEC)


class Ball(nn.Module):
    def forward(self, z):
        return ((z - torch.as_tensor(C_BALL)) ** 2).sum(-1)


class Both(nn.Module):
    def forward(self, z):
        return torch.stack([Affine1()(z), Ball()(z)], -1)


def ball_kkt():
    """min x^T P x s.t. |x - c| <= r, active: (P + mu I) x = mu c with |x - c| = r."""

    def x_of(mu):
        return np.linalg.solve(P_SEED + mu * np.eye(2), mu * C_BALL)

    mu = brentq(lambda m: np.linalg.norm(x_of(m) - C_BALL) - R_BALL, 1e-9, 1e9, xtol=1e-15)
    return x_of(mu)


@pytest.fixture
def objective():
    return quad_sur(P_SEED, extrapolation="ignore")


def test_linear_constraint_trust_constr(objective):
    con = sb.scipy_constraint(sb.Surrogate(Affine1(), n_in=2), lb=1.0)
    Pinv_a = np.linalg.solve(P_SEED, A_VEC)
    x_star = Pinv_a / (A_VEC @ Pinv_a)
    res = minimize(
        objective,
        [2.0, 2.0],
        jac=objective.grad,
        hess=objective.hess,
        method="trust-constr",
        constraints=[con],
        options=TC_OPTS,
    )
    np.testing.assert_allclose(res.x, x_star, atol=TOL["x"])


def test_ball_constraint_trust_constr_and_slsqp(objective):
    ball = sb.Surrogate(Ball(), sb.Affine([0.0, 0.0], [1.0, 1.0]), sb.Affine([0.0], [1.0]))
    con = sb.scipy_constraint(ball, ub=R_BALL**2)
    x_star = ball_kkt()
    res = minimize(
        objective,
        C_BALL,
        jac=objective.grad,
        hess=objective.hess,
        method="trust-constr",
        constraints=[con],
        options=TC_OPTS,
    )
    np.testing.assert_allclose(res.x, x_star, atol=TOL["x"])
    slsqp_con = sb.scipy_constraint(ball, ub=R_BALL**2, hess=False)  # SLSQP uses jac only
    res = minimize(
        objective,
        C_BALL,
        jac=objective.grad,
        method="SLSQP",
        constraints=[slsqp_con],
        options={"ftol": 1e-15},
    )
    np.testing.assert_allclose(res.x, x_star, atol=TOL["x"])


def test_vector_constraint_lagrangian_hessian(objective):
    model, calls = counting(Both())
    both = sb.Surrogate(model, n_in=2, point_route="torch")  # the hooks count torch passes
    con = sb.scipy_constraint(both, lb=[1.0, -np.inf], ub=[np.inf, 100.0])
    Pinv_a = np.linalg.solve(P_SEED, A_VEC)
    x = np.array([0.3, 0.4])
    H = both.hess(x)
    np.testing.assert_allclose(con.hess(x, np.array([2.0, 3.0])), 3.0 * H[1], atol=1e-12)
    calls.clear()
    rec = Recorder(both)  # every distinct x at which scipy asked the constraint anything
    con = sb.scipy_constraint(both, lb=[1.0, -np.inf], ub=[np.inf, 100.0])
    con.fun, con.jac, con.hess = rec.wrap("fun"), rec.wrap("jac"), rec.wrap("lagrangian_hess")
    both.cache_clear()
    res = minimize(
        objective,
        [2.0, 2.0],
        jac=objective.grad,
        hess=objective.hess,
        method="trust-constr",
        constraints=[con],
        options=TC_OPTS,
    )
    np.testing.assert_allclose(res.x, Pinv_a / (A_VEC @ Pinv_a), atol=TOL["x"])
    # value, Jacobian and Lagrangian Hessian of the vector constraint: one pass per point (the
    # hess call above already told the surrogate that second derivatives are wanted)
    assert len(calls) == len(rec.seen)


# solve_ivp ----------------------------------------------------------------------------------
@pytest.fixture
def field():
    return linear_field_surrogate()


@pytest.mark.parametrize("method", ["Radau", "BDF", "LSODA", "RK45"])
@pytest.mark.parametrize("vectorized", [False, True], ids=["pointwise", "vectorized"])
def test_solve_ivp_matches_expm(field, method, vectorized):
    ode = sb.scipy_ode(field)
    y0 = np.array([1.0, 0.5])
    t = np.linspace(0, 3, 7)
    kw = {"jac": ode.jac} if method != "RK45" else {}  # explicit methods take no Jacobian
    sol = solve_ivp(
        ode.fun,
        (0, 3),
        y0,
        method=method,
        t_eval=t,
        rtol=1e-11,
        atol=1e-13,
        vectorized=vectorized,
        **kw,
    )
    exact = np.stack([expm(tk * A_DYN) @ y0 for tk in t], 1)
    np.testing.assert_allclose(sol.y, exact, atol=TOL["ivp"] if method != "LSODA" else 1e-7)
    if method in ("Radau", "BDF"):
        assert sol.njev > 0
        np.testing.assert_allclose(ode.jac(0.0, y0), A_DYN, atol=1e-13)


def test_time_input_ode():
    ode = sb.scipy_ode(sb.Surrogate(DecayInTime(), n_in=2), time_input=True)
    t = np.linspace(0, 2, 5)
    sol = solve_ivp(
        ode.fun,
        (0, 2),
        [1.0],
        method="Radau",
        jac=ode.jac,
        t_eval=t,
        rtol=1e-11,
        atol=1e-14,
        vectorized=True,
    )
    np.testing.assert_allclose(sol.y[0], np.exp(-(t + t**2 / 2)), atol=TOL["ivp"])
    np.testing.assert_allclose(ode.jac(1.0, np.array([2.0])), [[-2.0]], atol=1e-14)


def test_a_start_that_is_a_tensor_requiring_grad_is_read_as_numbers():
    """A design variable of torch code handed on to scipy (it used to fail in numpy())."""
    sur = quad_sur(P_SEED)
    x0 = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    res = sb.minimize(sur, x0)
    assert np.array_equal(res.x, sb.minimize(sur, [1.0, -2.0]).x)
    starts = torch.tensor([[1.0, -2.0], [0.5, 0.5]], requires_grad=True)
    found = sb.multistart(sur, starts, method="newton")
    np.testing.assert_allclose(found.x, [0.0, 0.0], atol=TOL["x"])
    assert x0.grad is None and starts.grad is None


# errors -------------------------------------------------------------------------------------
def test_minimize_vector_objective_error():
    with pytest.raises(ValueError, match="least_squares.*scipy_constraint"):
        sb.minimize(sb.Surrogate(Both(), n_in=2), [0.0, 0.0])


def test_minimize_bad_method_and_hessian(objective):
    with pytest.raises(ValueError, match="not a scipy.optimize.minimize method"):
        sb.minimize(objective, [0.0, 0.0], method="newton")
    with pytest.raises(ValueError, match="dense.*hessp.*none"):
        sb.minimize(objective, [0.0, 0.0], hessian="exact")
    with pytest.raises(ValueError, match="x0 has 3 features"):
        sb.minimize(objective, [0.0, 0.0, 0.0])


def test_minimize_picks_a_method_that_honours_bounds_and_constraints(objective):
    """scipy's trust-exact would ignore bounds with a warning: the default method follows what
    is given, and a method that would ignore it is refused."""
    box = [(0.5, 2.0), (0.5, 2.0)]
    res = sb.minimize(objective, [1.5, 1.5], bounds=box)
    ref = minimize(lambda x: x @ P_SEED @ x, [1.5, 1.5], jac=lambda x: 2 * P_SEED @ x, bounds=box)
    assert res.message.startswith("CONVERGENCE")  # L-BFGS-B's words
    np.testing.assert_allclose(res.x, ref.x, atol=1e-7)
    assert np.all(res.x >= 0.5 - 1e-12)
    con = sb.scipy_constraint(sb.Surrogate(Affine1(), n_in=2), lb=1.0)
    found = sb.minimize(objective, [2.0, 2.0], constraints=[con], options=TC_OPTS)
    Pinv_a = np.linalg.solve(P_SEED, A_VEC)
    np.testing.assert_allclose(found.x, Pinv_a / (A_VEC @ Pinv_a), atol=1e-6)
    assert found.method == "tr_interior_point"  # trust-constr's, with exact Hessians
    assert found.nhev > 0
    with pytest.raises(ValueError, match="'trust-exact' cannot handle bounds"):
        sb.minimize(objective, [1.5, 1.5], method="trust-exact", bounds=box)
    with pytest.raises(ValueError, match="'BFGS' cannot handle constraints.*slsqp"):
        sb.minimize(objective, [1.5, 1.5], method="BFGS", constraints=[con])


def test_constraint_bound_length_error():
    with pytest.raises(ValueError, match=r"lb has shape \(3,\), the surrogate has 2 outputs"):
        sb.scipy_constraint(sb.Surrogate(Both(), n_in=2), lb=[0, 0, 0])
    with pytest.raises(ValueError, match="lb must be <= ub"):
        sb.scipy_constraint(sb.Surrogate(Both(), n_in=2), lb=1.0, ub=0.0)


def test_ode_non_square_error():
    with pytest.raises(ValueError, match="n_in = 2 and n_out = 1.*time_input=True"):
        sb.scipy_ode(sb.Surrogate(DecayInTime(), n_in=2))
    with pytest.raises(ValueError, match="as many outputs as states"):
        sb.scipy_ode(sb.Surrogate(Both(), n_in=2), time_input=True)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda ode: ode.fun(0.0, [1.0, 2.0]), r"ScipyODE.fun: y has shape \(2,\).*shape \(1,\)"),
        (lambda ode: ode.fun(0.0, np.ones((2, 3))), r"\(1, k\) for vectorized=True"),
        (lambda ode: ode.fun(0.0, ["a"]), r"dtype <U1, expected real numbers"),
        (lambda ode: ode.fun(0.0, [np.nan]), r"y has a non-finite entry at \(0,\) \(t = 0.0\)"),
        (lambda ode: ode.fun(np.nan, [1.0]), "t must be a finite real number .*got nan"),
        (lambda ode: ode.fun(np.array([0.0, 1.0]), [1.0]), r"t must be .*got array\(\[0., 1.\]\)"),
        (lambda ode: ode.jac(0.0, np.ones((1, 3))), r"ScipyODE.jac: y must be one state \(1,\)"),
    ],
)
def test_ode_errors_speak_of_t_and_y(call, match):
    """A solver hands t and y; an error that spoke of the surrogate's x (t and y stacked) named
    neither."""
    ode = sb.scipy_ode(sb.Surrogate(DecayInTime(), n_in=2), time_input=True)
    with pytest.raises(ValueError, match=match):
        call(ode)


def test_float32_surrogate_warns_at_solver_boundary():
    with pytest.warns(sb.PrecisionWarning, match="float64"):
        sb.scipy_constraint(sb.Surrogate(mlp([2, 4, 1]), dtype=torch.float32), lb=0.0)


def test_limit_threads_restores():
    before = torch.get_num_threads()
    from threadpoolctl import threadpool_info

    with sb.limit_threads(1):
        assert torch.get_num_threads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info())
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="positive int"):
        with sb.limit_threads(0):
            pass


def test_bounds_are_the_training_domain_and_bind_at_the_true_constrained_minimum():
    """The MinMaxScaler's data range becomes Bounds; the quadratic's minimum lies outside it, so
    L-BFGS-B must stop on the boundary at the box-constrained minimum of x^T P x - 2 b^T x."""
    data = np.array([[-1.0, -2.0], [3.0, 1.0]])  # the box [-1, 3] x [-2, 1]
    b = np.array([40.0, -60.0])  # unconstrained minimum P^-1 b lies outside the box

    class Shifted(nn.Module):  # x^T P x - 2 b^T x on normalized inputs, physical units out
        def forward(self, z):
            x = z * torch.as_tensor(data[1] - data[0]) + torch.as_tensor(data[0])
            return ((x @ torch.as_tensor(P_SEED)) * x).sum(-1) - 2 * x @ torch.as_tensor(b)

    sur = sb.Surrogate(Shifted(), MinMaxScaler().fit(data))
    bounds = sur.bounds()
    np.testing.assert_array_equal(bounds.lb, data[0])
    np.testing.assert_array_equal(bounds.ub, data[1])
    assert not np.all(
        (data[0] <= np.linalg.solve(P_SEED, b)) & (np.linalg.solve(P_SEED, b) <= data[1])
    )
    res = minimize(
        sur,
        [0.0, 0.0],
        jac=sur.grad,
        method="L-BFGS-B",
        bounds=bounds,
        options={"ftol": 1e-15, "gtol": 1e-12},
    )
    # the independent truth: the same problem in closed form, solved by projected KKT conditions
    ref = minimize(
        lambda x: x @ P_SEED @ x - 2 * b @ x,
        [0.0, 0.0],
        jac=lambda x: 2 * P_SEED @ x - 2 * b,
        method="L-BFGS-B",
        bounds=list(zip(data[0], data[1], strict=True)),
        options={"ftol": 1e-15, "gtol": 1e-12},
    )
    np.testing.assert_allclose(res.x, ref.x, atol=1e-8)
    on_boundary = np.isclose(res.x, data[0]) | np.isclose(res.x, data[1])
    assert on_boundary.any()
    g = 2 * P_SEED @ res.x - 2 * b  # KKT: the free coordinates have zero gradient
    np.testing.assert_allclose(g[~on_boundary], 0.0, atol=1e-6)


def test_vectorized_convention_with_differential_evolution(objective):
    from scipy.optimize import differential_evolution

    X = np.random.default_rng(0).normal(size=(2, 7))
    np.testing.assert_allclose(objective.vectorized(X), [objective(x) for x in X.T], rtol=1e-14)
    bounds = [(-2.0, 2.0), (-2.0, 2.0)]
    res = differential_evolution(
        objective.vectorized, bounds, vectorized=True, updating="deferred", seed=0, tol=1e-12
    )
    assert np.linalg.norm(res.x) < 1e-4  # x^T P x: the minimum at the origin
    # points as rows (the transpose of the convention): the error speaks of the convention
    with pytest.raises(ValueError, match=r"vectorized: x has shape \(7, 2\), expected \(2, S\)"):
        objective.vectorized(X.T)
