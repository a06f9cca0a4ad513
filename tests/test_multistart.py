"""Many starts at once: known minima found, bounds kept, per-start answers as scipy's."""

import numpy as np
import pytest
import torch
from problems import P_SEED, ScaledQuadratic, counting
from scipy.optimize import LinearConstraint, differential_evolution, minimize
from torch import nn

import surrogate_bridge as sb
from surrogate_bridge.joint import joint_trust_constr, lockstep_lbfgsb, projected_gradient
from surrogate_bridge.multistart import _starts

TOL = {"x": 1e-6}

HIMMELBLAU_MINIMA = np.array(
    [[3.0, 2.0], [-2.805118, 3.131312], [-3.779310, -3.283186], [3.584428, -1.848126]]
)


class Himmelblau(nn.Module):
    """(x^2 + y - 11)^2 + (x + y^2 - 7)^2 of physical x = z * c + s, output normalized."""

    def __init__(self, s, c, ys, yc):
        super().__init__()
        for name, v in dict(s=s, c=c, ys=ys, yc=yc).items():
            self.register_buffer(name, torch.as_tensor(np.asarray(v, dtype=np.float64)))

    def forward(self, z):
        x = z * self.c + self.s
        f = (x[:, 0] ** 2 + x[:, 1] - 11) ** 2 + (x[:, 0] + x[:, 1] ** 2 - 7) ** 2
        return ((f - self.ys) / self.yc)[:, None]


def himmelblau(device="cpu"):
    s, c, ys, yc = [0.5, -0.3], [4.0, 3.0], [100.0], [50.0]
    model = Himmelblau(s, c, ys, yc)
    return sb.Surrogate(model, sb.Affine(s, c), sb.Affine(ys, yc), domain=([-5, -5], [5, 5]),
                        device=device)  # fmt: skip


@pytest.mark.parametrize("method", ["L-BFGS-B", "newton"])
def test_himmelblau_behind_scalers_every_minimum_from_256_starts(method):
    res = sb.multistart(himmelblau(), n_starts=256, seed=0, method=method)
    assert res.success and res.converged.all()
    assert len(res.minima) == 4 and res.minima_count.sum() == 256
    for m in HIMMELBLAU_MINIMA:
        assert np.linalg.norm(res.minima - m, axis=1).min() < 1e-5  # the minima to 6 digits
    np.testing.assert_allclose(res.minima_fun, 0.0, atol=1e-9)
    assert res.fun == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", ["L-BFGS-B", "newton"])
def test_bounds_are_kept_and_bind_at_the_box_constrained_minimum(method):
    sur = sb.Surrogate(ScaledQuadratic(P_SEED, [0.0, 0.0], [1.0, 1.0], [0.0], [1.0]), n_in=2)
    lb, ub = np.array([1.0, 0.5]), np.array([3.0, 2.0])  # the minimum (origin) lies outside
    box = list(zip(lb, ub, strict=True))
    res = sb.multistart(sur, bounds=box, n_starts=32, seed=1, method=method)
    assert np.all(res.xs >= lb) and np.all(res.xs <= ub)
    ref = minimize(lambda x: x @ P_SEED @ x, [2.0, 1.0], jac=lambda x: 2 * P_SEED @ x,
                   method="L-BFGS-B", bounds=list(zip(lb, ub, strict=True)),
                   options={"gtol": 1e-12, "ftol": 1e-15})  # fmt: skip
    np.testing.assert_allclose(res.x, ref.x, atol=TOL["x"])
    assert len(res.minima) == 1


def test_every_start_reaches_what_scipy_reaches_from_it():
    """L-BFGS-B in lock step: every start follows scipy's own path from it, so each end point,
    value, iteration count and status is scipy's, on a multimodal surrogate too; except where
    scipy's ftol test stopped a start with its projected gradient above tol: that start goes on
    from there, to a lower value and a gradient within tol."""
    sur = himmelblau()
    box = [(-5, 5)] * 2
    x0 = np.random.default_rng(3).uniform(-5, 5, (40, 2))
    res = sb.multistart(sur, x0, bounds=box)
    exact, nits = 0, []
    for x, end, f_end in zip(x0, res.xs, res.funs, strict=True):
        one = minimize(sur, x, jac=sur.grad, method="L-BFGS-B", bounds=box)
        pg = projected_gradient(one.x[None], sur.grad(one.x)[None], -5.0, 5.0)[0]
        if pg <= 1e-5:
            np.testing.assert_allclose(end, one.x, rtol=0, atol=1e-12)
            assert f_end == pytest.approx(one.fun, rel=1e-12, abs=1e-12)
            exact += 1
            nits.append(one.nit)
        else:  # scipy's ftol stop, short of tol
            assert "FACTR" in one.message and f_end < one.fun
            assert projected_gradient(end[None], sur.grad(end)[None], -5.0, 5.0)[0] <= 1e-5
    assert exact >= 35 and res.converged.all() and res.nit >= max(nits)


class RootBowl(nn.Module):
    """(sqrt(x1 + 0.5) - 0.8)^2 + x2^2: its minimum at (0.14, 0), NaN where x1 < -0.5 (a root
    of a quantity that turns negative, as a log-scaled input does outside its range)."""

    def forward(self, z):
        return (torch.sqrt(z[:, :1] + 0.5) - 0.8) ** 2 + z[:, 1:2] ** 2


@pytest.mark.parametrize("method", ["L-BFGS-B", "newton", "trust-constr"])
def test_starts_where_the_model_is_nan_fail_alone(method):
    """A start where the model is NaN fails (not converged, its value NaN) and every other start
    goes on to the minimum, as a loop of scipy solves does: L-BFGS-B's starts end where
    scipy's own do, NaN ones included. (One NaN start once stopped the whole run: L-BFGS-B
    stepped to a NaN point, which the surrogate refuses, and trust-constr's joint sum was NaN
    for every start.)"""
    sur = sb.Surrogate(RootBowl(), n_in=2)
    box = [(-1, 1)] * 2
    x0 = np.random.default_rng(0).uniform(-1, 1, (16, 2))
    nan_start = x0[:, 0] < -0.5
    assert 0 < nan_start.sum() < 16
    res = sb.multistart(sur, x0, bounds=box, method=method)
    np.testing.assert_allclose(res.x, [0.14, 0.0], atol=1e-5)
    np.testing.assert_array_equal(res.converged, ~nan_start)
    assert np.isnan(res.funs[nan_start]).all() and np.isfinite(res.funs[~nan_start]).all()
    assert not res.success and len(res.minima) == 1 and res.minima_count[0] == (~nan_start).sum()
    if method == "L-BFGS-B":
        for x, end, ok in zip(x0, res.xs, res.converged, strict=True):

            def f(p):
                return sur(p) if np.isfinite(p).all() else np.nan

            def g(p):
                return sur.grad(p) if np.isfinite(p).all() else np.full(2, np.nan)

            one = minimize(f, x, jac=g, method="L-BFGS-B", bounds=box)
            assert one.success == ok
            np.testing.assert_allclose(end, one.x, rtol=0, atol=1e-12)


def test_a_start_that_scipy_stops_short_of_a_minimum_is_restarted():
    """From this start scipy's L-BFGS-B reports success by its ftol test at a point whose
    gradient is (-12.7, 29.5), far from stationary; multistart restarts it from there and
    ends at a Himmelblau minimum (a better end point, as the issue allows)."""
    s, c = [0.1, 0.1], [2.5, 2.5]
    sur = sb.Surrogate(Himmelblau(s, c, [5.0], [20.0]), sb.Affine(s, c), sb.Affine([5.0], [20.0]))
    x0 = np.random.default_rng(10000).uniform(-5, 5, (10000, 2))[9323]
    box = [(-5, 5)] * 2
    one = minimize(sur, x0, jac=sur.grad, method="L-BFGS-B", bounds=box)
    assert one.success and np.abs(sur.grad(one.x)).max() > 10  # scipy's own stop, short
    res = sb.multistart(sur, x0[None], bounds=box)
    assert res.converged.all() and np.abs(sur.grad(res.x)).max() <= 1e-5
    assert np.linalg.norm(HIMMELBLAU_MINIMA - res.x, axis=1).min() < 1e-6 and res.fun < one.fun


def test_lock_step_costs_one_batched_call_per_round_of_requests():
    """The model sees one batch per round (the starts still running), never one point at a
    time; converged starts stop costing work."""
    model, calls = counting(Himmelblau([0.5, -0.3], [4.0, 3.0], [100.0], [50.0]))
    sur = sb.Surrogate(model, sb.Affine([0.5, -0.3], [4.0, 3.0]), sb.Affine([100.0], [50.0]),
                       domain=([-5, -5], [5, 5]), point_route="torch")  # fmt: skip
    calls.clear()
    res = sb.multistart(sur, n_starts=64, seed=0)
    # every call counted; the end points' values are those the solver holds (no further call)
    assert len(calls) == res.nfev < 64 and max(calls) == 64
    X0 = np.random.default_rng(0).uniform(-5, 5, (64, 2))
    calls.clear()
    n_calls = lockstep_lbfgsb(sur.value_and_grad, X0, -5.0 * np.ones(2), 5.0 * np.ones(2))[3]
    assert calls[0] == 64 and sorted(calls, reverse=True) == calls  # shrinking batches
    assert len(calls) == n_calls
    calls.clear()
    res = sb.multistart(sur, n_starts=64, seed=0, method="newton")
    assert len(calls) == res.nfev


@pytest.mark.parametrize("method", ["L-BFGS-B", "newton"])
def test_reported_values_are_the_function_at_the_end_points(method):
    """The values the solvers hand back (no pass of their own) are the surrogate's at each
    start's end point, also where a restart moved a start that scipy stopped short."""
    s, c = [0.1, 0.1], [2.5, 2.5]  # the scalers under which scipy stops start 9323 short
    sur = sb.Surrogate(Himmelblau(s, c, [5.0], [20.0]), sb.Affine(s, c), sb.Affine([5.0], [20.0]))
    X0 = np.random.default_rng(10000).uniform(-5, 5, (10000, 2))[9300:9400]
    res = sb.multistart(sur, X0, bounds=[(-5, 5)] * 2, method=method)
    assert res.converged.all()
    np.testing.assert_allclose(res.funs, np.asarray(sur(res.xs)).reshape(-1), rtol=1e-14, atol=0)


def test_lock_step_hands_back_the_restored_iterate_after_a_failed_line_search():
    """Where a line search fails (a gradient that does not match the values' noise), scipy's
    routine restores the previous iterate: the values and gradients handed back are those of
    the point handed back."""

    def value_and_grad(X):
        return (X**2).sum(1) + 1e-3 * np.sin(1e4 * X).sum(1), 2 * X

    X0 = np.random.default_rng(0).uniform(-1, 1, (50, 3))
    X, ok, _, _, f, g = lockstep_lbfgsb(value_and_grad, X0, -2 * np.ones(3), 2 * np.ones(3), 1e-12)
    assert not ok.all()  # some ended abnormally
    f_at, g_at = value_and_grad(X)
    np.testing.assert_allclose(f, f_at, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(g, g_at)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        (dict(method="BFGS"), ValueError, "L-BFGS-B"),
        (dict(constraints=[object()]), TypeError, "NonlinearConstraint"),
        (dict(constraints=[{"type": "ineq"}]), ValueError, "callable 'fun'"),
        (dict(constraints=[{"type": "ineq", "fun": lambda x: x[0]}]), ValueError, "exact jac"),
        (
            dict(constraints=[{"type": "ineq", "fun": sum}], method="newton"),
            ValueError,
            "trust-constr",
        ),
        (dict(bounds=[(1, 0), (0, 1)]), ValueError, "lb <= ub"),
        (dict(bounds=[(0, 1)]), ValueError, "2 \\(min, max\\) pairs"),
        (dict(n_starts=0), ValueError, "n_starts must be a positive int"),
        (dict(x0=np.zeros((3, 3))), ValueError, "x0 has 3 features"),
        (dict(x0=np.zeros((0, 2))), ValueError, r"x0 holds no starts \(shape \(0, 2\)\)"),
        (dict(x0=np.zeros((3, 2)), n_starts=5), ValueError, "x0 holds 3 starts but n_starts=5"),
        (dict(tol=-1e-6), ValueError, "tol must be a positive finite number, got -1e-06"),
        (dict(tol=float("nan")), ValueError, "tol must be a positive finite number"),
        (dict(merge_tol=-1), ValueError, "merge_tol must be a non-negative finite number"),
        (dict(max_iter=-1), ValueError, "max_iter must be an int >= 0, got -1"),
        (dict(max_iter=2.5), ValueError, "max_iter must be an int >= 0"),
    ],
)
def test_errors(kwargs, err, match):
    sur = himmelblau()
    with pytest.raises(err, match=match):
        sb.multistart(sur, **kwargs)


def test_x0_with_its_own_count_and_starts_outside_the_box():
    """n_starts may repeat x0's count; a start outside the bounds is moved onto them first, as
    scipy's L-BFGS-B does, and so ends where scipy ends from it."""
    sur = himmelblau()
    box = [(-1.0, 1.0), (-1.0, 1.0)]
    x0 = np.array([[5.0, 0.0], [0.5, -0.5]])
    res = sb.multistart(sur, x0, bounds=box, n_starts=2)
    assert len(res.xs) == 2 and np.all(np.abs(res.xs) <= 1.0)
    for start, end in zip(x0, res.xs, strict=True):
        ref = minimize(sur, start, jac=sur.grad, method="L-BFGS-B", bounds=box)
        np.testing.assert_allclose(end, ref.x, atol=1e-6)


def test_vector_surrogate_and_unknown_domain_are_refused():
    with pytest.raises(ValueError, match="must be scalar"):
        sb.multistart(sb.Surrogate(sb.mlp((2, 4, 2), seed=0)), bounds=[(0, 1)] * 2)
    with pytest.raises(ValueError, match="no bounds given"):
        sb.multistart(sb.Surrogate(sb.mlp((2, 4, 1), seed=0)))


class SeedPlusSine(nn.Module):
    """The seed problem's V plus a sine term: no scaler, so no training domain."""

    def forward(self, z):
        quad = ((z @ torch.tensor(P_SEED, dtype=z.dtype)) * z).sum(-1, keepdim=True)
        return quad + torch.sin(z).sum(-1, keepdim=True)


@pytest.mark.parametrize("method", ["L-BFGS-B", "newton", "trust-constr"])
def test_x0_without_bounds_or_domain_optimizes_unbounded(method):
    """It was refused with "pass bounds= (or x0)" although x0 was given."""
    sur = sb.Surrogate(SeedPlusSine(), n_in=2)
    X0 = np.random.default_rng(0).normal(size=(6, 2)) * 3
    res = sb.multistart(sur, X0, method=method, tol=1e-9)
    for x0, x in zip(X0, res.xs, strict=True):
        ref = minimize(sur, x0, jac=sur.grad, method="BFGS", options={"gtol": 1e-11})
        np.testing.assert_allclose(x, ref.x, atol=1e-6)
    assert res.success and len(res.minima) == 1


def test_starts_are_drawn_in_the_domain_where_a_bound_is_infinite():
    """Bounds(-inf, inf) on one input was refused ("needs finite bounds") though the surrogate
    knows where it was trained: starts are drawn there on that side, within the bounds."""
    sur = sb.Surrogate(SeedPlusSine(), n_in=2, domain=([-2.0, -2.0], [2.0, 2.0]),
                       extrapolation="ignore")  # fmt: skip
    from scipy.optimize import Bounds

    res = sb.multistart(sur, bounds=Bounds([-np.inf, 0.5], [np.inf, 1.5]), n_starts=32, seed=0)
    lb, ub = np.array([-np.inf, 0.5]), np.array([np.inf, 1.5])
    starts = _starts(None, 256, lb, ub, 2, 0, sur.domain)
    assert starts[:, 0].min() >= -2.0 and starts[:, 0].max() <= 2.0
    assert starts[:, 1].min() >= 0.5 and starts[:, 1].max() <= 1.5
    assert starts[:, 0].max() - starts[:, 0].min() > 3.0  # spread over the domain's side
    ref = minimize(sur, res.x, jac=sur.grad, bounds=[(None, None), (0.5, 1.5)], method="L-BFGS-B")
    np.testing.assert_allclose(res.fun, ref.fun, atol=1e-9)
    assert 0.5 <= res.x[1] <= 1.5


def test_newton_takes_one_step_on_a_quadratic_and_stops_converged_starts():
    """Exact Hessians: a quadratic is solved in one Newton step from every start; a start that
    begins converged costs no iteration."""
    sur = sb.Surrogate(ScaledQuadratic(P_SEED, [0.1, 0.2], [2.0, 3.0], [1.0], [5.0]),
                       sb.Affine([0.1, 0.2], [2.0, 3.0]), sb.Affine([1.0], [5.0]))  # fmt: skip
    x0 = np.vstack([np.random.default_rng(0).uniform(-3, 3, (15, 2)), np.zeros((1, 2))])
    res = sb.multistart(sur, x0, bounds=[(-4, 4)] * 2, method="newton", tol=1e-10)
    assert res.success and res.nit == 1
    np.testing.assert_allclose(res.xs, 0.0, atol=1e-10)


# general constraints ---------------------------------------------------------------------------
class Disk(nn.Module):
    """|x - c|^2 of physical x behind scalers: a surrogate constraint."""

    def __init__(self, s, k, c):
        super().__init__()
        for name, v in dict(s=s, k=k, c=c).items():
            self.register_buffer(name, torch.as_tensor(np.asarray(v, dtype=np.float64)))

    def forward(self, z):
        return (((z * self.k + self.s) - self.c) ** 2).sum(-1, keepdim=True)


def test_newton_converges_below_the_values_rounding():
    """Himmelblau's output scaler has an offset of 100, so near a minimum the value rounds at
    about 1e-14 and no Armijo test can see a decrease there; Newton's tiny full steps are then
    judged by the projected gradient, and every start reaches a gradient of 1e-10."""
    sur = himmelblau()
    x0 = np.random.default_rng(7).uniform(-5, 5, (64, 2))
    res = sb.multistart(sur, x0, method="newton", tol=1e-10)
    assert res.success and res.converged.all()
    assert np.abs(sur.grad(res.xs)).max() <= 1e-10
    for m in HIMMELBLAU_MINIMA:  # and they are Himmelblau's minima, to the digits given
        assert np.linalg.norm(res.minima - m, axis=1).min() < 1e-6


def test_constrained_starts_reach_what_scipy_reaches_from_each():
    """Himmelblau in the disk |x - (1, 0)| <= 3 (a surrogate constraint, batched), above the
    line x1 + x2 >= -2 (linear) and below x2 <= 3 - x1^2 / 20 (a dict). Nearly every start's
    joint end point is scipy trust-constr's own answer from that start or a better one (the
    joint trust region is shared, so a path may differ), and every end point is a local
    minimum by scipy's own test: trust-constr started there stays there."""
    sur = himmelblau()
    s, k = [0.3, -0.2], [2.0, 3.0]
    disk = sb.Surrogate(Disk(s, k, [1.0, 0.0]), sb.Affine(s, k))
    cap = {"type": "ineq", "fun": lambda x: 3.0 - x[1] - 0.05 * x[0] ** 2,
           "jac": lambda x: np.array([-0.1 * x[0], -1.0])}  # fmt: skip
    cons = [sb.scipy_constraint(disk, -np.inf, 9.0), LinearConstraint([[1.0, 1.0]], -2.0, np.inf),
            cap]  # fmt: skip
    x0 = np.random.default_rng(5).uniform(-2, 4, (24, 2))
    res = sb.multistart(sur, x0, bounds=[(-5, 5)] * 2, constraints=cons, tol=1e-8)
    assert res.method == "trust-constr" and res.success
    X = res.xs
    assert np.all(((X - [1.0, 0.0]) ** 2).sum(1) <= 9 + 1e-7) and np.all(X.sum(1) >= -2 - 1e-7)
    assert np.all(X[:, 1] <= 3 - 0.05 * X[:, 0] ** 2 + 1e-7)
    same = 0
    for x, end, f_end in zip(x0, X, res.funs, strict=True):
        kw = dict(jac=sur.grad, hess=sur.hess, method="trust-constr", constraints=cons,
                  bounds=[(-5, 5)] * 2, options={"gtol": 1e-8})  # fmt: skip
        one = minimize(sur, x, **kw)
        same += np.linalg.norm(end - one.x) <= 1e-5 or f_end <= one.fun + 1e-9
        np.testing.assert_allclose(minimize(sur, end, **kw).x, end, atol=1e-5)
    assert same >= len(x0) - 2
    # the best is Himmelblau's minimum (3, 2), which satisfies every constraint
    np.testing.assert_allclose(res.x, [3.0, 2.0], atol=1e-6)


def test_constrained_minimum_on_the_boundary_matches_the_kkt_point():
    """min x^T P x s.t. a^T x >= 1 (the seed P): the analytic optimum P^-1 a / (a^T P^-1 a)
    from every start."""
    sur = sb.Surrogate(ScaledQuadratic(P_SEED, [0.0, 0.0], [1.0, 1.0], [0.0], [1.0]), n_in=2)
    a = np.array([1.0, 2.0])
    lin = sb.Surrogate(lambda x: x @ torch.as_tensor(a)[:, None], n_in=2)
    res = sb.multistart(sur, np.random.default_rng(0).uniform(-3, 3, (16, 2)),
                        bounds=[(-3, 3)] * 2, constraints=sb.scipy_constraint(lin, 1.0, np.inf),
                        tol=1e-10)  # fmt: skip
    w = np.linalg.solve(P_SEED, a)
    np.testing.assert_allclose(res.xs, np.tile(w / (a @ w), (16, 1)), atol=1e-7)
    assert len(res.minima) == 1 and res.minima_count[0] == 16


def test_a_barrier_subproblems_point_is_not_taken_for_the_kkt_point():
    """From the KKT point itself, scipy's trust-constr stops on its first barrier subproblem
    (its Lagrangian gradient is 1e-11 there), 2.5e-5 inside the feasible set: that start's
    complementarity (multiplier times slack, the barrier parameter) says it has not converged,
    and the restart, with a small barrier, reaches the KKT point."""
    sur = sb.Surrogate(ScaledQuadratic(P_SEED, [0.0, 0.0], [1.0, 1.0], [0.0], [1.0]), n_in=2)
    a = np.array([1.0, 2.0])
    lin = sb.scipy_constraint(sb.Surrogate(lambda x: x @ torch.as_tensor(a)[:, None], n_in=2),
                              1.0, np.inf)  # fmt: skip
    w = np.linalg.solve(P_SEED, a)
    kkt = w / (a @ w)
    X0 = np.tile(kkt + 1e-9, (4, 1))
    box = np.full(2, -3.0), np.full(2, 3.0)
    Xe, optimality, violation, one = joint_trust_constr(sur, X0.copy(), *box, lin, 1e-10)
    assert np.abs(one.lagrangian_grad).max() < 1e-10 and np.abs(Xe - kkt).max() > 1e-6
    assert np.all(optimality > 1e-6) and np.all(violation == 0.0)
    res = sb.multistart(sur, X0, bounds=[(-3, 3)] * 2, constraints=lin, tol=1e-10)
    assert res.converged.all()
    np.testing.assert_allclose(res.xs, np.tile(kkt, (4, 1)), atol=1e-9)


def rastrigin(X):
    return (X**2 - 2 * np.cos(2 * np.pi * X) + 2).sum(-1)


class Sin(nn.Module):
    def forward(self, x):
        return torch.sin(x)


def rastrigin_net(n):
    """2-D: a tanh MLP; 5-D: sine features first (3^5 minima are more than a small tanh net
    learns from 2000 samples in seconds; this one learns a rough, still very multimodal fit)."""
    if n == 2:
        return sb.mlp((2, 32, 32, 1), seed=0)
    torch.manual_seed(0)
    first = nn.Linear(n, 64)
    nn.init.normal_(first.weight, std=3.0)
    return nn.Sequential(first, Sin(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)).double()


@pytest.mark.parametrize(("n", "k"), [(2, 201), (5, 17)])
def test_trained_rastrigin_best_matches_a_dense_grid(n, k):
    """A surrogate trained on Rastrigin samples (3^n local minima in the box): the best of the
    joint Newton starts is at least as good as a dense grid search of the same surrogate, and
    the grid's best point lies in its basin (a local solve from it ends there)."""
    rng = np.random.default_rng(n)
    X = rng.uniform(-1.5, 1.5, (400 * n, n))
    sur = sb.fit(rastrigin_net(n), X, rastrigin(X), epochs=600 if n == 2 else 800,
                 lr=1e-2 if n == 2 else 3e-3, seed=0, progress=False,
                 domain=([-1.5] * n, [1.5] * n))  # fmt: skip
    res = sb.multistart(sur, n_starts=64 * n, seed=0, method="newton")
    assert res.success
    axes = np.meshgrid(*[np.linspace(-1.5, 1.5, k)] * n, indexing="ij")
    G = np.stack([a.ravel() for a in axes], 1)
    v = sur(G)
    best = G[np.argmin(v)]
    assert res.fun <= v.min() + 1e-12
    polish = sb.multistart(sur, best[None], method="L-BFGS-B", tol=1e-8)
    assert polish.fun >= res.fun - 1e-9
    assert np.linalg.norm(polish.x - res.x) < 1e-4 or abs(polish.fun - res.fun) < 1e-9
    assert len(res.minima) > 8  # many local minima found


@pytest.mark.parametrize("method", ["L-BFGS-B", "newton", "trust-constr"])
def test_starts_on_the_surrogates_device_end_where_cpu_starts_end(device, method):
    """Each batched evaluation runs on the surrogate's device: a GPU surrogate's starts end
    where the CPU surrogate's end (float64 on both; a matrix product may round differently)."""
    x0 = np.random.default_rng(7).uniform(-5, 5, (64, 2))

    def solve(where):
        disk = sb.Surrogate(Disk([0.0, 0.0], [1.0, 1.0], [1.0, 0.0]), n_in=2, device=where)
        cons = sb.scipy_constraint(disk, -np.inf, 9.0) if method == "trust-constr" else ()
        return sb.multistart(himmelblau(where), x0, method=method, constraints=cons, tol=1e-6)

    here, ref = solve(device), solve("cpu")
    assert here.converged.all() and ref.converged.all()
    np.testing.assert_allclose(here.xs, ref.xs, atol=1e-6)
    np.testing.assert_allclose(here.minima, ref.minima, atol=1e-6)
    np.testing.assert_array_equal(here.minima_count, ref.minima_count)


def test_vectorized_convention_on_the_surrogates_device(device):
    """scipy's vectorized convention, x (n, S) -> (S,), with the batch evaluated on the
    device: differential_evolution finds a Himmelblau minimum."""
    sur = himmelblau(device)
    X = np.random.default_rng(0).uniform(-5, 5, (2, 9))
    np.testing.assert_allclose(sur.vectorized(X), himmelblau().vectorized(X), rtol=1e-13)
    res = differential_evolution(sur.vectorized, [(-5, 5)] * 2, vectorized=True, seed=1,
                                 updating="deferred", tol=1e-10, polish=False)  # fmt: skip
    assert np.linalg.norm(HIMMELBLAU_MINIMA - res.x, axis=1).min() < 1e-3


def test_merging_groups_as_visiting_the_points_in_order_of_value():
    """Each converged point, in order of value, joins the first minimum within the radius, or
    founds one: the merge groups the same way, with one array operation per minimum."""
    from surrogate_bridge.multistart import _merge

    rng = np.random.default_rng(5)
    X = np.concatenate([rng.normal(c, 0.04, (60, 2)) for c in ([0, 0], [0.1, 0], [1, 1])])
    funs, converged = rng.normal(size=len(X)), rng.random(len(X)) < 0.9
    centers, values, counts = [], [], []
    for i in np.argsort(funs, kind="stable"):
        if not converged[i]:
            continue
        near = [j for j, c in enumerate(centers) if np.linalg.norm(c - X[i]) <= 0.08]
        if near:
            counts[near[0]] += 1
        else:
            centers.append(X[i]), values.append(funs[i]), counts.append(1)
    got = _merge(X, funs, converged, 0.08)
    assert len(centers) > 3  # overlapping groups: the order matters
    np.testing.assert_array_equal(got[0], np.array(centers))
    np.testing.assert_array_equal(got[1], values)
    np.testing.assert_array_equal(got[2], counts)
