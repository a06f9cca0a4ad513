"""Falsification: a quasi-random sample seeds joint searches of the normalized margins."""

from __future__ import annotations

import math
import time

import numpy as np

from ..convert import with_grad
from ..joint import joint_lbfgsb
from ..surrogate import Surrogate
from .conditions import KINDS, Conditions, count, settings, sobol
from .results import Falsification

__all__ = ["distinct", "falsify", "in_region", "search"]


@with_grad
def falsify(
    V: Surrogate,
    f,
    bounds,
    *,
    equilibrium=None,
    exclude_radius: float | None = None,
    decay: float = 0.0,
    n_starts: int = 128,
    n_samples: int = 8192,
    seed: int | None = None,
    level: float | None = None,
    max_counterexamples: int = 256,
) -> Falsification:
    """Search for points that break the Lyapunov conditions of ``V`` for ``dx/dt = f(x)``.

    Inside the box ``bounds`` (and, with ``level``, the sublevel set ``V <= level``), outside the
    ball of radius ``exclude_radius`` around the equilibrium, a point is a counterexample if
    ``V(x) <= V(x*)`` or ``grad V(x) . f(x) >= -decay |x - x*|^2``. A dense quasi-random sample
    seeds a batched multi-start minimization of each condition's margin with exact gradients.

    **This is falsification, not proof**: ``certified=True`` only says that no counterexample
    was found; a violation in a region that the sample and the searches miss stays unseen.

    Parameters
    ----------
    V : Surrogate
        Scalar candidate Lyapunov function.
    f : Surrogate, sb.ode_rhs module, or torch callable
        The dynamics, n states -> n derivatives (a callable takes (N, n) torch states).
    bounds : scipy.optimize.Bounds or sequence of (min, max) pairs
        The finite box searched.
    equilibrium : array_like, shape (n,), optional
        ``x*``; the origin by default.
    exclude_radius : float, optional
        The ball around ``x*`` left out (both margins vanish at ``x*``); by default 1% of the
        box's largest width.
    decay : float
        Required decrease rate: ``V-dot < -decay |x - x*|^2``.
    n_starts, n_samples : int
        Local searches (shared between the two conditions) and sample points.
    seed : int, optional
        Seeds the sample.
    level : float, optional
        Search only the sublevel set ``V <= level``.
    max_counterexamples : int
        Counterexamples kept, worst (most normalized violation) first.

    Returns
    -------
    Falsification

    Examples
    --------
    >>> import numpy as np, torch, surrogate_bridge as sb
    >>> class Bowl(torch.nn.Module):
    ...     def forward(self, x):
    ...         return (x ** 2).sum(-1)
    >>> V = sb.Surrogate(Bowl(), n_in=2)
    >>> sb.lyapunov.falsify(V, lambda x: -x, [(-1, 1), (-1, 1)], seed=0).certified
    True
    >>> res = sb.lyapunov.falsify(V, lambda x: x * (x ** 2 - 0.25), [(-1, 1), (-1, 1)], seed=0)
    >>> res.certified, bool(np.all(np.linalg.norm(res.counterexamples, axis=1) >= 0.5 - 1e-9))
    (False, True)
    """
    where = "lyapunov.falsify"
    cond = Conditions(V, f, equilibrium, decay, where)
    lb, ub, radius = settings(V, bounds, exclude_radius, where)
    count(n_starts, "n_starts", where, 0), count(n_samples, "n_samples", where)
    count(max_counterexamples, "max_counterexamples", where, 0)
    if level is not None and not (isinstance(level, (int, float)) and math.isfinite(level)):
        raise ValueError(f"{where}: level must be a finite number, got {level!r}.")
    return search(cond, lb, ub, radius, n_starts, n_samples, seed, level, max_counterexamples)


def search(cond, lb, ub, radius, n_starts, n_samples, seed, level, keep) -> Falsification:
    start = time.perf_counter()
    X = sobol(lb, ub, n_samples, seed)
    drawn = len(X)
    v, p, d, r2 = cond.evaluate(X)
    inside = in_region(v, r2, radius, level)
    X, v, p, d, r2 = X[inside], v[inside], p[inside], d[inside], r2[inside]
    floor = max(radius**2, 1e-300) * 1e-6
    found, sampled = [X], len(X)
    if len(X) and n_starts:
        scale = max(float(np.median(np.abs(d / np.maximum(r2, floor)))), 1e-12)
        weight = 1e3 * scale / max(abs(level - cond.v_eq) if level is not None else 1.0, 1e-12) ** 2
        for kind, margin in zip(KINDS, (p, d), strict=True):
            order = np.argsort(margin / np.maximum(r2, floor))[: max(1, n_starts // 2)]
            vg = cond.normalized(kind, level, weight, floor)
            end = joint_lbfgsb(vg, X[order], lb, ub, tol=1e-9 * scale, max_iter=200).x
            found.append(_into_region(cond, end.reshape(-1, cond.n), lb, ub, radius, level))
    C = np.concatenate(found)
    evaluated = drawn + len(C) - sampled  # the sample and the searches' end points
    # the independent re-check: the surrogates' own numpy calls decide what is reported
    cv, cp, cd = cond.plain(C) if len(C) else (np.empty(0),) * 3
    r2c = ((C - cond.eq) ** 2).sum(-1)
    ok = in_region(cv, r2c, radius * (1 - 1e-12), level)
    C, cv, cp, cd, r2c = C[ok], cv[ok], cp[ok], cd[ok], r2c[ok]
    worst, worst_x = {}, {}
    for kind, margin in zip(KINDS, (cp, cd), strict=True):
        i = int(np.argmin(margin)) if margin.size else None
        worst[kind] = float(margin[i]) if i is not None else math.inf
        worst_x[kind] = C[i].copy() if i is not None else np.full(cond.n, np.nan)
    bad = np.minimum(cp, cd) <= 0
    Cb, which = C[bad], (cp[bad] <= 0) + 2 * (cd[bad] <= 0) - 1
    margins = np.minimum(cp[bad], cd[bad])
    order = np.argsort(margins / np.maximum(r2c[bad], floor), kind="stable")
    Cb, which, margins = Cb[order], which[order], margins[order]
    keep_rows = distinct(Cb, 1e-9 * float(np.max(ub - lb)))
    Cb, which, margins = Cb[keep_rows], which[keep_rows], margins[keep_rows]
    return Falsification(
        certified=not len(Cb),
        counterexamples=Cb[:keep],
        violated=np.array((*KINDS, "both"))[which][:keep],
        margins=margins[:keep],
        worst=worst,
        worst_x=worst_x,
        n_violations=len(Cb),
        n_evaluated=evaluated,
        seconds=time.perf_counter() - start,
    )


def in_region(v, r2, radius, level) -> np.ndarray:
    ok = r2 >= radius**2
    return ok & (v <= level) if level is not None else ok


def _into_region(cond, X, lb, ub, radius, level) -> np.ndarray:
    """Search end points moved into the region: out of the ball to its sphere, and back along
    the ray from ``x*`` onto the sublevel set (bisection, batched)."""
    D = X - cond.eq
    r = np.linalg.norm(D, axis=1)
    small = (r < radius) & (r > 0)
    X[small] = cond.eq + D[small] * (radius / r[small])[:, None]
    X = np.clip(X, lb, ub)
    if level is None:
        return X
    v = cond.values(X)
    out = v > level
    if out.any():
        lo, hi = np.zeros(int(out.sum())), np.ones(int(out.sum()))
        D = X[out] - cond.eq
        for _ in range(50):
            mid = (lo + hi) / 2
            below = cond.values(cond.eq + D * mid[:, None]) <= level
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        X[out] = cond.eq + D * lo[:, None]
    return X


def distinct(X, tol) -> np.ndarray:
    """Indices of the rows of X (in priority order) that are the first of their cell of side
    ``tol``: duplicates of one point (searches ending together) are kept once."""
    if not len(X):
        return np.zeros(0, dtype=np.int64)
    _, first = np.unique(np.floor(X / tol).astype(np.int64), axis=0, return_index=True)
    return np.sort(first)
