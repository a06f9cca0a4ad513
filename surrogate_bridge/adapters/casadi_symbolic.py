"""Translate a surrogate's exported torch graph into native CasADi MX expressions.

The physical-units function (scalers included) is captured by ``torch.export`` on one point, and
each aten operation becomes a CasADi expression through the ``OPS`` dispatch dict (an operation
without a rule there is first lowered to torch's own decomposition of it, ``lowering.py``, so
``einsum``, ``chunk``, ``pad`` and the like arrive as operations with rules). Tensors are
CasADi matrices in torch's layout: a 2-D tensor (a, b) is an (a, b) matrix, a 1-D tensor (k,) a
(1, k) row, a scalar (1, 1); a tensor of higher rank its row-major flattening (``casadi_ops``).
Weights enter as ``DM`` constants of ``mtimes`` (dense, or sparse for convolutions):
matrix-valued MX, not a scalar SX expansion (the ``hand SX`` rows of ``benchmarks/RESULTS.md``:
its Hessian costs 4.35x the MX one on a 10-256-256-1 net).
"""

from __future__ import annotations

import math

import casadi as ca
import numpy as np
import torch

from ..lowering import constant, lowered, same_function
from ..physical import ExportError, constants_of
from ..surrogate import Surrogate
from .casadi_layout import GATHERED, axis, expand, gather, positions
from .casadi_ops import FLAT_SAFE, OPS, VIEWS, Indices, reshape, shape2

__all__ = ["UnsupportedOperationError", "translate", "translate_program"]

aten = torch.ops.aten


class UnsupportedOperationError(NotImplementedError):
    """An operation of the model has no CasADi translation; the message names it and where."""


def _where(node) -> str:
    """The module path (and type) a graph node came from, for error messages."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, kind = list(stack.values())[-1]
        kind = getattr(kind, "__name__", str(kind)).split(".")[-1]
        path = path.replace("L['self'].", "").replace("L['self']", "") or "the model"
        return f"{path} ({kind})"
    trace = (node.meta.get("stack_trace") or "").strip().splitlines()
    return trace[-1].strip() if trace else "the model's forward"


def translate(sur: Surrogate, name: str) -> tuple[ca.Function, list[str]]:
    """``casadi.Function(name, [x (n, 1)], [y (m, 1)])`` built from the surrogate's graph, and
    the names of the non-smooth operations its model calls (for the smoothness warning: the
    surrogate's own finding, so that every route warns alike, and a scaling's Yeo-Johnson
    branches, smooth by construction, are not counted)."""
    try:  # one point: no vmap in the captured graph
        program = sur.export(one_point=True, dtype=torch.float64)
    except ExportError as err:
        raise UnsupportedOperationError(str(err)) from err
    probes = sur._own_function().probes(sur.n_in)
    return translate_program(program, sur.n_in, sur.n_out, name, probes), list(sur.nonsmooth_ops)


def translate_program(
    program, n_in: int, n_out: int, name: str, probes: torch.Tensor
) -> ca.Function:
    """:func:`translate` of a one-point ``torch.export`` program of n_in inputs, n_out outputs.
    Operations without a rule in ``OPS`` are first lowered to torch's own decompositions of them
    (``lowering.lowered``), where torch has one. The translation must compute what the program
    computes, to float64 rounding, at ``probes`` (k, n_in: ``PhysicalFunction.probes``), or
    it is refused: a translation that is not the same function is never handed out."""
    program = lowered(program, lambda op: op in OPS, probes)
    consts = constants_of(program, float64=False)
    x = ca.MX.sym("x", n_in)
    env: dict = {}
    output = None
    for node in program.graph.nodes:
        if node.op == "placeholder":
            if node.name in consts:
                value = consts[node.name]  # (a meta tensor holds no data and is never read:
                # a torch.func ensemble's base module, whose weights come stacked)
                meta = isinstance(value, torch.Tensor) and value.is_meta
                env[node.name] = None if meta else _dm(value)
            else:
                env[node.name] = x.T  # the user input: a (1, n) row, torch's batch of one
        elif node.op == "call_function":
            folded = constant(node, consts)
            env[node.name] = _translate_node(node, env, consts) if folded is None else _dm(folded)
        elif node.op == "output":
            output = node.args[0][0]
    y = env[output.name]
    y = reshape(y, (1, n_out)) if y.shape != (1, n_out) else y
    f = ca.Function(name, [x], [y.T], ["x"], ["y"])
    if not same_function(program, lambda p: np.asarray(f(p.numpy().reshape(-1))).T, probes):
        raise UnsupportedOperationError(
            "the CasADi translation does not compute what torch computes at probe points "
            "(an operation translated wrongly, or torch's own outputs are finite at none of "
            "them, so nothing could be checked); use mode='callback' for this model"
        )
    return f


def _dm(value):
    """A constant as the translation holds it: a tensor as its CasADi matrix (``shape2``), a
    list of tensors as a list, a number as itself."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():  # (CasADi's matrices are real)
            raise UnsupportedOperationError(
                "the model computes with complex values (a complex weight, torch.fft), which "
                "CasADi's real matrices cannot hold; use mode='callback' for this model"
            )
        t = value.detach().cpu().to(torch.float64).numpy()
        return ca.DM(t.reshape(shape2(t.shape)))
    if isinstance(value, (list, tuple)):
        return [_dm(v) for v in value]
    return value


def _shape(a) -> tuple | None:
    """A graph argument's torch shape (None for a number or a non-tensor)."""
    if isinstance(a, torch.fx.Node) and isinstance(a.meta.get("val"), torch.Tensor):
        return tuple(a.meta["val"].shape)
    return None


def _flat_safe(node, extra) -> str | None:
    """A tensor of rank 3 or more is a flat row here, so only operations that do not depend on
    its shape may touch it as they do a matrix: elementwise ones (``FLAT_SAFE``) on equal shapes
    or with single numbers, views, and the handlers that are told the shapes (convolution,
    batch_norm, sum, mean). Two more kinds are read at positions torch computes
    (``casadi_layout.gather``): a rearrangement (``GATHERED``: transpose, permute, expand,
    slice, ...), returned as ``"gather"``, an elementwise operation whose arguments
    broadcast, returned as ``"broadcast"``, and prelu's per-channel weight (``"channels"``).
    Operations along axes (``_AXIS``) and batched products (``_MATMULS``) have their own
    translations. Anything else (a scatter into a tensor, say) would compute the wrong thing: it
    is refused by name. A read at constant positions (``index``, ``gather``: ``"positions"``)
    is a gather at any rank."""
    if extra == "positions":
        return "gather"
    if extra == "solve":
        return "solve"
    if extra == "shapes":
        return None
    meta = node.meta.get("val")
    out = tuple(meta.shape) if isinstance(meta, torch.Tensor) else ()
    shapes = [s for s in map(_shape, node.args) if s is not None]
    if max(map(len, [out, *shapes])) < 3:
        return None
    if node.target in GATHERED:
        return "gather"
    if node.target in _AXIS:
        return "axis"
    if node.target in _MATMULS:
        return "batched"
    if node.target is aten.prelu.default:
        return "channels"
    if node.target not in FLAT_SAFE:
        raise ValueError(f"{node.target} on a tensor of rank 3 or more (shapes {shapes})")
    if node.target in VIEWS or not isinstance(meta, torch.Tensor):  # (a run-time check)
        return None
    if any(math.prod(shape) != 1 and shape != out for shape in shapes):
        return "broadcast"
    return None


def _gathered(node, env, consts):
    """A rearrangement (``GATHERED``) of one tensor, or a concatenation of several, as a read
    at the positions that torch's own operation gives when applied to ``arange`` of the
    tensors' shapes (numbered one after the other); a split into pieces, as one read each; a
    read at positions the model holds (``index``, ``gather``: their values in ``consts``); a
    padding, as a read of the fill value (one position past the tensor's) where it pads; a
    ``slice_scatter`` or ``select_scatter``, as a read of the tensor and the values it receives,
    side by side."""
    first = node.args[0]

    def fixed(a):
        if a.name not in consts:
            raise ValueError(f"{node.target} at positions computed from the input")
        return consts[a.name]

    scatter = node.target in (aten.slice_scatter.default, aten.select_scatter.default)
    rest, kwargs = torch.fx.node.map_arg((node.args[1 + scatter :], node.kwargs), fixed)
    kwargs = dict(kwargs)
    parts = list(
        node.args[:2] if scatter else first if isinstance(first, (list, tuple)) else [first]
    )
    if not all(_shape(p) is not None for p in parts):
        raise ValueError(f"{node.target} of a number")
    shapes = [_shape(p) for p in parts]
    sizes = [math.prod(shape) for shape in shapes]
    offsets = np.cumsum([0, *sizes])
    index = [positions(shape) + int(o) for o, shape in zip(offsets, shapes, strict=False)]
    flat = ca.horzcat(*[reshape(env[p.name], (1, k)) for p, k in zip(parts, sizes, strict=True)])
    arg = index if isinstance(first, (list, tuple)) else index[0]
    if scatter:  # (the tensor and the values it receives: both positions)
        arg, rest = index[0], (index[1], *rest)
    numel = int(offsets[-1])
    if node.target is aten.constant_pad_nd.default:  # the fill value: one more position
        value = kwargs.pop("value", rest[1] if len(rest) > 1 else 0.0)
        flat, rest, numel = ca.horzcat(flat, float(value)), (rest[0], numel), numel + 1
    with torch.no_grad():
        at = node.target(arg, *rest, **kwargs)
    if isinstance(at, (list, tuple)):  # a split: one read per piece
        return [gather(flat, (numel,), piece) for piece in at]
    return gather(flat, (numel,), at)


# operations along one axis of a tensor: "last", or the index of their dim argument. On a tensor
# of rank 3 or more, the axis is moved last (a gather), the tensor viewed as the matrix of its
# lines along it (row-major: a plain reshape), and the rank-2 rule applied to that matrix
_AXIS = {
    aten.linear.default: "last", aten.layer_norm.default: "last",
    aten.softmax.int: 1, aten._softmax.default: 1, aten.log_softmax.int: 1,
    aten._log_softmax.default: 1, aten.cumsum.default: 1, aten.amax.default: 1,
    aten.amin.default: 1, aten.all.dim: 1, aten.any.dim: 1, aten.sort.default: 1,
    aten.topk.default: 2, aten.kthvalue.default: 2, aten.median.dim: 1, aten.max.dim: 1,
    aten.min.dim: 1, aten.cumprod.default: 1, aten.logcumsumexp.default: 1,
    aten.cummax.default: 1, aten.cummin.default: 1,
}  # fmt: skip
_LAST = {aten.sort.default, aten.topk.default, aten.kthvalue.default}  # (dim=-1 by default)
_MATMULS = {aten.matmul.default, aten.bmm.default}
_SELECTIONS = {  # operations that return (values, indices), or (solution, factors, ...)
    aten.sort.default, aten.topk.default, aten.kthvalue.default, aten.median.dim, aten.max.dim,
    aten.min.dim, aten.cummax.default, aten.cummin.default, aten._linalg_solve_ex.default,
    aten.linalg_inv_ex.default,
}  # fmt: skip


def _along_axis(node, env, val, handler, extra, kwargs):
    """An ``_AXIS`` operation on a tensor of rank 3 or more: its rank-2 rule on the matrix
    whose rows are the tensor's lines along its axes (moved last: a reduction over several
    axes, a LayerNorm over the last few), the result put back in torch's order."""
    x, where = node.args[0], _AXIS[node.target]
    shape = _shape(x)
    rank = len(shape)
    args = [val(a) for a in node.args]
    if where == "last":
        k = len(node.args[1]) if node.target is aten.layer_norm.default else 1
        dims = list(range(rank - k, rank))
        if k > 1:  # layer_norm over the last k axes: one normalized shape of their size
            size = math.prod(shape[rank - k :])
            args[1] = [size]
            args[2:4] = [a if a is None else reshape(a, (1, size)) for a in args[2:4]]
    else:
        dim = node.args[where] if len(node.args) > where else node.kwargs.get("dim")
        if dim is None and node.target in _LAST:
            dim = -1
        dims = sorted({axis(d, rank) for d in ([dim] if isinstance(dim, int) else dim or [])})
        dims = dims or list(range(rank))  # no dims: every one (the batch axis holds one point)
        args += [None] * (where + 1 - len(args))
        args[where] = 1 if isinstance(dim, int) else [1]  # the matrix's columns
        kwargs.pop("dim", None)
    last = list(range(rank - len(dims), rank))
    index = positions(shape).movedim(dims, last)
    rest = tuple(index.shape[: rank - len(dims)])
    rows, size = math.prod(rest), math.prod(shape[d] for d in dims)
    args[0] = reshape(gather(env[x.name], shape, index), (rows, size))
    if extra == "rank":
        kwargs["rank"] = 2
    meta = node.meta["val"]
    if isinstance(meta, (list, tuple)):  # (values, indices): the values are put back, the
        meta = meta[0]  # indices kept as the handler gave them (refused where used)
    out_shape = tuple(meta.shape)
    cols = math.prod(out_shape) // rows
    y = handler((rows, cols), *args, **kwargs)
    if isinstance(y, tuple):
        return (_put_back(y[0], rows, cols, rest, shape, dims, out_shape), *y[1:])
    return _put_back(y, rows, cols, rest, shape, dims, out_shape)


def _put_back(y, rows, cols, rest, shape, dims, out_shape):
    """The result of a rank-2 rule on the matrix of a tensor's lines, in torch's order."""
    last = list(range(len(shape) - len(dims), len(shape)))
    if cols == 1:  # the axes reduced (or of size 1): wherever they go, the order is the same
        return reshape(y, shape2(out_shape))
    if len(dims) == 1:  # (a linear layer changes the axis' length)
        moved = positions((*rest, cols)).movedim(-1, dims[0])
    elif cols == math.prod(shape[d] for d in dims):
        moved = positions((*rest, *(shape[d] for d in dims))).movedim(last, dims)
    else:
        raise ValueError(f"an operation over dimensions {dims} giving {out_shape}")
    return gather(reshape(y, (1, rows * cols)), (rows * cols,), moved)


def _batched_matmul(node, env):
    """matmul or bmm of tensors of rank 2 or more, one of them of rank 3 or more: a matrix
    product per batch entry (the batch axes broadcast as torch broadcasts them)."""
    a, b = node.args[:2]
    sa, sb = _shape(a), _shape(b)
    if sa is None or sb is None or len(sa) < 2 or len(sb) < 2:
        raise ValueError(f"{node.target} of shapes {sa} and {sb}")
    batch = tuple(torch.broadcast_shapes(sa[:-2], sb[:-2]))
    (m, k), n = sa[-2:], sb[-1]
    count = math.prod(batch)
    flats = [  # each operand broadcast over the batch, one flat row
        reshape(
            expand(env[t.name], shape, (*batch, *shape[-2:])), (1, count * math.prod(shape[-2:]))
        )
        for t, shape in ((a, sa), (b, sb))
    ]
    blocks = []
    for i in range(count):
        A = reshape(flats[0][0, i * m * k : (i + 1) * m * k], (m, k))
        B = reshape(flats[1][0, i * k * n : (i + 1) * k * n], (k, n))
        blocks.append(reshape(ca.mtimes(A, B), (1, m * n)))
    return reshape(ca.horzcat(*blocks), shape2(node.meta["val"].shape))


_INVERSES = {aten.linalg_inv.default, aten.linalg_inv_ex.default}


def _solved(node, env):
    """``linalg_solve(A, B)``, ``_linalg_solve_ex``'s solution, ``linalg_inv(A)`` and
    ``linalg_inv_ex``'s inverse (their LU factors, pivots and info refused where read):
    ``A X = B`` (B the identity for an inverse) per system of the batch, broadcast as torch
    does (B a vector per system where it has one axis fewer than A), each by CasADi's symbolic
    ``solve``, whose derivatives are exact."""
    a = node.args[0]
    sa = _shape(a)
    inverse = node.target in _INVERSES
    b = None if inverse else node.args[1]
    left = inverse or (node.args[2] if len(node.args) > 2 else node.kwargs.get("left", True))
    sb = sa if inverse else _shape(b)
    if sa is None or sb is None or len(sa) < 2 or not left:
        raise ValueError(f"a system of shapes {sa} and {sb}" + ("" if left else ", X A = B"))
    n, vector = sa[-1], len(sb) == len(sa) - 1
    k = 1 if vector else sb[-1]
    batch = tuple(torch.broadcast_shapes(sa[:-2], (sb[:-1] if vector else sb[:-2])))
    count = math.prod(batch)
    flat_a = reshape(expand(env[a.name], sa, (*batch, n, n)), (1, count * n * n))
    if not inverse:
        tail = (n,) if vector else (n, k)
        flat_b = reshape(expand(env[b.name], sb, (*batch, *tail)), (1, count * n * k))
    blocks = []
    for i in range(count):
        A = reshape(flat_a[0, i * n * n : (i + 1) * n * n], (n, n))
        B = ca.DM.eye(n) if inverse else reshape(flat_b[0, i * n * k : (i + 1) * n * k], (n, k))
        blocks.append(reshape(ca.solve(A, B), (1, n * k)))
    meta = node.meta["val"]
    X = reshape(ca.horzcat(*blocks), shape2((meta[0] if isinstance(meta, tuple) else meta).shape))
    if not isinstance(meta, tuple):
        return X
    return (X, Indices("linalg_inv")) if inverse else (X, Indices("linalg_solve"), None, None)


def _broadcast_args(node, args: list) -> list:
    """Tensor arguments of an elementwise operation broadcast to its output's shape (torch's
    rules), each as a read at the positions ``torch.broadcast_to`` gives."""
    out = tuple(node.meta["val"].shape)
    done = []
    for a, v in zip(node.args, args, strict=True):
        shape = _shape(a)
        if shape is not None and shape != out and math.prod(shape) != 1:
            v = expand(v, shape, out)
        done.append(v)
    return done


def _op_name(target) -> str:
    name = str(target)
    if name.startswith("aten."):
        return name[len("aten.") :].split(".")[0]
    return getattr(target, "__name__", name)


def _translate_node(node, env, consts):
    target = node.target
    entry = OPS.get(target)
    op_name = _op_name(target)
    if entry is None:
        raise UnsupportedOperationError(
            f"operation aten.{op_name} ({target}) in {_where(node)} has no CasADi translation; "
            "use mode='callback' for this model"
        )
    handler, extra = entry

    def val(a):
        if isinstance(a, torch.fx.Node):
            if isinstance(env[a.name], Indices):
                raise ValueError(
                    f"the positions {env[a.name].op} returns are used: a read at positions "
                    "computed from the input"
                )
            return env[a.name]
        if isinstance(a, (list, tuple)):
            return type(a)(val(b) for b in a)
        return a

    def rank(a):
        return len(a.meta["val"].shape) if isinstance(a, torch.fx.Node) else 0

    meta = node.meta.get("val")
    try:
        out = shape2(meta.shape) if isinstance(meta, torch.Tensor) else (1, 1)
        if target in _SELECTIONS:  # (values, indices): the values' shape
            out = shape2(meta[0].shape)
        kwargs = dict(node.kwargs)
        for k in ("memory_format", "layout", "device", "pin_memory", "non_blocking", "copy"):
            kwargs.pop(k, None)
        if extra == "rank":
            kwargs["rank"] = rank(node.args[0])
        elif extra == "shapes":
            kwargs["shapes"] = [_shape(a) for a in node.args]
        elif extra == "ranks":
            first = node.args[0]
            kwargs["ranks"] = (
                [rank(a) for a in first]
                if isinstance(first, (list, tuple))
                else [rank(a) for a in node.args[:2]]
            )
        flat = _flat_safe(node, extra)
        if flat == "gather":
            result = _gathered(node, env, consts)
        elif flat == "axis":
            result = _along_axis(node, env, val, handler, extra, kwargs)
        elif flat == "batched":  # (bmm's operands are always of rank 3)
            result = _batched_matmul(node, env)
        elif flat == "solve":
            result = _solved(node, env)
        else:
            args = [val(a) for a in node.args]
            if flat == "broadcast":
                args = _broadcast_args(node, args)
            elif flat == "channels":  # prelu's weight (C,) or (1,) along axis 1, as torch has it
                shape, w = _shape(node.args[0]), _shape(node.args[1])
                if w is not None and math.prod(w) > 1:
                    channels = (1, math.prod(w)) + (1,) * (len(shape) - 2)
                    args[1] = expand(args[1], channels, shape)
            result = handler(out, *args, **kwargs)
    except (ValueError, TypeError, RuntimeError, NotImplementedError, IndexError) as err:
        raise UnsupportedOperationError(
            f"operation aten.{op_name} in {_where(node)} could not be translated ({err}); "
            "use mode='callback' for this model"
        ) from err
    return result
