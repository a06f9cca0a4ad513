"""The training domain: where the surrogate's values and derivatives are interpolations.

Read from ``domain=(lb, ub)`` or from the data range that a ``MinMaxScaler`` or
``Affine.fit(X, kind="minmax")`` recorded. Outside it the policy decides: warn once per surrogate
(:class:`~.diagnostics.ExtrapolationWarning`), stay quiet, or raise
:class:`~.diagnostics.ExtrapolationError`.
"""

from __future__ import annotations

import warnings
from operator import le, lt

import numpy as np
import torch

from .convert import Points, reading, to_host, values
from .diagnostics import ExtrapolationError, ExtrapolationWarning, caller_level
from .normalization import Affine
from .scaling import Scaling

__all__ = ["EXTRAPOLATION_POLICIES", "Domain"]

EXTRAPOLATION_POLICIES = ("warn", "ignore", "raise")
_REL_TOL = 1e-9  # of the box width (at least 1): points on the boundary up to rounding are inside
_LOOP_MAX = 32  # up to this many features, one point is checked on Python floats (see _clear)


class Domain:
    """Bounds ``lb <= x <= ub`` (or none known) and the policy for points outside them."""

    def __init__(
        self, bounds, in_aff: Affine | Scaling | None, n_in: int | None, policy: str
    ) -> None:
        self.policy = policy
        self._warned = False
        self.lb = self.ub = None
        # where the input scaler is defined at all (a log needs x > 0): outside it, an error
        self.defined = in_aff.defined() if isinstance(in_aff, Scaling) else None
        if bounds is None and in_aff is not None and in_aff.data_min is not None:
            bounds = (in_aff.data_min, in_aff.data_max)
        if bounds is not None:
            self.lb, self.ub = _read(bounds)
            self.require_features(n_in)

    @property
    def policy(self) -> str:
        return self._policy

    @policy.setter
    def policy(self, policy: str) -> None:
        if policy not in EXTRAPOLATION_POLICIES:
            raise ValueError(
                f"Surrogate: extrapolation={policy!r} is not valid; use one of "
                f"{EXTRAPOLATION_POLICIES}."
            )
        self._policy = policy

    @property
    def known(self) -> bool:
        return self.lb is not None

    def require_features(self, n_in: int | None) -> None:
        if self.known and n_in is not None and self.lb.size != n_in:
            raise ValueError(
                f"Surrogate: domain has {self.lb.size} features, the surrogate takes {n_in}."
            )

    def outside(self, data: np.ndarray, single: bool = False) -> str | None:
        """A message naming the first point and feature outside the box (as the caller wrote
        them: ``x[j]`` of a single point), or None."""
        tol = _REL_TOL * np.maximum(self.ub - self.lb, 1.0)
        out = (data < self.lb - tol) | (data > self.ub + tol)
        if not out.any():
            return None
        i, j = np.argwhere(out)[0]
        n_out = int(out.any(axis=1).sum())
        count = "" if single else f" ({n_out} of {data.shape[0]} points outside)"
        return (
            f"{_entry(i, j, single)} = {data[i, j]:.6g} lies outside the training domain "
            f"[{self.lb[j]:.6g}, {self.ub[j]:.6g}] of feature {j}{count}; derivatives there are "
            "extrapolations."
        )

    def check(self, pts: Points, where: str) -> None:
        """Refuse points where the input scaler is undefined; apply the policy to the others
        (a no-op without bounds or when ignoring)."""
        if getattr(self, "defined", None) is not None:  # (absent from older pickles)
            self._require_defined(pts.data, where, pts.single)
        if not self.known or self._policy == "ignore":
            return
        data = pts.data
        if isinstance(data, torch.Tensor):
            data = _host_rows_if_any(data, self.box(), _beyond)
            if data is None:
                return
        msg = self.outside(data, pts.single)
        if msg is None:
            return
        if self._policy == "raise":
            raise ExtrapolationError(f"{where}: {msg}")
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{where}: {msg} (warned once per surrogate; extrapolation='raise' or 'ignore' "
                "changes this)",
                ExtrapolationWarning,
                stacklevel=caller_level(),
            )

    def check_point(self, x: np.ndarray, where: str) -> None:
        """:meth:`check` for one finite float64 point ``x`` (n_in,), the solvers' path."""
        if not self._clear(x):
            self.check(Points(x[None], True, False), where)

    def _clear(self, row: np.ndarray) -> bool:
        """Whether one finite point of up to ``_LOOP_MAX`` features is where the scaler is
        defined and, unless the policy ignores it, inside the box: the same comparisons as
        :meth:`_require_defined` and :meth:`outside` (against the same float64 edges), made on
        Python floats, which for a few features costs a tenth of numpy's calls on small arrays
        (a solver pays this at every iteration). False sends the point to the full check."""
        if row.shape[0] > _LOOP_MAX:
            return False
        defined = getattr(self, "defined", None)  # (absent from older pickles)
        edges = self.__dict__.get("_edges")
        if edges is None or edges[0] is not defined:  # built once; again if defined is replaced
            box = scaler = None
            if self.known:
                tol = _REL_TOL * np.maximum(self.ub - self.lb, 1.0)
                box = _floats(self.lb - tol, self.ub + tol)
            if defined is not None:
                scaler = _floats(*defined)
            sizes = {len(e[0]) for e in (scaler, box) if e is not None}
            n = sizes.pop() if len(sizes) == 1 else -1  # (edges of unequal lengths: none)
            self._edges = edges = (defined, scaler, box, n)
        _, scaler, box, n = edges
        if box is not None and self._policy == "ignore":
            box = None
        if scaler is None and box is None:
            return True
        v = row.tolist()
        if len(v) != n:
            return False  # (not the edges' feature count: the full check says so)
        if scaler is not None and not (all(map(lt, scaler[0], v)) and all(map(lt, v, scaler[1]))):
            return False
        return box is None or (all(map(le, box[0], v)) and all(map(le, v, box[1])))

    def _require_defined(self, data, where: str, single: bool = False) -> None:
        lo, hi = self.defined
        if isinstance(data, torch.Tensor):
            data = _host_rows_if_any(data, (lo, hi), lambda r, a, b: ~((r > a) & (r < b)))
            if data is None:
                return
        bad = ~((data > lo) & (data < hi))
        if not bad.any():
            return
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"{where}: {_entry(i, j, single)} = {data[i, j]:.6g} is outside where the input "
            f"scaler is defined ({lo[j]:.6g} < x < {hi[j]:.6g} for feature {j}: a log or "
            "Box-Cox step there); the surrogate has no value at it."
        )

    def box(self) -> tuple[np.ndarray, np.ndarray] | None:
        return (self.lb.copy(), self.ub.copy()) if self.known else None

    def bounds(self):
        """``scipy.optimize.Bounds`` of the box, or a clear error when none is known."""
        from scipy.optimize import Bounds

        if not self.known:
            raise ValueError(
                "Surrogate.bounds: no training domain is known. Pass domain=(lb, ub) to "
                "Surrogate, or use a MinMaxScaler / Affine.fit(X, kind='minmax') input scaler, "
                "which records the data range."
            )
        return Bounds(self.lb.copy(), self.ub.copy())


def _beyond(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Entries outside the box by more than the tolerance of :meth:`Domain.outside`."""
    tol = _REL_TOL * torch.clamp(hi - lo, min=1.0)
    return (rows < lo - tol) | (rows > hi + tol)


def _host_rows_if_any(data: torch.Tensor, bounds, bad) -> np.ndarray | None:
    """None where ``bad(rows, lo, hi)`` holds for no entry, decided on the device; else the
    rows as float64 on the host, to name the point. Inside the caller's torch.func transform
    the rows are its wrapped values (under vmap: the vmapped batch's rows too)."""
    with reading():
        rows = values(data).reshape(-1, data.shape[-1])
        lo, hi = (torch.as_tensor(b, dtype=rows.dtype, device=rows.device) for b in bounds)
        if not bool(bad(rows, lo, hi).any()):
            return None
        return to_host(rows).astype(np.float64)


def _floats(lo, hi) -> tuple[list[float], list[float]]:
    """Lower and upper edges per feature as Python floats (the same float64 values)."""
    return np.asarray(lo).tolist(), np.asarray(hi).tolist()


def _entry(i: int, j: int, single: bool) -> str:
    """Entry (i, j) of the points as the caller passed them: one point (n_in,), or (N, n_in)."""
    return f"x[{j}]" if single else f"x[{i}, {j}]"


def _read(bounds) -> tuple[np.ndarray, np.ndarray]:
    try:
        lb, ub = (np.array(b, dtype=np.float64).reshape(-1) for b in bounds)  # ours (copies)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"Surrogate: domain must be a pair (lb, ub) of arrays, got {bounds!r}."
        ) from err
    if lb.shape != ub.shape or np.isnan(lb).any() or np.isnan(ub).any() or np.any(lb > ub):
        raise ValueError(
            f"Surrogate: domain needs lb <= ub of equal length without NaN, got lb={lb}, ub={ub}."
        )
    return lb, ub
