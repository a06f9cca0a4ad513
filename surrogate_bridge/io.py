"""Save a Surrogate to one file and load it back without the model's Python class, safely.

A saved file is data, never code: loading it unpickles nothing and evaluates nothing. The file is
a zip archive of three members:

* ``weights.safetensors``: every weight in the safetensors layout (an 8-byte header length, a
  JSON header of names, dtypes, shapes and byte ranges, then raw little-endian bytes), read with
  ``torch.frombuffer``;
* ``graph.json``: the physical function (scalers included, as the surrogate computes it)
  captured by ``torch.export`` and written as a list of aten operations with their arguments.
  Loading rebuilds it as a small interpreter module that calls only the operations of an
  allowed list (``saved_graph.ALLOWED``), so a file cannot name a Python function to run;
* ``meta.json``: format, shapes, dtype, domain, scalers (for reference), flags, and the SHA-256
  of the two other members: a damaged or edited payload is refused before it is read.

The members are stored, not compressed, so reading a file takes no more memory than its size,
and a graph is run on torch's ``meta`` device (shapes only) before it computes anything, so a
file cannot make the loader allocate a huge tensor or build a huge number (see
``SavedGraph.check_shapes``).

A model the surrogate evaluates point by point (written for one point, or mixing rows) is saved
as its one-point graph and evaluated under ``torch.func.vmap`` after loading.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
from typing import BinaryIO

import torch

from .arguments import check_device
from .convert import outside_inference
from .physical import Batched, ExportError
from .routes import POINT_ROUTES
from .saved_graph import CODES, DTYPES, Refused, SavedGraph, graph_to_data
from .scaling import scaler_from_dict
from .surrogate import Surrogate

__all__ = ["load", "save"]

_FORMAT = 2
_MEMBERS = ("meta.json", "graph.json", "weights.safetensors")
_SURROGATE_DTYPES = {
    str(d): d for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
}


def save(sur: Surrogate, path: str | os.PathLike | BinaryIO) -> None:
    """Write ``sur`` to one file at ``path``: weights, graph and metadata, all data.

    Parameters
    ----------
    sur : Surrogate
    path : str, os.PathLike or binary file object
        Conventionally ending in ``.sbz``; the folder must exist. A file object opened for
        binary writing (``io.BytesIO``, ``open(p, "wb")``, a stream to object storage) gets
        the same bytes, written from its current position, and is left open.

    Raises
    ------
    ValueError
        If the model cannot be captured as a graph of allowed operations.

    Examples
    --------
    >>> import tempfile, os, surrogate_bridge as sb
    >>> sur = sb.Surrogate(sb.mlp((2, 4, 1), seed=0))
    >>> path = os.path.join(tempfile.mkdtemp(), "sur.sbz")
    >>> sb.save(sur, path)
    >>> abs(sb.load(path)([0.1, 0.2]) - sur([0.1, 0.2])) < 1e-15
    True
    """
    if not isinstance(sur, Surrogate):
        raise TypeError(f"save: sur must be a Surrogate, got {type(sur).__name__}.")
    if not hasattr(path, "write"):
        path = _fspath(path, "save")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"save: the folder {folder!r} does not exist; create it first.")
    rows = sur._own_function().rows  # Batched, or a one-point form under vmap (or a loaded one)
    batched = type(rows) is Batched and not (
        isinstance(rows.model, SavedGraph) and rows.model.one_point
    )
    try:
        program = sur.export(one_point=not batched)
    except ExportError as err:
        try:  # a batch-size-dependent path (torch.cdist's, say): the one-point graph, on load
            program, batched = sur.export(one_point=True), False  # run under vmap for batches
        except ExportError:
            raise ValueError(f"save: {err}") from err
    graph, tensors = graph_to_data(program, sur._own_function().probes(sur.n_in))
    try:  # what load will check, checked now: never write a file that load refuses
        SavedGraph(graph, tensors, one_point=not batched).check_shapes(
            sur.n_in, sur.n_out, sur.dtype
        )
    except Refused as err:
        raise ValueError(f"save: the captured graph fails the checks of load: {err}") from err
    payloads = {
        "graph.json": json.dumps(graph, separators=(",", ":")).encode(),
        "weights.safetensors": _safetensors(tensors),
    }
    box = sur.domain
    meta = {
        "format": _FORMAT,
        "n_in": sur.n_in,
        "n_out": sur.n_out,
        "dtype": str(sur.dtype),
        "rows": "batched" if batched else "one_point",
        "input_scaler": None if sur.input_scaler is None else sur.input_scaler.to_dict(),
        "output_scaler": None if sur.output_scaler is None else sur.output_scaler.to_dict(),
        "domain": None if box is None else [box[0].tolist(), box[1].tolist()],
        "nonsmooth": list(sur.nonsmooth_ops),
        "extrapolation": sur.extrapolation,
        "feature_names": None if sur.feature_names is None else list(sur.feature_names),
        "sha256": {k: hashlib.sha256(v).hexdigest() for k, v in payloads.items()},
    }
    archive = io.BytesIO()  # whole first: an error leaves no half-written file or stream
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("meta.json", json.dumps(meta, indent=1))
        for name, data in payloads.items():
            zf.writestr(name, data)
    if hasattr(path, "write"):
        path.write(archive.getvalue())
    else:
        with open(path, "wb") as f:
            f.write(archive.getvalue())


def _fspath(path, where: str) -> str:
    try:
        return os.fspath(path)
    except TypeError:
        raise TypeError(
            f"{where}: path must be a str, an os.PathLike or a binary file object, got "
            f"{type(path).__name__}."
        ) from None


@outside_inference
def load(
    path: str | os.PathLike | BinaryIO,
    *,
    device=None,
    cache_size: int = 128,
    point_route: str = "auto",
) -> Surrogate:
    """Read a file written by :func:`save`; the model's Python class is not needed.

    Trusted: nothing. The file is parsed as data (JSON and raw numbers); no byte of it is
    unpickled or evaluated, its graph may call only the aten operations of an allowed list,
    and its payloads must match the SHA-256 recorded in its metadata. A file that fails any
    check is refused with a ``ValueError`` before a surrogate is built. The hashes detect damage,
    not a forger, who could rewrite them: the guarantee against a hostile file is that it
    cannot run code, not that its numbers are the ones you saved.

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        A file object opened for binary reading is read from its current position to its end.
    device : str or torch.device, optional
        Where the loaded surrogate runs ("cpu" by default).
    cache_size : int
    point_route : {"auto", "torch", "numpy", "casadi"}
        Who answers single numpy points, as for :class:`Surrogate` (the graph is read by every
        route; "auto" times them).

    Returns
    -------
    Surrogate
        Identical values and derivatives to the saved one.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path`` (``IsADirectoryError`` if it is a folder).
    ValueError
        If the file is not a surrogate_bridge file, or is truncated, damaged or edited.
    """
    if hasattr(path, "read"):
        data = path.read()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(
                f"load: the file object gave {type(data).__name__}, not bytes; open it in "
                "binary mode ('rb')."
            )
        shown, source, size = "the file object", io.BytesIO(data), len(data)
    else:
        path = _fspath(path, "load")
        if os.path.isdir(path):
            raise IsADirectoryError(
                f"load: {path!r} is a folder; pass the file that sb.save wrote."
            )
        if not os.path.isfile(path):
            raise FileNotFoundError(f"load: no file at {path!r}.")
        shown, source, size = repr(path), path, os.path.getsize(path)  # read lazily
    check_device(device, "load")
    if point_route not in POINT_ROUTES:
        raise ValueError(
            f"load: point_route={point_route!r} is not valid; use one of {POINT_ROUTES}."
        )
    if not zipfile.is_zipfile(source):
        raise ValueError(
            f"load: {shown} is not a surrogate_bridge file (not a zip archive; truncated or "
            "foreign). Write one with sb.save(sur, path)."
        )
    try:
        with zipfile.ZipFile(source) as zf:
            names = sorted(zf.namelist())
            if names != sorted(_MEMBERS):
                listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                raise ValueError(
                    f"load: {shown} was not written by surrogate_bridge.save: it holds "
                    f"{len(names)} members ({listed}), not {', '.join(_MEMBERS)}. Nothing in "
                    "it was read."
                )
            _check_stored(zf, size)
            meta = json.loads(zf.read("meta.json"))
            payloads = {k: zf.read(k) for k in _MEMBERS[1:]}
    except Refused as err:
        raise ValueError(f"load: {shown} is not as surrogate_bridge.save writes: {err}") from err
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(
            f"load: {shown} could not be read as a surrogate_bridge file ({err})."
        ) from err
    try:
        _check_meta(meta, payloads)
        graph = json.loads(payloads["graph.json"])
        tensors = _read_safetensors(payloads["weights.safetensors"])
        fn = SavedGraph(graph, tensors, meta["rows"] == "one_point", meta["nonsmooth"])
        dtype = _SURROGATE_DTYPES[meta["dtype"]]
        fn.check_shapes(meta["n_in"], meta["n_out"], dtype)  # before anything is computed
        scalers = {
            k: None if meta[k] is None else scaler_from_dict(_mapping(meta[k], k))
            for k in ("input_scaler", "output_scaler")
        }
    except (Refused, ValueError, TypeError, KeyError, IndexError, RecursionError) as err:
        raise ValueError(f"load: {shown} is damaged or was edited: {err}") from err
    try:
        sur = Surrogate.from_physical(  # the graph is the physical function (scalers included)
            fn,
            n_in=meta["n_in"],
            dtype=dtype,
            device=device,
            cache_size=cache_size,
            domain=meta["domain"],
            extrapolation=meta["extrapolation"],
            point_route=point_route,
            **scalers,
        )
    except (ValueError, TypeError) as err:
        raise ValueError(f"load: {shown} does not give a working surrogate: {err}") from err
    names = meta.get("feature_names")  # (absent from files of earlier versions)
    sur._names = None if names is None else tuple(names)
    return sur


def _check_stored(zf: zipfile.ZipFile, size: int) -> None:
    """Every member stored uncompressed (as save writes them), so none reads larger than the
    file: a small compressed file cannot expand into gigabytes."""
    for info in zf.infolist():
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > size:
            raise Refused(
                f"member {info.filename!r} is compressed ({info.file_size} bytes from "
                f"{info.compress_size}); save stores its members uncompressed"
            )


def _mapping(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise Refused(f"{what} is a {type(value).__name__}, not an object")
    return value


def _check_meta(meta, payloads: dict) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise Refused(what)

    need(isinstance(meta, dict), "meta.json is not an object")
    need(meta.get("format") == _FORMAT, f"format {meta.get('format')!r}, expected {_FORMAT}")
    for key in ("n_in", "n_out"):
        v = meta.get(key)
        need(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"{key}={v!r}")
    for key, allowed in (("dtype", _SURROGATE_DTYPES), ("rows", ("batched", "one_point")),
                         ("extrapolation", ("warn", "ignore", "raise"))):  # fmt: skip
        v = meta.get(key)
        need(isinstance(v, str) and v in allowed, f"{key}={v!r}")
    ops = meta.get("nonsmooth")
    need(isinstance(ops, list) and all(isinstance(o, str) for o in ops), "nonsmooth")
    for key in ("input_scaler", "output_scaler", "domain"):
        need(key in meta, f"{key} is missing")
    names = meta.get("feature_names")
    need(
        names is None
        or (
            isinstance(names, list)
            and len(names) == meta["n_in"]
            and all(isinstance(n, str) for n in names)
        ),
        "feature_names is not a list of n_in strings",
    )
    digests = meta.get("sha256")
    need(isinstance(digests, dict) and set(digests) == set(payloads), "sha256 is incomplete")
    for name, data in payloads.items():
        need(
            hashlib.sha256(data).hexdigest() == digests[name],
            f"{name} does not match its SHA-256 (the file is damaged)",
        )


# safetensors -----------------------------------------------------------------------------------
def _safetensors(tensors: dict[str, torch.Tensor]) -> bytes:
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {
            "dtype": CODES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format aligns the data to 8 bytes
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def _read_safetensors(buf: bytes) -> dict[str, torch.Tensor]:
    if len(buf) < 8:
        raise Refused("weights.safetensors is truncated")
    (n,) = struct.unpack("<Q", buf[:8])
    if n > len(buf) - 8:
        raise Refused("weights.safetensors has a header longer than the file")
    header = _mapping(json.loads(buf[8 : 8 + n]), "the weights' header")
    data = memoryview(buf)[8 + n :]
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        spec = _mapping(spec, f"weight {name!r}")
        code = spec.get("dtype")
        shape = _integers(spec.get("shape"), name, "shape")
        begin, end = _integers(spec.get("data_offsets"), name, "data_offsets", 2)
        if not (isinstance(code, str) and code in DTYPES):
            raise Refused(f"weight {name!r} has dtype {code!r}, not one of {sorted(DTYPES)}")
        dtype = DTYPES[code]
        count = 1
        for s in shape:
            count *= s
        size = count * torch.empty((), dtype=dtype).element_size()
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= len(data) or end - begin != size:
            raise Refused(f"weight {name!r} has inconsistent shape and byte range")
        raw = bytearray(data[begin:end])
        t = torch.frombuffer(raw, dtype=dtype) if size else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(shape).clone()
    return out


def _integers(value, name: str, field: str, length: int | None = None) -> list[int]:
    """A weight's shape or byte range: a list of integers (of ``length``, if given)."""
    if not (
        isinstance(value, list)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and (length is None or len(value) == length)
    ):
        want = "a list of integers" if length is None else f"a list of {length} integers"
        raise Refused(f"weight {name!r} has {field} {str(value)[:60]}, not {want}")
    return value
