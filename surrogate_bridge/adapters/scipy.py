"""scipy adapter: constraints with exact Jacobians and Lagrangian Hessians, ODE right-hand sides
with exact Jacobians for ``solve_ivp``, and a ``minimize`` facade that picks the derivatives.

The ``Surrogate`` itself is already a scipy objective: ``minimize(sur, x0, jac=sur.grad,
hess=sur.hess)``. This module only translates calling conventions; every derivative comes from
the surrogate (and its cache).
"""

from __future__ import annotations

import numpy as np
import scipy.optimize as so

from ..convert import as_points, check_feature_names, to_host
from ..diagnostics import warn_low_precision
from ..surrogate import Surrogate, require_surrogate, require_vector_field

__all__ = ["ScipyODE", "minimize", "scipy_constraint", "scipy_ode"]

# methods by the derivatives scipy can use: none, gradient, gradient + Hessian (or hessp)
_NO_DERIVATIVES = frozenset({"nelder-mead", "powell", "cobyla", "cobyqa"})
_FIRST_ORDER = frozenset({"bfgs", "l-bfgs-b", "cg", "slsqp", "tnc"})
_SECOND_ORDER = frozenset(
    {"newton-cg", "trust-ncg", "trust-krylov", "trust-exact", "trust-constr", "dogleg"}
)
_HESSP_OK = frozenset({"newton-cg", "trust-ncg", "trust-krylov", "trust-constr"})
# what scipy honours; for the others it warns and ignores them
_TAKE_BOUNDS = frozenset(
    {"nelder-mead", "powell", "l-bfgs-b", "tnc", "slsqp", "trust-constr", "cobyla", "cobyqa"}
)
_TAKE_CONSTRAINTS = frozenset({"slsqp", "trust-constr", "cobyla", "cobyqa"})
_HESSIAN_KINDS = ("dense", "hessp", "none")


def _bound(b, m: int, name: str) -> np.ndarray:
    try:
        arr = np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"scipy_constraint: {name} must be a number or an array of {m} numbers, got {b!r}."
        ) from err
    if np.isnan(arr).any():
        raise ValueError(
            f"scipy_constraint: {name} has NaN entries ({arr}); use -np.inf / np.inf for a "
            "side without a bound."
        )
    if arr.ndim == 0:
        return np.full(m, float(arr))
    if arr.shape != (m,):
        raise ValueError(
            f"scipy_constraint: {name} has shape {arr.shape}, the surrogate has {m} outputs; "
            f"pass a scalar or an array of shape ({m},)."
        )
    return arr


def scipy_constraint(
    sur: Surrogate, lb=-np.inf, ub=np.inf, *, hess: bool = True, keep_feasible: bool = False
):
    """``lb <= sur(x) <= ub`` as a ``scipy.optimize.NonlinearConstraint`` with exact derivatives.

    ``jac`` is the surrogate's Jacobian (n_out, n_in) and ``hess(x, v)`` is
    ``sum_i v_i * Hessian of output i``, computed in one pass (not n_out Hessians). Works with
    ``trust-constr`` (jac + hess) and ``SLSQP`` (jac).

    Parameters
    ----------
    sur : Surrogate
        Scalar or vector valued.
    lb, ub : float or array_like of shape (n_out,)
        Use ``-np.inf``/``np.inf`` for one-sided constraints.
    hess : bool
        Attach the exact Lagrangian Hessian (for trust-constr). Pass False for methods that use
        first derivatives only (SLSQP, COBYLA), which scipy otherwise warns about.
    keep_feasible : bool
        Passed to scipy.

    Examples
    --------
    >>> import numpy as np, torch, surrogate_bridge as sb
    >>> sur = sb.Surrogate(torch.nn.Linear(2, 1))
    >>> con = sb.scipy_constraint(sur, lb=1.0)
    >>> con.jac(np.zeros(2)).shape, con.hess(np.zeros(2), np.ones(1)).shape
    ((1, 2), (2, 2))
    """
    require_surrogate(sur, "scipy_constraint")
    warn_low_precision(sur, "scipy_constraint")
    m = sur.n_out
    lo, hi = _bound(lb, m, "lb"), _bound(ub, m, "ub")
    if np.any(lo > hi):
        raise ValueError(f"scipy_constraint: lb must be <= ub, got lb={lo}, ub={hi}.")

    def fun(x):
        return np.atleast_1d(sur(x))

    if not hess:
        return so.NonlinearConstraint(fun, lo, hi, jac=sur.jac, keep_feasible=keep_feasible)
    return so.NonlinearConstraint(
        fun, lo, hi, jac=sur.jac, hess=sur.lagrangian_hess, keep_feasible=keep_feasible
    )


class ScipyODE:
    """``fun(t, y)`` and ``jac(t, y)`` of a surrogate vector field, for ``solve_ivp``.

    ``fun`` accepts y of shape (n,) and, for ``vectorized=True``, (n, k); ``jac`` returns the
    exact (n, n) Jacobian df/dy (Radau, BDF and LSODA use it).
    """

    def __init__(self, sur: Surrogate, time_input: bool) -> None:
        self.sur, self.time_input = sur, time_input
        self.n = sur.n_out

    def _x(self, t, y, where: str) -> np.ndarray:
        """The surrogate's input for state(s) ``y`` (n,) or (n, k) at time ``t``, checked here
        so that an error speaks of t and y, not of the surrogate's x."""
        y, n = np.asarray(y), self.n
        if y.dtype.kind not in "fiu" or y.ndim not in (1, 2) or y.shape[0] != n:
            raise ValueError(
                f"{where}: y has shape {y.shape} and dtype {y.dtype}, expected real numbers of "
                f"shape ({n},), or ({n}, k) for vectorized=True (the {n} states)."
            )
        y = y.astype(np.float64)
        if not np.isfinite(y).all():
            at = tuple(int(i) for i in np.argwhere(~np.isfinite(y))[0])
            raise ValueError(f"{where}: y has a non-finite entry at {at} (t = {t!r}).")
        if not self.time_input:
            return y if y.ndim == 1 else y.T
        tt = np.asarray(t)
        if tt.ndim != 0 or tt.dtype.kind not in "fiu" or not np.isfinite(tt):
            raise ValueError(f"{where}: t must be a finite real number (input 0), got {t!r}.")
        if y.ndim == 1:
            return np.concatenate(([t], y))
        return np.concatenate((np.full((1, y.shape[1]), t), y)).T

    def fun(self, t: float, y) -> np.ndarray:
        x = self._x(t, y, "ScipyODE.fun")
        if x.ndim == 2:  # vectorized=True: columns are states
            return np.asarray(self.sur(x)).reshape(x.shape[0], self.n).T
        return np.atleast_1d(self.sur(x))

    def jac(self, t: float, y) -> np.ndarray:
        x = self._x(t, y, "ScipyODE.jac")
        if x.ndim != 1:
            raise ValueError(f"ScipyODE.jac: y must be one state ({self.n},), got {np.shape(y)}.")
        J = self.sur.jac(x)
        return J[:, 1:] if self.time_input else J

    def __call__(self, t: float, y) -> np.ndarray:
        return self.fun(t, y)


def scipy_ode(sur: Surrogate, *, time_input: bool = False) -> ScipyODE:
    """A surrogate vector field ``dy/dt = f(y)`` (or ``f(t, y)``) for ``scipy.integrate.solve_ivp``.

    Parameters
    ----------
    sur : Surrogate
        n_out == n_in states, or n_in == n_out + 1 with ``time_input=True`` (t is the first input).
    time_input : bool
        The surrogate's first input is time.

    Returns
    -------
    ScipyODE
        With ``.fun(t, y)`` and ``.jac(t, y)``.

    Examples
    --------
    >>> import numpy as np, torch, surrogate_bridge as sb
    >>> from scipy.integrate import solve_ivp
    >>> lin = torch.nn.Linear(1, 1, bias=False)
    >>> _ = torch.nn.init.constant_(lin.weight, -1.0)
    >>> ode = sb.scipy_ode(sb.Surrogate(lin))
    >>> sol = solve_ivp(ode.fun, (0, 1), [1.0], method="Radau", jac=ode.jac, rtol=1e-10, atol=1e-12)
    >>> bool(abs(sol.y[0, -1] - np.exp(-1)) < 1e-8)
    True
    """
    require_vector_field(sur, "scipy_ode", time_input)
    warn_low_precision(sur, "scipy_ode")
    return ScipyODE(sur, time_input)


def minimize(
    sur: Surrogate, x0, method: str | None = None, *, hessian: str = "dense", **kwargs
) -> so.OptimizeResult:
    """``scipy.optimize.minimize`` of a scalar surrogate, with its exact derivatives wired in.

    The gradient goes to every method that uses one and the Hessian (``hessian="dense"``) or
    Hessian-vector products (``"hessp"``) to the methods that use them; ``"none"`` leaves scipy
    to approximate second derivatives. Other keywords (``bounds``, ``constraints``, ``tol``,
    ``options``, ``callback``) go to scipy unchanged.

    ``method=None`` picks ``"trust-exact"`` (exact Hessians), ``"L-BFGS-B"`` when ``bounds``
    are given, and ``"trust-constr"`` (exact Hessians) when ``constraints`` are. A method that
    scipy would run ignoring the bounds or constraints given (it only warns) is refused.

    Examples
    --------
    >>> import numpy as np, torch, surrogate_bridge as sb
    >>> class Bowl(torch.nn.Module):
    ...     def forward(self, z):
    ...         return ((z - 1.0) ** 2).sum(-1)
    >>> res = sb.minimize(sb.Surrogate(Bowl(), n_in=2), [0.0, 0.0])
    >>> bool(np.allclose(res.x, 1.0))
    True
    """
    require_surrogate(sur, "minimize", x=x0)
    if sur.n_out != 1:
        raise ValueError(
            f"minimize: the objective must be scalar, but this surrogate has n_out = "
            f"{sur.n_out}. For residuals use scipy.optimize.least_squares(sur, x0, jac=sur.jac); "
            "for constraints, sb.scipy_constraint(sur, lb, ub)."
        )
    if hessian not in _HESSIAN_KINDS:
        raise ValueError(
            f"minimize: hessian={hessian!r} is not valid; use one of {_HESSIAN_KINDS}."
        )
    constrained = kwargs.get("constraints") not in (None, (), [])
    bounded = kwargs.get("bounds") is not None
    if method is None:
        method = "trust-constr" if constrained else "L-BFGS-B" if bounded else "trust-exact"
    key = method.lower() if isinstance(method, str) else None
    if key not in _NO_DERIVATIVES | _FIRST_ORDER | _SECOND_ORDER:
        raise ValueError(
            f"minimize: method={method!r} is not a scipy.optimize.minimize method; use one of "
            f"{sorted(_NO_DERIVATIVES | _FIRST_ORDER | _SECOND_ORDER)}."
        )
    for given, able, what in (
        (bounded, _TAKE_BOUNDS, "bounds"),
        (constrained, _TAKE_CONSTRAINTS, "constraints"),
    ):
        if given and key not in able:
            raise ValueError(
                f"minimize: method={method!r} cannot handle {what} (scipy would ignore them); "
                f"use one of {sorted(able)}, or method=None to pick one."
            )
    check_feature_names(x0, sur.feature_names, "minimize", "x0")  # a Series or DataFrame
    pts = as_points(x0, sur.n_in, "minimize", "x0")
    if not pts.single:
        raise ValueError(
            f"minimize: x0 must be one point of shape ({sur.n_in},), got {tuple(pts.data.shape)}."
        )
    x0 = np.asarray(to_host(pts.data[0]) if pts.is_torch else pts.data[0], dtype=np.float64)
    warn_low_precision(sur, "minimize")
    if key not in _NO_DERIVATIVES:
        kwargs.setdefault("jac", sur.grad)
    if key in _SECOND_ORDER and hessian != "none":
        if hessian == "hessp" and key in _HESSP_OK:
            kwargs.setdefault("hessp", sur.hessp)
        else:
            kwargs.setdefault("hess", sur.hess)
    return so.minimize(sur, x0, method=method, **kwargs)
