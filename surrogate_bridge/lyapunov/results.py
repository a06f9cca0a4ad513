"""What the Lyapunov analyses return: falsifications, regions, simulations."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..surrogate import Surrogate
from .conditions import draw

__all__ = ["Falsification", "Region", "Simulation"]


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
        return draw(self._V, *self._box, self.level, k, seed)

    def __repr__(self) -> str:
        sim = f", {self.simulation!r}" if self.simulation is not None else ""
        return (
            f"Region(level={self.level:.6g}, limit={self.limit!r}, x_limit="
            f"{np.round(self.x_limit, 6).tolist()}, certified={self.certified}{sim})"
        )
