"""A numpy single-point route: the hand-written forward and reverse pass that a user would
write for an MLP, read off the surrogate's exported one-point graph.

It covers *layer graphs*: every hidden tensor is one row of values, and every operation on hidden
tensors is either linear in them (a linear layer; arithmetic with a constant, such as the scalers;
an eval-mode batch norm; the sum or difference of two hidden rows, as in a residual connection, or
of a row and a single value; a concatenation or stack; rows stacked on a new axis and summed or
averaged over it, as a deep ensemble's members are (``numpy_ops.Pool``); a slice of the last axis or
values at constant positions, such as ``x[:, 0]``, the parts of ``x.unbind(-1)``, of ``chunk`` or
of ``split``, a flip or a roll; a running sum (``CumSum``); a single value broadcast along the row
(``expand``); dropout in eval mode; the sum or mean of a row; a view), an elementwise function
with known first and second derivatives (``elementwise.ACTIVATIONS``: activations, PReLU, clamp
(bounds numbers or per-value constants), powers, logarithms, roots, trigonometric and hyperbolic
functions, erf, logit), the product or quotient of two hidden rows of one length, or of a row and a
single value (a gate, a DeepONet's dot product, a softmax by hand), their atan2, hypot, pow or xlogy
(or a row's with a constant: ``elementwise.BINARY``, ``numpy_ops.Binary``), a ``torch.where`` on a
comparison of the row or a row times such a mask (a hand-written leaky ReLU; a saved softshrink;
``numpy_ops.Compare``, ``Select``: the mask has no derivative), the maximum or minimum of two rows
or of a row and a constant, and the greatest or least value of a row (``Larger``, ``Peak``: the
winner's derivative, shared at a tie as torch shares it), the values of a sort, top-k, k-th
value, median, cummax or cummin of the row (``Picked``: each the derivatives of the input it
holds, at torch's positions), or a LayerNorm, RMSNorm, softmax,
log-softmax, log-sum-exp, GLU, variance, standard deviation or Euclidean norm of the whole row
(``numpy_ops.Norm``, ``Softmax``, ``LogSumExp``, ``Glu``, ``Spread``, in closed form). Operations on
constants alone, and calls whose values depend on a hidden tensor's shape alone (``zeros_like``),
are computed once, by torch itself (a weight's transpose, say); a ``torch.where`` on a constant
mask is a fixed choice per value (``Choose``). A graph with an operation no rule here reads
(:func:`knows`) is read again after torch's own decomposition of it (``lowering.lowered``: a
lerp, an addcmul, a prod), where that is the same function. Anything else (a broadcast of rows
into a matrix, a sort, a tensor of several rows, a mask used otherwise) raises
:class:`GraphUnsupported`, and the other routes answer.

With node values ``h_i`` (``h_0 = x``) and the output ``y``:

- value and Jacobian: one forward pass and one reverse pass of the adjoints ``A_i = dy/dh_i``
  (m rows), summed where a tensor feeds several operations;
- Hessian of output r: ``sum_s T_s^T M_s(A_s[r]) T_s`` over the nonlinear operations s
  (functions, products, norms), where ``T_s`` is the Jacobian of their inputs, carried forward
  (n columns), and ``M_s(a)`` the Hessian of ``a . s(h)`` (``diag(a * sigma'')`` for an
  elementwise function). Every other operation is linear in the hidden tensors, so this sum is
  the whole Hessian;
- Hessian-vector product: a forward tangent and one reverse sweep (no n columns).

Every product is numpy's (BLAS), so a wide net costs what a hand-written numpy evaluation
costs; ``routes.MeasuredRoute`` keeps this route for a kind of request only where it measured
faster than the others and agreed with torch at the probe point.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch

from .elementwise import ACTIVATIONS, BINARY, _base_power, _clamp, _leaky_relu
from .numpy_ops import (
    Activation,
    Binary,
    Cat,
    Choose,
    Compare,
    CumSum,
    Gather,
    Glu,
    GraphUnsupported,
    Larger,
    Linear,
    LogSumExp,
    Norm,
    Peak,
    PerFeature,
    Picked,
    Pool,
    Product,
    Scale,
    Select,
    Softmax,
    Spread,
    Sum,
    Total,
)
from .numpy_tensors import ARITHMETIC as _ARITHMETIC
from .numpy_tensors import KNOWN as _ON_SEVERAL_ROWS
from .numpy_tensors import SPLITS as _SPLITS
from .numpy_tensors import is_row, several_rows, stacked_operation, stacked_part
from .physical import VIEWS, constants_of

__all__ = ["GraphUnsupported", "NumpyPointRoute", "knows", "read_graph"]

aten = torch.ops.aten
_LINEAR = (aten.linear.default, aten.addmm.default, aten.mm.default, aten.matmul.default)


_NORMS = (aten.layer_norm.default, aten.rms_norm.default)
_DROPOUTS = (aten.dropout.default, aten.alpha_dropout.default, aten.feature_alpha_dropout.default,
             aten.feature_dropout.default)  # fmt: skip
_ROW_WISE = (aten.softmax.int, aten.log_softmax.int, aten.glu.default)
_MEANS = (aten.mean.dim, aten.mean.default)
_REDUCTIONS = (aten.sum.dim_IntList, aten.sum.default, *_MEANS)
# the greatest or least value: amax, amin, max and min over every axis (max.dim and min.dim,
# whose values are read by a getitem, in read_graph)
_PEAKS = {aten.amax.default: True, aten.amin.default: False, aten.max.default: True,
          aten.min.default: False, aten.max.dim: True, aten.min.dim: False}  # fmt: skip
_SPREADS = {  # variances and standard deviations: (the root taken, the argument names)
    aten.var.dim: (False, ("self", "dim", "unbiased", "keepdim")),
    aten.var.correction: (False, ("self", "dim")),
    aten.var.default: (False, ("self", "unbiased")),
    aten.std.dim: (True, ("self", "dim", "unbiased", "keepdim")),
    aten.std.correction: (True, ("self", "dim")),
    aten.std.default: (True, ("self", "unbiased")),
}
_COMPARISONS = {
    getattr(getattr(aten, name), overload): f
    for name, f in (("gt", np.greater), ("ge", np.greater_equal), ("lt", np.less),
                    ("le", np.less_equal), ("eq", np.equal), ("ne", np.not_equal))
    for overload in ("Scalar", "Tensor")
}  # fmt: skip
_CLAMP_TENSORS = {  # their bounds, by position
    aten.clamp.Tensor: ("min", "max"), aten.clip.Tensor: ("min", "max"),
    aten.clamp_min.Tensor: ("min",), aten.clamp_max.Tensor: ("max",),
}  # fmt: skip
_WHERE = (aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar)
# calls whose values depend on a hidden tensor's shape alone: constants (torch.where(h > 0, h,
# torch.zeros_like(h)), say)
_SHAPE_ONLY = (aten.zeros_like.default, aten.ones_like.default, aten.full_like.default,
               aten.new_zeros.default, aten.new_ones.default, aten.new_full.default)  # fmt: skip
# a maximum or minimum along an axis: its values are read by the getitem calls that follow, as
# the parts of a split (numpy_tensors.SPLITS) are
_BY_DIM = (aten.max.dim, aten.min.dim)
# (values, positions) of the values picked along a row: their values are read by getitem
_SELECTING = (aten.sort.default, aten.topk.default, aten.kthvalue.default, aten.median.dim,
              aten.cummax.default, aten.cummin.default)  # fmt: skip


def knows(target) -> bool:
    """Whether some rule of this route reads the operation ``target`` (in some of its uses: a
    known operation used otherwise is still refused by name). An operation no rule reads is
    lowered to torch's own decomposition of it first (``lowering.lowered``), where torch has
    one: a lerp, an addcmul or a prod then reaches the route in operations it reads."""
    return target in _KNOWN


_KNOWN = frozenset({
    *ACTIVATIONS, *BINARY, *_LINEAR, *_ARITHMETIC, *_NORMS, *_DROPOUTS, *_ROW_WISE, *_REDUCTIONS,
    *_COMPARISONS, *_CLAMP_TENSORS, *_WHERE, *_SHAPE_ONLY, *_SPLITS, *_BY_DIM, *_SELECTING,
    *_PEAKS, *_SPREADS,
    *VIEWS, aten.logsumexp.default, aten.copy.default, aten.copy_.default, aten.select.int,
    aten.slice.Tensor, aten.pow.Scalar, aten.prelu.default, aten.index.Tensor,
    aten.index_select.default, aten.stack.default, aten.cat.default, aten.batch_norm.default,
    aten.linalg_vector_norm.default, aten.maximum.default, aten.minimum.default,
    aten.expand.default, aten.expand_as.default, aten.flip.default, aten.roll.default,
    aten.cumsum.default, *_ON_SEVERAL_ROWS,
})  # fmt: skip


# reading the graph ------------------------------------------------------------------------------
def read_graph(program, n: int, m: int) -> tuple[list, int]:
    """The operations ``[(op, input indices)]`` of a one-point ``torch.export`` program of n
    inputs and m outputs (node 0 is the input), and the output's index, if it is a layer graph
    (see the module's docstring); else :class:`GraphUnsupported` naming the operation."""
    consts: dict[str, object] = dict(constants_of(program))
    index: dict[str, int] = {}  # a hidden tensor's name -> its node
    parted: dict[str, torch.fx.Node] = {}  # unbind, chunk and split calls on hidden rows
    stacked: dict[str, torch.fx.Node] = {}  # hidden rows stacked into several rows
    nodes: list = [(None, ())]
    sizes = [n]
    out = None

    def add(op, ins: tuple, size: int) -> int:  # an intermediate node (a broadcast, say)
        nodes.append((op, ins))
        sizes.append(size)
        return len(nodes) - 1

    for node in program.graph.nodes:
        if node.op == "placeholder":
            if node.name in consts:
                continue
            if not index:
                index[node.name] = 0
            else:
                raise GraphUnsupported("more than one input")
        elif node.op == "call_function":
            inputs = node.all_input_nodes
            if node.target is operator.getitem and not node.users:
                continue  # a part never read (the positions of h.max(dim), say)
            if node.target in _SPLITS + _BY_DIM + _SELECTING and _hidden(node.args[0], index):
                parted[node.name] = node  # (read by the getitem calls that follow)
                continue
            if _rows_stacked(node, index):
                stacked[node.name] = node  # (read by the reduction over them that follows)
                continue
            if node.target in _SHAPE_ONLY and _hidden(node.args[0], index):
                consts[node.name] = _shape_only(node, consts)
                continue
            if not any(a.name in index or a.name in parted or a.name in stacked for a in inputs):
                if not all(a.name in consts for a in inputs):
                    raise GraphUnsupported(f"{node.target} at {node.name}: an unknown operand")

                def value(a):
                    return consts[a.name] if isinstance(a, torch.fx.Node) else a

                args = torch.fx.node.map_aggregate(node.args, value)
                kwargs = torch.fx.node.map_aggregate(node.kwargs, value)
                consts[node.name] = node.target(*args, **kwargs)  # constants only: computed once
                continue
            k = _values(node)
            try:
                if node.target is operator.getitem and node.args[0].name in parted:
                    source = parted[node.args[0].name]
                    if not is_row(source.args[0]):
                        op, ins = stacked_part(node, source, index, consts, sizes, add)
                    else:
                        op, ins = _part(node, source, index, k)
                elif node.target in _REDUCTIONS and node.args[0].name in stacked:
                    op, ins = _pool(node, stacked[node.args[0].name], index, sizes, k)
                elif several_rows(node, index) and node.target not in ACTIVATIONS:
                    op, ins = stacked_operation(
                        node, index, consts, sizes, k, add,
                        lambda view, width, node=node: _operation(node, index, consts, view, width),
                    )  # fmt: skip
                else:
                    op, ins = _operation(node, index, consts, sizes, k)
            except (KeyError, IndexError, AttributeError, TypeError) as err:  # an odd operand
                raise GraphUnsupported(f"{node.target} at {node.name}: {err!r}") from err
            if op is None:  # a view: the same values under another name
                index[node.name] = ins[0]
                continue
            index[node.name] = len(nodes)
            nodes.append((op, ins))
            sizes.append(k)
        elif node.op == "output":
            outs = node.args[0]
            if len(outs) != 1 or not isinstance(outs[0], torch.fx.Node):
                raise GraphUnsupported("more than one output")
            out = index.get(outs[0].name)
    if out is None or sizes[out] != m:
        raise GraphUnsupported(f"the output is not a hidden tensor of {m} values")
    return nodes, out


def _hidden(a, index) -> bool:
    """Whether the argument ``a`` is a hidden tensor (a node the route computes)."""
    return isinstance(a, torch.fx.Node) and a.name in index


def _values(node) -> int:
    """The number of values of a hidden tensor: a row's (all axes but the last of size 1), or
    a tensor of several rows' (read as one row by ``numpy_tensors``)."""
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise GraphUnsupported(f"{node.target} at {node.name}: not a tensor")
    return int(val.numel())


def _const(consts, a, k: int, where: str):
    """A constant operand as numpy: a float, or a (k,) vector along the row's values."""
    t = consts[a.name] if isinstance(a, torch.fx.Node) else a
    if not isinstance(t, torch.Tensor):
        return float(t)
    if t.numel() == 1:
        return float(t.reshape(()).item())
    if t.numel() != k or (t.ndim > 1 and math.prod(t.shape[:-1]) != 1):
        raise GraphUnsupported(f"{where}: a constant of shape {tuple(t.shape)} on {k} values")
    return t.to(torch.float64).reshape(k).numpy().copy()


def _named(node, names: tuple) -> dict:
    """A call's arguments by name: its positional ones under ``names``, and its keywords."""
    return dict(zip(names, node.args, strict=False)) | dict(node.kwargs)


def _param(a):
    """A function's parameter: a string or None as it is, a number as a float (a tensor, such
    as clamp's bounds given as tensors, is refused by the caller's TypeError)."""
    if a is None or isinstance(a, str):
        return a
    if isinstance(a, torch.fx.Node):
        raise TypeError("a parameter computed in the graph")
    return float(a)


def _vector(consts, a, k: int, where: str):
    """An optional constant operand as a (k,) vector, or None."""
    if a is None:
        return None
    c = _const(consts, a, k, where)
    return np.full(k, c) if np.ndim(c) == 0 else c


def _operation(node, index, consts, sizes, k: int):
    """(operation or None for a view, input node indices) of one call on hidden tensors."""
    target, args, kw = node.target, node.args, node.kwargs
    where = f"{target} at {node.name}"

    def hidden(a):
        return _hidden(a, index)

    masks = [a for a in node.all_input_nodes if hidden(a) and a.meta["val"].dtype == torch.bool]
    if target in _COMPARISONS:
        return _compare(node, index, consts, sizes, k, where)
    if target in _WHERE or (masks and target is aten.mul.Tensor):
        return _select(node, index, consts, sizes, k, where)
    if masks:
        raise GraphUnsupported(f"{where}: a mask (a comparison's result) used by this operation")
    if target in (aten.copy.default, aten.copy_.default):
        # an in-place call: src's values (a later read of the overwritten tensor would differ
        # from torch at the probe points, and the route is then refused: same_as_torch)
        j = index[args[1].name]
        if k != sizes[j]:
            raise GraphUnsupported(f"{where}: a copy that broadcasts")
        return None, (j,)
    if target is aten.select.int and hidden(args[0]):
        return _pick(args[0], args[1], args[2], index, k, where)
    if target in VIEWS or target in _DROPOUTS or target is aten.slice.Tensor:
        j = index[args[0].name]
        if target in _DROPOUTS and (args[2] if len(args) > 2 else kw.get("train")):
            raise GraphUnsupported(f"{where}: dropout in training mode")
        if target is aten.slice.Tensor:
            return _slice(node, j, sizes[j], k, where)
        if k != sizes[j]:
            raise GraphUnsupported(f"{where}: changes the number of values")
        return None, (j,)
    if target in ACTIVATIONS:
        if not hidden(args[0]) or k != sizes[index[args[0].name]]:
            raise GraphUnsupported(f"{where}: not elementwise on a hidden tensor")
        params = tuple(_param(a) for a in args[1:])
        kwparams = {key: _param(a) for key, a in kw.items()}
        return Activation(ACTIVATIONS[target], params, kwparams), (index[args[0].name],)
    if target in _LINEAR:
        return _linear(node, index, consts, sizes, k, where)
    if target in _NORMS:
        return _norm(node, index, consts, sizes, k, where)
    if target is aten.batch_norm.default:
        return _batch_norm(node, index, consts, sizes, k, where)
    if target in _ROW_WISE:
        h, dim = args[0], (args[1] if len(args) > 1 else kw.get("dim", -1))
        if not hidden(h) or dim % h.meta["val"].ndim != h.meta["val"].ndim - 1:
            raise GraphUnsupported(f"{where}: not along the last axis of a hidden row")
        if target is aten.glu.default:
            return Glu(k), (index[h.name],)
        if (len(args) > 2 and args[2] not in (None, False)) or kw.get("dtype") is not None:
            raise GraphUnsupported(f"{where}: with a dtype")
        return Softmax(log=target is aten.log_softmax.int), (index[h.name],)
    if target in _CLAMP_TENSORS:  # per-value bounds: constants, one or per value
        if not hidden(args[0]):
            raise GraphUnsupported(f"{where}: not on a hidden row")
        bounds = _named(node, ("x", *_CLAMP_TENSORS[target]))
        lo, hi = (None if bounds.get(b) is None else _const(consts, bounds[b], k, where)
                  for b in ("min", "max"))  # fmt: skip
        return Activation(_clamp, (lo, hi), {}), (index[args[0].name],)
    if target is aten.pow.Scalar:  # base ** h, a constant base
        base = args[0]
        if not hidden(args[1]) or isinstance(base, torch.fx.Node) or not float(base) > 0:
            raise GraphUnsupported(f"{where}: not a positive constant to a hidden row's power")
        return Activation(_base_power, (float(base),), {}), (index[args[1].name],)
    if target is aten.prelu.default:  # a leaky ReLU whose slope is a weight (one, or per value)
        if not hidden(args[0]):
            raise GraphUnsupported(f"{where}: not on a hidden row")
        slope = _const(consts, args[1], k, where)
        return Activation(_leaky_relu, (slope,), {}), (index[args[0].name],)
    if target in (aten.index.Tensor, aten.index_select.default):
        return _gather(node, index, consts, sizes, k, where)
    if target in (aten.expand.default, aten.expand_as.default) and hidden(args[0]):
        j = index[args[0].name]
        if sizes[j] == k:  # new axes of size 1: the same row
            return None, (j,)
        return Gather(1, np.zeros(k, dtype=np.intp)), (j,)  # a single value along the row
    if target in (aten.flip.default, aten.roll.default, aten.cumsum.default):
        return _along_row(node, index, sizes, where)
    if target in _REDUCTIONS or target is aten.logsumexp.default:
        return _total(node, index, sizes, k, where)
    if target in _PEAKS:
        return _peak(node, index, sizes, k, where)
    if target in (aten.maximum.default, aten.minimum.default):
        return _larger(node, index, consts, sizes, k, where)
    if target in BINARY:
        return _binary(node, index, consts, sizes, k, where)
    if target in _SPREADS or target is aten.linalg_vector_norm.default:
        return _spread(node, index, sizes, k, where)
    if target is aten.stack.default:
        parts, ndim = args[0], node.meta["val"].ndim
        dim = (args[1] if len(args) > 1 else kw.get("dim", 0)) % ndim
        if not all(hidden(a) for a in parts):
            raise GraphUnsupported(f"{where}: not hidden tensors alone")
        ins = tuple(index[a.name] for a in parts)
        if len(ins) == 1:  # a new axis of size 1: the same row
            return None, ins
        if dim != ndim - 1 or any(sizes[j] != 1 for j in ins):
            raise GraphUnsupported(f"{where}: not single values side by side")
        return Cat([1] * len(ins)), ins
    if target is aten.cat.default:
        dim = args[1] if len(args) > 1 else kw.get("dim", 0)
        parts = args[0]
        ndim = node.meta["val"].ndim
        if dim not in (-1, ndim - 1) or not all(hidden(a) for a in parts):
            raise GraphUnsupported(f"{where}: not hidden rows side by side")
        ins = tuple(index[a.name] for a in parts)
        return Cat([sizes[j] for j in ins]), ins
    op = _ARITHMETIC.get(target)
    if op is None:
        raise GraphUnsupported(f"{where}: no numpy rule for this operation")
    if op == "neg":
        return Scale("mul", -1.0), (index[args[0].name],)
    if kw.get("alpha", 1) != 1 or kw.get("rounding_mode") is not None or len(args) > 2:
        raise GraphUnsupported(f"{where}: alpha or rounding mode")
    if hidden(args[0]) and hidden(args[1]):
        i, j = index[args[0].name], index[args[1].name]
        if not {sizes[i], sizes[j]} <= {1, k}:  # equal rows, or a single value broadcast
            raise GraphUnsupported(f"{where}: hidden tensors that broadcast")
        if op in ("mul", "div"):
            return Product(op == "div", (sizes[i], sizes[j])), (i, j)
        return Sum(1.0 if op == "add" else -1.0, (sizes[i], sizes[j])), (i, j)
    first = hidden(args[0])
    j = index[(args[0] if first else args[1]).name]
    if sizes[j] != k:
        raise GraphUnsupported(f"{where}: a constant that broadcasts the row")
    c = _const(consts, args[1] if first else args[0], k, where)
    return Scale.of(op, c, first, where), (j,)


def _pair(node, index, consts, sizes, k: int, where: str):
    """The operands of a function of two rows: ``(ins, None, True)`` for two hidden rows of one
    length or a single value, or ``((j,), c, hidden_first)`` for a hidden row and a constant
    ``c`` (one, or one per value; ``hidden_first``: the row is the first operand)."""
    a, b = node.args[:2]
    first = _hidden(a, index)
    if first and _hidden(b, index):
        ins = (index[a.name], index[b.name])
        if not {sizes[i] for i in ins} <= {1, k}:
            raise GraphUnsupported(f"{where}: hidden tensors that broadcast")
        return ins, None, True
    j = index[(a if first else b).name]
    if sizes[j] != k:
        raise GraphUnsupported(f"{where}: a constant that broadcasts the row")
    return (j,), _const(consts, b if first else a, k, where), first


def _compare(node, index, consts, sizes, k: int, where: str):
    """h > c, c <= h, h1 == h2, ...: a mask of the row (a hidden row against a constant, or two
    hidden rows of one length or a single value)."""
    ins, c, first = _pair(node, index, consts, sizes, k, where)
    return Compare(_COMPARISONS[node.target], c, first), ins


def _select(node, index, consts, sizes, k: int, where: str):
    """torch.where(mask, a, b) with a mask of the row (from :func:`_compare`) and branches that
    are hidden rows or constants; or h * mask."""

    def hidden(v):
        return _hidden(v, index)

    if node.target is aten.mul.Tensor:
        mask, h = sorted(node.args[:2], key=lambda v: v.meta["val"].dtype != torch.bool)
        if not hidden(h) or h.meta["val"].dtype == torch.bool:
            raise GraphUnsupported(f"{where}: a product of masks")
        branches, product = (h, 0.0), True
    else:
        mask, *branches = node.args[:3]
        product = False
    # a constant condition (as in torch's lerp, decomposed): a fixed choice per value
    fixed = isinstance(mask, torch.fx.Node) and mask.name in consts and not product
    if not fixed and not (hidden(mask) and mask.meta["val"].dtype == torch.bool):
        raise GraphUnsupported(f"{where}: a condition that is not a mask of the row")
    ins, kept = ([] if fixed else [index[mask.name]]), []
    for v in branches:
        if hidden(v):
            if sizes[index[v.name]] != k:
                raise GraphUnsupported(f"{where}: a branch that broadcasts")
            ins.append(index[v.name])
            kept.append(None)
        else:
            kept.append(_const(consts, v, k, where))
    if fixed:
        choice = consts[mask.name].to(torch.bool).reshape(-1).numpy()
        return Choose(np.broadcast_to(choice, (k,)).copy(), tuple(kept)), tuple(ins)
    if len(ins) == 1 or sizes[ins[0]] not in (1, k):
        raise GraphUnsupported(f"{where}: a selection between constants, or a broadcast mask")
    return Select(tuple(kept), product), tuple(ins)


def _gather(node, index, consts, sizes, k: int, where: str):
    """h[..., idx] (index with None before the last axis) or index_select(h, last axis, idx)
    with a constant integer idx."""
    h, args = node.args[0], node.args
    if not _hidden(h, index):
        raise GraphUnsupported(f"{where}: not an index into a hidden row")
    ndim = h.meta["val"].ndim
    if node.target is aten.index_select.default:
        dim, idx = args[1] % ndim, args[2]
    else:
        positions = [i for i, a in enumerate(args[1]) if a is not None]
        dim, idx = (positions[0], args[1][positions[0]]) if len(positions) == 1 else (None, None)
    t = consts.get(idx.name) if isinstance(idx, torch.fx.Node) else None
    # (constants_of hands integer buffers over in float64: their values are whole numbers)
    if dim != ndim - 1 or t is None or t.ndim != 1 or not torch.equal(t, t.round()):
        raise GraphUnsupported(f"{where}: not a constant 1-D index into the last axis")
    j = index[h.name]
    positions = t.to(torch.int64).numpy() % sizes[j]
    if len(positions) != k:
        raise GraphUnsupported(f"{where}: an index of unexpected length")
    return Gather(sizes[j], positions.astype(np.intp)), (j,)


def _along_row(node, index, sizes, where: str):
    """h.flip(dims), h.roll(shifts, dims) or h.cumsum(dim) of a row: along its last axis a
    permutation of its values or their running sum; along the other axes (of size 1), the
    row itself."""
    args, kw = node.args, node.kwargs
    h = args[0]
    if not _hidden(h, index):
        raise GraphUnsupported(f"{where}: not on a hidden row")
    ndim, j = h.meta["val"].ndim, index[h.name]
    k = sizes[j]
    if node.target is aten.roll.default:
        got = _named(node, ("self", "shifts", "dims"))
        shifts, dims = list(got["shifts"]), list(got.get("dims") or [])
        # no dims: the flattened tensor rolls, a row's values
        shift = sum(s for s, d in zip(shifts, dims or [-1], strict=True) if d % ndim == ndim - 1)
        return (Gather(k, np.roll(np.arange(k), shift)), (j,)) if shift % k else (None, (j,))
    if node.target is aten.flip.default:
        if ndim - 1 in {d % ndim for d in args[1]}:
            return Gather(k, np.arange(k)[::-1].copy()), (j,)
        return None, (j,)
    if kw.get("dtype") is not None:
        raise GraphUnsupported(f"{where}: a running sum with a dtype")
    return (CumSum(), (j,)) if args[1] % ndim == ndim - 1 else (None, (j,))


def _reduced_axes(node, ndim: int, where: str) -> set[int] | None:
    """The axes (of ``ndim``) that a sum, mean or log-sum-exp ``node`` reduces, or None for
    every axis; a reduction with a dtype is refused."""
    args, kw = node.args, node.kwargs
    if kw.get("dtype") is not None or (len(args) > 3 and args[3] is not None):
        raise GraphUnsupported(f"{where}: a reduction with a dtype")
    dims = args[1] if len(args) > 1 else kw.get("dim")
    if dims is None or len(dims) == 0 or ndim == 0:
        return None
    return {d % ndim for d in dims}


def _total(node, index, sizes, k: int, where: str):
    """sum or mean over some axes of a row: over its last axis, a row of one value; over
    leading axes of size 1 alone, the same row."""
    h = node.args[0]
    if not _hidden(h, index):
        raise GraphUnsupported(f"{where}: not a reduction of a hidden row")
    j, ndim = index[h.name], h.meta["val"].ndim
    dims = _reduced_axes(node, ndim, where)
    if dims is not None and (ndim - 1) not in dims:
        return None, (j,)  # axes of size 1: the same values
    if k != 1:
        raise GraphUnsupported(f"{where}: a reduction to {k} values")
    if node.target is aten.logsumexp.default:
        return LogSumExp(), (j,)
    return Total(sizes[j], node.target in _MEANS), (j,)


def _peak(node, index, sizes, k: int, where: str, source=None):
    """amax or amin (and max or min, over every axis or, as ``source``, over ``dim`` with its
    values read by ``node``) of a row, over its last axis: one value (:class:`Peak`); over axes
    of size 1 alone, the row itself."""
    call = source if source is not None else node
    h = call.args[0]
    if not _hidden(h, index):
        raise GraphUnsupported(f"{where}: not of a hidden row")
    if source is not None and node.args[1] != 0:
        raise GraphUnsupported(f"{where}: the positions of a maximum (integers)")
    ndim, j = h.meta["val"].ndim, index[h.name]
    dims = call.args[1] if len(call.args) > 1 else call.kwargs.get("dim", [])
    dims = {d % ndim for d in ([dims] if isinstance(dims, int) else dims)} or set(range(ndim))
    if ndim - 1 not in dims:
        return None, (j,)
    if k != 1:
        raise GraphUnsupported(f"{where}: a reduction to {k} values")
    return Peak(_PEAKS[call.target], first=source is not None), (j,)


def _larger(node, index, consts, sizes, k: int, where: str):
    """maximum(a, b) or minimum(a, b): of hidden rows of one length or a single value, or of a
    hidden row and a constant (one, or one per value)."""
    ins, c, _ = _pair(node, index, consts, sizes, k, where)
    return Larger(node.target is aten.maximum.default, tuple(sizes[i] for i in ins), c), ins


def _binary(node, index, consts, sizes, k: int, where: str):
    """atan2, hypot, pow or xlogy (``elementwise.BINARY``) of hidden rows of one length or a
    single value, or of a hidden row and a constant (one, or one per value)."""
    ins, c, first = _pair(node, index, consts, sizes, k, where)
    return Binary(BINARY[node.target], tuple(sizes[i] for i in ins), c, first), ins


def _spread(node, index, sizes, k: int, where: str):
    """var or std (any correction) or the Euclidean norm of a row, over its last axis: one
    value (:class:`numpy_ops.Spread`); over axes of size 1 alone, a row of zero spreads and
    norms of single values, which this route leaves to the others."""
    h = node.args[0]
    if not _hidden(h, index):
        raise GraphUnsupported(f"{where}: not of a hidden row")
    ndim, j = h.meta["val"].ndim, index[h.name]
    if node.target is aten.linalg_vector_norm.default:
        got = _named(node, ("self", "ord", "dim", "keepdim"))
        if float(got.get("ord", 2)) != 2.0 or got.get("dtype") is not None:
            raise GraphUnsupported(f"{where}: a norm other than the Euclidean one")
        root, center, correction = True, False, 0.0
    else:
        root, names = _SPREADS[node.target]
        got, center = _named(node, names), True
        correction = got.get("correction")
        if correction is None:
            correction = 1.0 if got.get("unbiased", True) else 0.0
    dims = got.get("dim")
    if dims is not None and not isinstance(dims, (list, tuple)):
        dims = [dims]
    if k != 1 or (dims and ndim - 1 not in {d % ndim for d in dims}):
        raise GraphUnsupported(f"{where}: not over the whole row")
    n = sizes[j]
    return Spread(n, center, n - float(correction) if center else 1.0, root), (j,)


def _rows_stacked(node, index) -> bool:
    """Whether ``node`` stacks hidden rows into a tensor of several rows (an ensemble's
    members' outputs), which only a sum or mean over the stacking axis may read."""
    if node.target is not aten.stack.default:
        return False
    parts, val = node.args[0], node.meta.get("val")
    return (
        len(parts) > 1
        and all(u.target in _REDUCTIONS for u in node.users)
        and all(_hidden(a, index) for a in parts)
        and isinstance(val, torch.Tensor)
        and math.prod(val.shape[:-1]) != 1
    )


def _pool(node, source, index, sizes, k: int):
    """sum or mean over the stacking axis of hidden rows stacked by ``source`` (and over axes
    of size 1): the sum or mean of the rows."""
    where = f"{node.target} at {node.name}"
    parts, shape = source.args[0], tuple(source.meta["val"].shape)
    stack_dim = source.args[1] if len(source.args) > 1 else source.kwargs.get("dim", 0)
    stack_dim %= len(shape)
    dims = _reduced_axes(node, len(shape), where)
    if dims is None or stack_dim not in dims or any(shape[d] != 1 for d in dims - {stack_dim}):
        raise GraphUnsupported(f"{where}: not a reduction over the stacking axis alone")
    ins = tuple(index[a.name] for a in parts)
    if any(sizes[j] != k for j in ins):
        raise GraphUnsupported(f"{where}: rows of unequal length")
    return Pool(len(ins), node.target in _MEANS), ins


def _slice(node, j: int, k_in: int, k: int, where: str):
    args = node.args
    dim = args[1] if len(args) > 1 else 0
    start, stop = (args[2] if len(args) > 2 else None), (args[3] if len(args) > 3 else None)
    step = args[4] if len(args) > 4 else 1
    ndim = node.meta["val"].ndim
    if dim in (-1, ndim - 1):
        lo, hi, st = slice(start, stop, step).indices(k_in)
        if len(range(lo, hi, st)) != k:
            raise GraphUnsupported(f"{where}: a slice of unexpected length")
        return Gather(k_in, slice(lo, hi, st)), (j,)
    if k != k_in:  # a leading axis of size 1, kept whole: the same row
        raise GraphUnsupported(f"{where}: a slice of a leading axis")
    return None, (j,)


def _part(node, source, index, k: int):
    """The i-th part of ``h.unbind(dim)``, ``h.chunk(c, dim)`` or ``h.split(s, dim)``
    (``source``), read by ``node``: an unbind's part is a selection (:func:`_pick`), a chunk's
    or split's a slice of the row, or along an axis of size 1 the row itself."""
    where = f"{source.target} at {source.name}"
    h, i = source.args[0], node.args[1]
    dim = source.args[-1] if len(source.args) > 2 else source.kwargs.get("dim", 0)
    if source.target in _BY_DIM:  # (values, positions) of a maximum or minimum
        return _peak(node, index, None, k, where, source)
    if source.target in _SELECTING:
        return _selected(node, source, index, k, where)
    if source.target is aten.unbind.int:
        dim = source.args[1] if len(source.args) > 1 else source.kwargs.get("dim", 0)
        return _pick(h, dim, i, index, k, where)
    shape, pieces = tuple(h.meta["val"].shape), source.meta["val"]
    j, dim = index[h.name], dim % len(shape)
    if shape[dim] == 1:
        return None, (j,)
    if dim != len(shape) - 1:
        raise GraphUnsupported(f"{where}: parts along an axis of {shape[dim]}")
    start = sum(int(p.shape[dim]) for p in pieces[:i])
    if int(pieces[i].shape[dim]) != k:
        raise GraphUnsupported(f"{where}: a part of unexpected length")
    return Gather(shape[-1], slice(start, start + k)), (j,)


def _selected(node, source, index, k: int, where: str):
    """The values of a sort, top-k, k-th value, median, cummax or cummin (``source``) of a row
    along its last axis, read by ``node``: :class:`Picked` at the positions torch picks (the
    stable order, the later of equal running maxima); reading their positions is refused."""
    if node.args[1] != 0:
        raise GraphUnsupported(f"{where}: the positions it picks (integers)")
    target, h = source.target, source.args[0]
    names = {
        aten.sort.default: ("self", "dim", "descending"),
        aten.topk.default: ("self", "k", "dim", "largest", "sorted"),
        aten.kthvalue.default: ("self", "k", "dim", "keepdim"),
        aten.median.dim: ("self", "dim", "keepdim"),
    }.get(target, ("self", "dim"))
    got = _named(source, names)
    ndim = h.meta["val"].ndim
    if got.get("dim", -1) % ndim != ndim - 1:
        raise GraphUnsupported(f"{where}: along an axis other than the row's")
    n = int(h.meta["val"].shape[-1])

    def order(v, descending=False):
        return np.argsort(-v if descending else v, kind="stable")

    if target is aten.sort.default:
        descending = bool(got.get("descending", False))
        return Picked(n, lambda v: order(v, descending)), (index[h.name],)
    if target is aten.topk.default:
        if not got.get("sorted", True):
            raise GraphUnsupported(f"{where}: unsorted (its order is torch's own)")
        count, largest = int(got["k"]), bool(got.get("largest", True))
        return Picked(n, lambda v: order(v, largest)[:count]), (index[h.name],)
    if target in (aten.kthvalue.default, aten.median.dim):
        at = int(got["k"]) - 1 if target is aten.kthvalue.default else (n - 1) // 2
        return Picked(n, lambda v: order(v)[at : at + 1]), (index[h.name],)
    running = np.maximum if target is aten.cummax.default else np.minimum
    steps = np.arange(n)

    def records(v):  # the latest position holding the running extreme, as torch's
        return np.maximum.accumulate(np.where(v == running.accumulate(v), steps, 0))

    return Picked(n, records), (index[h.name],)


def _shape_only(node, consts) -> torch.Tensor:
    """The value of a call whose values depend on its hidden operand's shape alone (zeros_like,
    full_like, new_ones ...): computed once, by torch, on a stand-in of that shape."""
    val = node.args[0].meta["val"]
    stand_in = torch.zeros(tuple(val.shape), dtype=val.dtype)

    def value(a):
        return consts[a.name] if isinstance(a, torch.fx.Node) else a

    args = torch.fx.node.map_aggregate(node.args[1:], value)
    kwargs = torch.fx.node.map_aggregate(node.kwargs, value)
    return node.target(stand_in, *args, **kwargs)


def _pick(h, dim: int, i: int, index, k: int, where: str):
    """h.select(dim, i), or the i-th part of h.unbind(dim) (``x[:, i]``, ``a, b = x.unbind(-1)``
    of a row): along the row's own axis, its i-th value; along an axis of size 1, the row."""
    shape = tuple(h.meta["val"].shape)
    j, dim = index[h.name], dim % len(shape)
    if dim == len(shape) - 1:
        if k != 1:
            raise GraphUnsupported(f"{where}: a selection of {k} values")
        return Gather(shape[-1], slice(i % shape[-1], i % shape[-1] + 1)), (j,)
    if shape[dim] != 1:
        raise GraphUnsupported(f"{where}: a selection along an axis of {shape[dim]}")
    return None, (j,)


def _linear(node, index, consts, sizes, k: int, where: str):
    target, args, kw = node.target, node.args, node.kwargs
    if target is aten.addmm.default:
        b, h, W = args[0], args[1], consts[args[2].name].T
        if kw.get("beta", 1) != 1 or kw.get("alpha", 1) != 1:
            raise GraphUnsupported(f"{where}: scaled addmm")
    elif target is aten.linear.default:
        h, W, b = args[0], consts[args[1].name], args[2] if len(args) > 2 else None
    else:  # mm, matmul: a product with a matrix, or with a vector (one value: h @ v)
        W = consts[args[1].name]
        if W.ndim not in (1, 2):
            raise GraphUnsupported(f"{where}: a product with a tensor of shape {tuple(W.shape)}")
        h, W, b = args[0], (W[None] if W.ndim == 1 else W.T), None
    if not _hidden(h, index):
        raise GraphUnsupported(f"{where}: the hidden tensor is not the left operand")
    j = index[h.name]
    shape = tuple(h.meta["val"].shape)
    if W.ndim != 2 or W.shape[1] != sizes[j] or W.shape[0] != k or shape[-1:] != (sizes[j],):
        raise GraphUnsupported(f"{where}: weight of shape {tuple(W.shape)} on {shape}")
    return Linear(W.to(torch.float64).numpy().copy(), _vector(consts, b, k, where)), (j,)


def _norm(node, index, consts, sizes, k: int, where: str):
    """layer_norm(h, shape, w, b, eps, cudnn) or rms_norm(h, shape, w, eps) over the row."""
    layer = node.target is aten.layer_norm.default
    names = ("input", "normalized_shape", "weight", "bias", "eps")
    got = _named(node, names if layer else names[:3] + names[4:])
    h = got["input"]
    if not _hidden(h, index) or sizes[index[h.name]] != k:
        raise GraphUnsupported(f"{where}: not a normalization of a hidden row")
    if list(got["normalized_shape"]) != [k]:
        raise GraphUnsupported(f"{where}: normalizes over {list(got['normalized_shape'])}")
    w, b = (_vector(consts, got.get(a), k, where) for a in ("weight", "bias"))
    eps = got.get("eps", 1e-5 if layer else None)
    if eps is None:  # rms_norm's default: the machine epsilon of the dtype
        eps = torch.finfo(node.meta["val"].dtype).eps
    return Norm(k, layer, w, b, float(eps)), (index[h.name],)


def _batch_norm(node, index, consts, sizes, k: int, where: str):
    """batch_norm(h, weight, bias, mean, var, training, momentum, eps, cudnn) in eval mode on one
    row of features: a per-feature affine map."""
    got = _named(node, ("input", "weight", "bias", "running_mean", "running_var", "training",
                        "momentum", "eps"))  # fmt: skip
    h = got["input"]
    if got["training"]:
        raise GraphUnsupported(f"{where}: batch statistics (training mode)")
    if not _hidden(h, index) or h.meta["val"].ndim != 2:
        raise GraphUnsupported(f"{where}: not a batch norm of a row of features")

    def vector(name):
        a = got.get(name)
        return None if a is None else torch.as_tensor(consts[a.name], dtype=torch.float64)

    weight, bias, mean, var = map(vector, ("weight", "bias", "running_mean", "running_var"))
    if mean is None or var is None or mean.numel() != k:
        raise GraphUnsupported(f"{where}: no running statistics of {k} features")
    alpha = 1.0 / torch.sqrt(var + float(got["eps"]))
    alpha = alpha if weight is None else alpha * weight
    beta = -mean * alpha if bias is None else bias - mean * alpha
    return PerFeature(alpha.numpy().copy(), beta.numpy().copy()), (index[h.name],)


# the route --------------------------------------------------------------------------------------
class _Kept:
    """One point's forward tape and adjoints (scalar output), for Hessian-vector products and
    the Hessian without another forward pass."""

    def __init__(self, route: NumpyPointRoute, tape, adjoints) -> None:
        self.route, self.tape, self.adjoints = route, tape, adjoints

    def _second_order(self):
        """The tape with every activation's sigma'' (a value+gradient pass leaves them out)."""
        for (op, _), entry in zip(self.route.nodes, self.tape, strict=True):
            if op is not None and op.second and entry[1] is None:
                entry[1] = op.derivatives(entry[2])[2]
        return self.tape

    def mv(self, p: np.ndarray) -> np.ndarray:
        """H p: the tangent of p carried forward, then one reverse sweep."""
        nodes, tape, adjoints = self.route.nodes, self._second_order(), self.adjoints
        t = [np.asarray(p, dtype=np.float64)[:, None]] + [None] * (len(nodes) - 1)
        r = [None] * len(nodes)
        for i in range(1, len(nodes)):
            op, ins = nodes[i]
            d = tape[i][0]
            if op.second and adjoints[i] is not None:
                terms = op.curvature_mv(adjoints[i], d, tape[i][1], [t[j] for j in ins])
                for j, c in zip(ins, terms, strict=True):
                    r[j] = _add(r[j], c)
            t[i] = op.push([t[j] for j in ins], d)
        for i in range(len(nodes) - 1, 0, -1):
            if r[i] is not None:
                op, ins = nodes[i]
                for j, c in zip(ins, op.pull(r[i], tape[i][0]), strict=True):
                    r[j] = _add(r[j], c)
        return np.zeros(self.route.n) if r[0] is None else r[0][0]

    def hessian(self) -> np.ndarray:
        return self.route._second(self._second_order(), self.adjoints, 1)[None]


def _add(a, b):
    """A sum of adjoint terms, where None is none (a mask passes none back)."""
    return b if a is None else a if b is None else a + b


class NumpyPointRoute:
    """Single points through numpy: (n,) in, outputs with a leading point axis, as
    ``derivatives.TorchPointRoute``. Holds no state between calls (safe between threads)."""

    name = "numpy"

    def __init__(self, program, n: int, m: int) -> None:
        self.nodes, self.out = read_graph(program, n, m)
        self._plan = self.nodes[1:]
        self.n, self.m = n, m
        self._eye = np.eye(m)

    def _forward(self, x, second: bool):
        """Node values and the tape: per activation [sigma', sigma'' or None, its input]."""
        h = [np.asarray(x, dtype=np.float64)]
        tape = [None]
        blank = [None, None, None]  # never written: only activations' entries are
        for op, ins in self._plan:
            if op.second:
                pre = h[ins[0]] if len(ins) == 1 else [h[j] for j in ins]
                if second:
                    v, d, dd = op.derivatives(pre)
                else:
                    (v, d), dd = op.first(pre), None
                h.append(v)
                tape.append([d, dd, pre])
            else:
                h.append(op(h[ins[0]]) if len(ins) == 1 else op(*[h[j] for j in ins]))
                tape.append(blank)
        return h[self.out], tape

    def _reverse(self, tape, seed: np.ndarray):
        """Every node's adjoint (None where the output does not depend on it), from ``seed``
        (r, m) at the output; the input's adjoint (r, n) first."""
        nodes, A = self.nodes, [None] * len(self.nodes)
        A[self.out] = seed
        for i in range(len(nodes) - 1, 0, -1):
            if A[i] is not None:
                op, ins = nodes[i]
                if len(ins) == 1:
                    (c,) = op.pull(A[i], tape[i][0])
                    j = ins[0]
                    A[j] = c if A[j] is None else A[j] if c is None else A[j] + c
                else:
                    for j, c in zip(ins, op.pull(A[i], tape[i][0]), strict=True):
                        A[j] = _add(A[j], c)
        J = np.zeros((seed.shape[0], self.n)) if A[0] is None else A[0]
        return J, A

    def _second(self, tape, adjoints, r: int) -> np.ndarray:
        """``sum_s T_s^T diag(A_s[i] sigma_s'') T_s`` for each of the r rows of the adjoints."""
        H = np.zeros((r, self.n, self.n))
        T = [np.eye(self.n)] + [None] * (len(self.nodes) - 1)
        for i in range(1, len(self.nodes)):
            op, ins = self.nodes[i]
            d, dd, _ = tape[i]
            if op.second and adjoints[i] is not None:
                A, Ts = adjoints[i], [T[j] for j in ins]  # (r, k), (k, n) each
                for row in range(r):
                    H[row] += op.curvature(A[row], d, dd, Ts)
            T[i] = op.push([T[j] for j in ins], d)
        return H

    def value(self, x: np.ndarray) -> np.ndarray:
        h = [np.asarray(x, dtype=np.float64)]
        for op, ins in self._plan:
            h.append(op(h[ins[0]]) if len(ins) == 1 else op(*[h[j] for j in ins]))
        return h[self.out][None].copy()

    def value_jac(self, x: np.ndarray, keep_graph: bool = False):
        y, tape = self._forward(x, False)
        J, adjoints = self._reverse(tape, self._eye)
        kept = _Kept(self, tape, adjoints) if keep_graph and self.m == 1 else None
        return y[None].copy(), J[None], kept

    def hessian(self, x: np.ndarray):
        y, tape = self._forward(x, True)
        J, adjoints = self._reverse(tape, self._eye)
        return y[None].copy(), J[None], self._second(tape, adjoints, self.m)[None]

    def lagrangian_hessian(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        _, tape = self._forward(x, True)
        seed = np.asarray(v, dtype=np.float64).reshape(1, self.m)
        return self._second(tape, self._reverse(tape, seed)[1], 1)[0]
