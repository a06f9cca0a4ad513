"""Save a Surrogate to one file and load it back without the model's Python class.

The file is a ``torch.export`` archive (a zip): the physical-units function's graph (scalers
included, as the surrogate computes it) with its weights, plus ``surrogate_bridge.json`` holding
the domain, dtype, the scalers (for reference) and flags.
"""

from __future__ import annotations

import json
import os
import zipfile

import torch

from .normalization import Affine
from .physical import ExportError
from .surrogate import Surrogate

__all__ = ["load", "save"]

_META = "surrogate_bridge.json"
_FORMAT = 1
_DTYPES = {str(d): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def save(sur: Surrogate, path: str | os.PathLike) -> None:
    """Write ``sur`` to one file at ``path`` (a ``torch.export`` archive with metadata).

    Parameters
    ----------
    sur : Surrogate
    path : str or os.PathLike
        Conventionally ending in ``.pt2``.

    Examples
    --------
    >>> import tempfile, os, torch, surrogate_bridge as sb
    >>> sur = sb.Surrogate(torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(),
    ...                                        torch.nn.Linear(4, 1)))
    >>> path = os.path.join(tempfile.mkdtemp(), "sur.pt2")
    >>> sb.save(sur, path)
    >>> abs(sb.load(path)([0.1, 0.2]) - sur([0.1, 0.2])) < 1e-15
    True
    """
    if not isinstance(sur, Surrogate):
        raise TypeError(f"save: sur must be a Surrogate, got {type(sur).__name__}.")
    try:
        program = sur.export(one_point=False)
    except ExportError as err:
        raise ValueError(f"save: {err}") from err
    lb_ub = sur.domain
    meta = {
        "format": _FORMAT,
        "n_in": sur.n_in,
        "n_out": sur.n_out,
        "dtype": str(sur.dtype),
        "input_scaler": None if sur.input_scaler is None else sur.input_scaler.to_dict(),
        "output_scaler": None if sur.output_scaler is None else sur.output_scaler.to_dict(),
        "domain": None if lb_ub is None else [lb_ub[0].tolist(), lb_ub[1].tolist()],
        "nonsmooth": list(sur.nonsmooth_ops),
        "extrapolation": sur.extrapolation,
    }
    torch.export.save(program, os.fspath(path), extra_files={_META: json.dumps(meta)})


def load(path: str | os.PathLike, *, device=None, cache_size: int = 128) -> Surrogate:
    """Read a file written by :func:`save`; the model's Python class is not needed.

    Parameters
    ----------
    path : str or os.PathLike
    device : str or torch.device, optional
        Where the loaded surrogate runs ("cpu" by default).
    cache_size : int

    Returns
    -------
    Surrogate
        Identical values and derivatives to the saved one.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If the file is not a surrogate_bridge archive, or is truncated or corrupt.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load: no file at {path!r}.")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"load: {path!r} is not a surrogate_bridge file (not a zip archive; truncated or "
            "foreign). Write one with sb.save(sur, path)."
        )
    extra = {_META: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
        meta = json.loads(extra[_META]) if extra[_META] else None
    except Exception as err:  # torch's loader raises many types on corrupt archives
        raise ValueError(
            f"load: {path!r} could not be read as a surrogate_bridge file "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})."
        ) from err
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(
            f"load: {path!r} is a torch archive but was not written by surrogate_bridge.save "
            f"(no {_META} of format {_FORMAT})."
        )
    # the graph is the physical function: the scalers come along for reference only
    scalers = {
        k: None if meta[k] is None else Affine.from_dict(meta[k])
        for k in ("input_scaler", "output_scaler")
    }
    return Surrogate.from_physical(
        program.module(),
        n_in=meta["n_in"],
        nonsmooth_ops=meta["nonsmooth"],  # the graph's aten ops hide the activations' names
        dtype=_DTYPES[meta["dtype"]],
        device=device,
        cache_size=cache_size,
        domain=meta["domain"],
        extrapolation=meta["extrapolation"],
        **scalers,
    )
