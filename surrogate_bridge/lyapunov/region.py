"""Regions of attraction: the largest sublevel set of V in the box with no counterexample, and
the simulation check."""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy.optimize import minimize

from ..convert import with_grad
from ..joint import joint_lbfgsb
from ..surrogate import Surrogate
from .conditions import Conditions, as_field, count, draw, settings, sobol
from .falsify import distinct, search
from .results import Region, Simulation

__all__ = ["integrate", "region_of_attraction", "simulate"]

_REFINE = 8  # local SLSQP solves from the lowest distinct counterexamples


@with_grad
def region_of_attraction(
    V: Surrogate,
    f,
    bounds,
    *,
    equilibrium=None,
    exclude_radius: float | None = None,
    decay: float = 0.0,
    n_starts: int = 64,
    n_samples: int = 8192,
    seed: int | None = None,
    simulate: int = 0,
    t_final: float = 30.0,
) -> Region:
    """The largest sublevel set ``{V <= c}`` inside ``bounds`` where :func:`falsify` finds no
    counterexample: an estimate of the region of attraction of ``x*`` for ``dx/dt = f(x)``.

    ``c`` is the least of: V's minimum over the box's faces (so the set stays in the box), and
    V's minimum over the counterexamples (the sampled ones, refined by local SLSQP solves of
    ``min V s.t. V-dot + decay |x - x*|^2 >= 0`` with exact gradients). :func:`falsify` then
    searches ``{V <= c}``; any counterexample it finds lowers ``c`` and the search repeats.
    Falsification, not proof: the level is an upper estimate of what a proof could certify.

    Parameters
    ----------
    V, f, bounds, equilibrium, exclude_radius, decay, n_starts, n_samples, seed
        As in :func:`falsify`.
    simulate : int
        If > 0, that many points drawn in the region are integrated with torchdiffeq up to
        ``t_final``; ``region.simulation`` counts those that reach the excluded ball.
    t_final : float
        Simulated time.

    Returns
    -------
    Region

    Examples
    --------
    >>> import torch, surrogate_bridge as sb
    >>> class Bowl(torch.nn.Module):
    ...     def forward(self, x):
    ...         return (x ** 2).sum(-1)
    >>> V = sb.Surrogate(Bowl(), n_in=2)
    >>> roa = sb.lyapunov.region_of_attraction(  # x' = -x + x^3: stable for |x| < 1
    ...     V, lambda x: -x + x ** 3, [(-2, 2), (-2, 2)], seed=0)
    >>> round(roa.level, 6), roa.limit
    (1.0, 'decrease')
    """
    where = "lyapunov.region_of_attraction"
    start = time.perf_counter()
    cond = Conditions(V, f, equilibrium, decay, where)
    lb, ub, radius = settings(V, bounds, exclude_radius, where)
    count(n_starts, "n_starts", where), count(n_samples, "n_samples", where)
    count(simulate, "simulate", where, 0)
    level, x_limit = _boundary_minimum(cond, lb, ub, n_starts, n_samples, seed)
    limit = "box"
    X = sobol(lb, ub, n_samples, seed)
    _, p, d, r2 = cond.evaluate(X)
    far = r2 >= radius**2
    for _ in range(8):  # lower the level to the least V over counterexamples, then re-check
        bad = far & ((p <= 0) | (d <= 0))
        if bad.any():
            c, x_c, kind = _least_violation(cond, X[bad], p[bad], lb, ub, radius)
            if c < level:
                level, x_limit, limit = c, x_c, kind
        check = search(cond, lb, ub, radius, n_starts, n_samples, seed, _below(level), 256)
        if check.certified:
            break
        X = check.counterexamples
        _, p, d = cond.plain(X)
        far = np.ones(len(X), dtype=bool)
    sim = None
    if simulate:
        X0 = draw(cond.V, lb, ub, level, simulate, seed)
        sim = integrate(cond.field, cond.eq, X0, t_final, max(radius, 1e-12))
    return Region(
        level=float(level),
        limit=limit,
        x_limit=np.asarray(x_limit, dtype=np.float64),
        certified=check.certified,
        falsification=check,
        simulation=sim,
        equilibrium=cond.eq.copy(),
        seconds=time.perf_counter() - start,
        _V=cond.V,
        _box=(lb, ub),
    )


def _below(level: float) -> float:
    """The level the confirming search uses: just inside, so the limiting point (a
    counterexample with margin 0 on the boundary) is left out."""
    return level - 1e-7 * max(abs(level), 1e-12)


def _boundary_minimum(cond, lb, ub, n_starts, n_samples, seed):
    """V's least value on the box's faces: a sample of each face seeds a joint L-BFGS-B in
    which each start's fixed coordinate has equal bounds."""
    n, rng = cond.n, np.random.default_rng(seed)
    per_face = max(8, n_samples // (2 * n))
    starts, lows, highs = [], [], []
    for i in range(n):
        for side in (lb[i], ub[i]):
            F = rng.uniform(lb, ub, (per_face, n))
            F[:, i] = side
            best = np.argsort(cond.values(F))[: max(1, n_starts // (2 * n))]
            lo, hi = lb.copy(), ub.copy()
            lo[i] = hi[i] = side
            starts.append(F[best])
            lows.append(np.tile(lo, (len(best), 1)))
            highs.append(np.tile(hi, (len(best), 1)))
    S = np.concatenate(starts)
    end = joint_lbfgsb(
        cond.value_and_grad_V,
        S,
        np.concatenate(lows),
        np.concatenate(highs),
        tol=1e-10,
        max_iter=500,
    ).x.reshape(S.shape)
    v = cond.values(end)
    i = int(np.argmin(v))
    return float(v[i]), end[i]


def _least_violation(cond, B, p, lb, ub, radius):
    """The least V over counterexamples: V at positivity violators, and local solves of
    ``min V s.t. decrease margin <= 0, |x - x*| >= radius`` from the lowest-V violators."""
    v_b = cond.plain(B)[0]
    i = int(np.argmin(v_b))
    best = (float(v_b[i]), B[i].copy(), "positivity" if p[i] <= 0 else "decrease")
    by_v = B[np.argsort(v_b)]
    spread = by_v[distinct(by_v, 0.05 * float(np.max(ub - lb)))][:_REFINE]
    for x0 in spread:
        x = _refine(cond, x0, lb, ub, radius)
        if x is None:
            continue
        v, pp, dd, scale = (a[0] for a in cond.plain(x, scale=True))
        # a solve ends on the surface V-dot = -decay r^2, on either side within rounding
        if v < best[0] and min(pp, dd - 1e-9 * scale) <= 0:
            best = (float(v), x, "positivity" if pp <= 0 else "decrease")
    return best


def _refine(cond, x0, lb, ub, radius):
    """``min V s.t. decrease margin <= 0, |x - x*| >= radius`` by SLSQP from ``x0``; V, the
    margin and their gradients come from one pass per point (SLSQP asks for them apart)."""
    last: dict = {}

    def at(x):
        key = x.tobytes()
        if key not in last:
            last.clear()
            last[key] = [a[0] for a in cond.with_gradients(x[None])]
        return last[key]  # V, margin, grad V, grad margin

    cons = [
        {"type": "ineq", "fun": lambda x: -at(x)[1], "jac": lambda x: -at(x)[3]},
        {
            "type": "ineq",
            "fun": lambda x: float(((x - cond.eq) ** 2).sum() - radius**2),
            "jac": lambda x: 2 * (x - cond.eq),
        },
    ]
    res = minimize(
        lambda x: float(at(x)[0]),
        x0,
        jac=lambda x: at(x)[2],
        method="SLSQP",
        bounds=list(zip(lb, ub, strict=True)),
        constraints=cons,
        options={"ftol": 1e-12, "maxiter": 200},
    )
    x = np.clip(res.x, lb, ub)
    return x if np.isfinite(x).all() else None


def simulate(
    f,
    x0,
    *,
    equilibrium=None,
    t_final: float = 30.0,
    radius: float = 1e-2,
    dtype: torch.dtype = torch.float64,
) -> Simulation:
    """Integrate ``dx/dt = f(x)`` from every row of ``x0`` (k, n) at once with torchdiffeq
    (dopri5, batched) and count the trajectories that end within ``radius`` of the equilibrium
    (the origin by default). ``f`` as in :func:`falsify`.

    Examples
    --------
    >>> import surrogate_bridge as sb
    >>> sb.lyapunov.simulate(lambda x: -x, [[1.0, 2.0], [-3.0, 0.5]], t_final=10.0).n_converged
    2
    """
    X0 = np.atleast_2d(np.asarray(x0, dtype=np.float64))
    n = X0.shape[1]
    field_ = as_field(f, n, dtype, torch.device("cpu"), "lyapunov.simulate")
    eq = np.zeros(n) if equilibrium is None else np.asarray(equilibrium, dtype=np.float64)
    return integrate(field_, eq, X0, t_final, radius)


def integrate(field_: Surrogate, eq, X0, t_final, radius) -> Simulation:
    import torchdiffeq

    fn = field_._own_function()
    y0 = torch.as_tensor(X0, dtype=field_.dtype, device=field_.device)
    t = torch.tensor([0.0, float(t_final)], dtype=y0.dtype, device=y0.device)
    with torch.no_grad():
        y = torchdiffeq.odeint(lambda _, y: fn(y), y0, t, rtol=1e-7, atol=1e-9)[-1]
    final = y.cpu().numpy().astype(np.float64)
    converged = np.linalg.norm(final - eq, axis=1) <= radius
    return Simulation(X0, final, converged, float(t_final), float(radius))
