"""The numpy <-> torch boundary: validation of user input and conversion of results.

Every public entry point funnels its ``x`` through :func:`as_points`, which checks kind, rank,
feature count and finiteness *before any torch work* and returns a private copy, so a caller that
mutates its array afterwards (scipy's Newton-CG and SLSQP do) cannot reach our caches. Results
leave through :func:`to_host`. Adapters never call ``.cpu().numpy()`` themselves.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch
from torch._C import _functorch
from torch.autograd import forward_ad as _forward_ad

_MAX_LISTED = 5  # non-finite positions named in an error message


class Points(NamedTuple):
    """Validated input: ``data`` is always 2-D ``(N, n_in)``; ``single`` says if x was one point."""

    data: np.ndarray | torch.Tensor
    single: bool
    is_torch: bool


F64 = np.dtype(np.float64)  # builtin dtypes are singletons: ``is`` is the cheap test


def _shape_hint(n_in: int) -> str:
    return f"Pass an array of shape ({n_in},) or (N, {n_in})."


def as_points(x, n_in: int, where: str, name: str = "x") -> Points:
    """Validate ``x`` against ``n_in`` features; numpy input is copied to float64.

    Raises ``TypeError`` for a non-numeric kind and ``ValueError`` for a wrong rank, feature count
    or a non-finite entry; each message names ``where``, ``name``, what was expected and what came.
    """
    if type(x) is np.ndarray and x.dtype is F64 and x.shape == (n_in,):
        # what solvers pass at every iteration: the same checks, in a few microseconds (x.x is
        # finite only if every entry is, unless it overflows: then the full check decides)
        if not math.isfinite(x.dot(x)):
            _check_finite(x, where, name)
        return Points(x[None].copy(), True, False)
    if isinstance(x, torch.Tensor):
        if not (x.dtype.is_floating_point or x.dtype in _TORCH_INTS):
            raise TypeError(
                f"{where}: {name} has dtype {x.dtype}, expected a real floating or integer tensor."
            )
        arr = x.contiguous()  # (as numpy input is copied: the same bits for any strides)
    else:  # a private copy: the cache key's owner
        arr = _real_copy(x, where, name, f" {_shape_hint(n_in)}")
    if arr.ndim == 0 and n_in == 1:
        arr = arr.reshape(1)
    if arr.ndim not in (1, 2):
        raise ValueError(
            f"{where}: {name} has {arr.ndim} dimensions (shape {tuple(arr.shape)}), "
            f"expected 1 or 2. {_shape_hint(n_in)}"
        )
    if arr.shape[-1] != n_in:
        hint = _shape_hint(n_in)
        if arr.ndim == 2 and arr.shape[0] == n_in:  # CasADi's (and MATLAB's) convention
            k = arr.shape[1]
            hint = (
                f"It is a column vector: pass {name}.ravel(), one point of shape ({n_in},)."
                if k == 1
                else f"If it holds {k} points as columns (CasADi's convention), pass {name}.T, "
                f"of shape ({k}, {n_in})."
            )
        raise ValueError(
            f"{where}: {name} has {arr.shape[-1]} features (shape {tuple(arr.shape)}), "
            f"the surrogate takes {n_in}. {hint}"
        )
    _check_finite(arr, where, name)
    single = arr.ndim == 1
    data = arr.reshape(1, n_in) if single else arr
    return Points(data=data, single=single, is_torch=isinstance(x, torch.Tensor))


def feature_names(obj) -> tuple[str, ...] | None:
    """The string column names a fitted sklearn scaler (``feature_names_in_``) or a pandas
    DataFrame (``columns``) holds, or None."""
    names = getattr(obj, "feature_names_in_", None)
    if names is None and type(obj).__module__.startswith("pandas") and obj.ndim == 2:
        names = obj.columns
    if names is None or not all(isinstance(n, str) for n in names):
        return None
    return tuple(names)


def check_feature_names(x, names: tuple[str, ...] | None, where: str, name: str = "x") -> None:
    """A pandas ``x`` whose column names (a Series': its index) are not ``names`` in order is
    refused, as sklearn refuses it; unnamed columns, arrays, and any x where ``names`` is None
    pass (their order is the caller's to keep)."""
    if names is None or not type(x).__module__.startswith("pandas"):
        return
    got = x.columns if x.ndim == 2 else x.index if len(names) > 1 else None
    if got is None or not all(isinstance(n, str) for n in got) or tuple(got) == names:
        return
    seen = set(got)
    missing, extra = [n for n in names if n not in seen], [n for n in got if n not in names]
    how = f"lacks {missing}" if missing else f"also has {extra}" if extra else "has another order"
    raise ValueError(
        f"{where}: {name} has the columns {list(got)}, but the surrogate was fitted on "
        f"{list(names)} in that order; {name} {how}. Pass {name}[{list(names)}]."
    )


def _real_copy(a, where: str, name: str, hint: str = "") -> np.ndarray:
    """A float64 copy of real numbers (float, int); ``TypeError`` naming what came otherwise."""
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as err:  # ragged lists and the like
        raise TypeError(f"{where}: {name} could not be read as an array: {err}") from err
    if arr.dtype.kind not in "fiu":
        if isinstance(a, Mapping):  # values by feature name: pandas holds them in order
            hint = (
                f" For values by feature name, pass pd.Series({name}) (its index is checked "
                "against the feature names)." + hint
            )
        raise TypeError(
            f"{where}: {name} has dtype {arr.dtype} ({a!r:.40}), expected real numbers (float "
            f"or int).{hint}"
        )
    if np.ma.is_masked(a):  # np.asarray drops the mask: the hidden numbers would be used
        at = ", ".join(str(tuple(int(i) for i in b)) for b in np.argwhere(np.ma.getmaskarray(a)))
        raise ValueError(
            f"{where}: {name} is a masked array with masked entries at {at:.80}; fill them "
            f"first ({name}.filled(value)) or pass the unmasked rows."
        )
    # C order: a column-major array (a DataFrame's values, X.T of a transposed array) then
    # reaches the kernels as a row-major one does, and gives the same bits
    return np.array(arr, dtype=np.float64, copy=True, order="C")


_TORCH_INTS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def grad_on():
    """``torch.enable_grad()``, also inside the caller's ``torch.inference_mode()``: autograd
    records nothing there (outputs never require grad, so a derivative would read as zero) and
    refuses its tensors, so inference mode is left for the computation too."""
    return _GradOutsideInference() if torch.is_inference_mode_enabled() else torch.enable_grad()


class _GradOutsideInference:
    def __enter__(self) -> None:
        self._modes = (torch.inference_mode(False), torch.enable_grad())
        for mode in self._modes:
            mode.__enter__()

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


def outside_inference(fn):
    """``fn`` run outside the caller's ``torch.inference_mode()``: what it builds (a frozen copy
    of the model, probes, loaded weights) must be tensors autograd may record later."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return run


def with_grad(fn):
    """``fn`` run under :func:`grad_on`: a public function that differentiates torch code of
    its own, whatever the caller's grad mode (``torch.no_grad()``, ``torch.inference_mode()``)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with grad_on():
            return fn(*args, **kwargs)

    return run


def normal(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it where it is an inference tensor (made under the caller's
    ``torch.inference_mode()``), which autograd may not record; call it under :func:`grad_on`."""
    return t.clone() if t.is_inference() else t


# the caller's torch.func transforms and forward-mode levels, read with torch's own (private,
# stable since torch 2.0) inspection of their wrappers; the torch.func tests in
# test_surrogate.py pin each use
def transformed(t) -> bool:
    """Whether ``t`` is a tensor of the caller's torch.func transform or forward-mode level
    (its wrapper carries the transform's batch axis or a tangent, which ``detach`` would drop)."""
    return isinstance(t, torch.Tensor) and (
        _functorch.is_functorch_wrapped_tensor(t)
        or _functorch.is_batchedtensor(t)
        or (_forward_ad._current_level >= 0 and _forward_ad.unpack_dual(t).tangent is not None)
    )


def in_transform() -> bool:
    """Whether this call runs inside a torch.func transform of the caller's, where autograd
    calls (``requires_grad_``, ``autograd.grad``) are refused, or inside a forward-mode level
    (``torch.autograd.forward_ad``), whose tangents ``detach`` would drop: derivatives then go
    by torch.func on the caller's tensor as it is."""
    return _functorch.maybe_current_level() is not None or _forward_ad._current_level >= 0


def values(t: torch.Tensor) -> torch.Tensor:
    """The numbers a tensor holds, as a plain tensor whose trailing axes are ``t``'s shape.

    Inside torch.func transforms (``vmap``, ``grad``, ``jacrev``, ``jacfwd``, ``hessian``) an
    argument is a wrapper whose values Python may not read; the checks that read values (finite
    entries, the training domain) read them here instead, each vmapped batch axis moved in front.
    """
    while _functorch.is_functorch_wrapped_tensor(t) or _functorch.is_batchedtensor(t):
        axis = _functorch.maybe_get_bdim(t) if _functorch.is_batchedtensor(t) else None
        t = _functorch.get_unwrapped(t)
        if axis is not None:
            t = t.movedim(axis, 0)
    return t


def reading():
    """A context in which values read by :func:`values` are plain tensors: inside a transform,
    torch.func would otherwise wrap what is computed from them at its own level."""
    inside = _functorch.maybe_current_level() is not None
    return torch._C._DisableFuncTorch() if inside else contextlib.nullcontext()


in_functorch = _functorch.maybe_current_level  # not None inside a torch.func transform


def outside_transforms():
    """A context in which this thread computes as if outside the caller's torch.func transforms
    (for a numpy point, which is none of theirs: its own autograd may then run); None where
    this torch has no way to (then torch's own refusal of autograd there stands)."""
    try:
        from torch._functorch.pyfunctorch import temporarily_clear_interpreter_stack
    except ImportError:
        return None
    return temporarily_clear_interpreter_stack()


def _check_finite(arr, where: str, name: str) -> None:
    if isinstance(arr, torch.Tensor):
        with reading():
            arr = values(arr)
            bad = None
            if arr.dtype.is_floating_point and not bool(torch.isfinite(arr).all()):
                bad = torch.nonzero(~torch.isfinite(arr)).cpu().numpy()
        if bad is not None:
            _raise_non_finite(bad, where, name)
    elif arr.dtype.kind == "f" and not np.isfinite(arr).all():
        _raise_non_finite(np.argwhere(~np.isfinite(arr)), where, name)


def _raise_non_finite(bad: np.ndarray, where: str, name: str) -> None:
    listed = ", ".join(str(tuple(int(i) for i in b)) for b in bad[:_MAX_LISTED])
    more = f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
    raise ValueError(f"{where}: {name} has non-finite entries (NaN or Inf) at {listed}{more}.")


def as_array(a, where: str, name: str, ndim: tuple[int, ...]) -> np.ndarray:
    """Real, finite numbers of one of the ranks ``ndim``, as a private float64 copy.

    The one validator of plain arrays (scaler vectors, training data, weight and direction
    vectors): ``TypeError`` for a non-numeric kind, ``ValueError`` for a wrong rank or a
    non-finite entry, each naming ``where`` and ``name``.
    """
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    arr = _real_copy(a, where, name)
    if arr.ndim not in ndim:
        ranks = " or ".join(f"{d}-D" for d in ndim)
        raise ValueError(f"{where}: {name} must be {ranks}, got shape {arr.shape}.")
    _check_finite(arr, where, name)
    return arr


def as_vector(v, length: int, where: str, name: str) -> np.ndarray:
    """Validate a 1-D weight or direction vector (``p`` of hessp, ``v`` of lagrangian_hess);
    one inside the caller's torch.func transform comes back as that tensor, flattened."""
    if transformed(v):
        _check_finite(v, where, name)
        arr = v.reshape(-1)
    else:
        arr = as_array(v, where, name, (0, 1)).reshape(-1)
    if arr.shape != (length,):
        raise ValueError(f"{where}: {name} has shape {tuple(arr.shape)}, expected ({length},).")
    return arr


def to_torch(data, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Host array or tensor -> tensor of the surrogate's dtype on its device (no grad)."""
    if isinstance(data, torch.Tensor):
        return data.detach().to(device=device, dtype=dtype)
    return torch.as_tensor(data, dtype=dtype, device=device)


def to_host(t: torch.Tensor) -> np.ndarray:
    """Tensor -> numpy array on the host (float64 by default: the solvers' dtype)."""
    return t.detach().cpu().numpy()


def unbatched(t: np.ndarray, drop: bool):
    """One point's numpy result ``t`` (1, m, ...) as solvers take it: a float where nothing is
    left, else a fresh array (callers cannot edit a cached one); the output axis dropped if
    ``drop``."""
    out = t[0, 0] if drop else t[0]
    return float(out) if out.ndim == 0 else out.copy()


def finish(t, pts: Points, drop: bool = False):
    """Shape a result with a leading point axis, ``(N, m, ...)`` as a tensor (batches) or a
    numpy array (the single-point cache), for the caller: drop the output axis of a scalar
    surrogate if ``drop``, strip N for a single point, and return numpy or torch as the caller
    gave. numpy results are always fresh arrays: callers cannot edit a cached one."""
    if pts.single and not pts.is_torch and type(t) is np.ndarray:  # the solvers' path, direct
        return unbatched(t, drop)
    if drop:
        t = t[:, 0]
    if pts.single:
        t = t[0]
    if isinstance(t, torch.Tensor):
        if pts.is_torch:
            return t
        out = to_host(t)
    else:
        out = np.array(t)  # a copy
    return float(out) if out.ndim == 0 else out
