"""The Surrogate's constructor arguments, checked before any torch work: each error names the
argument, what was expected and what came."""

from __future__ import annotations

import torch
from torch import nn

from .normalization import Affine
from .physical import graph_input
from .projections import AroundModel, Projected
from .routes import POINT_ROUTES
from .scaling import Scaling

__all__ = ["check_arguments", "check_device", "check_dtype", "infer_n_in"]


def check_arguments(model, dtype, cache_size, point_route) -> None:
    if point_route not in POINT_ROUTES:
        raise ValueError(
            f"Surrogate: point_route={point_route!r} is not valid; use one of {POINT_ROUTES}."
        )
    if isinstance(model, type):
        raise TypeError(
            f"Surrogate: model is the class {model.__name__}, not an instance of it; pass "
            f"an instance, e.g. {model.__name__}(...)."
        )
    if not callable(model):
        raise TypeError(
            f"Surrogate: model must be a torch.nn.Module or callable, got {type(model).__name__}."
        )
    if (quantized := _quantized_layer(model)) is not None:
        name, layer = quantized
        raise TypeError(
            f"Surrogate: the model's layer {name or 'model'!r} is quantized "
            f"({type(layer).__module__}.{type(layer).__name__}): it computes with int8 weights, "
            "in float32 only, and torch has no derivatives of it. Pass the float model it was "
            "quantized from (quantize_dynamic(model, ...) returns a copy and leaves it as it was)."
        )
    check_dtype(dtype)
    if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
        raise ValueError(f"Surrogate: cache_size must be an int >= 0, got {cache_size!r}.")


_QUANTIZED = ("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized")


def _quantized_layer(model) -> tuple[str, nn.Module] | None:
    """(name, layer) of the model's first quantized layer (torch.ao's eager-mode quantization:
    int8 kernels without autograd), or None."""
    if not isinstance(model, nn.Module):
        return None
    return next(
        ((n, m) for n, m in model.named_modules() if type(m).__module__.startswith(_QUANTIZED)),
        None,
    )


_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def check_dtype(dtype, where: str = "Surrogate") -> None:
    """float16, float32 or float64: the floating dtypes numpy holds too (numpy in, numpy out)."""
    if isinstance(dtype, torch.dtype) and dtype in _NUMPY_FLOATS:
        return
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        raise TypeError(
            f"{where}: dtype={dtype} has no numpy counterpart, so numpy results could not be "
            "returned; use torch.float32 (or torch.float64, the default)."
        )
    named = _as_torch_float(dtype)
    hint = f"; pass {named}" if named is not None else ""
    raise TypeError(
        f"{where}: dtype must be torch.float64, torch.float32 or torch.float16, "
        f"got {dtype!r}{hint}."
    )


def _as_torch_float(dtype) -> str | None:
    """'torch.float32' for np.float32, np.dtype('float32') or 'float32', else None."""
    import numpy as np

    if dtype is None:  # np.dtype(None) is float64: no hint for a missing value
        return None
    try:
        name = np.dtype(dtype).name
    except TypeError:
        return None
    return f"torch.{name}" if name in ("float16", "float32", "float64") else None


def check_device(device, where: str = "Surrogate", dtype=torch.float64) -> torch.device:
    """A validated torch.device that can hold ``dtype`` tensors; "cuda" -> "cuda:k" (the
    current one), so comparisons with tensors' devices hold."""
    try:
        dev = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"{where}: device={device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:0'."
        ) from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{where}: device={device!r} but torch sees no CUDA device "
                "(torch.cuda.is_available() is False); use device='cpu'."
            )
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    if dev.type == "meta":
        raise ValueError(f"{where}: device='meta' holds shapes, not numbers; use device='cpu'.")
    if dev.type not in ("cpu", "cuda"):  # mps, xpu, ...: torch's own error names no argument
        try:
            torch.empty(1, dtype=dtype, device=dev)
        except (RuntimeError, TypeError, AssertionError) as err:
            said = (str(err).splitlines() or [type(err).__name__])[0].split(". ")[0]
            raise ValueError(
                f"{where}: device={device!r} cannot hold {dtype} tensors in this torch "
                f"({said:.120}); use device='cpu'"
                + (", or dtype=torch.float32 (MPS has no float64)" if dev.type == "mps" else "")
                + "."
            ) from err
    return dev


def infer_n_in(n_in, in_aff: Affine | Scaling | None, model) -> tuple[int | None, str | None]:
    """(n_in, a hint for an error of shapes: where n_in came from, when the model's first Linear
    layer reads another count or gave it, else None)."""
    from_scaler = None if in_aff is None else in_aff.n_features
    if n_in is not None:
        if isinstance(n_in, bool) or not isinstance(n_in, int) or n_in < 1:
            raise ValueError(f"Surrogate: n_in must be a positive int, got {n_in!r}.")
        if from_scaler is not None and from_scaler != n_in:
            raise ValueError(f"Surrogate: n_in={n_in} but input_scaler has {from_scaler} features.")
        return n_in, _other_count(model, n_in, f"n_in={n_in} was given")
    if from_scaler is not None:
        said = f"input_scaler has {from_scaler} features"
        return from_scaler, _other_count(model, from_scaler, said)
    if isinstance(model, Projected) and model.before is not None:  # the projection's inputs
        return model.before.in_features, None
    graph = graph_input(model)
    if graph is not None:  # a torch.export graph module: the shape it was exported for
        return graph[1], None
    first = _first_linear(model)
    if first is None:
        return None, None
    name, takes = first
    return takes, (
        f"(n_in={takes} was read from the first Linear layer, {name!r}; pass n_in= or an "
        "input_scaler if the model takes another number of inputs.)"
    )


def _other_count(model, n_in: int, said: str) -> str | None:
    """A hint where the model's first Linear layer takes other than ``n_in`` inputs (legitimate
    where features are built before it; the hint is shown only if the model then fails)."""
    first = _first_linear(model)
    if first is None or first[1] == n_in:
        return None
    name, takes = first
    return f"({said}, but the model's first Linear layer, {name!r}, takes {takes}.)"


def _first_linear(model) -> tuple[str, int] | None:
    """(name, input count) of the model's first Linear layer, scripted or traced ones too (a
    traced Linear keeps its weight but not its in_features attribute), named as in the caller's
    model (not in our layers around it), or None."""
    if not isinstance(model, nn.Module):
        return None
    name, layer = next(
        (
            (name, m)
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear) or getattr(m, "original_name", None) == "Linear"
        ),
        (None, None),
    )
    if layer is None:
        return None
    while isinstance(model, AroundModel):
        name, model = name.removeprefix("model."), model.model
    # (in_features, not the weight: a parametrized weight is computed when read, and spectral
    # norm's in training mode then runs a power iteration, changing the caller's model)
    takes = getattr(layer, "in_features", None)
    return name or "the model", int(layer.weight.shape[-1] if takes is None else takes)
