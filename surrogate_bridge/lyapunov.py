"""Lyapunov analysis with exact derivatives: falsification and regions of attraction.

For a scalar surrogate ``V`` and a vector field ``f`` (n -> n) with equilibrium ``x*``, the
Lyapunov conditions at a point x outside a small ball around ``x*`` are, as margins that are
positive where the condition holds:

    positivity   p(x) = V(x) - V(x*)                           > 0
    decrease     d(x) = -(grad V(x) . f(x) + decay |x - x*|^2) > 0

Both margins and their gradients (the gradient of V-dot is ``H_V f + J_f^T grad V``) are exact
through torch autograd, for a whole batch of points in one pass. :func:`falsify` hunts for points
where a margin is <= 0: a dense quasi-random sample of the region seeds a joint L-BFGS-B over many
starts (the multistart engine), which minimizes each margin divided by ``|x - x*|^2`` (so that
searches are not drawn into the equilibrium, where both margins vanish). Every counterexample it
returns is re-checked by a plain evaluation of the surrogates. :func:`region_of_attraction` finds
the largest sublevel set ``{V <= c}`` inside the box with no counterexample: ``c`` is the least of
V's minimum on the box's faces and V's minimum over the counterexamples (local SLSQP solves of
``min V s.t. d(x) <= 0`` refine the sampled ones), confirmed by :func:`falsify` on the set.

This is **falsification, not proof**: "certified" means that no counterexample was found.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.stats import qmc

from .joint import joint_lbfgsb
from .multistart import read_box
from .surrogate import Surrogate, require_surrogate

__all__ = ["Falsification", "Region", "Simulation", "falsify", "region_of_attraction", "simulate"]

_KINDS = ("positivity", "decrease")
_CHUNK = 65536  # points per torch pass
_REFINE = 8  # local SLSQP solves from the lowest distinct counterexamples


@dataclass
class Falsification:
    """What :func:`falsify` found.

    ``certified``: no counterexample was found (falsification, not proof). ``counterexamples``
    (k, n): distinct violating points, worst first (each re-checked by a plain evaluation);
    ``violated`` (k,): which condition each breaks ("positivity", "decrease" or "both");
    ``margins`` (k,): the lesser of the two margins (<= 0). ``worst`` / ``worst_x``: per
    condition, the least margin seen over every point evaluated in the region, and where.
    ``n_violations``: distinct violating points found in all (``counterexamples`` keeps at most
    ``max_counterexamples`` of them).
    """

    certified: bool
    counterexamples: np.ndarray
    violated: np.ndarray
    margins: np.ndarray
    worst: dict[str, float]
    worst_x: dict[str, np.ndarray]
    n_violations: int
    n_evaluated: int
    seconds: float

    def __repr__(self) -> str:
        worst = ", ".join(f"{k}={v:.3g}" for k, v in self.worst.items())
        return (
            f"Falsification(certified={self.certified}, counterexamples={len(self.margins)} of "
            f"{self.n_violations}, worst margins: {worst}, {self.n_evaluated} points, "
            f"{self.seconds:.3g} s)"
        )


@dataclass
class Simulation:
    """Trajectories from points inside a region: ``x0`` (k, n) starts, ``x_final`` (k, n) states
    at ``t_final``, ``converged`` (k,): ended within ``radius`` of the equilibrium."""

    x0: np.ndarray
    x_final: np.ndarray
    converged: np.ndarray
    t_final: float
    radius: float

    n_converged = property(lambda self: int(self.converged.sum()))
    fraction = property(lambda self: float(self.converged.mean()) if self.converged.size else 1.0)

    def __repr__(self) -> str:
        return (
            f"Simulation({self.n_converged} of {self.converged.size} converged to within "
            f"{self.radius:g} of the equilibrium by t = {self.t_final:g})"
        )


@dataclass
class Region:
    """An estimated region of attraction ``{x in box : V(x) <= level}``.

    ``limit``: what bounds the level ("box": the set would leave the box, at ``x_limit`` on a
    face; "decrease" or "positivity": a counterexample at ``x_limit`` with
    ``V(x_limit) == level``). ``falsification``: :func:`falsify` run on the set.
    ``simulation``: the optional trajectory check.
    """

    level: float
    limit: str
    x_limit: np.ndarray
    certified: bool
    falsification: Falsification
    simulation: Simulation | None
    equilibrium: np.ndarray
    seconds: float
    _V: Surrogate = field(repr=False)
    _box: tuple = field(repr=False)

    def contains(self, x) -> np.ndarray:
        """Whether points x (N, n) lie in the region (in the box, with V(x) <= level)."""
        X = np.atleast_2d(np.asarray(x, dtype=np.float64))
        inside = np.all((X >= self._box[0]) & (X <= self._box[1]), axis=1)
        return inside & (np.atleast_1d(self._V(X)) <= self.level)

    def sample(self, k: int, seed: int | None = None) -> np.ndarray:
        """``k`` points drawn uniformly in the region (rejection from the box)."""
        return _draw(self._V, *self._box, self.level, k, seed)

    def __repr__(self) -> str:
        sim = f", {self.simulation!r}" if self.simulation is not None else ""
        return (
            f"Region(level={self.level:.6g}, limit={self.limit!r}, x_limit="
            f"{np.round(self.x_limit, 6).tolist()}, certified={self.certified}{sim})"
        )


class _Conditions:
    """The two margins of a (V, f, x*) triple, batched in torch, with their gradients."""

    def __init__(self, V, f, equilibrium, decay, where):
        require_surrogate(V, where)
        if V.n_out != 1:
            raise ValueError(f"{where}: V must be scalar (n_out == 1); it has n_out = {V.n_out}.")
        self.n = n = V.n_in
        self.V, self.field = V, _as_field(f, n, V.dtype, V.device, where)
        self.dtype, self.device = V.dtype, V.device
        eq = np.zeros(n) if equilibrium is None else np.asarray(equilibrium, dtype=np.float64)
        if eq.shape != (n,) or not np.isfinite(eq).all():
            raise ValueError(
                f"{where}: equilibrium must be {n} finite numbers, got {equilibrium!r}."
            )
        if isinstance(decay, bool) or not (isinstance(decay, (int, float)) and decay >= 0):
            raise ValueError(f"{where}: decay must be a number >= 0, got {decay!r}.")
        self.eq, self.decay = eq, float(decay)
        self.v_eq = float(V(eq))
        self._eq_t = torch.as_tensor(eq, dtype=self.dtype, device=self.device)

    def _torch(self, X: torch.Tensor, create_graph: bool):
        """V, the two margins and |x - x*|^2 at (S, n) points that require grad."""
        v = self.V.function(X).reshape(-1)
        (gv,) = torch.autograd.grad(v.sum(), X, create_graph=create_graph)
        fx = self.field.function(X.to(device=self.field.device, dtype=self.field.dtype))
        fx = fx.to(device=self.device, dtype=self.dtype).reshape(X.shape)
        r2 = ((X - self._eq_t) ** 2).sum(-1)
        decrease = -((gv * fx).sum(-1) + self.decay * r2)
        return v, v - self.v_eq, decrease, r2

    def evaluate(self, X: np.ndarray) -> tuple[np.ndarray, ...]:
        """(V, positivity, decrease, r2) at numpy points, in chunks, through torch."""
        parts = []
        for i in range(0, len(X), _CHUNK):
            Xt = torch.as_tensor(X[i : i + _CHUNK], dtype=self.dtype, device=self.device)
            out = self._torch(Xt.requires_grad_(True), create_graph=False)
            parts.append([t.detach().cpu().numpy().astype(np.float64) for t in out])
        if not parts:
            return (np.empty(0),) * 4
        return tuple(np.concatenate(col) for col in zip(*parts, strict=True))

    def plain(self, X: np.ndarray, scale: bool = False) -> tuple[np.ndarray, ...]:
        """(V, positivity, decrease) by the surrogates' own numpy calls: the independent
        re-check of every counterexample; with ``scale``, also the decrease margin's rounding
        scale ``|grad V| |f| + decay |x - x*|^2``."""
        X = np.atleast_2d(X)
        v = np.atleast_1d(self.V(X))
        g, fx = self.V.grad(X), np.atleast_2d(self.field(X))
        r2 = ((X - self.eq) ** 2).sum(-1)
        out = v, v - self.v_eq, -(np.einsum("ij,ij->i", g, fx) + self.decay * r2)
        if not scale:
            return out
        norms = np.linalg.norm(g, axis=1) * np.linalg.norm(fx, axis=1)
        return (*out, norms + self.decay * r2)

    def normalized(self, kind: str, level: float | None, weight: float, floor: float):
        """numpy (S, n) -> (margin / |x - x*|^2 [+ penalty above ``level``], gradient)."""
        index = 1 + _KINDS.index(kind)

        def value_and_grad(X):
            Xt = torch.as_tensor(X, dtype=self.dtype, device=self.device).requires_grad_(True)
            out = self._torch(Xt, create_graph=True)
            obj = out[index] / out[3].clamp_min(floor)
            if level is not None:
                obj = obj + weight * torch.relu(out[0] - level) ** 2
            (g,) = torch.autograd.grad(obj.sum(), Xt)
            return obj.detach().cpu().numpy(), g.cpu().numpy()

        return value_and_grad

    def value_and_grad_V(self, X):
        Xt = torch.as_tensor(X, dtype=self.dtype, device=self.device).requires_grad_(True)
        v = self.V.function(Xt).reshape(-1)
        (g,) = torch.autograd.grad(v.sum(), Xt)
        return v.detach().cpu().numpy(), g.cpu().numpy()


def _as_field(f, n: int, dtype, device, where: str) -> Surrogate:
    """The dynamics as a Surrogate n -> n: a Surrogate, an ``sb.ode_rhs`` module, or a torch
    callable of (N, n) states."""
    from .adapters.torchdiffeq import SurrogateRHS

    if isinstance(f, SurrogateRHS):
        if f.time_input:
            raise ValueError(
                f"{where}: f takes time as an input; Lyapunov analysis here is for autonomous "
                "dynamics f(x)."
            )
        if f.function is None:  # binds on its first state
            f(0.0, torch.zeros(n, dtype=f.dtype, device=f.device))
        f = Surrogate(f.function, n_in=n, dtype=f.dtype, device=f.device)
    elif not isinstance(f, Surrogate):
        if not callable(f):
            raise TypeError(
                f"{where}: f must be a Surrogate, an sb.ode_rhs module or a torch callable of "
                f"(N, {n}) states, got {type(f).__name__}."
            )
        f = Surrogate(f, n_in=n, dtype=dtype, device=device, extrapolation="ignore")
    if f.n_in != n or f.n_out != n:
        raise ValueError(
            f"{where}: f must map the {n} states of V to their {n} time derivatives; it has "
            f"n_in = {f.n_in} and n_out = {f.n_out}."
        )
    return f


def _settings(V, bounds, exclude_radius, where):
    n = V.n_in
    lb, ub = read_box(bounds, n, where)
    if not (np.isfinite(lb).all() and np.isfinite(ub).all()) or np.any(lb >= ub):
        raise ValueError(f"{where}: bounds must be a finite box with lb < ub, got {lb}, {ub}.")
    if exclude_radius is None:
        exclude_radius = 0.01 * float(np.max(ub - lb))
    elif isinstance(exclude_radius, bool) or not (
        isinstance(exclude_radius, (int, float)) and exclude_radius >= 0
    ):
        raise ValueError(f"{where}: exclude_radius must be a number >= 0, got {exclude_radius!r}.")
    return lb, ub, float(exclude_radius)


def _count(value, name, where, least=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{where}: {name} must be an int >= {least}, got {value!r}.")
    return value


def _sobol(lb, ub, k, seed) -> np.ndarray:
    m = max(1, math.ceil(math.log2(max(k, 2))))
    return qmc.scale(qmc.Sobol(len(lb), scramble=True, seed=seed).random_base2(m), lb, ub)


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
    cond = _Conditions(V, f, equilibrium, decay, where)
    lb, ub, radius = _settings(V, bounds, exclude_radius, where)
    _count(n_starts, "n_starts", where, 0), _count(n_samples, "n_samples", where)
    _count(max_counterexamples, "max_counterexamples", where, 0)
    if level is not None and not (isinstance(level, (int, float)) and math.isfinite(level)):
        raise ValueError(f"{where}: level must be a finite number, got {level!r}.")
    return _falsify(cond, lb, ub, radius, n_starts, n_samples, seed, level, max_counterexamples)


def _falsify(cond, lb, ub, radius, n_starts, n_samples, seed, level, keep) -> Falsification:
    start = time.perf_counter()
    X = _sobol(lb, ub, n_samples, seed)
    v, p, d, r2 = cond.evaluate(X)
    inside = _in_region(v, r2, radius, level)
    X, v, p, d, r2 = X[inside], v[inside], p[inside], d[inside], r2[inside]
    floor = max(radius**2, 1e-300) * 1e-6
    found = [X]
    if len(X) and n_starts:
        scale = max(float(np.median(np.abs(d / np.maximum(r2, floor)))), 1e-12)
        weight = 1e3 * scale / max(abs(level - cond.v_eq) if level is not None else 1.0, 1e-12) ** 2
        for kind, margin in zip(_KINDS, (p, d), strict=True):
            order = np.argsort(margin / np.maximum(r2, floor))[: max(1, n_starts // 2)]
            vg = cond.normalized(kind, level, weight, floor)
            end = joint_lbfgsb(vg, X[order], lb, ub, tol=1e-9 * scale, max_iter=200).x
            found.append(_into_region(cond, end.reshape(-1, cond.n), lb, ub, radius, level))
    C = np.concatenate(found)
    # the independent re-check: the surrogates' own numpy calls decide what is reported
    cv, cp, cd = cond.plain(C) if len(C) else (np.empty(0),) * 3
    r2c = ((C - cond.eq) ** 2).sum(-1)
    ok = _in_region(cv, r2c, radius * (1 - 1e-12), level)
    C, cv, cp, cd, r2c = C[ok], cv[ok], cp[ok], cd[ok], r2c[ok]
    worst, worst_x = {}, {}
    for kind, margin in zip(_KINDS, (cp, cd), strict=True):
        i = int(np.argmin(margin)) if margin.size else None
        worst[kind] = float(margin[i]) if i is not None else math.inf
        worst_x[kind] = C[i].copy() if i is not None else np.full(cond.n, np.nan)
    bad = np.minimum(cp, cd) <= 0
    Cb, which = C[bad], (cp[bad] <= 0) + 2 * (cd[bad] <= 0) - 1
    margins = np.minimum(cp[bad], cd[bad])
    order = np.argsort(margins / np.maximum(r2c[bad], floor), kind="stable")
    Cb, which, margins = Cb[order], which[order], margins[order]
    distinct = _distinct(Cb, 1e-9 * float(np.max(ub - lb)))
    Cb, which, margins = Cb[distinct], which[distinct], margins[distinct]
    return Falsification(
        certified=not len(Cb),
        counterexamples=Cb[:keep],
        violated=np.array((*_KINDS, "both"))[which][:keep],
        margins=margins[:keep],
        worst=worst,
        worst_x=worst_x,
        n_violations=len(Cb),
        n_evaluated=n_samples + len(C) - int(inside.sum()),
        seconds=time.perf_counter() - start,
    )


def _in_region(v, r2, radius, level) -> np.ndarray:
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
    v = cond.evaluate(X)[0]
    out = v > level
    if out.any():
        lo, hi = np.zeros(int(out.sum())), np.ones(int(out.sum()))
        D = X[out] - cond.eq
        for _ in range(50):
            mid = (lo + hi) / 2
            below = cond.evaluate(cond.eq + D * mid[:, None])[0] <= level
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        X[out] = cond.eq + D * lo[:, None]
    return X


def _distinct(X, tol) -> np.ndarray:
    """Indices of the rows of X (in priority order) that are the first of their cell of side
    ``tol``: duplicates of one point (searches ending together) are kept once."""
    if not len(X):
        return np.zeros(0, dtype=np.int64)
    _, first = np.unique(np.floor(X / tol).astype(np.int64), axis=0, return_index=True)
    return np.sort(first)


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
    cond = _Conditions(V, f, equilibrium, decay, where)
    lb, ub, radius = _settings(V, bounds, exclude_radius, where)
    _count(n_starts, "n_starts", where), _count(n_samples, "n_samples", where)
    _count(simulate, "simulate", where, 0)
    level, x_limit = _boundary_minimum(cond, lb, ub, n_starts, n_samples, seed)
    limit = "box"
    X = _sobol(lb, ub, n_samples, seed)
    _, p, d, r2 = cond.evaluate(X)
    far = r2 >= radius**2
    for _ in range(8):  # lower the level to the least V over counterexamples, then re-check
        bad = far & ((p <= 0) | (d <= 0))
        if bad.any():
            c, x_c, kind = _least_violation(cond, X[bad], p[bad], lb, ub, radius)
            if c < level:
                level, x_limit, limit = c, x_c, kind
        check = _falsify(cond, lb, ub, radius, n_starts, n_samples, seed, _below(level), 256)
        if check.certified:
            break
        X = check.counterexamples
        _, p, d = cond.plain(X)
        far = np.ones(len(X), dtype=bool)
    sim = None
    if simulate:
        X0 = _draw(cond.V, lb, ub, level, simulate, seed)
        sim = _integrate(cond.field, cond.eq, X0, t_final, max(radius, 1e-12))
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
            best = np.argsort(cond.evaluate(F)[0])[: max(1, n_starts // (2 * n))]
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
    v = cond.evaluate(end)[0]
    i = int(np.argmin(v))
    return float(v[i]), end[i]


def _least_violation(cond, B, p, lb, ub, radius):
    """The least V over counterexamples: V at positivity violators, and local solves of
    ``min V s.t. decrease margin <= 0, |x - x*| >= radius`` from the lowest-V violators."""
    v_b = cond.plain(B)[0]
    i = int(np.argmin(v_b))
    best = (float(v_b[i]), B[i].copy(), "positivity" if p[i] <= 0 else "decrease")
    by_v = B[np.argsort(v_b)]
    spread = by_v[_distinct(by_v, 0.05 * float(np.max(ub - lb)))][:_REFINE]
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
    one = lambda x: [t[0] for t in cond.evaluate(np.asarray(x)[None])]  # noqa: E731

    def grad_of(index):
        def g(x):
            Xt = torch.as_tensor(x[None], dtype=cond.dtype, device=cond.device)
            out = cond._torch(Xt.requires_grad_(True), create_graph=True)
            (gx,) = torch.autograd.grad(out[index].sum(), Xt)
            return gx[0].cpu().numpy()

        return g

    cons = [
        {"type": "ineq", "fun": lambda x: -one(x)[2], "jac": lambda x: -grad_of(2)(x)},
        {
            "type": "ineq",
            "fun": lambda x: float(((x - cond.eq) ** 2).sum() - radius**2),
            "jac": lambda x: 2 * (x - cond.eq),
        },
    ]
    res = minimize(
        lambda x: one(x)[0],
        x0,
        jac=grad_of(0),
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
    field_ = _as_field(f, n, dtype, torch.device("cpu"), "lyapunov.simulate")
    eq = np.zeros(n) if equilibrium is None else np.asarray(equilibrium, dtype=np.float64)
    return _integrate(field_, eq, X0, t_final, radius)


def _integrate(field_: Surrogate, eq, X0, t_final, radius) -> Simulation:
    import torchdiffeq

    fn = field_.function
    y0 = torch.as_tensor(X0, dtype=field_.dtype, device=field_.device)
    t = torch.tensor([0.0, float(t_final)], dtype=y0.dtype, device=y0.device)
    with torch.no_grad():
        y = torchdiffeq.odeint(lambda _, y: fn(y), y0, t, rtol=1e-7, atol=1e-9)[-1]
    final = y.cpu().numpy().astype(np.float64)
    converged = np.linalg.norm(final - eq, axis=1) <= radius
    return Simulation(X0, final, converged, float(t_final), float(radius))


def _draw(V: Surrogate, lb, ub, level, k, seed) -> np.ndarray:
    """``k`` points drawn uniformly in ``{x in box : V(x) <= level}`` (rejection)."""
    rng, kept = np.random.default_rng(seed), []
    for _ in range(64):
        X = rng.uniform(lb, ub, (max(4 * k, 256), len(lb)))
        kept.append(X[np.atleast_1d(V(X)) <= level])
        if sum(map(len, kept)) >= k:
            return np.concatenate(kept)[:k]
    raise ValueError("the region is too small a part of the box to sample; draw points yourself.")
