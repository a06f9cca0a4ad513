"""The two Lyapunov margins of (V, f, x*) as batched torch functions with exact gradients, and
the argument checks and sampling the analyses share."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..multistart import read_box
from ..surrogate import Surrogate, require_surrogate

__all__ = ["KINDS", "Conditions", "as_field", "count", "draw", "settings", "sobol"]

KINDS = ("positivity", "decrease")

CHUNK = 65536  # points per torch pass


class Conditions:
    """The two margins of a (V, f, x*) triple, batched in torch, with their gradients."""

    def __init__(self, V, f, equilibrium, decay, where):
        require_surrogate(V, where)
        if V.n_out != 1:
            raise ValueError(f"{where}: V must be scalar (n_out == 1); it has n_out = {V.n_out}.")
        self.n = n = V.n_in
        self.V, self.field = V, as_field(f, n, V.dtype, V.device, where)
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
        v = self.V._own_function()(X).reshape(-1)
        (gv,) = torch.autograd.grad(v.sum(), X, create_graph=create_graph)
        fx = self.field._own_function()(X.to(device=self.field.device, dtype=self.field.dtype))
        fx = fx.to(device=self.device, dtype=self.dtype).reshape(X.shape)
        r2 = ((X - self._eq_t) ** 2).sum(-1)
        decrease = -((gv * fx).sum(-1) + self.decay * r2)
        return v, v - self.v_eq, decrease, r2

    def evaluate(self, X: np.ndarray) -> tuple[np.ndarray, ...]:
        """(V, positivity, decrease, r2) at numpy points, in chunks, through torch."""
        parts = []
        for i in range(0, len(X), CHUNK):
            Xt = torch.as_tensor(X[i : i + CHUNK], dtype=self.dtype, device=self.device)
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
        index = 1 + KINDS.index(kind)

        def value_and_grad(X):
            Xt = torch.as_tensor(X, dtype=self.dtype, device=self.device).requires_grad_(True)
            out = self._torch(Xt, create_graph=True)
            obj = out[index] / out[3].clamp_min(floor)
            if level is not None:
                obj = obj + weight * torch.relu(out[0] - level) ** 2
            (g,) = torch.autograd.grad(obj.sum(), Xt)
            return obj.detach().cpu().numpy(), g.cpu().numpy()

        return value_and_grad

    def values(self, X: np.ndarray) -> np.ndarray:
        """V alone at numpy points (no margins, no graph)."""
        with torch.no_grad():
            Xt = torch.as_tensor(X, dtype=self.dtype, device=self.device)
            return self.V._own_function()(Xt).reshape(-1).cpu().numpy().astype(np.float64)

    def with_gradients(self, X: np.ndarray) -> tuple[np.ndarray, ...]:
        """(V, decrease margin, grad V, grad of the margin) at numpy points, in one pass."""
        Xt = torch.as_tensor(X, dtype=self.dtype, device=self.device).requires_grad_(True)
        v, _, d, _ = self._torch(Xt, create_graph=True)
        gv, gd = (torch.autograd.grad(t.sum(), Xt, retain_graph=True)[0] for t in (v, d))
        return tuple(t.detach().cpu().numpy() for t in (v, d, gv, gd))

    def value_and_grad_V(self, X):
        Xt = torch.as_tensor(X, dtype=self.dtype, device=self.device).requires_grad_(True)
        v = self.V._own_function()(Xt).reshape(-1)
        (g,) = torch.autograd.grad(v.sum(), Xt)
        return v.detach().cpu().numpy(), g.cpu().numpy()


def as_field(f, n: int, dtype, device, where: str) -> Surrogate:
    """The dynamics as a Surrogate n -> n: a Surrogate, an ``sb.ode_rhs`` module, or a torch
    callable of (N, n) states."""
    from ..adapters.torchdiffeq import SurrogateRHS

    if isinstance(f, SurrogateRHS):
        if f.time_input:
            raise ValueError(
                f"{where}: f takes time as an input; Lyapunov analysis here is for autonomous "
                "dynamics f(x)."
            )
        if f.n is None:  # binds on its first state
            f(0.0, torch.zeros(n, dtype=f.dtype, device=f.device))
        f = Surrogate(f.evaluated(), n_in=n, dtype=f.dtype, device=f.device)
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


def settings(V, bounds, exclude_radius, where):
    n = V.n_in
    lb, ub = read_box(bounds, n, where)
    if not (np.isfinite(lb).all() and np.isfinite(ub).all()) or np.any(lb >= ub):
        raise ValueError(f"{where}: bounds must be a finite box with lb < ub, got {lb}, {ub}.")
    defined = getattr(V._domain, "defined", None)  # (a log or Box-Cox input step)
    if defined is not None:
        out = ~((lb > defined[0]) & (ub < defined[1]))
        if out.any():
            j = int(np.argmax(out))
            raise ValueError(
                f"{where}: bounds [{lb[j]:.6g}, {ub[j]:.6g}] of feature {j} leave where V's input "
                f"scaler is defined ({defined[0][j]:.6g} < x < {defined[1][j]:.6g}: a log or "
                "Box-Cox step there)."
            )
    if exclude_radius is None:
        exclude_radius = 0.01 * float(np.max(ub - lb))
    elif isinstance(exclude_radius, bool) or not (
        isinstance(exclude_radius, (int, float)) and exclude_radius >= 0
    ):
        raise ValueError(f"{where}: exclude_radius must be a number >= 0, got {exclude_radius!r}.")
    return lb, ub, float(exclude_radius)


def count(value, name, where, least=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{where}: {name} must be an int >= {least}, got {value!r}.")
    return value


def sobol(lb, ub, k, seed) -> np.ndarray:
    from scipy.stats import qmc  # (here: scipy.stats costs ~0.2 s of every import of the package)

    m = max(1, math.ceil(math.log2(max(k, 2))))
    return qmc.scale(qmc.Sobol(len(lb), scramble=True, seed=seed).random_base2(m), lb, ub)


def draw(V: Surrogate, lb, ub, level, k, seed) -> np.ndarray:
    """``k`` points drawn uniformly in ``{x in box : V(x) <= level}`` (rejection)."""
    rng, kept = np.random.default_rng(seed), []
    for _ in range(64):
        X = rng.uniform(lb, ub, (max(4 * k, 256), len(lb)))
        kept.append(X[np.atleast_1d(V(X)) <= level])
        if sum(map(len, kept)) >= k:
            return np.concatenate(kept)[:k]
    raise ValueError("the region is too small a part of the box to sample; draw points yourself.")
