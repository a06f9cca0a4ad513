"""Many starts at once: every start optimized jointly, one batched evaluation per iteration.

The sum of independent objectives has their gradients as its gradient, so L-BFGS-B on the
stacked starts (S x n variables) costs one batched value-and-gradient of the surrogate per
iteration instead of S Python round trips (BoTorch's ``gen_candidates_scipy`` does the same).
The joint problem's projected-gradient test is the largest over the starts, so a start the round
ends with is converged to scipy's own ``gtol`` on its own problem; starts that are not (the
round ran out of iterations, or the joint line search stopped) get another round on their own,
so converged starts stop costing work. Distinct local minima are then merged within a tolerance.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, OptimizeResult, minimize

from .convert import as_points
from .surrogate import Surrogate, require_surrogate

__all__ = ["joint_lbfgsb", "multistart", "read_box"]

_METHODS = ("L-BFGS-B",)
_ROUNDS = 8  # joint rounds at most; each restarts L-BFGS-B on the starts not yet converged


def read_box(bounds, n: int, where: str, domain=None) -> tuple[np.ndarray, np.ndarray]:
    """``bounds`` (``scipy.optimize.Bounds`` or n (min, max) pairs) as float64 (lb, ub); None
    gives ``domain`` (a surrogate's training domain) or a clear error."""
    if bounds is None:
        if domain is None:
            raise ValueError(
                f"{where}: no bounds given and no training domain known; pass bounds= (or "
                "x0), or give the Surrogate a domain."
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
    n_starts: int = 64,
    method: str = "L-BFGS-B",
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
        The starts; by default ``n_starts`` points drawn uniformly in ``bounds``.
    bounds : scipy.optimize.Bounds or sequence of (min, max) pairs, optional
        Box constraints; by default the training domain (``sur.bounds()``).
    n_starts : int
        Starts drawn when ``x0`` is not given.
    method : {"L-BFGS-B"}
        Joint L-BFGS-B over the stacked starts.
    constraints : ()
        General constraints are not supported yet (an error says so).
    tol : float
        Every start's projected gradient ends below this: L-BFGS-B's ``gtol``, by default
        scipy's own (1e-5). Far below the function's rounding (an output shift of 100 leaves f
        ~1e-14 of resolution) no line search can make progress.
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
        sorted by value, with how many starts reached each; ``nit`` (iterations over all rounds)
        and ``nfev`` (batched evaluations).

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
    require_surrogate(sur, "multistart")
    if sur.n_out != 1:
        raise ValueError(f"multistart: the objective must be scalar; n_out = {sur.n_out}.")
    if method not in _METHODS:
        raise ValueError(f"multistart: method={method!r} is not available; use one of {_METHODS}.")
    if constraints:
        raise NotImplementedError(
            "multistart: general constraints are not supported yet; use bounds, or loop "
            "scipy.optimize.minimize(sur, x0, jac=sur.grad, constraints=...) over starts."
        )
    n = sur.n_in
    lb, ub = read_box(bounds, n, "multistart", sur.domain)
    if x0 is None:
        if isinstance(n_starts, bool) or not isinstance(n_starts, int) or n_starts < 1:
            raise ValueError(f"multistart: n_starts must be a positive int, got {n_starts!r}.")
        if not (np.isfinite(lb).all() and np.isfinite(ub).all()):
            raise ValueError("multistart: drawing starts needs finite bounds; pass x0 instead.")
        X = np.random.default_rng(seed).uniform(lb, ub, (n_starts, n))
    else:
        pts = as_points(x0, n, "multistart", "x0")
        X = np.array(pts.data.cpu() if pts.is_torch else pts.data, dtype=np.float64)
        X = np.clip(X, lb, ub)
    S = X.shape[0]
    active = np.arange(S)
    nit = nfev = 0
    for _ in range(_ROUNDS):
        res = joint_lbfgsb(sur.value_and_grad, X[active], lb, ub, tol, max_iter)
        X[active] = res.x.reshape(-1, n)
        nit, nfev = nit + res.nit, nfev + res.nfev
        active = active[_projected_gradient(sur, X[active], lb, ub) > tol]
        if active.size == 0:
            break
    funs = np.asarray(sur(X), dtype=np.float64)
    converged = _projected_gradient(sur, X, lb, ub) <= tol
    minima, minima_fun, counts = _merge(X, funs, converged, merge_tol * _size(lb, ub, X))
    best = (
        int(np.argmin(np.where(converged, funs, np.inf)))
        if converged.any()
        else int(np.argmin(funs))
    )
    return OptimizeResult(
        x=X[best].copy(),
        fun=float(funs[best]),
        success=bool(converged.all()),
        message=f"{int(converged.sum())} of {S} starts converged to |projected grad| <= {tol:g}",
        xs=X,
        funs=funs,
        converged=converged,
        minima=minima,
        minima_fun=minima_fun,
        minima_count=counts,
        nit=nit,
        nfev=nfev,
    )


def joint_lbfgsb(value_and_grad, X, lb, ub, tol=1e-5, max_iter=1000) -> OptimizeResult:
    """One L-BFGS-B run over the stacked starts ``X`` (S, n): ``value_and_grad`` maps (S, n) to
    ((S,), (S, n)) in one batched call; ``lb``, ``ub`` are (n,) or per start (S, n) (equal
    bounds fix a coordinate, e.g. to search one face of a box)."""
    S, n = X.shape

    def fun(z):
        f, g = value_and_grad(z.reshape(S, n))  # one batched pass for every start
        return float(np.sum(f)), np.asarray(g, dtype=np.float64).ravel()

    box = np.broadcast_to(lb, (S, n)).ravel(), np.broadcast_to(ub, (S, n)).ravel()
    return minimize(
        fun,
        X.ravel(),
        jac=True,
        method="L-BFGS-B",
        bounds=Bounds(*box),
        # no ftol: a decrease of the summed objective says nothing about one start's progress
        options={"gtol": tol, "ftol": 0.0, "maxiter": max_iter, "maxcor": 10},
    )


def _projected_gradient(sur, X, lb, ub) -> np.ndarray:
    """Each start's largest gradient component that a feasible step could still reduce."""
    g = np.asarray(sur.grad(X), dtype=np.float64).reshape(X.shape)
    pg = np.where((X <= lb) & (g > 0) | (X >= ub) & (g < 0), 0.0, g)
    return np.abs(pg).max(axis=1)


def _size(lb, ub, X) -> float:
    width = np.where(np.isfinite(ub - lb), ub - lb, np.ptp(X, axis=0))
    return float(max(np.max(width), 1.0))


def _merge(X, funs, converged, radius):
    """Converged end points within ``radius`` of a better one are the same minimum (distances
    to every minimum found so far in one array operation per point)."""
    n = X.shape[1]
    centers = np.empty((0, n))
    values, counts = [], []
    for i in (i for i in np.argsort(funs) if converged[i]):
        near = np.flatnonzero(np.linalg.norm(centers - X[i], axis=1) <= radius)
        if near.size:
            counts[near[0]] += 1
        else:
            centers = np.vstack([centers, X[i]])
            values.append(funs[i])
            counts.append(1)
    return centers, np.array(values, dtype=np.float64), np.array(counts, dtype=np.int64)
