"""Save a Surrogate to one file and load it back without the model's Python class, safely.

A saved file is data, never code: loading it unpickles nothing and evaluates nothing. The file is
a zip archive of three members:

* ``weights.safetensors``: every weight in the safetensors layout (an 8-byte header length, a
  JSON header of names, dtypes, shapes and byte ranges, then raw little-endian bytes), read with
  ``torch.frombuffer``;
* ``graph.json``: the physical function (scalers included, as the surrogate computes it)
  captured by ``torch.export`` and written as a list of aten operations with their arguments.
  Loading rebuilds it as a small interpreter module that calls only the operations of an
  allowed list (``_ALLOWED``), so a file cannot name a Python function to run;
* ``meta.json``: format, shapes, dtype, domain, scalers (for reference), flags, and the SHA-256
  of the two other members: a damaged or edited payload is refused before it is read.

A model the surrogate evaluates point by point (written for one point, or mixing rows) is saved
as its one-point graph and evaluated under ``torch.func.vmap`` after loading.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import struct
import zipfile
from functools import cache

import torch
from torch import nn

from .arguments import check_device
from .normalization import Affine
from .physical import Batched, ExportError
from .surrogate import Surrogate

__all__ = ["load", "save"]

_FORMAT = 2
_MEMBERS = ("meta.json", "graph.json", "weights.safetensors")
_DTYPES = {  # safetensors' dtype codes
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
_CODES = {v: k for k, v in _DTYPES.items()}
_SURROGATE_DTYPES = {
    str(d): d for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
}
_FORMATS = {"contiguous_format": torch.contiguous_format, "preserve_format": torch.preserve_format}
_PYTHON_OPS = {  # shape arithmetic that torch.export records for a dynamic batch
    "getitem": operator.getitem, "add": operator.add, "sub": operator.sub,
    "mul": operator.mul, "floordiv": operator.floordiv, "truediv": operator.truediv,
    "neg": operator.neg,
}  # fmt: skip
# aten operations a saved graph may call: pure tensor math, shapes and run-time checks
_ALLOWED = frozenset(
    """linear addmm mm bmm matmul mv t transpose permute numpy_T add sub rsub mul div neg pow
    square sqrt rsqrt reciprocal exp exp2 log log2 log10 log1p expm1 sin cos tan asin acos atan
    atan2 sinh cosh tanh sigmoid silu softplus elu selu celu gelu erf abs sign relu relu6
    leaky_relu hardtanh hardswish hardsigmoid mish log_sigmoid prelu threshold clamp clamp_min
    clamp_max maximum minimum where sum mean amax amin prod softmax _softmax log_softmax
    _log_softmax layer_norm native_layer_norm batch_norm _native_batch_norm_legit_no_training
    linalg_vector_norm norm conv1d conv2d convolution cat concat stack split split_with_sizes
    chunk unbind slice select index index_select gather narrow view reshape _unsafe_view
    unsqueeze squeeze flatten expand expand_as repeat flip clone alias detach contiguous _to_copy
    to lift_fresh_copy dropout full full_like zeros zeros_like ones ones_like scalar_tensor
    sym_size _assert_tensor_metadata _assert_scalar _assert_async sym_constrain_range
    sym_constrain_range_for_size""".split()
)


def save(sur: Surrogate, path: str | os.PathLike) -> None:
    """Write ``sur`` to one file at ``path``: weights, graph and metadata, all data.

    Parameters
    ----------
    sur : Surrogate
    path : str or os.PathLike
        Conventionally ending in ``.sbz``; the folder must exist.

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
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"save: the folder {folder!r} does not exist; create it first.")
    batched = type(sur.function.rows) is Batched  # else the one-point graph, run under vmap
    try:
        program = sur.export(one_point=not batched)
    except ExportError as err:
        raise ValueError(f"save: {err}") from err
    graph, tensors = _graph_to_data(program)
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
        "sha256": {k: hashlib.sha256(v).hexdigest() for k, v in payloads.items()},
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("meta.json", json.dumps(meta, indent=1))
        for name, data in payloads.items():
            zf.writestr(name, data)


def load(path: str | os.PathLike, *, device=None, cache_size: int = 128) -> Surrogate:
    """Read a file written by :func:`save`; the model's Python class is not needed.

    Trusted: nothing. The file is parsed as data (JSON and raw numbers); no byte of it is
    unpickled or evaluated, its graph may call only the aten operations of an allowed list,
    and its payloads must match the SHA-256 recorded in its metadata. A file that fails any
    check is refused with a ``ValueError`` before a surrogate is built. The hashes detect damage,
    not a forger, who could rewrite them: the guarantee against a hostile file is that it
    cannot run code, not that its numbers are the ones you saved.

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
        If the file is not a surrogate_bridge file, or is truncated, damaged or edited.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load: no file at {path!r}.")
    check_device(device, "load")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"load: {path!r} is not a surrogate_bridge file (not a zip archive; truncated or "
            "foreign). Write one with sb.save(sur, path)."
        )
    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(zf.namelist())
            if names != sorted(_MEMBERS):
                shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                raise ValueError(
                    f"load: {path!r} was not written by surrogate_bridge.save: it holds "
                    f"{len(names)} members ({shown}), not {', '.join(_MEMBERS)}. Nothing in it "
                    "was read."
                )
            meta = json.loads(zf.read("meta.json"))
            payloads = {k: zf.read(k) for k in _MEMBERS[1:]}
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"load: {path!r} could not be read as a surrogate_bridge file ({err})."
        ) from err
    try:
        _check_meta(meta, payloads)
        graph = json.loads(payloads["graph.json"])
        tensors = _read_safetensors(payloads["weights.safetensors"])
        fn = SavedGraph(graph, tensors, one_point=meta["rows"] == "one_point")
        scalers = {
            k: None if meta[k] is None else Affine.from_dict(meta[k])
            for k in ("input_scaler", "output_scaler")
        }
    except (_Refused, ValueError, TypeError, KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"load: {path!r} is damaged or was edited: {err}") from err
    try:
        return Surrogate.from_physical(  # the graph is the physical function (scalers included)
            fn,
            n_in=meta["n_in"],
            nonsmooth_ops=meta["nonsmooth"],  # the graph's aten ops hide the activations' names
            dtype=_SURROGATE_DTYPES[meta["dtype"]],
            device=device,
            cache_size=cache_size,
            domain=meta["domain"],
            extrapolation=meta["extrapolation"],
            **scalers,
        )
    except (ValueError, TypeError) as err:
        raise ValueError(f"load: {path!r} does not give a working surrogate: {err}") from err


class _Refused(Exception):
    """A check of a loaded file failed; the message says which."""


def _check_meta(meta, payloads: dict) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise _Refused(what)

    need(isinstance(meta, dict), "meta.json is not an object")
    need(meta.get("format") == _FORMAT, f"format {meta.get('format')!r}, expected {_FORMAT}")
    for key in ("n_in", "n_out"):
        v = meta.get(key)
        need(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"{key}={v!r}")
    need(meta.get("dtype") in _SURROGATE_DTYPES, f"dtype={meta.get('dtype')!r}")
    need(meta.get("rows") in ("batched", "one_point"), f"rows={meta.get('rows')!r}")
    ops = meta.get("nonsmooth")
    need(isinstance(ops, list) and all(isinstance(o, str) for o in ops), "nonsmooth")
    need(meta.get("extrapolation") in ("warn", "ignore", "raise"), "extrapolation")
    for key in ("input_scaler", "output_scaler", "domain"):
        need(key in meta, f"{key} is missing")
    digests = meta.get("sha256")
    need(isinstance(digests, dict) and set(digests) == set(payloads), "sha256 is incomplete")
    for name, data in payloads.items():
        need(
            hashlib.sha256(data).hexdigest() == digests[name],
            f"{name} does not match its SHA-256 (the file is damaged)",
        )


# graph <-> data -------------------------------------------------------------------------------
def _graph_to_data(program) -> tuple[dict, dict[str, torch.Tensor]]:
    """The exported program as JSON-able nodes, and its weights by placeholder name."""
    state = {**program.state_dict, **program.constants}
    tensors, user_inputs = {}, []
    for spec in program.graph_signature.input_specs:
        if spec.kind.name == "USER_INPUT":
            user_inputs.append(spec.arg.name)
        else:
            value = state[spec.target]
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"save: {spec.target} is a {type(value).__name__}, not a tensor.")
            tensors[spec.arg.name] = value.detach().cpu().contiguous()
    nodes, output = [], None
    for node in program.graph.nodes:
        if node.op == "call_function":
            target = _target_name(node.target)
            nodes.append([node.name, target, _encode(node.args), _encode(dict(node.kwargs))])
        elif node.op == "output":
            (out,) = node.args[0]
            output = out.name
    return {"input": user_inputs[0], "nodes": nodes, "output": output}, tensors


def _target_name(target) -> str:
    name = str(target)
    if name.startswith("aten.") and name.split(".")[1] in _ALLOWED:
        return name
    py = getattr(target, "__name__", "")
    if getattr(target, "__module__", "") in ("_operator", "operator") and py in _PYTHON_OPS:
        return f"operator.{py}"
    raise ValueError(
        f"save: the model's graph calls {name}, which a saved file may not contain (only plain "
        "aten tensor operations are saved, so that loading can never run code)."
    )


def _encode(a):
    if isinstance(a, torch.fx.Node):
        return {"node": a.name}
    if a is None or isinstance(a, (bool, int, float, str)):
        return a
    if isinstance(a, (list, tuple)):
        return [_encode(b) for b in a]
    if isinstance(a, dict):
        return {"kwargs": {k: _encode(v) for k, v in a.items()}}
    if isinstance(a, torch.dtype):
        return {"dtype": _CODES[a]}
    if isinstance(a, torch.device):
        return {"device": None}  # the loading surrogate's device
    if isinstance(a, torch.memory_format):
        return {"memory_format": str(a).removeprefix("torch.")}
    if isinstance(a, torch.layout):
        return {"layout": "strided"}
    raise ValueError(f"save: a graph argument of type {type(a).__name__} cannot be saved.")


def _decode(a, env: dict, device):
    if isinstance(a, list):
        return [_decode(b, env, device) for b in a]
    if not isinstance(a, dict):
        return a
    ((kind, value),) = a.items()
    if kind == "node":
        return env[value]
    if kind == "kwargs":
        return {k: _decode(v, env, device) for k, v in value.items()}
    if kind == "dtype":
        return _DTYPES[value]
    if kind == "device":
        return device
    if kind == "memory_format":
        return _FORMATS[value]
    if kind == "layout":
        return torch.strided
    raise _Refused(f"unknown argument kind {kind!r}")


_KINDS = {"node", "kwargs", "dtype", "device", "memory_format", "layout"}


def _check_arg(a, known: set) -> None:
    """An encoded argument is plain JSON, or a tagged value of a known kind whose node exists."""
    if isinstance(a, list):
        for b in a:
            _check_arg(b, known)
    elif isinstance(a, dict):
        if len(a) != 1 or next(iter(a)) not in _KINDS:
            raise _Refused(f"unknown argument {str(a)[:60]}")
        ((kind, value),) = a.items()
        ok = {
            "node": lambda: value in known,
            "kwargs": lambda: isinstance(value, dict),
            "dtype": lambda: value in _DTYPES,
            "memory_format": lambda: value in _FORMATS,
        }.get(kind, lambda: True)()
        if not ok:
            raise _Refused(f"argument {str(a)[:60]} refers to nothing known")
        if kind == "kwargs":
            for v in value.values():
                _check_arg(v, known)
    elif not (a is None or isinstance(a, (bool, int, float, str))):
        raise _Refused(f"argument of type {type(a).__name__}")


@cache
def _op(target: str):
    """An allowed operation by name; anything else is refused."""
    parts = target.split(".")
    if parts[0] == "operator" and len(parts) == 2 and parts[1] in _PYTHON_OPS:
        return _PYTHON_OPS[parts[1]]
    if parts[0] != "aten" or len(parts) != 3 or parts[1] not in _ALLOWED:
        raise _Refused(f"the graph calls {target!r}, which is not an allowed operation")
    packet = getattr(torch.ops.aten, parts[1])
    if parts[2] not in packet.overloads():
        raise _Refused(f"aten.{parts[1]} has no overload {parts[2]!r}")
    return getattr(packet, parts[2])


class SavedGraph(nn.Module):
    """A loaded graph: (N, n_in) -> (N, n_out), interpreted node by node from data.

    Every target was checked against the allowed operations when the module was built; the
    weights are buffers. ``one_point`` graphs were captured on a single (1, n_in) point and run
    here under ``torch.func.vmap``.
    """

    def __init__(self, graph: dict, tensors: dict[str, torch.Tensor], one_point: bool) -> None:
        super().__init__()
        if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
            raise _Refused("graph.json has no node list")
        self._names = {}
        for i, (name, t) in enumerate(tensors.items()):
            self.register_buffer(f"w{i}", t)
            self._names[name] = f"w{i}"
        self.input, self.output, self.one_point = graph["input"], graph["output"], one_point
        self.nodes = []
        known = {self.input, *self._names}
        for node in graph["nodes"]:  # refuse anything malformed now, not at the first call
            name, target, args, kwargs = node
            _op(target)
            _check_arg(args, known)
            _check_arg(kwargs, known)
            if not isinstance(args, list) or not (isinstance(kwargs, dict) and "kwargs" in kwargs):
                raise _Refused(f"node {name!r} has malformed arguments")
            self.nodes.append((str(name), target, args, kwargs))
            known.add(str(name))
        if self.output not in known:
            raise _Refused(f"the graph's output {self.output!r} is not one of its nodes")

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        env = {name: getattr(self, attr) for name, attr in self._names.items()}
        env[self.input] = x
        for name, target, args, kwargs in self.nodes:
            env[name] = _op(target)(*_decode(args, env, x.device), **_decode(kwargs, env, x.device))
        return env[self.output]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.one_point:
            return torch.func.vmap(lambda r: self._run(r[None])[0])(x)
        return self._run(x)


# safetensors -----------------------------------------------------------------------------------
def _safetensors(tensors: dict[str, torch.Tensor]) -> bytes:
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {
            "dtype": _CODES[t.dtype],
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
        raise _Refused("weights.safetensors is truncated")
    (n,) = struct.unpack("<Q", buf[:8])
    if n > len(buf) - 8:
        raise _Refused("weights.safetensors has a header longer than the file")
    header = json.loads(buf[8 : 8 + n])
    data = memoryview(buf)[8 + n :]
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES[spec["dtype"]]
        shape = [int(s) for s in spec["shape"]]
        begin, end = (int(b) for b in spec["data_offsets"])
        count = 1
        for s in shape:
            count *= s
        size = count * torch.empty((), dtype=dtype).element_size()
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= len(data) or end - begin != size:
            raise _Refused(f"weight {name!r} has inconsistent shape and byte range")
        raw = bytearray(data[begin:end])
        t = torch.frombuffer(raw, dtype=dtype) if size else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(shape).clone()
    return out
