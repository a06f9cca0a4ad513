"""Hazard warnings (non-smooth activations, extrapolation) and the finite-difference check."""

from __future__ import annotations

import os
import re
import sys
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from .convert import as_points, check_feature_names

__all__ = [
    "DerivativeReport",
    "ExtrapolationError",
    "ExtrapolationWarning",
    "PrecisionWarning",
    "SmoothnessWarning",
    "check_derivatives",
]


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def caller_level() -> int:
    """The ``stacklevel`` that points a warning issued by the function calling this at the
    first frame outside surrogate_bridge (the caller's own line, however deep the call came
    in; Python 3.12's ``skip_file_prefixes``, on every version)."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


class SmoothnessWarning(UserWarning):
    """A second or higher derivative was asked of a piecewise-linear model (it is zero almost
    everywhere, whatever the true function's curvature), or any derivative of a model with
    steps (floor, round, sign: the derivative does not see the jumps)."""


class ExtrapolationWarning(UserWarning):
    """The surrogate was evaluated outside its training domain."""


class ExtrapolationError(ValueError):
    """Raised instead of :class:`ExtrapolationWarning` under ``extrapolation="raise"``."""


class PrecisionWarning(UserWarning):
    """Derivatives below float64 precision are handed to a solver."""


def warn_low_precision(sur, where: str) -> None:
    """Solvers' tolerances (IPOPT's 1e-8, scipy's gtol) assume float64 derivatives."""
    if sur.dtype != torch.float64:
        warnings.warn(
            f"{where}: the surrogate computes in {sur.dtype}; solvers expect float64 "
            "derivatives and may stall short of their tolerance. Build it with "
            "dtype=torch.float64 (the default).",
            PrecisionWarning,
            stacklevel=caller_level(),
        )


# torch functions (and aten ops) whose second derivative is zero almost everywhere: nn modules
# call these, and the CasADi translator meets them as aten ops of the same names
PIECEWISE_LINEAR = frozenset(
    {
        "relu",
        "relu_",
        "relu6",
        "leaky_relu",
        "leaky_relu_",
        "hardtanh",
        "hardtanh_",
        "prelu",
        "hardsigmoid",
        "hardsigmoid_",
        "rrelu",
        "rrelu_",
        "threshold",
        "threshold_",
        "clamp",
        "clamp_",
        "clip",
        "clamp_min",
        "clamp_max",
        "abs",
        "abs_",
        "absolute",
        "__abs__",
        "softshrink",
        "hardshrink",
        "_threshold",
    }
)
# branch selections: the Hessian is the branch's taken (zero for a hand-written ReLU); a
# comparison's mask selects too, as in h * (h > 0), and so do the greatest or least of several
# values (a max pool, a sort), whose derivatives switch where two of them cross, and a logit
# with eps, flat outside [eps, 1 - eps]
SELECTIONS = frozenset(
    {"where", "maximum", "minimum", "fmax", "fmin", "hardswish", "hardswish_", "gt", "ge", "lt",
     "le", "greater", "greater_equal", "less", "less_equal", "max", "min", "amax", "amin",
     "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
     "max_pool2d_with_indices", "max_pool3d_with_indices", "adaptive_max_pool1d",
     "adaptive_max_pool2d", "adaptive_max_pool3d", "sort", "msort", "topk", "kthvalue", "median",
     "nanmedian", "cummax", "cummin", "logit with eps"}
)  # fmt: skip
# functions with steps: the model jumps where they do, and no derivative sees it
PIECEWISE_CONSTANT = frozenset(
    {"floor", "floor_", "ceil", "ceil_", "round", "round_", "trunc", "trunc_", "fix", "sign",
     "sign_", "sgn", "copysign", "heaviside", "frac", "floor_divide", "__floordiv__",
     "remainder", "fmod", "__mod__"}
)  # fmt: skip
NONSMOOTH = PIECEWISE_LINEAR | PIECEWISE_CONSTANT | SELECTIONS


def warn_nonsmooth(ops, where: str) -> None:
    """The :class:`SmoothnessWarning` for a model that uses the non-smooth ``ops``
    (``NONSMOOTH``): the piecewise-linear ones' curvature, the steps' jumps."""
    steps = [o for o in ops if o in PIECEWISE_CONSTANT]
    picks = [o for o in ops if o in SELECTIONS]
    kinks = [o for o in ops if o not in PIECEWISE_CONSTANT and o not in SELECTIONS]
    said = []
    if kinks:
        said.append(
            f"the model uses piecewise-linear operations ({', '.join(kinks)}); its second and "
            "higher derivatives are zero almost everywhere, whatever the true function's "
            "curvature (IPOPT's exact Hessian and scipy's trust methods get no curvature from "
            "them). Use a smooth activation (tanh, softplus, SiLU, GELU) for curvature information"
        )
    if picks:
        said.append(
            f"the model selects between branches ({', '.join(picks)}); its derivatives may jump "
            "where the selection switches, and its Hessian is the branch's taken (zero for linear "
            "branches, as in a hand-written ReLU)"
        )
    if steps:
        said.append(
            f"the model uses functions with steps ({', '.join(steps)}); it jumps where they "
            "step, and its derivatives do not see the jumps (a step's derivative is zero "
            "wherever it is defined), so gradient-based solvers are blind to them"
        )
    warnings.warn(f"{where}: {'; and '.join(said)}.", SmoothnessWarning, stacklevel=caller_level())


def needs_warning(ops, order: int) -> bool:
    """Whether a derivative of ``order`` of a model using ``ops`` earns the warning."""
    return bool(ops) and (order >= 2 or any(o in PIECEWISE_CONSTANT for o in ops))


class OpRecorder(TorchFunctionMode):
    """Records the names of the torch functions a forward pass calls on values that may depend
    on its input. A call whose tensor operands are all constants (the model's parameters and
    buffers, and what calls on constants alone made, such as a mask from ``torch.arange``) is
    left out, its results marked constant too; so is a ``torch.where`` whose condition is such
    a constant (a fixed choice per value, as smooth as its branches). Anything else is recorded
    once what it made is used: by a later call (reading its dtype or shape is no use), or as
    the output (:meth:`finish`), so that torchdiffeq's ``y.abs().dtype``, an abs taken to read
    a dtype, makes no flow map piecewise linear. A tensor a call writes in place (``add_``,
    ``x[i] = ...``, ``out=``) is no longer taken for a constant."""

    def __init__(self, constants=()) -> None:
        super().__init__()
        self.names: set[str] = set()
        self._constants: dict[int, weakref.ref] = {}
        for t in constants:
            self._mark(t)
        # names of the calls that made each tensor not used yet (kept alive: ids stay unique)
        self._unused: dict[int, tuple[set[str], torch.Tensor]] = {}

    def _use(self, tensors) -> None:
        for t in tensors:
            made = self._unused.pop(id(t), None)
            if made is not None and made[1] is t:
                self.names |= made[0]

    def finish(self, output) -> None:
        """The forward's ``output`` is used."""
        self._use(t for t in tree_leaves(output) if isinstance(t, torch.Tensor))

    def _mark(self, t: torch.Tensor) -> None:
        self._constants[id(t)] = weakref.ref(t)

    def _constant(self, t) -> bool:
        ref = self._constants.get(id(t))
        return ref is not None and ref() is t

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tensors = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        name = getattr(func, "__name__", str(func))
        if name != "__get__":  # (an attribute: a dtype, a shape)
            self._use(tensors)
        if all(self._constant(t) for t in tensors):  # (no tensor at all: a factory, arange)
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self._mark(t)
            return out
        names = set()
        condition = args[1] if func is torch.Tensor.where else (args or [None])[0]
        if not (name == "where" and len(args) > 1 and self._constant(condition)):
            names.add(name)
        if name == "logit" and (args[1:2] or [kwargs.get("eps")])[0] is not None:
            names.add("logit with eps")  # flat outside [eps, 1 - eps]: a clamp inside
        written = [kwargs.get("out")]
        if name == "__setitem__" or re.fullmatch(r"__i\w+__|\w*[^_]_", name):  # in place
            written.append(args[0] if args else None)
        for t in tree_leaves((out, written)):
            if isinstance(t, torch.Tensor):
                before = self._unused.get(id(t), (set(), t))
                self._unused[id(t)] = ((before[0] if before[1] is t else set()) | names, t)
        stores = {_storage(t) for t in tree_leaves(written) if isinstance(t, torch.Tensor)}
        if stores:  # (and every view of what it wrote: they share its storage)
            for key, ref in list(self._constants.items()):
                if (t := ref()) is None or _storage(t) in stores:
                    del self._constants[key]
        return out


def _storage(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # (a tensor without storage: its own key)
        return id(t)


def called_functions(fn, x: torch.Tensor) -> set[str]:
    """Names of the torch functions that ``fn(x)`` calls on values that may depend on x
    (``F.celu``, ``torch.tanh``, ...; see :class:`OpRecorder`): for the smoothness warning
    (``NONSMOOTH``) and the rewrites (``rewrites.py``)."""
    constants = [*fn.parameters(), *fn.buffers()] if isinstance(fn, torch.nn.Module) else []
    rec = OpRecorder(constants)
    with rec, torch.no_grad():
        rec.finish(fn(x))
    return rec.names


@dataclass
class DerivativeReport:
    """Autograd against central differences: one row per derivative.

    ``rows`` holds ``(name, max_abs_error, scaled_error)``. The scaled error divides the absolute
    error by the size of what was differenced and what came out, ``max(|FD result|, |values
    differenced|)``: central differences err in proportion to the values they subtract, so a
    derivative that is zero (a stationary point) is judged against the function's size there,
    not against zero.
    """

    x: np.ndarray
    rows: list[tuple[str, float, float]] = field(default_factory=list)
    rtol: float = 1e-5

    @property
    def ok(self) -> bool:
        return all(rel <= self.rtol for _, _, rel in self.rows)

    @property
    def max_rel_error(self) -> float:
        return max(rel for _, _, rel in self.rows)

    def __str__(self) -> str:
        lines = [f"derivative check at x = {np.array2string(self.x, precision=4)}"]
        lines.append(f"{'derivative':<12}{'max abs err':>14}{'scaled err':>14}")
        for name, ab, rel in self.rows:
            lines.append(f"{name:<12}{ab:>14.3e}{rel:>14.3e}")
        lines.append(f"{'PASS' if self.ok else 'FAIL'} (rtol {self.rtol:g})")
        return "\n".join(lines)


def _central(f, x: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, float]:
    """Central differences of a numpy callable (result of shape f(x).shape + (n,)), and the
    largest magnitude among the values differenced."""
    cols, size = [], 0.0
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h[i]
        hi, lo = np.asarray(f(x + e)), np.asarray(f(x - e))
        size = max(size, float(np.abs(hi).max()), float(np.abs(lo).max()))
        cols.append((hi - lo) / (2 * h[i]))
    return np.stack(cols, axis=-1), size


def _errors(ad: np.ndarray, fd: np.ndarray, size: float) -> tuple[float, float]:
    err = float(np.max(np.abs(ad - fd)))
    return err, err / max(float(np.max(np.abs(fd))), size, 1e-300)


def check_derivatives(sur, x, *, order: int = 2, rtol: float = 1e-5) -> DerivativeReport:
    """Compare the surrogate's exact derivatives at one point with central differences.

    The first derivative is checked against differences of the value, the second against
    differences of the (exact) gradient, each through the numpy callables a solver calls.

    Parameters
    ----------
    sur : Surrogate
    x : array_like, shape (n_in,)
        One point, in physical units.
    order : {1, 2}
        Highest derivative to check.
    rtol : float
        Pass threshold on the scaled error (see :class:`DerivativeReport`); step sizes are
        ``eps**(1/3) * max(1, |x_i|)``, so ~1e-7 is typical in float64.

    Examples
    --------
    >>> import torch, surrogate_bridge as sb
    >>> report = sb.check_derivatives(sb.Surrogate(sb.mlp((2, 8, 1), seed=0)), [0.3, -0.2])
    >>> report.ok
    True
    """
    if order not in (1, 2):
        raise ValueError(f"check_derivatives: order must be 1 or 2, got {order!r}.")
    check_feature_names(x, sur.feature_names, "check_derivatives")  # a Series
    if sur.n_in is None:  # a model that does not say its input count: x does
        sur._learn_n_in(x)
    pts = as_points(x, sur.n_in, "check_derivatives")  # kind, features, finiteness
    if not pts.single:
        shape = tuple(pts.data.shape)
        raise ValueError(
            f"check_derivatives: x has shape {shape}, expected one point of shape ({sur.n_in},)."
        )
    pt = np.asarray(pts.data[0].detach().cpu() if pts.is_torch else pts.data[0], np.float64)
    eps = np.finfo(np.float64 if sur.dtype == torch.float64 else np.float32).eps
    h = eps ** (1 / 3) * np.maximum(1.0, np.abs(pt))
    report = DerivativeReport(x=pt, rtol=rtol)
    fd, size = _central(lambda z: np.atleast_1d(sur(z)), pt, h)
    report.rows.append(("jacobian", *_errors(sur.jac(pt), fd, size)))
    if order == 2:
        hess = sur.hess(pt).reshape(sur.n_out, sur.n_in, sur.n_in)
        fd, size = _central(sur.jac, pt, h)
        report.rows.append(("hessian", *_errors(hess, fd, size)))
    return report


def no_derivative(err: RuntimeError) -> str | None:
    """What to tell a user whose model torch cannot differentiate (``err`` is torch's error: no
    derivative of this order, or a value it keeps changed in place), or None if ``err`` is
    another error."""
    msg = str(err).splitlines()[0] if str(err) else ""
    if "modified by an inplace operation" in msg:  # (torch's words)
        return (
            f"{_CANNOT} ({msg.split(': [')[0]}): its forward changes in place a value that "
            "torch keeps for the derivative (as y = F.relu(x); y += ... does: relu's "
            "derivative reads its output), so autograd fails on the model itself. Write that "
            "step out of place (y = y + ...); its values are unaffected."
        )
    if not ("not implemented" in msg and "derivative" in msg) and "once_differentiable" not in msg:
        return None
    return cannot_differentiate(msg)


_CANNOT = "torch cannot take this derivative of the model"


def torch_cannot(message: str) -> bool:
    """Whether ``message`` is :func:`cannot_differentiate`'s."""
    return message.startswith(_CANNOT)


def cannot_differentiate(why: str) -> str:
    """The message for derivatives torch cannot take, for the reason ``why``."""
    return (
        f"{_CANNOT} ({why}): an operation in it has no "
        "derivative of this order in torch. Write that operation in differentiable ones "
        "(hardsigmoid(x) is hardtanh(x + 3, 0, 6) / 6; a custom autograd Function without "
        "@once_differentiable), or, where the model translates, let CasADi take them "
        "(sb.casadi_function(sur, mode='symbolic'))."
    )
