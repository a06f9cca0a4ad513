"""Hidden tensors of several rows on the numpy route: a vectorized ensemble's members side by
side (``(members, 1, width)``, computed by ``bmm``, ``baddbmm`` or ``einsum`` with stacked
weights, or by ``vmap`` over ``functional_call``), a convolution's channels, a sequence of rows.

Each is read as one row of all its values (in C order, as ``reshape(-1)`` lists them), and an
operation on it as an operation on that row:

- an elementwise function (``numpy_route`` reads it as on a row: the same function);
- arithmetic (``+ - * /``, ``elementwise.BINARY``, ``maximum``, ``minimum``) of two hidden
  tensors or of a hidden tensor and a constant, broadcast as torch broadcasts: each hidden
  operand first moved to the result's shape (a :class:`numpy_ops.Gather`), a constant
  broadcast to it once, then the row's own rules;
- an operation that only moves values (a view, permute, transpose, expand, slice, selection,
  ``cat``, ``stack``, flip, roll, repeat, constant indexing, a part of ``unbind``, ``chunk`` or
  ``split``): a Gather at the positions that torch itself computes, by running the operation on
  the values' positions;
- an operation affine in its one hidden operand, the others constant (``matmul``, ``bmm``,
  ``baddbmm``, ``einsum``, ``linear``, sums and means over any axes, convolutions, average
  pooling, a running sum, constant padding): its matrix, computed once as torch's own Jacobian
  of the operation (reverse mode, so each entry is a weight as torch holds it, not a difference
  of two values), and its value at zero; where the matrix is block diagonal along the tensors'
  shared leading axes (an ensemble's ``bmm``: one block per member), the blocks alone
  (:class:`BlockLinear`), so that a matrix product costs what torch's batched one costs;
- a product of two hidden tensors with the same leading axes (attention's scores and its
  weighted values): :class:`MatMul`, bilinear, with its own curvature;
- a row operation along the last axis alone (a per-token LayerNorm or RMSNorm, attention's
  softmax, a log-sum-exp, maximum, variance or norm of each row): the row's own rule applied
  to each row (:class:`Rowwise`).

Anything else on several rows (a mask, a reduction along another axis that is not affine)
raises :class:`numpy_ops.GraphUnsupported` by name, and the other routes answer.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch

from .elementwise import BINARY
from .numpy_ops import Binary, Cat, Gather, GraphUnsupported, Larger, Linear, Product, Scale, Sum
from .physical import VIEWS

__all__ = [
    "ARITHMETIC",
    "KNOWN",
    "SPLITS",
    "BlockLinear",
    "MatMul",
    "Rowwise",
    "is_row",
    "several_rows",
    "stacked_operation",
    "stacked_part",
]

aten = torch.ops.aten

# calls that only move values: their result's values are some of their hidden operands'
_MOVES = frozenset({
    *VIEWS, aten.permute.default, aten.transpose.int, aten.t.default, aten.expand.default,
    aten.expand_as.default, aten.select.int, aten.slice.Tensor, aten.cat.default,
    aten.stack.default, aten.flip.default, aten.roll.default, aten.index.Tensor,
    aten.index_select.default, aten.gather.default, aten.repeat.default, aten.narrow.default,
    aten.movedim.int, aten.unflatten.int, aten.diagonal.default, aten.unfold.default,
    aten.pad.default, aten.reflection_pad1d.default, aten.reflection_pad2d.default,
    aten.replication_pad1d.default, aten.replication_pad2d.default,
    aten._pad_circular.default, aten.slice_scatter.default, aten.select_scatter.default,
})  # fmt: skip
# calls that cut a tensor into parts, read by the getitem calls that follow (numpy_route reads
# the same table for rows)
SPLITS = (aten.unbind.int, aten.chunk.default, aten.split.Tensor, aten.split_with_sizes.default,
          aten.unsafe_split.Tensor, aten.unsafe_split_with_sizes.default)  # fmt: skip
# calls affine in each of their tensor operands while the others are held constant
_AFFINE = frozenset({
    aten.matmul.default, aten.mm.default, aten.bmm.default, aten.baddbmm.default,
    aten.addmm.default, aten.mv.default, aten.linear.default, aten.einsum.default,
    aten.sum.dim_IntList, aten.sum.default, aten.mean.dim, aten.mean.default,
    aten.convolution.default, aten.conv1d.default, aten.conv2d.default, aten.conv3d.default,
    aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.avg_pool1d.default,
    aten.avg_pool2d.default, aten.adaptive_avg_pool1d.default,
    aten._adaptive_avg_pool2d.default, aten.adaptive_avg_pool2d.default, aten.cumsum.default,
    aten.constant_pad_nd.default, aten.trace.default,
})  # fmt: skip
# row operations, read per row where they act along the last axis alone: their argument names
_PER_ROW = {
    aten.layer_norm.default: ("input", "normalized_shape"),
    aten.rms_norm.default: ("input", "normalized_shape"),
    aten.softmax.int: ("self", "dim"), aten.log_softmax.int: ("self", "dim"),
    aten.glu.default: ("self", "dim"), aten.logsumexp.default: ("self", "dim"),
    aten.amax.default: ("self", "dim"), aten.amin.default: ("self", "dim"),
    aten.var.dim: ("self", "dim"), aten.var.correction: ("self", "dim"),
    aten.std.dim: ("self", "dim"), aten.std.correction: ("self", "dim"),
    aten.linalg_vector_norm.default: ("self", "ord", "dim"),
}  # fmt: skip
# arithmetic calls, by the name numpy_ops.Scale, Sum and Product read them under (the row's
# rules in numpy_route read the same table)
ARITHMETIC = {
    aten.add.Tensor: "add", aten.sub.Tensor: "sub", aten.mul.Tensor: "mul",
    aten.div.Tensor: "div", aten.add.Scalar: "add", aten.sub.Scalar: "sub",
    aten.mul.Scalar: "mul", aten.div.Scalar: "div", aten.rsub.Scalar: "rsub",
    aten.neg.default: "neg",
}  # fmt: skip
_LARGER = {aten.maximum.default: True, aten.minimum.default: False}
KNOWN = (
    _MOVES | set(SPLITS) | _AFFINE | set(ARITHMETIC) | set(_LARGER) | set(BINARY) | set(_PER_ROW)
)
# the largest dense map read (entries): a wider one, as a large convolution's, is refused
# rather than held as a matrix mostly of zeros
_DENSE_LIMIT = 1 << 22


def _shape(a) -> tuple[int, ...]:
    return tuple(a.meta["val"].shape)


def is_row(a) -> bool:
    """Whether the node ``a`` is a tensor of one row (all axes but the last of size 1; a call
    that returns several tensors counts as one: its parts are read one by one)."""
    val = a.meta.get("val")
    return not isinstance(val, torch.Tensor) or math.prod(val.shape[:-1]) == 1


def several_rows(node, index) -> bool:
    """Whether ``node`` makes, or reads a hidden tensor that is, a tensor of several rows."""
    hidden = [a for a in node.all_input_nodes if a.name in index]
    return any(not is_row(a) for a in (*hidden, node))


class BlockLinear:
    """h -> W_b h_b + c for each of B blocks of a row (B, i) -> (B, o): a block-diagonal
    linear map, as an ensemble's ``bmm`` with stacked weights (one block per member)."""

    second = False

    def __init__(self, W: np.ndarray, c: np.ndarray | None) -> None:
        self.W, self.c = np.ascontiguousarray(W), c
        self.B, self.o, self.i = W.shape

    def __call__(self, h):
        z = np.matmul(self.W, h.reshape(self.B, self.i, 1)).reshape(-1)
        return z if self.c is None else z + self.c

    def push(self, Ts, _):
        T = Ts[0]
        return np.matmul(self.W, T.reshape(self.B, self.i, -1)).reshape(self.B * self.o, -1)

    def pull(self, A, _):
        r = A.shape[0]
        a = A.reshape(r, self.B, self.o).transpose(1, 0, 2)  # (B, r, o)
        return (np.matmul(a, self.W).transpose(1, 0, 2).reshape(r, self.B * self.i),)


class Rowwise:
    """A row operation (a LayerNorm, softmax, log-sum-exp, maximum, variance ...) applied to
    each of ``rows`` rows of ``width`` values on their own: a per-token norm, attention's
    softmax. Its tape is the row operation's, one per row; its curvature the sum of theirs."""

    second = True

    def __init__(self, op, rows: int, width: int, width_out: int) -> None:
        self.op, self.rows, self.w, self.wo = op, rows, width, width_out

    def _ins(self, h):
        return [h[r * self.w : (r + 1) * self.w] for r in range(self.rows)]

    def _outs(self, a, r):
        return a[..., r * self.wo : (r + 1) * self.wo]

    def __call__(self, h):
        return np.concatenate([self.op(row) for row in self._ins(h)])

    def first(self, h):
        vs, ds = zip(*(self.op.first(row) for row in self._ins(h)), strict=True)
        return np.concatenate(vs), ds

    def derivatives(self, h):
        vs, ds, dds = zip(*(self.op.derivatives(row) for row in self._ins(h)), strict=True)
        return np.concatenate(vs), ds, dds

    def push(self, Ts, d):
        return np.concatenate(
            [self.op.push([T], e) for T, e in zip(self._ins(Ts[0]), d, strict=True)]
        )

    def pull(self, A, d):
        return (
            np.concatenate([self.op.pull(self._outs(A, r), e)[0] for r, e in enumerate(d)], axis=1),
        )

    def curvature(self, a, d, dd, Ts):
        T = self._ins(Ts[0])
        return sum(
            self.op.curvature(self._outs(a, r), d[r], dd[r], [T[r]]) for r in range(self.rows)
        )

    def curvature_mv(self, a, d, dd, ts):
        t = self._ins(ts[0])
        parts = [
            self.op.curvature_mv(self._outs(a, r), d[r], dd[r], [t[r]])[0] for r in range(self.rows)
        ]
        return (np.concatenate(parts, axis=-1),)


class MatMul:
    """A @ B of two hidden tensors, (G, p, q) @ (G, q, r) (attention's scores and its weighted
    values): bilinear, so the Hessian of ``a . (A B)`` pairs A's tangents with B's,
    ``X + X^T`` with ``X = sum a_gpr TA_gpq TB_gqr``."""

    second = True

    def __init__(self, G: int, p: int, q: int, r: int) -> None:
        self.G, self.p, self.q, self.r = G, p, q, r

    def _mats(self, ab):
        a, b = ab
        return a.reshape(self.G, self.p, self.q), b.reshape(self.G, self.q, self.r)

    def __call__(self, a, b):
        A, B = self._mats((a, b))
        return np.matmul(A, B).reshape(-1)

    def first(self, ab):
        A, B = self._mats(ab)
        return np.matmul(A, B).reshape(-1), (A, B)

    def derivatives(self, ab):
        y, d = self.first(ab)
        return y, d, None

    def push(self, Ts, d):
        A, B = d
        TA = Ts[0].reshape(self.G, self.p, self.q, -1)
        TB = Ts[1].reshape(self.G, self.q, self.r, -1)
        out = np.einsum("gpqc,gqr->gprc", TA, B) + np.einsum("gpq,gqrc->gprc", A, TB)
        return out.reshape(self.G * self.p * self.r, -1)

    def pull(self, Adj, d):
        A, B = d
        s = Adj.shape[0]
        Y = Adj.reshape(s, self.G, self.p, self.r)
        dA = np.einsum("sgpr,gqr->sgpq", Y, B).reshape(s, -1)
        dB = np.einsum("gpq,sgpr->sgqr", A, Y).reshape(s, -1)
        return dA, dB

    def curvature(self, a, d, dd, Ts):
        a = a.reshape(self.G, self.p, self.r)
        TA = Ts[0].reshape(self.G, self.p, self.q, -1)
        TB = Ts[1].reshape(self.G, self.q, self.r, -1)
        X = np.einsum("gqrx,gqry->xy", np.einsum("gpr,gpqx->gqrx", a, TA), TB)
        return X + X.T

    def curvature_mv(self, a, d, dd, ts):
        a = a.reshape(self.G, self.p, self.r)
        tA = ts[0][:, 0].reshape(self.G, self.p, self.q)
        tB = ts[1][:, 0].reshape(self.G, self.q, self.r)
        return (
            np.einsum("gpr,gqr->gpq", a, tB).reshape(1, -1),
            np.einsum("gpq,gpr->gqr", tA, a).reshape(1, -1),
        )


def _const(consts, a, shape, where: str):
    """A constant operand broadcast to ``shape``: a float where it is one value, else the
    result's values in C order."""
    t = consts[a.name] if isinstance(a, torch.fx.Node) else a
    if not isinstance(t, torch.Tensor):
        return float(t)
    if t.numel() == 1:
        return float(t.reshape(()).item())
    try:
        return torch.broadcast_to(t.to(torch.float64), shape).reshape(-1).numpy().copy()
    except RuntimeError as err:
        raise GraphUnsupported(f"{where}: a constant of shape {tuple(t.shape)}") from err


def _broadcast(a, j, sizes, shape, add) -> int:
    """Node ``j`` (the hidden operand ``a``) moved to ``shape`` as torch broadcasts it."""
    own = _shape(a)
    if own == tuple(shape):
        return j
    positions = torch.arange(sizes[j], dtype=torch.int64).reshape(own)
    idx = torch.broadcast_to(positions, shape).reshape(-1).numpy().astype(np.intp)
    return add(Gather(sizes[j], idx), (j,), len(idx))


def _arithmetic(node, index, consts, sizes, k: int, add, where: str):
    """h1 op h2, h op c, c op h with broadcasting (see the module's docstring)."""
    target, args, kw = node.target, node.args, node.kwargs
    shape = _shape(node)
    if target is aten.neg.default:
        return Scale("mul", -1.0), (_broadcast(args[0], index[args[0].name], sizes, shape, add),)
    if kw.get("alpha", 1) != 1 or kw.get("rounding_mode") is not None or len(args) > 2:
        raise GraphUnsupported(f"{where}: alpha or rounding mode")
    a, b = args[:2]
    hidden = [isinstance(v, torch.fx.Node) and v.name in index for v in (a, b)]
    ins = tuple(
        _broadcast(v, index[v.name], sizes, shape, add)
        for v, h in zip((a, b), hidden, strict=True)
        if h
    )
    first = hidden[0]
    c = None if all(hidden) else _const(consts, b if first else a, shape, where)
    if target in BINARY:
        return Binary(BINARY[target], (k,) * len(ins), c, first), ins
    if target in _LARGER:
        return Larger(_LARGER[target], (k,) * len(ins), c), ins
    op = ARITHMETIC[target]
    if all(hidden):
        if op in ("mul", "div"):
            return Product(op == "div", (k, k)), ins
        return Sum(1.0 if op == "add" else -1.0, (k, k)), ins
    return Scale.of(op, c, first, where), ins


def _operands(node, index, consts, hidden_value):
    """The call's arguments with each hidden tensor replaced by ``hidden_value(a)`` and each
    constant by its value in the dtype the program holds it in (an index stays integer)."""

    def value(a):
        if not isinstance(a, torch.fx.Node):
            return a
        if a.name in index:
            return hidden_value(a)
        t = consts[a.name]
        val = a.meta.get("val")
        if isinstance(t, torch.Tensor) and isinstance(val, torch.Tensor) and t.dtype != val.dtype:
            t = t.to(val.dtype)
        return t

    args = torch.fx.node.map_aggregate(node.args, value)
    kwargs = torch.fx.node.map_aggregate(node.kwargs, value)
    return args, kwargs


def _moved(node, index, consts, sizes, add, where: str, pick=None):
    """A call that only moves values: a Gather at the positions torch's own call gives the
    values' positions (the hidden operands' values side by side, a :class:`Cat` first where
    there are several); ``pick`` reads one part of a call that returns several."""
    if node.target is aten.dropout.default and (
        node.args[2] if len(node.args) > 2 else node.kwargs.get("train")
    ):
        raise GraphUnsupported(f"{where}: dropout in training mode")
    parts: list[int] = []

    def positions(a):
        j = index[a.name]
        start = 1 + sum(sizes[p] for p in parts)  # (from 1: a value the call makes up is 0)
        parts.append(j)
        return torch.arange(start, start + sizes[j], dtype=torch.float64).reshape(_shape(a))

    args, kwargs = _operands(node, index, consts, positions)
    out = node.target(*args, **kwargs)
    if pick is not None:
        out = out[pick]
    total = sum(sizes[p] for p in parts)
    if not isinstance(out, torch.Tensor) or not torch.equal(out, out.round()):
        raise GraphUnsupported(f"{where}: not a call that moves values alone")
    idx = out.reshape(-1).to(torch.int64).numpy().astype(np.intp) - 1
    if len(idx) and (idx.min() < 0 or idx.max() >= total):
        raise GraphUnsupported(f"{where}: not a call that moves values alone")
    j = parts[0] if len(parts) == 1 else add(Cat([sizes[p] for p in parts]), tuple(parts), total)
    if len(idx) == total and np.array_equal(idx, np.arange(total)):
        return None, (j,)  # the same values in the same order: a view
    return Gather(total, idx), (j,)


def _matmul(node, index, where: str):
    """A @ B of two hidden tensors with the same leading (batch) axes: :class:`MatMul`."""
    a, b = node.args[:2]
    sa, sb = _shape(a), _shape(b)
    if len(sa) < 2 or sa[:-2] != sb[:-2] or sa[-1] != sb[-2] or node.kwargs:
        raise GraphUnsupported(f"{where}: a product of hidden tensors of shapes {sa}, {sb}")
    G = math.prod(sa[:-2])
    return MatMul(G, sa[-2], sa[-1], sb[-1]), (index[a.name], index[b.name])


def _per_row(node, index, sizes, k: int, row_rule, where: str):
    """A row operation along the last axis of a tensor of several rows: the row's own rule
    (``row_rule(sizes, k)``, numpy_route's) applied to each row (:class:`Rowwise`)."""
    got = dict(zip(_PER_ROW[node.target], node.args, strict=False)) | dict(node.kwargs)
    h = got.get("input", got.get("self"))
    if not (isinstance(h, torch.fx.Node) and h.name in index):
        raise GraphUnsupported(f"{where}: not of a hidden tensor")
    shape = _shape(h)
    ndim, width = len(shape), shape[-1] if shape else 1
    if "normalized_shape" in got:
        last = len(got["normalized_shape"]) == 1
    else:
        dims = got.get("dim", -1 if node.target is aten.glu.default else None)
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        last = bool(ndim) and {d % ndim for d in dims} == {ndim - 1}
    rows = sizes[index[h.name]] // max(width, 1)
    if not last or rows * width != sizes[index[h.name]] or k % rows:
        raise GraphUnsupported(f"{where}: not along the last axis alone")
    view = list(sizes)
    view[index[h.name]] = width
    op, ins = row_rule(view, k // rows)
    if op is None:
        raise GraphUnsupported(f"{where}: not a row operation")
    return Rowwise(op, rows, width, k // rows), ins


def _affine(node, index, consts, sizes, k: int, where: str):
    """A call affine in its one hidden operand: ``Linear`` (or ``BlockLinear``) with torch's
    Jacobian of the call as its matrix and its value at zero as its offset."""
    hidden = {a.name: a for a in node.all_input_nodes if a.name in index}
    if len(hidden) == 2 and node.target in (aten.matmul.default, aten.bmm.default):
        return _matmul(node, index, where)
    if len(hidden) != 1:
        raise GraphUnsupported(f"{where}: a product of hidden tensors")
    (a,) = hidden.values()
    j, shape = index[a.name], _shape(a)

    def call(t):
        args, kwargs = _operands(node, index, consts, lambda _: t)
        return node.target(*args, **kwargs).reshape(-1)

    zero = torch.zeros(shape, dtype=torch.float64)
    _, pull = torch.func.vjp(call, zero)
    with torch.no_grad():
        offset = call(zero)
    c = None if not bool(offset.any()) else offset.numpy().copy()
    B = _shared_blocks(shape, _shape(node))
    if B > 1:  # one block per member: a pull of each output position of all blocks at once
        o, i = k // B, sizes[j] // B
        rows = torch.func.vmap(pull)(torch.eye(o, dtype=torch.float64).repeat(1, B))[0]
        blocks = rows.reshape(o, B, i).transpose(0, 1).numpy().copy()  # (B, o, i)
        op = BlockLinear(blocks, c)
        if _agrees(op, call, shape):  # else not block diagonal after all: the whole matrix
            return op, (j,)
    if sizes[j] * k > _DENSE_LIMIT:
        raise GraphUnsupported(f"{where}: a map of {sizes[j]} to {k} values, too wide to hold")
    W = torch.func.vmap(pull)(torch.eye(k, dtype=torch.float64))[0].reshape(k, sizes[j])
    return Linear(W.numpy().copy(), c), (j,)


def _shared_blocks(shape_in, shape_out) -> int:
    """The number of values along the leading axes that input and output share (but the
    last): the blocks a batched product keeps apart."""
    lead = 0
    while lead < min(len(shape_in), len(shape_out)) - 1 and shape_in[lead] == shape_out[lead]:
        lead += 1
    return math.prod(shape_in[:lead])


def _agrees(op, call, shape) -> bool:
    """Whether ``op`` computes torch's ``call`` at a random point, to rounding: blocks read
    off a map that is not block diagonal would differ by the values left out."""
    r = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = call(r).numpy()
    x = r.reshape(-1).numpy()
    got = op(x)
    scale = np.abs(op.W).sum(axis=-1).max() * np.abs(x).max() + np.abs(want).max()
    return bool(np.abs(got - want).max() <= 1e-12 * max(scale, 1.0))


def stacked_operation(node, index, consts, sizes, k: int, add, row_rule):
    """(operation or None for a view, input node indices) of a call that makes or reads a
    tensor of several rows; ``add(op, ins, size)`` appends an intermediate node (a broadcast,
    a concatenation) and returns its index; ``row_rule(sizes, k)`` reads the call as on one
    row (numpy_route's rules), for a row operation applied per row."""
    target = node.target
    where = f"{target} at {node.name}"
    if (
        any(
            a.meta["val"].dtype == torch.bool
            for a in (*node.all_input_nodes, node)
            if a.name in index
        )
        or node.meta["val"].dtype == torch.bool
    ):
        raise GraphUnsupported(f"{where}: a mask of several rows")
    constant_pad = (
        target is aten.pad.default
        and (node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant"))
        == "constant"
    )
    if target in _MOVES and not constant_pad:
        return _moved(node, index, consts, sizes, add, where)
    if target in _AFFINE or constant_pad:
        return _affine(node, index, consts, sizes, k, where)
    if target in ARITHMETIC or target in BINARY or target in _LARGER:
        return _arithmetic(node, index, consts, sizes, k, add, where)
    if target in _PER_ROW:
        return _per_row(node, index, sizes, k, row_rule, where)
    raise GraphUnsupported(f"{where}: no rule for this operation on a tensor of several rows")


def stacked_part(node, source, index, consts, sizes, add):
    """The part ``node`` (``operator.getitem``) of an unbind, chunk or split ``source`` of a
    tensor of several rows: the values it moves."""
    where = f"{source.target} at {source.name}"
    if source.target not in SPLITS or node.target is not operator.getitem:
        raise GraphUnsupported(f"{where}: on a tensor of several rows")
    return _moved(source, index, consts, sizes, add, where, pick=node.args[1])
