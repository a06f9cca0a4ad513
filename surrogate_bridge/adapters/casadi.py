"""CasADi adapter: a ``casadi.Function`` of the surrogate with exact first and second derivatives.

Two modes behind one call, :func:`casadi_function`:

* ``"symbolic"``: the surrogate's exported torch graph translated into native CasADi MX
  expressions (``casadi_symbolic.py``): CasADi differentiates it itself, IPOPT runs without
  Python in its loop, and ``Function.generate`` gives C code.
* ``"callback"``: a ``casadi.Callback`` that evaluates the surrogate in torch (any model, CPU or
  GPU). Its derivatives are callbacks too, each exact: value -> Jacobian -> Hessian, chained
  through ``get_jacobian``, so ``ca.jacobian``, ``ca.hessian`` and IPOPT's exact Lagrangian Hessian
  see true second derivatives (a callback without them makes CasADi fall back to approximations,
  and IPOPT needs more iterations). ``F.map(N)`` returns the same family evaluated on N
  points in one batched torch call, with block-diagonal derivative sparsity.

``"auto"`` (the default) is symbolic when every operation translates, else callback with a
warning that names the operation.
"""

from __future__ import annotations

import functools
import math
import time
import warnings

import numpy as np

try:
    import casadi as ca
except ImportError as err:  # an optional extra
    raise ImportError(
        "surrogate_bridge's CasADi adapter needs casadi: pip install 'surrogate-bridge[casadi]'"
    ) from err

from ..convert import as_array
from ..diagnostics import caller_level, warn_low_precision, warn_nonsmooth
from ..surrogate import Surrogate, require_surrogate
from ..weights import update_weights

__all__ = ["CasadiFallbackWarning", "casadi_function"]

_MODES = ("auto", "symbolic", "callback")
_MEASURE_POINTS = 3  # fresh points timed per mode by mode="auto", after one warm-up
# l4casadi's keywords, with where each belongs here
_L4CASADI_HINTS = {
    "device": "the device belongs to the Surrogate: sb.Surrogate(model, ..., device='cuda')",
    "batched": "for N points use F.map(N): one batched torch call in callback mode",
    "model_expects_batch_dim": "the Surrogate finds how to call the model by probing it",
    "mutable": "see sb.casadi_function's docstring on updating weights",
}
# Callback-mode Functions, kept alive for the life of the process. CasADi holds only a raw
# pointer to a Python Callback: one that Python frees makes every Function built on it fail
# ("Callback object has been deleted", or a silent Invalid_Number_Detected inside IPOPT). Users
# write F(x) inline and return only the solver from a helper, so the adapter keeps each one here,
# one per (surrogate, name): memory is bounded by the surrogates in use, not by the calls.
_ALIVE: dict[tuple[int, str], _SurrogateCallback] = {}


class CasadiFallbackWarning(UserWarning):
    """``mode="auto"`` fell back to the callback mode: an operation did not translate."""


class _ShapeChecked:
    """Mixin: numeric or symbolic calls with a wrong input shape get an error naming it."""

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and not kwargs:
            x = args[0]
            # the common case (one float64 point), checked without a copy or a numpy reduction:
            # the full check below costs a good part of a small net's whole CasADi call
            if type(x) is np.ndarray and x.dtype == np.float64 and x.shape == (self._n_in,):
                if self._cols == 1 and all(map(math.isfinite, x.tolist())):
                    return super().__call__(x)
            self._check_shape(args[0])
            if not isinstance(args[0], (ca.MX, ca.SX)):  # numbers: finite, as in every mode
                x = args[0].full() if isinstance(args[0], ca.DM) else args[0]
                as_array(x, self.name(), "x", (0, 1, 2))
        return super().__call__(*args, **kwargs)

    def _check_shape(self, x) -> None:
        shape = x.shape if hasattr(x, "shape") else np.shape(x)
        shape = tuple(int(s) for s in shape)
        n, cols = self._n_in, self._cols
        ok = {(n, cols), (n * cols,)} | ({(n,), (1, n)} if cols == 1 else set())
        if n * cols == 1:
            ok.add(())  # a plain number for a one-input function
        # CasADi's own convention: k copies of the input's shape side by side, (n, k cols),
        # are evaluated as k calls (CasADi maps them), e.g. F(X[:, :-1]) over a horizon
        repeated = len(shape) == 2 and shape[0] == n and shape[1] % cols == 0 and shape[1] > 0
        if shape not in ok and not repeated:
            raise ValueError(
                f"{self.name()}: x has shape {shape}, expected ({n}, {cols}) (a column of "
                f"{n} inputs{'' if cols == 1 else f' for each of {cols} points'}), or "
                f"({n}, {'k' if cols == 1 else f'k * {cols}'}) for k evaluations side by side."
            )


class _SurrogateCallback(_ShapeChecked, ca.Callback):
    """Derivative ``order`` (0 value, 1 Jacobian, 2 Jacobian of the Jacobian) of the surrogate on
    ``cols`` points given as the columns of x (n, cols).

    Inputs: order 0: [x]; order 1: [x, y]; order 2: [x, y, jac] (CasADi passes nominal
    outputs). Outputs: order 0: y (m, cols); order 1: d vec(y)/d vec(x), block diagonal
    (m cols, n cols); order 2: d vec(jac)/d vec(x) and a zero d vec(jac)/d vec(y).
    """

    def __init__(
        self, sur: Surrogate, cols: int, order: int, name: str, opts: dict, inames=None, onames=None
    ) -> None:
        ca.Callback.__init__(self)
        self.sur, self._cols, self._order = sur, cols, order
        self._n_in, self._m = sur.n_in, sur.n_out
        self._inames, self._onames = inames, onames
        self._children: list = []  # derivative callbacks must outlive CasADi's use of them
        self._maps: dict[int, _SurrogateCallback] = {}
        self._sp = self._sparsities()
        self.construct(name, opts)

    # structure ------------------------------------------------------------------------------
    def _sparsities(self):
        n, m, N = self._n_in, self._m, self._cols
        x, y = ca.Sparsity.dense(n, N), ca.Sparsity.dense(m, N)
        jac = ca.diagcat(*[ca.Sparsity.dense(m, n)] * N)
        if self._order == 0:
            return [x], [y]
        if self._order == 1:
            return [x, y], [jac]
        # rows: column-major index of jac's element (k*m + i, k*n + j); columns: x index k*n + q
        k, i, j, q = np.meshgrid(
            np.arange(N), np.arange(m), np.arange(n), np.arange(n), indexing="ij"
        )
        rows = ((k * m + i) + (k * n + j) * (m * N)).ravel()
        cols = (k * n + q).ravel()
        order = np.lexsort((rows, cols))  # CasADi stores nonzeros column by column
        self._h_order = order
        hess = ca.Sparsity.triplet(m * N * n * N, n * N, rows[order].tolist(), cols[order].tolist())
        return [x, y, jac], [hess, ca.Sparsity(m * N * n * N, m * N)]

    def get_n_in(self):
        return len(self._sp[0])

    def get_n_out(self):
        return len(self._sp[1])

    def get_sparsity_in(self, i):
        return self._sp[0][i]

    def get_sparsity_out(self, i):
        return self._sp[1][i]

    def get_name_in(self, i):
        return self._inames[i] if self._inames else ("x", "y", "jac")[i]

    def get_name_out(self, i):
        return self._onames[i] if self._onames else "y"

    # evaluation -----------------------------------------------------------------------------
    def _nonzeros(self, x_nz: np.ndarray) -> np.ndarray:
        """The first output's nonzeros (CasADi's column-major order) from x's nonzeros."""
        X = x_nz.reshape(self._n_in, self._cols, order="F")
        x = X[:, 0] if self._cols == 1 else X.T  # one point goes through the cache
        n, m = self._n_in, self._m
        if self._order == 0:
            return np.asarray(self.sur(x), dtype=np.float64).reshape(-1, m).ravel()  # y[:, k]
        if self._order == 1:
            J = np.asarray(self.sur.jac(x)).reshape(-1, m, n)  # (cols, m, n)
            return J.transpose(0, 2, 1).ravel()  # block k, column j: J_k[:, j]
        H = np.asarray(self.sur.hess(x)).reshape(-1, m, n, n)  # (cols, m, n, n): [k, i, j, q]
        return H.ravel()[self._h_order]

    def __reduce__(self):
        raise TypeError(
            f"{self.name()}: a callback-mode casadi.Function runs the surrogate in this Python "
            "process and cannot be pickled. Pickle the Surrogate and call sb.casadi_function "
            "again where it is loaded, or use mode='symbolic' (a native, picklable Function)."
        )

    def has_eval_buffer(self):
        return True

    def eval_buffer(self, arg, res):
        # raw buffers, no DM conversions: CasADi evaluates every numeric call through here (a
        # zero second output, order 2, has no nonzeros to write)
        out = np.frombuffer(res[0], dtype=np.float64)
        out[:] = self._nonzeros(np.frombuffer(arg[0], dtype=np.float64))
        return 0

    # derivatives ----------------------------------------------------------------------------
    def has_jacobian(self):
        return self._order < 2

    def get_jacobian(self, name, inames, onames, opts):
        child = _SurrogateCallback(
            self.sur, self._cols, self._order + 1, name, opts, inames, onames
        )
        self._children.append(child)  # keep alive: CasADi holds only a raw pointer to it
        return child

    def map(self, *args, **kwargs):
        """``F.map(N)``: the same function on N points (columns) in one batched torch call;
        other ``map`` signatures go to CasADi's own."""
        if len(args) == 1 and isinstance(args[0], int) and not kwargs and self._order == 0:
            if args[0] not in self._maps:  # one per N, kept alive with its parent
                name = f"{self.name()}_map{args[0]}"
                self._maps[args[0]] = _SurrogateCallback(
                    self.sur, args[0] * self._cols, 0, name, {}
                )
            return self._maps[args[0]]
        return ca.Callback.map(self, *args, **kwargs)


class _SymbolicFunction(_ShapeChecked, ca.Function):
    """A native CasADi Function with the shape-checking call; pickles as CasADi's own do."""

    def __init__(self, f: ca.Function, n_in: int) -> None:
        ca.Function.__init__(self, f)
        self._n_in, self._cols = n_in, 1

    def __reduce__(self):
        return (_unpickle_symbolic, (self.serialize(), self._n_in))

    def update(self, source) -> None:
        raise TypeError(
            "a symbolic CasADi Function holds its weights as constants; build a new one "
            "(casadi_function again), or use mode='callback', whose F.update(source) swaps "
            "weights into the solvers already built on it"
        )


def _unpickle_symbolic(data: str, n_in: int) -> _SymbolicFunction:
    return _SymbolicFunction(ca.Function.deserialize(data), n_in)


def casadi_function(
    sur: Surrogate, name: str = "f", mode: str = "auto", **unexpected
) -> ca.Function:
    """The surrogate as a ``casadi.Function`` with exact first and second derivatives.

    Parameters
    ----------
    sur : Surrogate
    name : str
        The Function's name (input ``"x"``, output ``"y"``).
    mode : {"auto", "symbolic", "callback"}
        ``"symbolic"`` translates the model into CasADi expressions (native derivatives,
        ``generate()`` for C code, no Python in the solver loop); ``"callback"`` evaluates it in
        torch through a ``casadi.Callback`` (any model, CPU or GPU); ``"auto"`` is symbolic when
        every operation translates, else callback with a :class:`CasadiFallbackWarning`.

    Returns
    -------
    casadi.Function
        Input x of shape (n_in, 1), output y of shape (n_out, 1), or k points side by side,
        (n_in, k) -> (n_out, k), as CasADi evaluates its functions; callable on DM, MX (and, in
        symbolic mode, SX). Callback-mode Functions stay alive as long as the process (one per
        surrogate and name), so ``F(x)`` inline and solvers built in helpers are safe; their
        ``F.update(model_or_state_dict)`` swaps new weights into the solvers already built on
        them (``sb.update_weights``). Symbolic Functions hold their weights as constants.

    Examples
    --------
    >>> import casadi as ca, torch, surrogate_bridge as sb
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    >>> sur = sb.Surrogate(net)
    >>> F = sb.casadi_function(sur)
    >>> x = ca.MX.sym("x", 2)
    >>> H = ca.Function("H", [x], [ca.hessian(F(x), x)[0]])
    >>> bool(abs(H([0.1, 0.2]) - sur.hess([0.1, 0.2])).full().max() < 1e-12)
    True
    """
    require_surrogate(sur, "casadi_function")
    for key in unexpected:
        hint = _L4CASADI_HINTS.get(key, f"the keywords are name= and mode= (one of {_MODES})")
        raise TypeError(f"casadi_function: unexpected keyword {key!r}; {hint}.")
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(
            f"casadi_function: name must be a string that is a valid identifier (CasADi's rule "
            f"for Function names), got {name!r}."
        )
    if mode not in _MODES:
        raise ValueError(f"casadi_function: mode={mode!r} is not valid; use one of {_MODES}.")
    warn_low_precision(sur, "casadi_function")
    if mode == "callback":
        return _callback(sur, name, "callback")
    from .casadi_symbolic import UnsupportedOperationError, translate

    try:
        f, nonsmooth = translate(sur, name)
    except Exception as err:  # any translation failure, of any type: auto falls back
        if mode == "symbolic":
            if isinstance(err, UnsupportedOperationError):
                raise
            raise UnsupportedOperationError(
                f"the model did not translate ({type(err).__name__}: {err}); use "
                "mode='callback' for this model"
            ) from err
        warnings.warn(
            f"casadi_function: falling back to mode='callback' (Python in the solver loop, "
            f"no code generation): {err}",
            CasadiFallbackWarning,
            stacklevel=caller_level(),
        )
        return _callback(sur, name, "callback (the model did not translate)")
    if nonsmooth:
        warn_nonsmooth(nonsmooth, "casadi_function")
    sym = _SymbolicFunction(f, sur.n_in)
    if mode == "symbolic":
        sym.mode, sym.mode_report = "symbolic", {"chosen": "symbolic"}
        return sym
    return _faster(sym, _callback(sur, name, "callback"), sur)


def _callback(sur: Surrogate, name: str, why: str) -> _SurrogateCallback:
    key = (id(sur), name)
    if key not in _ALIVE:  # the callback holds sur, so id(sur) stays this surrogate's
        _ALIVE[key] = _SurrogateCallback(sur, 1, 0, name, {})
    cb = _ALIVE[key]
    cb.mode, cb.mode_report = "callback", {"chosen": why}
    cb.update = functools.partial(update_weights, sur)  # new weights, same solvers
    return cb


def _faster(sym: ca.Function, cb: ca.Function, sur: Surrogate) -> ca.Function:
    """The mode whose value, Jacobian and Hessian together cost less, timed at fresh points
    (the callback's cache never answers). No mode wins everywhere: native MX on small nets,
    the surrogate's single-point route (BLAS) on wide ones; measured in
    ``benchmarks/RESULTS.md``."""
    t0 = time.perf_counter()
    box = sur.domain
    rng = np.random.default_rng(0)
    lo, hi = box if box is not None else (-np.ones(sur.n_in), np.ones(sur.n_in))
    points = rng.uniform(lo, hi, (2 * _MEASURE_POINTS + 1, sur.n_in))
    costs = {"symbolic": _cost(sym, points[::2])}
    note = {}
    try:
        costs["callback"] = _cost(cb, points[1::2])
    except RuntimeError:  # its Hessian: torch cannot take it of this model (cdist)
        note = {"note": "callback mode cannot give this model's Hessian (torch cannot take it)"}
    chosen = min(costs, key=costs.get)
    F = sym if chosen == "symbolic" else cb
    F.mode = chosen
    F.mode_report = {
        "chosen": chosen,
        **{f"{k} us": v for k, v in costs.items()},
        **note,
        "measure s": time.perf_counter() - t0,
    }
    return F


def _cost(F: ca.Function, points: np.ndarray) -> float:
    """Microseconds for F, its Jacobian and its (summed outputs') Hessian at a point: the best
    over the points after the first (a warm-up)."""
    x = ca.MX.sym("x", points.shape[1])
    y = F(x)
    fns = [F, ca.Function("J", [x], [ca.jacobian(y, x)]),
           ca.Function("H", [x], [ca.hessian(ca.sum1(y), x)[0]])]  # fmt: skip
    best = np.inf
    for p in points:
        t = time.perf_counter()
        for fn in fns:
            fn(p)
        best = min(best, time.perf_counter() - t)
    return best * 1e6
