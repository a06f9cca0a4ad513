"""Joint solvers for many independent starts: each iteration one batched evaluation for all.

The routes of :func:`surrogate_bridge.multistart` (and ``lyapunov``):

- :func:`lockstep_lbfgsb`: scipy's own L-BFGS-B per start, driven in lock step: every start
  follows the path its own ``minimize`` call would, and each round of requests is one batched
  call (scipy >= 1.15; ``LOCKSTEP`` says whether this scipy has the routine).
- :func:`joint_lbfgsb`: scipy's L-BFGS-B on the stacked starts (S x n variables). The sum of
  independent objectives has their gradients as its gradient, so one batched value-and-gradient
  serves every start. Its curvature pairs and line search are shared, so a start's path differs
  from its own solve; per-start bounds let it search faces of a box.
- :func:`projected_newton`: a batched projected Newton method (Bertsekas) with per-start line
  searches: exact batched Hessians, eigenvalues mirrored to keep descent directions, each start
  converging (and leaving the batch) on its own.
- :func:`joint_trust_constr`: scipy's trust-constr on the stacked starts for general
  constraints, with block-diagonal sparse Jacobians and Hessians. The joint Lagrangian's gradient
  is the starts' own gradients side by side, so its stopping test (``gtol`` on its largest entry
  and on the largest constraint violation) holds for every start on its own problem. That test
  can stop its interior-point method on a barrier subproblem, whose solution lies inside the
  feasible set by about the barrier parameter over the multiplier: each start's complementarity
  (multiplier times distance to its bound, for inequality constraints and bounds) is checked too,
  the barrier is driven down to ``tol / 10``, and a restart from points already near a solution
  begins with a small barrier (one of 0.1 would push them back inside first).
"""

from __future__ import annotations

import numpy as np
import scipy
from scipy import sparse
from scipy.optimize import BFGS, Bounds, LinearConstraint, NonlinearConstraint, OptimizeResult
from scipy.optimize import minimize as scipy_minimize

from .surrogate import Surrogate

__all__ = [
    "LOCKSTEP",
    "finite_rows",
    "joint_lbfgsb",
    "joint_trust_constr",
    "lockstep_lbfgsb",
    "projected_gradient",
    "projected_newton",
]

_ARMIJO = 1e-4
_BACKTRACKS = 40
# the signature of scipy's L-BFGS-B reverse-communication routine that lock step drives
LOCKSTEP = tuple(int(v) for v in scipy.__version__.split(".")[:2]) >= (1, 15)


def finite_rows(value_and_grad):
    """``value_and_grad`` (batched: (k, n) -> values (k,), gradients (k, n)) asked only at the
    rows of x that are finite, NaN answering the others, as a plain function of a NaN point
    would: scipy's L-BFGS-B, fed a NaN value where the model is NaN, can step to NaN points,
    and then stops (abnormally) for that start alone, while the surrogate itself refuses
    non-finite points."""

    def call(X):
        X = np.asarray(X, dtype=np.float64)
        ok = np.isfinite(X).all(axis=1)
        if ok.all():
            return value_and_grad(X)
        f, g = np.full(len(X), np.nan), np.full(X.shape, np.nan)
        if ok.any():
            fo, go = value_and_grad(X[ok])
            f[ok], g[ok] = np.ravel(fo), np.asarray(go, dtype=np.float64).reshape(-1, X.shape[1])
        return f, g

    return call


def joint_lbfgsb(value_and_grad, X, lb, ub, tol=1e-5, max_iter=1000) -> OptimizeResult:
    """One L-BFGS-B run over the stacked starts ``X`` (S, n): ``value_and_grad`` maps (S, n) to
    ((S,), (S, n)) in one batched call; ``lb``, ``ub`` are (n,) or per start (S, n) (equal
    bounds fix a coordinate, e.g. to search one face of a box)."""
    S, n = X.shape

    def fun(z):
        f, g = value_and_grad(z.reshape(S, n))  # one batched pass for every start
        return float(np.sum(f)), np.asarray(g, dtype=np.float64).ravel()

    box = np.broadcast_to(lb, (S, n)).ravel(), np.broadcast_to(ub, (S, n)).ravel()
    return scipy_minimize(
        fun,
        X.ravel(),
        jac=True,
        method="L-BFGS-B",
        bounds=Bounds(*box),
        # no ftol: a decrease of the summed objective says nothing about one start's progress
        options={"gtol": tol, "ftol": 0.0, "maxiter": max_iter, "maxcor": 10},
    )


def lockstep_lbfgsb(value_and_grad, X, lb, ub, tol=1e-5, max_iter=15000):
    """scipy's own L-BFGS-B from every row of ``X`` (S, n), in lock step: each start keeps its
    own state and path (as ``minimize(..., method="L-BFGS-B")`` from that start, with its
    default ``ftol``, ``maxcor`` and ``maxls``); whenever starts ask for a value and gradient,
    they are answered together by one batched call. Drives the reverse-communication routine
    (``setulb``) that ``scipy.optimize.minimize`` itself drives (scipy >= 1.15).

    Returns (X, converged (S,) as scipy's ``success``, iterations (S,), batched calls, values
    (S,) and gradients (S, n) at X: those the routine holds for its last iterate, so judging
    the end points costs no further call).
    """
    from scipy.optimize import _lbfgsb

    S, n = X.shape
    m, maxls = 10, 20
    factr = 2.2204460492503131e-09 / np.finfo(float).eps  # scipy's default ftol
    lo_ok, hi_ok = np.isfinite(lb), np.isfinite(ub)
    nbd = np.where(lo_ok & hi_ok, 2, np.where(lo_ok, 1, np.where(hi_ok, 3, 0))).astype(np.int32)
    low, up = np.where(lo_ok, lb, 0.0), np.where(hi_ok, ub, 0.0)
    x = np.clip(np.array(X, dtype=np.float64), lb, ub)
    f = [np.array(0.0) for _ in range(S)]
    g = np.zeros((S, n))
    wa = np.zeros((S, 2 * m * n + 5 * n + 11 * m * m + 8 * m))
    iwa = np.zeros((S, 3 * n), dtype=np.int32)
    task, ln_task = np.zeros((S, 2), dtype=np.int32), np.zeros((S, 2), dtype=np.int32)
    lsave, isave = np.zeros((S, 4), dtype=np.int32), np.zeros((S, 44), dtype=np.int32)
    dsave = np.zeros((S, 29))
    nit = np.zeros(S, dtype=np.int64)
    calls, pending = 0, range(S)
    while True:
        asking = []
        for s in pending:
            while True:
                state = wa[s], iwa[s], task[s], lsave[s], isave[s], dsave[s]
                _lbfgsb.setulb(m, x[s], low, up, nbd, f[s], g[s], factr, tol, *state, maxls,
                               ln_task[s])  # fmt: skip
                if task[s, 0] == 3:  # wants f and g at x[s]
                    asking.append(s)
                    break
                if task[s, 0] != 1:  # converged, or stopped
                    break
                nit[s] += 1  # a new iterate
                if nit[s] >= max_iter:
                    task[s] = (5, 504)
        if not asking:
            break
        values, grads = value_and_grad(x[asking])
        calls += 1
        for i, s in enumerate(asking):
            f[s][()] = values[i]
        g[asking] = np.asarray(grads, dtype=np.float64).reshape(len(asking), n)
        pending = asking
    return x, task[:, 0] == 4, nit, calls, np.array([float(v) for v in f]), g


def projected_gradient(X, g, lb, ub) -> np.ndarray:
    """Each start's ``max |P(x - g) - x|`` (P the projection on the box): L-BFGS-B's ``gtol``
    test, per start."""
    return np.abs(np.clip(X - g, lb, ub) - X).max(axis=1)


def projected_newton(sur: Surrogate, X, lb, ub, tol=1e-5, max_iter=200):
    """Batched projected Newton from every row of ``X`` (S, n) in the box [lb, ub].

    Per iteration, for the starts not yet converged: one batched pass for values, gradients and
    Hessians; on the free variables (those not held at a bound by their gradient) the Newton
    step of the Hessian with its eigenvalues mirrored and floored (``|lambda|``, so saddles and
    maxima repel); a projected Armijo backtracking line search per start (after a failed full
    step the next trial reaches at most a tenth of the box), each trial one batched value pass
    over the starts still searching. Near a minimum the value's rounding (an output scaler's
    offset, say) can hide a true decrease: where the Hessian is positive definite on the free
    variables and the full Newton step is tiny (at most 1e-6 of the box) but fails Armijo, the
    step is taken if it halves the projected gradient (one batched gradient pass), so Newton
    keeps converging quadratically below the value's rounding. A start stops when its
    projected gradient is at most ``tol``, or when no step decreases it (rounding).

    Returns (X, converged (S,), iterations (S,), batched passes, values (S,) at X).
    """
    X = np.clip(np.array(X, dtype=np.float64), lb, ub)
    S, n = X.shape
    fX = np.empty(S)
    converged = np.zeros(S, dtype=bool)
    nit = np.zeros(S, dtype=np.int64)
    passes = 0
    active = np.arange(S)
    for _ in range(max_iter):
        f, g, H = (np.asarray(a, dtype=np.float64) for a in sur.derivatives(X[active], order=2))
        f, g, H = f.reshape(-1), g.reshape(-1, n), H.reshape(-1, n, n)
        passes += 1
        fX[active] = f
        pg = projected_gradient(X[active], g, lb, ub)
        done = pg <= tol
        converged[active[done]] = True
        # a value, gradient or Hessian that is not finite (a start where the model is NaN)
        # gives no step: that start stops there, not converged
        finite = np.isfinite(f) & np.isfinite(g).all(1) & np.isfinite(H).all((1, 2))
        keep = ~done & finite
        active, f, g, H, pg = active[keep], f[keep], g[keep], H[keep], pg[keep]
        if not active.size:
            break
        nit[active] += 1
        Xa = X[active]
        # Bertsekas' epsilon-active set: a variable this close to a bound that its gradient
        # pushes against is held there (else its projected Newton step may not descend)
        eps = np.minimum(1e-3 * (ub - lb), pg[:, None])
        held = (Xa <= lb + eps) & (g > 0) | (Xa >= ub - eps) & (g < 0)
        free = ~held
        Hr = np.where(free[:, :, None] & free[:, None, :], H, 0.0)
        Hr[:, np.arange(n), np.arange(n)] += held  # unit diagonal on held variables
        w, Q = np.linalg.eigh(Hr)
        convex = w.min(axis=1) > 0
        scale = np.abs(w).max(axis=1, keepdims=True)
        w = np.maximum(np.abs(w), 1e-10 * scale + 1e-300)
        gf = np.where(free, g, 0.0)
        d = -np.einsum("sij,sj->si", Q, np.einsum("sji,sj->si", Q, gf) / w)
        alpha = np.ones(len(active))
        # far from a minimum the mirrored Newton step overshoots: after a failed full step the
        # next trial goes no further than a tenth of the box (fewer batched backtracks)
        reach = np.abs(d / np.maximum(ub - lb, 1e-300)).max(1)
        short = np.minimum(0.5, 0.1 / np.maximum(reach, 1e-300))
        searching = np.ones(len(active), dtype=bool)
        new = Xa.copy()
        snapped = np.where(held, np.where(g > 0, lb, ub), Xa)  # held variables on their bound
        for trial_no in range(_BACKTRACKS):
            idx = np.flatnonzero(searching)
            trial = np.clip(snapped[idx] + alpha[idx, None] * d[idx], lb, ub)
            ft = np.asarray(sur(trial), dtype=np.float64).reshape(-1)
            passes += 1
            decrease = np.einsum("si,si->s", g[idx], trial - Xa[idx])
            ok = (ft <= f[idx] + _ARMIJO * decrease) & (decrease < 0)
            if trial_no == 0:  # the full step: below the value's rounding?
                tiny = ~ok & convex[idx] & (reach[idx] <= 1e-6)
                if tiny.any():
                    gt = np.asarray(sur.grad(trial[tiny]), dtype=np.float64).reshape(-1, n)
                    passes += 1
                    halves = projected_gradient(trial[tiny], gt, lb, ub) <= 0.5 * pg[idx[tiny]]
                    ok[np.flatnonzero(tiny)[halves]] = True
            new[idx[ok]], fX[active[idx[ok]]] = trial[ok], ft[ok]
            searching[idx[ok]] = False
            alpha[idx[~ok]] = np.minimum(alpha[idx[~ok]] / 2, short[idx[~ok]])
            if not searching.any():
                break
        X[active] = new
        active = active[~searching]  # no decrease within rounding: these stop here
    rest = np.flatnonzero(~converged & np.isfinite(fX))  # stopped or out of iterations:
    if rest.size:  # judged where they ended
        g = np.asarray(sur.grad(X[rest]), dtype=np.float64).reshape(-1, n)
        converged[rest] = projected_gradient(X[rest], g, lb, ub) <= tol
        passes += 1
    return X, converged, nit, passes, fX


def joint_trust_constr(
    sur: Surrogate, X, lb, ub, constraints, tol=1e-8, max_iter=1000, barrier=0.1
):
    """scipy's trust-constr over the stacked starts ``X`` (S, n) with ``constraints`` (scipy's
    ``NonlinearConstraint``/``LinearConstraint`` or ``{"type", "fun", "jac"}`` dicts, each for
    one point) applied to every start. Surrogate constraints (``sb.scipy_constraint``) are
    evaluated for all starts in one batched call; other callables once per start. ``barrier``:
    the interior-point method's initial barrier parameter (scipy's 0.1 by default; a restart
    from near a solution takes a small one); it is driven down to ``tol / 10``.

    Returns (X, per-start optimality (S,): the largest of its Lagrangian gradient's entries and
    of its complementarity products, per-start constraint violation (S,), the result).
    """
    S, n = X.shape
    joint = [_stacked(c, S, n) for c in _as_constraints(constraints, n)]

    def fun(z):
        f, g = sur.value_and_grad(z.reshape(S, n))
        return float(np.sum(f)), np.asarray(g, dtype=np.float64).ravel()

    def hess(z):
        return _block_diagonal(np.asarray(sur.hess(z.reshape(S, n)), dtype=np.float64))

    res = scipy_minimize(
        fun,
        X.ravel(),
        jac=True,
        hess=hess,
        method="trust-constr",
        constraints=[c for c, *_ in joint],
        bounds=Bounds(np.tile(lb, S), np.tile(ub, S)),
        options={"gtol": tol, "xtol": 1e-14, "maxiter": max_iter, "barrier_tol": tol / 10,
                 "initial_barrier_parameter": barrier, "initial_barrier_tolerance": barrier},
    )  # fmt: skip
    Xe = np.clip(res.x.reshape(S, n), lb, ub)
    optimality = np.abs(np.asarray(res.lagrangian_grad).reshape(S, n)).max(axis=1)
    violation = np.zeros(S)
    sides = [(values(Xe), lo, hi) for _, values, lo, hi in joint]
    for (values, lo, hi), v in zip(sides, res.v, strict=False):
        violation = np.maximum(violation, _violation(values, lo, hi))
        optimality = np.maximum(optimality, _complementarity(v, values, lo, hi))
    if len(res.v) > len(joint):  # (the bounds' multipliers come last)
        optimality = np.maximum(optimality, _complementarity(res.v[-1], Xe, lb, ub))
    return Xe, optimality, violation, res


def _complementarity(v, values, lo, hi) -> np.ndarray:
    """Per start, the largest |multiplier| times the distance to the nearer finite bound of an
    inequality (zero at a solution; an equality's is its violation, checked apart)."""
    values = np.asarray(values, dtype=np.float64)
    S = len(values)
    with np.errstate(invalid="ignore"):
        gap = np.fmin(values - lo, hi - values)  # (inf sides drop out; both inf: inf)
    gap = np.where(np.isfinite(gap), np.maximum(gap, 0.0), 0.0)
    return (np.abs(np.asarray(v, dtype=np.float64)).reshape(S, -1) * gap.reshape(S, -1)).max(1)


def _as_constraints(constraints, n):
    """scipy's forms (one constraint, a sequence of them, dicts) as a list of Linear and
    Nonlinear constraints."""
    if isinstance(constraints, (dict, NonlinearConstraint, LinearConstraint)):
        constraints = [constraints]
    out = []
    for c in constraints:
        if isinstance(c, dict):
            kind = c.get("type")
            if kind not in ("eq", "ineq") or not callable(c.get("fun")):
                raise ValueError(
                    "multistart: a dict constraint needs 'type' ('eq' or 'ineq') and a callable "
                    f"'fun'; got {c!r}."
                )
            args = tuple(c.get("args", ()))
            fn, jac = c["fun"], c.get("jac")
            f1 = lambda x, fn=fn, args=args: np.atleast_1d(fn(x, *args))  # noqa: E731
            j1 = None if jac is None else (lambda x, jac=jac, args=args: jac(x, *args))
            out.append(NonlinearConstraint(f1, 0.0, 0.0 if kind == "eq" else np.inf, jac=j1))
        elif isinstance(c, (NonlinearConstraint, LinearConstraint)):
            out.append(c)
        else:
            raise TypeError(
                "multistart: constraints must be scipy NonlinearConstraint / LinearConstraint "
                f"objects or {{'type', 'fun', 'jac'}} dicts, got {type(c).__name__}."
            )
    for c in out:
        if isinstance(c, NonlinearConstraint) and not callable(c.jac):
            raise ValueError(
                "multistart: every nonlinear constraint needs an exact jac (a callable); "
                "sb.scipy_constraint(sur, lb, ub) gives one for a surrogate."
            )
    return out


def _stacked(c, S, n):
    """The constraint for the stacked starts; its values (S, m) at the starts' points, and its
    bounds (m,)."""
    if isinstance(c, LinearConstraint):
        A = np.atleast_2d(sparse.csr_array(c.A).toarray() if sparse.issparse(c.A) else c.A)
        m = A.shape[0]
        lo, hi = np.broadcast_to(c.lb, m), np.broadcast_to(c.ub, m)
        big = sparse.kron(sparse.eye(S), sparse.csr_array(A), format="csr")
        stacked = LinearConstraint(big, np.tile(lo, S), np.tile(hi, S))
        return stacked, lambda Xe: Xe @ A.T, lo, hi
    owner = getattr(c.jac, "__self__", None)
    batched = isinstance(owner, Surrogate)
    m = owner.n_out if batched else np.atleast_1d(c.fun(np.zeros(n))).size
    lo, hi = np.broadcast_to(c.lb, m), np.broadcast_to(c.ub, m)

    def values(Z):
        if batched:
            return np.asarray(owner(Z), dtype=np.float64).reshape(S, m)
        return np.stack([np.atleast_1d(c.fun(z)) for z in Z])

    def fun(z):
        return values(z.reshape(S, n)).ravel()

    def jac(z):
        Z = z.reshape(S, n)
        J = owner.jac(Z) if batched else np.stack([np.atleast_2d(c.jac(x)) for x in Z])
        return _block_diagonal(np.asarray(J, dtype=np.float64).reshape(S, m, n))

    if batched:

        def hess(z, v):
            H = np.asarray(owner.hess(z.reshape(S, n)), dtype=np.float64).reshape(S, m, n, n)
            return _block_diagonal(np.einsum("si,sijk->sjk", v.reshape(S, m), H))

    elif callable(c.hess):

        def hess(z, v):
            Z, V = z.reshape(S, n), v.reshape(S, m)
            return _block_diagonal(np.stack([c.hess(x, w) for x, w in zip(Z, V, strict=True)]))

    else:
        hess = BFGS()
    stacked = NonlinearConstraint(fun, np.tile(lo, S), np.tile(hi, S), jac=jac, hess=hess)
    return stacked, values, lo, hi


def _violation(values, lo, hi) -> np.ndarray:
    return np.maximum(np.maximum(lo - values, values - hi), 0.0).max(axis=1)


def _block_diagonal(blocks: np.ndarray):
    """(S, a, b) blocks as a sparse (S a, S b) block-diagonal matrix, without copies per block."""
    S, a, b = blocks.shape
    return sparse.bsr_array((blocks, np.arange(S), np.arange(S + 1)), shape=(S * a, S * b))
