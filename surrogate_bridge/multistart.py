"""Many starts at once: one batched evaluation serves every start at each step.

``sb.multistart`` draws or takes the starts, runs one of the solvers of ``joint.py`` (scipy's
L-BFGS-B per start in lock step, batched projected Newton, joint trust-constr for general
constraints), judges every start on its own problem (scipy's own test, its projected gradient,
or its Lagrangian gradient and constraint violation, against ``tol``), gives unconverged starts
further rounds on their own where the solver is joint, so converged starts stop costing work,
and merges the end points into distinct local minima.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, OptimizeResult
from scipy.spatial import cKDTree

from .convert import as_points, check_feature_names, to_host
from .joint import (
    LOCKSTEP,
    finite_rows,
    joint_lbfgsb,
    joint_trust_constr,
    lockstep_lbfgsb,
    projected_gradient,
    projected_newton,
)
from .surrogate import Surrogate, require_surrogate

__all__ = ["multistart", "read_box"]

_METHODS = ("L-BFGS-B", "newton", "trust-constr")
_ROUNDS = 8  # joint rounds at most; each restarts the solver on the starts not yet converged
_FTOL = 2.2204460492503131e-09  # scipy L-BFGS-B's default ftol: the relative decrease it resolves


def read_box(bounds, n: int, where: str, domain=None) -> tuple[np.ndarray, np.ndarray]:
    """``bounds`` (``scipy.optimize.Bounds`` or n (min, max) pairs) as float64 (lb, ub); None
    gives ``domain`` (a surrogate's training domain) or a clear error."""
    if bounds is None:
        if domain is None:
            raise ValueError(
                f"{where}: no bounds given and no training domain known; pass bounds=, or "
                "give the Surrogate a domain."
            )
        return domain
    if isinstance(bounds, Bounds):
        lb, ub = np.broadcast_to(bounds.lb, n), np.broadcast_to(bounds.ub, n)
    else:
        try:
            lb, ub = np.asarray(bounds, dtype=np.float64).reshape(n, 2).T
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{where}: bounds must be scipy.optimize.Bounds or {n} (min, max) pairs, got "
                f"{bounds!r}."
            ) from err
    lb, ub = np.array(lb, dtype=np.float64), np.array(ub, dtype=np.float64)
    if np.isnan(lb).any() or np.isnan(ub).any() or np.any(lb > ub):
        raise ValueError(f"{where}: bounds need lb <= ub without NaN, got lb={lb}, ub={ub}.")
    return lb, ub


def multistart(
    sur: Surrogate,
    x0=None,
    *,
    bounds=None,
    n_starts: int | None = None,
    method: str | None = None,
    constraints=(),
    tol: float = 1e-5,
    seed: int | None = None,
    max_iter: int = 1000,
    merge_tol: float = 1e-5,
) -> OptimizeResult:
    """Minimize a scalar surrogate from many starts at once; find its distinct local minima.

    Parameters
    ----------
    sur : Surrogate
        Scalar (n_out == 1).
    x0 : array_like, shape (S, n_in), optional
        The starts; by default ``n_starts`` points drawn uniformly in ``bounds`` (on a side
        whose bound is infinite, in the training domain). Starts outside the bounds are moved
        onto them, as scipy's L-BFGS-B does.
    bounds : scipy.optimize.Bounds or sequence of (min, max) pairs, optional
        Box constraints; by default the training domain (``sur.bounds()``), and none where no
        domain is known and ``x0`` is given.
    n_starts : int, optional
        Starts drawn when ``x0`` is not given (64 by default). With ``x0``, leave it out or give
        x0's number of rows.
    method : {"L-BFGS-B", "newton", "trust-constr"}, optional
        "L-BFGS-B" (the default without constraints): scipy's L-BFGS-B from every start, in
        lock step: each start follows exactly the path ``scipy.optimize.minimize(...,
        method="L-BFGS-B")`` takes from it, while each round of requests is one batched call;
        where scipy's ``ftol`` test stops a start with its projected gradient above ``tol``,
        that start goes on from there with a fresh memory.
        "newton": batched projected Newton with exact Hessians and a line search per start
        (fewer iterations; each pays a batched Hessian; it may end in another basin than
        L-BFGS-B from the same start). "trust-constr" (the default, and the
        only method, with ``constraints``): joint trust-constr with exact sparse derivatives.
    constraints : scipy constraint(s), optional
        ``NonlinearConstraint`` (``sb.scipy_constraint(con_sur, lb, ub)`` is evaluated for all
        starts in one batched call; other callables need an exact ``jac`` and are called per
        start), ``LinearConstraint``, or ``{"type": "eq" | "ineq", "fun", "jac"}`` dicts, each
        written for one point and applied to every start.
    tol : float
        scipy's ``gtol``, by default L-BFGS-B's (1e-5): a start is converged when its projected
        gradient (with constraints: its Lagrangian gradient, its complementarity and its
        constraint violation) is below it; L-BFGS-B starts also stop, successfully, as
        scipy's do, when an iteration reduces f by less than its default ``ftol``.
    seed : int, optional
        Seeds the drawn starts.
    max_iter : int
        Iterations per joint round.
    merge_tol : float
        End points closer than this (relative to the box size) are one minimum.

    Returns
    -------
    scipy.optimize.OptimizeResult
        ``x``, ``fun``: the best minimum; ``success``: every start converged; ``xs`` (S, n)
        and ``funs`` (S,): every start's end point and value; ``converged`` (S,) bool;
        ``minima`` (k, n), ``minima_fun`` (k,), ``minima_count`` (k,): the distinct local minima
        sorted by value, with how many starts reached each; ``nit`` (the most iterations any
        start took; trust-constr: the joint iterations), ``nfev`` (batched evaluations, all of
        them: L-BFGS-B and newton report the values they hold at the end points, trust-constr
        adds one pass for them) and ``method``. A start where the model is NaN (a root or
        logarithm beyond where it is defined), or that steps to where it is, fails alone: not
        converged, its value NaN (L-BFGS-B: as scipy's own solve from it ends), while the
        others go on.

    Examples
    --------
    >>> import numpy as np, torch, surrogate_bridge as sb
    >>> class TwoWells(torch.nn.Module):
    ...     def forward(self, z):
    ...         return ((z ** 2 - 1) ** 2).sum(-1)
    >>> res = sb.multistart(sb.Surrogate(TwoWells(), n_in=1), bounds=[(-2, 2)], seed=0)
    >>> sorted(np.round(res.minima.ravel(), 6).tolist()), int(res.minima_count.sum())
    ([-1.0, 1.0], 64)
    """
    require_surrogate(sur, "multistart", x=x0)
    if sur.n_out != 1:
        raise ValueError(f"multistart: the objective must be scalar; n_out = {sur.n_out}.")
    method = method if method is not None else ("trust-constr" if constraints else "L-BFGS-B")
    if method not in _METHODS:
        raise ValueError(f"multistart: method={method!r} is not available; use one of {_METHODS}.")
    if constraints and method != "trust-constr":
        raise ValueError(
            f"multistart: constraints need method='trust-constr' (got {method!r}); L-BFGS-B and "
            "newton take bounds only."
        )
    _check_settings(tol, max_iter, merge_tol)
    n = sur.n_in
    if bounds is None and sur.domain is None and x0 is not None:  # unbounded, from x0
        lb, ub = np.full(n, -np.inf), np.full(n, np.inf)
    else:
        lb, ub = read_box(bounds, n, "multistart", sur.domain)
    check_feature_names(x0, sur.feature_names, "multistart", "x0")  # a DataFrame of starts
    X = _starts(x0, n_starts, lb, ub, n, seed, sur.domain)
    funs = None  # the end points' values, where the optimizer holds them
    if method == "newton":
        X, converged, nit, nfev, funs = projected_newton(sur, X, lb, ub, tol, max_iter)
        nit = int(nit.max(initial=0))
    elif method == "trust-constr":
        X, converged, nit, nfev = _constrained(sur, X, lb, ub, constraints, tol, max_iter)
    else:
        X, converged, nit, nfev, funs = _lbfgsb(sur, X, lb, ub, tol, max_iter)
        nit = int(np.max(nit, initial=0))
    S = len(X)
    if funs is None:
        funs = np.asarray(sur(X), dtype=np.float64).reshape(S)
    minima, minima_fun, counts = _merge(X, funs, converged, merge_tol * _size(lb, ub, X))
    if converged.any():
        best = int(np.argmin(np.where(converged, funs, np.inf)))
    else:  # the least value any start reached (a start where the model is NaN is none)
        best = int(np.argmin(np.where(np.isnan(funs), np.inf, funs)))
    return OptimizeResult(
        x=X[best].copy(),
        fun=float(funs[best]),
        success=bool(converged.all()),
        message=f"{int(converged.sum())} of {S} starts converged ({method}, tol {tol:g})",
        xs=X,
        funs=funs,
        converged=converged,
        minima=minima,
        minima_fun=minima_fun,
        minima_count=counts,
        nit=nit,
        nfev=nfev,
        method=method,
    )


def _check_settings(tol, max_iter, merge_tol) -> None:
    for name, v, least in (("tol", tol, "a positive"), ("merge_tol", merge_tol, "a non-negative")):
        number = isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)
        if not (number and np.isfinite(v) and (v > 0 if name == "tol" else v >= 0)):
            raise ValueError(f"multistart: {name} must be {least} finite number, got {v!r}.")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"multistart: max_iter must be an int >= 0, got {max_iter!r}.")


def _starts(x0, n_starts, lb, ub, n, seed, domain=None) -> np.ndarray:
    if n_starts is not None and (
        isinstance(n_starts, bool) or not isinstance(n_starts, (int, np.integer)) or n_starts < 1
    ):
        raise ValueError(f"multistart: n_starts must be a positive int, got {n_starts!r}.")
    if x0 is None:
        lo, hi = lb, ub
        if domain is not None:  # a side without a bound: drawn in the training domain there
            lo = np.where(np.isfinite(lb), lb, np.maximum(lb, domain[0]))
            hi = np.where(np.isfinite(ub), ub, np.minimum(ub, domain[1]))
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise ValueError(
                "multistart: drawing starts needs finite bounds (or a training domain where a "
                "bound is infinite); pass x0 instead."
            )
        if domain is not None and np.any(lo > hi):  # a finite bound beyond the domain: a
            width = domain[1] - domain[0]  # stretch as wide as the domain, from that bound
            lo, hi = (
                np.where(lo > hi, np.where(np.isfinite(lb), lb, ub - width), lo),
                np.where(lo > hi, np.where(np.isfinite(ub), ub, lb + width), hi),
            )
        count = 64 if n_starts is None else n_starts
        return np.random.default_rng(seed).uniform(lo, hi, (count, n))
    pts = as_points(x0, n, "multistart", "x0")
    X = np.array(to_host(pts.data) if pts.is_torch else pts.data, dtype=np.float64).reshape(-1, n)
    if len(X) == 0:
        raise ValueError(f"multistart: x0 holds no starts (shape {np.shape(x0)}).")
    if n_starts is not None and n_starts != len(X):
        raise ValueError(
            f"multistart: x0 holds {len(X)} starts but n_starts={n_starts}; give one of them "
            "(n_starts counts the starts drawn when x0 is not given)."
        )
    return np.clip(X, lb, ub)


def _lbfgsb(sur, X, lb, ub, tol, max_iter):
    """scipy's L-BFGS-B per start in lock step (each start's own path, its own ``success``);
    where scipy's reverse-communication routine differs (scipy < 1.15), joint rounds.

    scipy's ``ftol`` test can stop a start far from any stationary point (a line search that
    barely moved after a poor quasi-Newton update: ``success`` with a gradient of 30 was seen
    on Himmelblau). Such a start, its projected gradient above ``tol``, is restarted from where
    it stopped with a fresh memory; it counts as converged once that gradient is within
    ``tol``, or when a restart lowers its value by no more than ``ftol`` allows (rounding)."""
    if LOCKSTEP:
        value_and_grad = finite_rows(sur.value_and_grad)
        X, converged, nit, calls, f, g = lockstep_lbfgsb(value_and_grad, X, lb, ub, tol,
                                                         max_iter)  # fmt: skip
        stalled = np.flatnonzero(converged & (projected_gradient(X, g, lb, ub) > tol))
        for _ in range(_ROUNDS):
            if not stalled.size:
                break
            Xr, ok, its, more, fr, gr = lockstep_lbfgsb(value_and_grad, X[stalled].copy(),
                                                        lb, ub, tol, max_iter)  # fmt: skip
            moved = f[stalled] - fr > _FTOL * np.maximum(np.maximum(abs(f[stalled]), abs(fr)), 1)
            X[stalled], f[stalled], converged[stalled], calls = Xr, fr, ok, calls + more
            nit[stalled] += its
            stalled = stalled[ok & (projected_gradient(Xr, gr, lb, ub) > tol) & moved]
        return X, converged, nit, calls, f
    active, nit, nfev = np.arange(len(X)), 0, 0
    for _ in range(_ROUNDS):  # a round restarts L-BFGS-B on the starts not yet converged
        res = joint_lbfgsb(sur.value_and_grad, X[active], lb, ub, tol, max_iter)
        X[active] = res.x.reshape(-1, X.shape[1])
        nit, nfev = nit + res.nit, nfev + res.nfev
        active = active[_pg(sur, X[active], lb, ub) > tol]
        if active.size == 0:
            break
    return X, _pg(sur, X, lb, ub) <= tol, nit, nfev, None


def _constrained(sur, X, lb, ub, constraints, tol, max_iter):
    """Joint trust-constr rounds; a start is converged when its own Lagrangian gradient,
    complementarity and constraint violation are within ``tol``. A start where the model's
    value or gradient is not finite is left where it is, not converged (in the joint problem
    its NaN would be every start's)."""
    f, g = sur.value_and_grad(X)
    finite = np.isfinite(np.asarray(f, dtype=np.float64)) & np.isfinite(np.asarray(g)).all(1)
    active, nit, nfev, barrier = np.flatnonzero(finite), 0, 1, 0.1
    converged = np.zeros(len(X), dtype=bool)
    for _ in range(_ROUNDS):
        Xe, optimality, violation, res = joint_trust_constr(
            sur, X[active], lb, ub, constraints, tol, max_iter, barrier
        )
        # a restart begins near a solution: with a barrier below the one this round ended on
        barrier = max(tol / 10, getattr(res, "barrier_parameter", barrier) / 10)
        X[active] = Xe
        nit, nfev = nit + res.nit, nfev + res.nfev
        ok = (optimality <= tol) & (violation <= tol)
        converged[active[ok]] = True
        active = active[~ok]
        if active.size == 0:
            break
    return X, converged, nit, nfev


def _pg(sur, X, lb, ub) -> np.ndarray:
    return projected_gradient(X, np.asarray(sur.grad(X), dtype=np.float64).reshape(X.shape), lb, ub)


def _size(lb, ub, X) -> float:
    width = np.where(np.isfinite(ub - lb), ub - lb, np.ptp(X, axis=0))
    return float(max(np.max(width), 1.0))


def _merge(X, funs, converged, radius):
    """Converged end points within ``radius`` of a better one are the same minimum: visiting
    the points in order of value, a point not yet merged founds a minimum and takes every
    unmerged point within ``radius`` of it (a k-d tree query per minimum: the same grouping as
    joining each point to the first minimum within ``radius``, in O(S log S) for S starts
    whether they find four minima or thousands)."""
    order = np.argsort(funs, kind="stable")
    order = order[converged[order]]
    pts = X[order]
    tree = cKDTree(pts) if len(pts) else None
    merged = np.zeros(len(order), dtype=bool)
    centers, values, counts = [], [], []
    for a in range(len(order)):
        if merged[a]:
            continue
        near = np.asarray(tree.query_ball_point(pts[a], radius), dtype=np.int64)
        near = near[~merged[near]]
        merged[near] = True  # a itself among them (distance 0)
        centers.append(pts[a])
        values.append(funs[order[a]])
        counts.append(int(near.size))
    return (np.array(centers).reshape(-1, X.shape[1]), np.array(values, dtype=np.float64),
            np.array(counts, dtype=np.int64))  # fmt: skip
