"""The CasADi translator's layout operations: where values sit, not what they are.

Tensors are CasADi matrices in torch's layout (``casadi_ops``): a 2-D tensor (a, b) is an
(a, b) matrix, a 1-D tensor (k,) a (1, k) row, a scalar (1, 1), a tensor of higher rank its
row-major flattening. This module holds that correspondence (:func:`shape2`, :func:`reshape`,
:func:`broadcast`) and the operations that only move, copy, select or pad values: views,
slices, indexing, concatenation, stacking, splitting, flipping, padding, repetition and
transposition. Each handler takes the output's CasADi shape first; one that cannot translate
its arguments raises ``ValueError``, which the translator reports with the operation's place.
"""

from __future__ import annotations

import itertools
import math
import operator

import casadi as ca
import numpy as np
import torch

__all__ = [
    "GATHERED", "LAYOUT_OPS", "axis", "broadcast", "expand", "gather", "positions", "reshape",
    "shape2",
]  # fmt: skip

aten = torch.ops.aten


# shapes -----------------------------------------------------------------------------------------
def shape2(shape) -> tuple[int, int]:
    """The CasADi (rows, cols) of a torch shape: (a, b) -> (a, b); (k,) -> (1, k); () -> (1, 1);
    rank 3 and more -> (1, numel), the row-major flattening."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return shape
    if len(shape) == 0:
        return (1, 1)
    return (1, math.prod(shape))


def broadcast(v, shape2):
    """Broadcast a CasADi value (or Python number) to ``shape2`` (torch broadcasting)."""
    if not isinstance(v, (ca.MX, ca.DM)):
        return v
    r, c = v.shape
    R, C = shape2
    if (r, c) == (R, C) or (r, c) == (1, 1):
        return v
    if (r not in (1, R)) or (c not in (1, C)):
        raise ValueError(f"a ({r}, {c}) matrix does not broadcast to ({R}, {C})")
    return ca.repmat(v, R // r, C // c)


def reshape(v, shape2):
    """Row-major (torch) reshape of a CasADi matrix: vec(M^T) is M's row-major order."""
    R, C = shape2
    if v.shape == (R, C):
        return v
    return ca.reshape(v.T, C, R).T


def positions(shape) -> torch.Tensor:
    """The row-major positions of a tensor of torch ``shape``: ``arange`` in that shape. A
    torch operation applied to them gives the positions its result reads (:func:`gather`)."""
    return torch.arange(math.prod(shape)).reshape(shape)


def expand(v, shape, out_shape):
    """A tensor of torch ``shape`` broadcast to ``out_shape`` (torch's rules) by :func:`gather`."""
    return gather(v, shape, torch.broadcast_to(positions(shape), out_shape))


def gather(v, shape, at: torch.Tensor):
    """A tensor of torch ``shape`` (``v``, in this layout) read at the row-major positions
    ``at``: an integer tensor whose torch shape is the result's. Any rearrangement of a tensor
    of rank 3 or more (a broadcast, a permutation, a slice) is such a read, with the positions
    found by torch itself: the operation applied to :func:`positions` (:data:`GATHERED`)."""
    numel = math.prod(shape)
    flat = reshape(v, (1, numel))
    pos = at.reshape(-1).tolist()
    out = shape2(at.shape)
    return reshape(flat if pos == list(range(numel)) else flat[0, pos], out)


def axis(d: int, rank: int) -> int:
    """A torch dimension, counted from the front."""
    return d + rank if d < 0 else d


def _along_columns(rank: int, d: int) -> bool:
    """Whether torch's dimension d of a rank-``rank`` tensor is its matrix's columns."""
    if rank > 2:
        raise ValueError(f"a rank-{rank} tensor along one of its dimensions")
    return rank == 1 or d == 1


# operations -------------------------------------------------------------------------------------
def _cat(out, tensors, dim=0, *, ranks):
    d = axis(dim, ranks[0])
    if ranks[0] == 2 and d == 0:
        return ca.vertcat(*tensors)
    return ca.horzcat(*tensors)


def _stack(out, tensors, dim=0, *, ranks):
    d = axis(dim, ranks[0] + 1)
    if ranks[0] == 0:
        return ca.horzcat(*tensors)
    if ranks[0] == 1:  # (1, k) rows: stacked as rows (dim 0) or as columns (dim 1)
        return ca.vertcat(*tensors) if d == 0 else ca.horzcat(*[t.T for t in tensors])
    raise ValueError(f"stack of rank-{ranks[0]} tensors")


def _take(x, idx, columns: bool):
    return x[:, idx] if columns else x[idx, :]


def _slice(out, x, dim=0, start=None, end=None, step=1, *, rank):
    columns = _along_columns(rank, axis(dim, rank))
    s = slice(*slice(start, end, step).indices(x.shape[1] if columns else x.shape[0]))
    return _take(x, list(range(s.start, s.stop, s.step)), columns)


def _split(out, x, sizes, dim=0, *, rank):
    """split (an int: pieces of that size, the last one shorter) or split_with_sizes: a list
    of the pieces, which ``operator.getitem`` nodes pick."""
    columns = _along_columns(rank, axis(dim, rank))
    size = x.shape[1] if columns else x.shape[0]
    if isinstance(sizes, int):
        sizes = [min(sizes, size - i) for i in range(0, size, sizes)]
    bounds = np.cumsum([0, *sizes])
    return [_take(x, list(range(a, b)), columns) for a, b in itertools.pairwise(bounds)]


def _select(out, x, dim, index, *, rank):
    d = axis(dim, rank)
    if rank == 1:
        return x[0, index]
    return x[:, index].T if d == 1 else x[index, :]


def _flip(out, x, dims, *, rank):
    for d in dims:
        columns = _along_columns(rank, axis(d, rank))
        x = _take(x, list(range((x.shape[1] if columns else x.shape[0]) - 1, -1, -1)), columns)
    return x


def _pad(out, x, pad, value=0.0, *, rank):
    """constant_pad_nd of a tensor of rank 1 or 2: (left, right[, top, bottom]), widths >= 0."""
    if rank > 2 or any(p < 0 for p in pad):
        raise ValueError(f"padding {list(pad)} of a rank-{rank} tensor")
    left, right, *rest = pad
    top, bottom = rest if rest else (0, 0)
    x = ca.horzcat(_const(x.shape[0], left, value), x, _const(x.shape[0], right, value))
    return ca.vertcat(_const(top, x.shape[1], value), x, _const(bottom, x.shape[1], value))


def _const(rows: int, cols: int, value: float):
    return ca.DM.ones(rows, cols) * value


def _repeat(out, x, repeats, *, rank):
    if len(repeats) != max(rank, 1) or rank > 2:
        raise ValueError(f"repeat {list(repeats)} of a rank-{rank} tensor")
    rows, cols = (1, repeats[0]) if rank <= 1 else repeats
    return ca.repmat(x, rows, cols)


def _transpose(out, x, *dims, rank):
    """t, numpy_T, transpose(d0, d1), permute(dims) of a tensor of rank 2 or less: the
    transpose, unless the dimensions stay where they are (and always for rank 0 or 1)."""
    if rank <= 1:
        return x
    if len(dims) == 2 and axis(dims[0], rank) == axis(dims[1], rank):
        return x
    if len(dims) == 1 and [axis(d, rank) for d in dims[0]] == [0, 1]:
        return x
    return x.T


def _identity(out, x, *args, **kwargs):
    return x


def _view(out, x, *args, **kwargs):
    return reshape(x, out)


def _expand(out, x, *args, **kwargs):
    return broadcast(x, out)


_CHECKS = (
    "_assert_tensor_metadata", "_assert_async", "_assert_scalar", "sym_constrain_range",
    "sym_constrain_range_for_size",
)  # fmt: skip

# operations that only rearrange one tensor (or place several side by side), their other
# arguments fixed numbers: on a tensor of rank 3 or more (a flat row here), each is a
# :func:`gather` at the positions torch gives
GATHERED = {
    aten.t.default, aten.transpose.int, aten.permute.default, aten.numpy_T.default,
    aten.expand.default, aten.repeat.default, aten.flip.default, aten.slice.Tensor,
    aten.select.int, aten.cat.default, aten.concat.default, aten.stack.default,
    aten.split.Tensor, aten.split_with_sizes.default, aten.constant_pad_nd.default,
}  # fmt: skip

# op -> (handler, extra keyword: "rank" | "ranks" | None), as casadi_ops.OPS
LAYOUT_OPS = {
    aten.t.default: (_transpose, "rank"),
    aten.transpose.int: (_transpose, "rank"),
    aten.permute.default: (_transpose, "rank"),
    aten.numpy_T.default: (_transpose, "rank"),
    aten.cat.default: (_cat, "ranks"),
    aten.concat.default: (_cat, "ranks"),
    aten.stack.default: (_stack, "ranks"),
    aten.split.Tensor: (_split, "rank"),
    aten.split_with_sizes.default: (_split, "rank"),
    operator.getitem: (lambda out, pieces, i: pieces[i], None),
    aten.slice.Tensor: (_slice, "rank"),
    aten.select.int: (_select, "rank"),
    # reads at constant positions (indices the model holds or makes from constants), any rank:
    # always a gather at the positions torch's own operation picks (casadi_symbolic._gathered)
    aten.index.Tensor: (None, "positions"),
    aten.index_select.default: (None, "positions"),
    aten.gather.default: (None, "positions"),
    aten.take_along_dim.default: (None, "positions"),
    aten.unfold.default: (None, "positions"),  # (sliding windows: a read, like a slice)
    # a tensor with a part replaced by another's values (circular padding, decomposed): a read
    # of the two side by side
    aten.slice_scatter.default: (None, "positions"),
    aten.select_scatter.default: (None, "positions"),
    aten.flip.default: (_flip, "rank"),
    aten.constant_pad_nd.default: (_pad, "rank"),
    aten.repeat.default: (_repeat, "rank"),
    aten.view.default: (_view, None),
    aten.reshape.default: (_view, None),
    aten._unsafe_view.default: (_view, None),
    aten.unsqueeze.default: (_view, None),
    aten.squeeze.dim: (_view, None),
    aten.squeeze.dims: (_view, None),
    aten.squeeze.default: (_view, None),
    aten.flatten.using_ints: (_view, None),
    aten.expand.default: (_expand, None),
    aten.clone.default: (_identity, None),
    aten.copy.default: (lambda out, dst, src, non_blocking=False: broadcast(src, out), None),
    aten.alias.default: (_identity, None),
    aten.detach.default: (_identity, None),
    aten.detach_.default: (_identity, None),  # of a constant made in forward (torch.tensor)
    aten.contiguous.default: (_identity, None),
    aten._to_copy.default: (_identity, None),
    aten.lift_fresh_copy.default: (_identity, None),
    aten.dropout.default: (_identity, None),  # eval mode: the identity
    # dtype and device moves are the identity here (everything is float64 in CasADi)
    **{getattr(aten.to, o): (_identity, None) for o in aten.to.overloads()},
    # run-time checks torch.export records: they compute nothing
    **{
        getattr(getattr(aten, c), o): (lambda out, *a, **k: None, None)
        for c in _CHECKS
        if hasattr(aten, c)
        for o in getattr(aten, c).overloads()
    },
}
