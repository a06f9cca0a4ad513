"""The aten operations the CasADi translator knows, each a function of CasADi matrices.

Tensors are CasADi matrices in torch's layout: a 2-D tensor (a, b) is an (a, b) matrix, a 1-D
tensor (k,) a (1, k) row, a scalar (1, 1); a tensor of higher rank (a batch of one image or
signal, (1, C, L) or (1, C, H, W); an ensemble's stacked outputs, (S, 1, k)) is its row-major
flattening, a (1, numel) row, so that a convolution is one (sparse) matrix product built once
from its weights, elementwise operations apply as they are, and views and flattening are the
identity. ``OPS`` maps each aten overload to ``(handler, extra)``, where ``extra`` says whether
the handler also takes the rank of its first argument (``"rank"``), of every argument
(``"ranks"``), or the shapes of its arguments (``"shapes"``). A handler that cannot translate
its arguments raises ``ValueError``, which the translator reports with the op's place.
"""

from __future__ import annotations

import math
import operator

import casadi as ca
import numpy as np
import torch
from scipy import sparse

from ..physical import VIEWS as PHYSICAL_VIEWS
from .casadi_layout import LAYOUT_OPS, axis, broadcast, reshape, shape2

__all__ = ["FLAT_SAFE", "OPS", "VIEWS", "Indices", "reshape", "shape2"]

aten = torch.ops.aten


# operations ------------------------------------------------------------------------------------
def _linear(out, x, W, b=None):
    y = ca.mtimes(x, W.T)
    return y if b is None else y + broadcast(b, y.shape)


def _binary(fn):
    def op(out, a, b, alpha=1):
        a, b = broadcast(a, out), broadcast(b, out)
        return fn(a, b * alpha if alpha != 1 else b)

    return op


def _xlogy(a, b):
    """x log y, zero where x is 0, as torch's xlogy (whose NaN for a NaN y is left aside)."""
    return ca.if_else(a == 0, 0, a * ca.log(b))


def _reduce(kind):
    def op(out, x, dims=None, keepdim=False, dtype=None, *, shapes):
        shape = shapes[0]
        rank = len(shape)
        dims = set(range(rank)) if not dims else {axis(d, rank) for d in dims}
        if rank > 2:  # a flattened tensor: the reduction over any axes (a batch of one's, or
            # an ensemble's, torch.stack(members).mean(0)) as one sparse matrix
            return reshape(
                ca.mtimes(reshape(x, (1, math.prod(shape))), _summing(shape, dims, kind)), out
            )
        n = 1
        # a rank-2 tensor's dim 0 is the matrix's rows; the last torch dim is always its columns
        if rank == 2 and 0 in dims:
            n, x = n * x.shape[0], ca.sum1(x)
        if rank == 1 or 1 in dims:
            n, x = n * x.shape[1], ca.sum2(x)
        if kind == "mean":
            x = x / n
        return reshape(x, out)

    return op


def _summing(shape, dims, kind) -> ca.DM:
    """The sparse (numel, kept) matrix that sums (or averages) a flattened tensor of torch
    ``shape`` over ``dims``: one entry per input position, in the column of the output position
    it goes to (the kept positions broadcast back over the reduced axes), so it costs O(numel)
    to build and to apply where a matrix made from unit tensors would cost O(numel^2)."""
    kept = [1 if d in dims else s for d, s in enumerate(shape)]
    column = torch.broadcast_to(torch.arange(math.prod(kept)).reshape(kept), shape).reshape(-1)
    numel, count = math.prod(shape), math.prod(shape[d] for d in dims)
    weight = np.full(numel, 1.0 if kind == "sum" else 1.0 / count)
    M = sparse.csc_matrix((weight, (np.arange(numel), column.numpy())), (numel, math.prod(kept)))
    return ca.DM(M)


def _matrix_of(linear, shape, chunk: int = 256) -> sparse.csc_matrix:
    """The sparse matrix M with ``flat(linear(t)) = flat(t) @ M`` for a (1, ...) tensor ``t``
    of ``shape``: ``linear`` applied by torch to the unit tensors, ``chunk`` at a time on the
    batch axis, each chunk's nonzeros kept (memory of the order of M's nonzeros, where all unit
    tensors at once would take numel^2 numbers: 1.2 GB for a 3 x 64 x 64 image)."""
    if shape[0] != 1:
        raise ValueError(f"a batch of {shape[0]} (one point is translated)")
    numel = math.prod(shape)
    blocks = []
    with torch.no_grad():
        for start in range(0, numel, chunk):
            rows = torch.arange(start, min(start + chunk, numel))
            basis = torch.zeros(len(rows), numel, dtype=torch.float64)
            basis[torch.arange(len(rows)), rows] = 1.0
            out = linear(basis.reshape(len(rows), *shape[1:])).reshape(len(rows), -1)
            blocks.append(sparse.csr_matrix(out.numpy()))
    return sparse.vstack(blocks).tocsc()


def _softplus(out, x, beta=1, threshold=20):
    bx = beta * x
    return ca.if_else(bx > threshold, x, ca.log1p(ca.exp(bx)) / beta)


def _elu(out, x, alpha=1.0, scale=1.0, input_scale=1.0):
    """At x = 0 torch's first derivative is the negative side's, its second the positive
    side's (0): the middle branch, exact at 0 alone, gives both."""
    neg = scale * alpha * (ca.exp(x * input_scale) - 1)
    return ca.if_else(x > 0, scale * x, ca.if_else(x == 0, scale * alpha * input_scale * x, neg))


def _gelu(out, x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1 + ca.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + ca.erf(x / math.sqrt(2)))


# Kinks are selections (if_else) on torch's side of each tie, so that every derivative at the
# kink itself is torch's: fmax and fmin would give the mean of the two sides' slopes there.
def _leaky_relu(out, x, slope=0.01):
    return ca.if_else(x > 0, x, slope * x)  # torch: the negative side at 0


def _hardtanh(out, x, lo=-1.0, hi=1.0):
    """torch: slope 1 strictly inside (lo, hi) only."""
    return ca.if_else(x <= lo, lo, ca.if_else(x >= hi, hi, x))


def _clamp(out, x, lo=None, hi=None):
    """clamp of x between bounds (numbers, or tensors broadcast with x; None: no bound); torch
    passes x's slope on at either bound, the bound's only beyond it."""
    x = broadcast(x, out)
    if lo is not None:
        lo = broadcast(lo, out)
        x = ca.if_else(x >= lo, x, lo)
    if hi is None:
        return x
    hi = broadcast(hi, out)
    return ca.if_else(x <= hi, x, hi)


def _trunc(x):
    """x rounded toward zero (CasADi has floor and ceil, not trunc)."""
    return ca.if_else(x < 0, ca.ceil(x), ca.floor(x))


def _remainder(out, a, b):
    """torch.remainder, as ATen computes it: C's fmod, moved by b where its sign is not b's
    (Python's ``%``); its derivatives are torch's (1, and -floor(a / b))."""
    a, b = broadcast(a, out), broadcast(b, out)
    mod = ca.fmod(a, b)
    return ca.if_else(ca.logic_and(mod != 0, (mod < 0) != (b < 0)), mod + b, mod)


def _softplus0(x):
    """log(1 + e^x) without overflow for large x: each side smooth (fmax and fabs would lose
    the curvature at 0)."""
    return ca.if_else(x > 0, x + ca.log1p(ca.exp(-x)), ca.log1p(ca.exp(x)))


def _row_stats(x):
    """Mean and (biased) variance of each row of a CasADi matrix, broadcast back to its shape."""
    n = x.shape[1]
    mu = ca.repmat(ca.sum2(x) / n, 1, n)
    var = ca.repmat(ca.sum2((x - mu) ** 2) / n, 1, n)
    return mu, var


def _layer_norm(out, x, shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    if len(shape) != 1:
        raise ValueError("layer_norm over more than the last dimension")
    mu, var = _row_stats(x)
    y = (x - mu) / ca.sqrt(var + eps)
    if weight is not None:
        y = y * broadcast(weight, y.shape)
    return y if bias is None else y + broadcast(bias, y.shape)


def _batch_norm(out, x, weight, bias, mean, var, training, momentum, eps, cudnn_enabled=True, *,
                shapes):  # fmt: skip
    if training:
        raise ValueError(
            "batch_norm in training mode (batch statistics); the surrogate's copy is eval"
        )
    shape = shapes[0]
    fit = broadcast
    if len(shape) > 2:  # (1, C, ...) flattened: each channel's constant over its positions
        if shape[0] != 1:
            raise ValueError(f"batch_norm of a batch of {shape[0]} (one point is translated)")
        fit = _per_channel(math.prod(shape[2:]))
    y = (x - fit(mean, x.shape)) / ca.sqrt(fit(var, x.shape) + eps)
    if weight is not None:
        y = y * fit(weight, y.shape)
    return y if bias is None else y + fit(bias, y.shape)


def _per_channel(per: int):
    """Broadcast of a per-channel constant (C,) over a flattened (1, C, ...) tensor."""

    def fit(v, _shape):
        if not isinstance(v, ca.DM):
            raise ValueError("per-channel statistics and weights must be constants")
        return ca.DM(np.repeat(np.asarray(v).ravel(), per)).T

    return fit


def _conv(op):
    """A convolution (``op``: aten.convolution, conv1d, conv2d, ...) of one point as
    ``x_flat @ M + b``: M (numel_in, numel_out), sparse, holds the convolution of every unit
    input, computed once by torch itself from the weights (so every stride, padding, dilation
    and group setting is torch's)."""

    def handler(out, x, weight, bias=None, *settings, shapes):
        if not isinstance(weight, ca.DM) or not (bias is None or isinstance(bias, ca.DM)):
            raise ValueError("convolution weights must be constants")
        W = torch.as_tensor(np.asarray(weight).reshape(shapes[1]))
        M = _matrix_of(lambda B: op(B, W, None, *settings), shapes[0])
        y = ca.mtimes(x, ca.DM(M))
        if bias is None:
            return y
        return y + _per_channel(M.shape[1] // np.asarray(bias).size)(bias, y.shape)

    return handler


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def _celu(out, x, alpha=1.0):
    return _elu(out, x, alpha, 1.0, 1.0 / alpha)


def _prelu(out, x, weight):
    return ca.if_else(x > 0, x, broadcast(weight, x.shape) * x)  # torch: the weight's side at 0


def _vector_norm(out, x, ord=2, dim=None, keepdim=False, dtype=None, *, shapes):
    if ord != 2:
        raise ValueError(f"linalg_vector_norm of order {ord} (only 2 is translated)")
    dim = [dim] if isinstance(dim, int) else dim
    return ca.sqrt(_reduce("sum")(out, x**2, dim, keepdim, shapes=shapes))


def _matmul(out, a, b, *, ranks):
    ra, rb = ranks
    if rb == 1:  # (.., k) @ (k,) -> contract with the row b^T
        return reshape(ca.mtimes(a, b.T), out)
    if ra == 1:
        return reshape(ca.mtimes(a, b), out)
    return ca.mtimes(a, b)


def _per_line(x, rank: int, dim, fn):
    """``fn`` of each row (dim along the columns) or each column of a tensor of rank 2 or
    less (a single number of each), as a matrix of those results."""
    if rank > 2:
        raise ValueError(f"a rank-{rank} tensor along one of its dimensions")
    if rank <= 1 or axis(dim, rank) == 1:
        return ca.vertcat(*[fn(x[i, :]) for i in range(x.shape[0])])
    return ca.horzcat(*[fn(x[:, j]) for j in range(x.shape[1])])


def _softmax(log: bool):
    def op(out, x, dim, *_, rank, **__):
        def one(v):  # shifted by the largest value, as torch computes it
            z = v - ca.mmax(v)
            e = ca.exp(z)
            return z - ca.log(ca.sum1(ca.sum2(e))) if log else e / ca.sum1(ca.sum2(e))

        return _per_line(x, rank, dim, one)

    return op


def _extreme(fn):
    def op(out, x, dim=(), keepdim=False, *, rank):
        dims = [dim] if isinstance(dim, int) else list(dim)
        if not dims or len({axis(d, rank) for d in dims}) == max(rank, 1):
            return reshape(fn(x), out)  # every dimension
        if len(dims) != 1:
            raise ValueError(f"a reduction over dimensions {dims} of a rank-{rank} tensor")
        return reshape(_per_line(x, rank, dims[0], fn), out)

    return op


def _cumsum(out, x, dim, *_, rank, **__):
    if rank > 2:
        raise ValueError(f"cumsum of a rank-{rank} tensor")
    if rank <= 1 or axis(dim, rank) == 1:
        return ca.mtimes(x, ca.DM(np.triu(np.ones((x.shape[1], x.shape[1])))))
    return ca.mtimes(ca.DM(np.tril(np.ones((x.shape[0], x.shape[0])))), x)


class Indices:
    """The positions a selection (``max(dim)``, ``sort``, ``topk``, ...) also returns: found from
    x, so a read at them is a read at positions computed from the input, which the translator
    refuses when something uses them (``casadi_symbolic``)."""

    def __init__(self, op: str) -> None:
        self.op = op


def _lines(x, rank: int, dim: int):
    """The lines of a tensor of rank 2 or less along ``dim``, as vectors over the other axis
    (so every rule below is one CasADi expression per position along the line, for all lines
    at once), and the function that puts a list of such vectors back in the tensor's layout."""
    if rank > 2:
        raise ValueError(f"a rank-{rank} tensor along one of its dimensions")
    if rank <= 1 or axis(dim, rank) == 1:
        return [x[:, j] for j in range(x.shape[1])], lambda cols: ca.horzcat(*cols)
    return [x[i, :] for i in range(x.shape[0])], lambda rows: ca.vertcat(*rows)


def _merge_exchanges(n: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort network on ``n`` positions (for the next power of two,
    without the exchanges with a position past ``n``, which would hold +inf): O(n log^2 n)
    compare-exchanges (i, j), i < j, after which position i holds the i-th least value."""
    pairs, size = [], 1 << max(n - 1, 0).bit_length()
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    return pairs


def _sorted(cols: list, descending: bool = False) -> list:
    """The values of each line in order, by compare-exchanges that pick (``if_else``) rather
    than take fmin and fmax, so the derivative of every output is that of the input it holds,
    as torch's sort gives it (at a tie, whichever the network keeps)."""
    cols = list(cols)
    for i, j in _merge_exchanges(len(cols)):
        swap = cols[j] > cols[i] if descending else cols[j] < cols[i]
        cols[i], cols[j] = ca.if_else(swap, cols[j], cols[i]), ca.if_else(swap, cols[i], cols[j])
    return cols


def _sort(out, x, dim=-1, descending=False, *, rank):
    cols, join = _lines(x, rank, dim)
    return reshape(join(_sorted(cols, descending)), out), Indices("sort")


def _topk(out, x, k, dim=-1, largest=True, sorted=True, *, rank):
    cols, join = _lines(x, rank, dim)
    return reshape(join(_sorted(cols, largest)[:k]), out), Indices("topk")


def _kthvalue(out, x, k, dim=-1, keepdim=False, *, rank):
    cols, _ = _lines(x, rank, dim)
    return reshape(_sorted(cols)[k - 1], out), Indices("kthvalue")


def _median(out, x, dim, keepdim=False, *, rank):
    """torch's median: the lower of the two middle values of an even count."""
    cols, _ = _lines(x, rank, dim)
    return reshape(_sorted(cols)[(len(cols) - 1) // 2], out), Indices("median")


def _median_all(out, x):
    """The median of every value (a tensor of any rank: its flat row's)."""
    return _median(out, reshape(x, (1, x.numel())), 1, rank=2)[0]


def _max_dim(largest: bool):
    """``max(dim)`` / ``min(dim)``: the values, as ``amax`` / ``amin`` along that dim."""
    name = "max" if largest else "min"
    extreme = _extreme(ca.mmax if largest else ca.mmin)

    def op(out, x, dim, keepdim=False, *, rank):
        return extreme(out, x, dim, keepdim, rank=rank), Indices(name)

    return op


def _running(step):
    """A running operation along a dim (cumprod, cummax, logcumsumexp): ``step(previous,
    next)`` from the first position on, as torch's kernels run."""

    def op(out, x, dim, *_, rank, **__):
        cols, join = _lines(x, rank, dim)
        done = [cols[0]]
        for c in cols[1:]:
            done.append(step(done[-1], c))
        return reshape(join(done), out)

    return op


def _log_add_exp(a, b):
    """log(exp(a) + exp(b)) as torch's logcumsumexp takes it: the larger plus log1p of the
    exponential of the difference."""
    hi, lo = ca.if_else(a < b, b, a), ca.if_else(a < b, a, b)
    return hi + ca.log1p(ca.exp(lo - hi))


def _running_extreme(largest: bool):
    """cummax / cummin: the later of equal values wins, as torch's index does."""
    name = "cummax" if largest else "cummin"
    better = ca.ge if largest else ca.le
    run = _running(lambda prev, c: ca.if_else(better(c, prev), c, prev))

    def op(out, x, dim, *, rank):
        return run(out, x, dim, rank=rank), Indices(name)

    return op


def _addmv(out, c, M, v, *, beta=1, alpha=1):
    y = ca.mtimes(v, M.T)  # (k,) and (m, k): the (1, k) row times M^T, a (1, m) row
    return broadcast(c, out) * beta + (y * alpha if alpha != 1 else y)


def _filled(value_at: int | None, like: bool = False):
    """full, zeros, ones, scalar_tensor and their _like forms: a constant of the output's
    shape (``value_at``: the argument holding the value; None: zeros, or ones if ``like``)."""

    def op(out, *args, **_):
        value = args[value_at] if value_at is not None else float(like)
        return ca.DM.ones(*out) * float(value)

    return op


# op -> (handler, extra keyword: "rank" | "ranks" | None)
OPS = {
    **LAYOUT_OPS,
    aten.linear.default: (_linear, None),
    aten.addmm.default: (
        lambda out, b, x, w, beta=1, alpha=1: beta * broadcast(b, out) + alpha * ca.mtimes(x, w),
        None,
    ),
    aten.mm.default: (lambda out, a, b: ca.mtimes(a, b), None),
    aten.matmul.default: (_matmul, "ranks"),
    aten.mv.default: (lambda out, a, b: reshape(ca.mtimes(a, b.T), out), None),
    aten.add.Tensor: (_binary(operator.add), None),
    aten.add.Scalar: (_binary(operator.add), None),
    aten.sub.Tensor: (_binary(operator.sub), None),
    aten.sub.Scalar: (_binary(operator.sub), None),
    aten.rsub.Scalar: (lambda out, a, b, alpha=1: b - alpha * a, None),
    aten.mul.Tensor: (_binary(operator.mul), None),
    aten.mul.Scalar: (_binary(operator.mul), None),
    aten.div.Tensor: (_binary(operator.truediv), None),
    aten.div.Scalar: (_binary(operator.truediv), None),
    aten.neg.default: (lambda out, x: -x, None),
    aten.pow.Tensor_Scalar: (lambda out, x, p: x**p, None),
    aten.pow.Tensor_Tensor: (lambda out, x, p: broadcast(x, out) ** broadcast(p, out), None),
    aten.pow.Scalar: (lambda out, base, x: float(base) ** x, None),  # 10 ** h
    aten.square.default: (lambda out, x: x**2, None),
    aten.sqrt.default: (lambda out, x: ca.sqrt(x), None),
    aten.rsqrt.default: (lambda out, x: 1 / ca.sqrt(x), None),
    aten.exp.default: (lambda out, x: ca.exp(x), None),
    aten.log.default: (lambda out, x: ca.log(x), None),
    aten.log1p.default: (lambda out, x: ca.log1p(x), None),
    aten.expm1.default: (lambda out, x: ca.expm1(x), None),
    aten.sin.default: (lambda out, x: ca.sin(x), None),
    aten.cos.default: (lambda out, x: ca.cos(x), None),
    aten.tanh.default: (lambda out, x: ca.tanh(x), None),
    aten.sigmoid.default: (lambda out, x: 1 / (1 + ca.exp(-x)), None),
    aten.silu.default: (lambda out, x: x / (1 + ca.exp(-x)), None),
    aten.softplus.default: (_softplus, None),
    aten.elu.default: (_elu, None),
    aten.gelu.default: (_gelu, None),
    aten.erf.default: (lambda out, x: ca.erf(x), None),
    aten.abs.default: (lambda out, x: ca.fabs(x), None),
    aten.relu.default: (lambda out, x: ca.if_else(x > 0, x, 0), None),  # torch: slope 0 at 0
    aten.leaky_relu.default: (_leaky_relu, None),
    aten.hardtanh.default: (_hardtanh, None),
    aten.clamp.default: (_clamp, None),
    aten.clamp_min.default: (lambda out, x, lo: _clamp(out, x, lo), None),
    aten.clamp_max.default: (lambda out, x, hi: _clamp(out, x, None, hi), None),
    aten.clamp.Tensor: (_clamp, None),
    aten.clamp_min.Tensor: (lambda out, x, lo: _clamp(out, x, lo), None),
    aten.clamp_max.Tensor: (lambda out, x, hi: _clamp(out, x, None, hi), None),
    aten.floor.default: (lambda out, x: ca.floor(x), None),
    aten.ceil.default: (lambda out, x: ca.ceil(x), None),
    aten.trunc.default: (lambda out, x: _trunc(x), None),
    aten.frac.default: (lambda out, x: x - _trunc(x), None),
    aten.fmod.Scalar: (_binary(ca.fmod), None),
    aten.fmod.Tensor: (_binary(ca.fmod), None),
    aten.remainder.Scalar: (_remainder, None),
    aten.remainder.Tensor: (_remainder, None),
    aten.sum.dim_IntList: (_reduce("sum"), "shapes"),
    aten.sum.default: (_reduce("sum"), "shapes"),
    aten.mean.dim: (_reduce("mean"), "shapes"),
    aten.mean.default: (_reduce("mean"), "shapes"),
    aten.layer_norm.default: (_layer_norm, None),
    aten.batch_norm.default: (_batch_norm, "shapes"),
    aten.convolution.default: (_conv(aten.convolution.default), "shapes"),
    aten.conv1d.default: (_conv(aten.conv1d.default), "shapes"),
    aten.conv2d.default: (_conv(aten.conv2d.default), "shapes"),
    aten.conv3d.default: (_conv(aten.conv3d.default), "shapes"),
    aten.conv1d.padding: (_conv(aten.conv1d.padding), "shapes"),
    aten.conv2d.padding: (_conv(aten.conv2d.padding), "shapes"),
    aten.selu.default: (lambda out, x: _elu(out, x, _SELU_ALPHA, _SELU_SCALE), None),
    aten.celu.default: (_celu, None),
    aten.mish.default: (lambda out, x: x * ca.tanh(_softplus0(x)), None),
    aten.log_sigmoid.default: (lambda out, x: -_softplus0(-x), None),
    aten.hardswish.default: (  # torch: the outer pieces at both ties
        lambda out, x: ca.if_else(x <= -3, 0, ca.if_else(x < 3, x * (x + 3) / 6, x)),
        None,
    ),
    aten.hardsigmoid.default: (  # torch: slope 1/6 strictly inside (-3, 3) only
        lambda out, x: ca.if_else(x <= -3, 0, ca.if_else(x >= 3, 1, x / 6 + 0.5)),
        None,
    ),
    aten.prelu.default: (_prelu, None),
    aten.linalg_vector_norm.default: (_vector_norm, "shapes"),
    aten.reciprocal.default: (lambda out, x: 1 / x, None),
    aten.tan.default: (lambda out, x: ca.tan(x), None),
    aten.asin.default: (lambda out, x: ca.asin(x), None),
    aten.acos.default: (lambda out, x: ca.acos(x), None),
    aten.atan.default: (lambda out, x: ca.atan(x), None),
    aten.sinh.default: (lambda out, x: ca.sinh(x), None),
    aten.cosh.default: (lambda out, x: ca.cosh(x), None),
    aten.asinh.default: (lambda out, x: ca.asinh(x), None),
    aten.acosh.default: (lambda out, x: ca.acosh(x), None),
    aten.atanh.default: (lambda out, x: ca.atanh(x), None),
    aten.atan2.default: (_binary(ca.atan2), None),
    aten.xlogy.Tensor: (_binary(_xlogy), None),
    aten.special_xlogy.default: (_binary(_xlogy), None),
    aten.exp2.default: (lambda out, x: 2.0**x, None),
    aten.log2.default: (lambda out, x: ca.log(x) / math.log(2.0), None),
    aten.log10.default: (lambda out, x: ca.log10(x), None),
    aten.sign.default: (lambda out, x: ca.sign(x), None),
    aten.maximum.default: (_binary(ca.fmax), None),
    aten.minimum.default: (_binary(ca.fmin), None),
    **{
        getattr(getattr(aten, name), overload): (_binary(fn), None)
        for name, fn in (
            ("gt", ca.gt),
            ("ge", ca.ge),
            ("lt", ca.lt),
            ("le", ca.le),
            ("eq", ca.eq),
            ("ne", ca.ne),
            ("logical_and", ca.logic_and),
            ("logical_or", ca.logic_or),
        )
        for overload in ("Scalar", "Tensor", "default")
        if hasattr(getattr(aten, name), overload)
    },
    aten.logical_not.default: (lambda out, x: 1 - x, None),
    aten.where.self: (
        lambda out, c, a, b: ca.if_else(broadcast(c, out), broadcast(a, out), broadcast(b, out)),
        None,
    ),
    aten._softmax.default: (_softmax(False), "rank"),
    aten.softmax.int: (_softmax(False), "rank"),
    aten._log_softmax.default: (_softmax(True), "rank"),
    aten.log_softmax.int: (_softmax(True), "rank"),
    aten.amax.default: (_extreme(ca.mmax), "rank"),
    aten.all.dim: (_extreme(ca.mmin), "rank"),  # of 0/1 values: all is the least, any the most
    aten.any.dim: (_extreme(ca.mmax), "rank"),
    aten.bmm.default: (_matmul, "ranks"),  # batched: always through casadi_symbolic's blocks
    aten.amin.default: (_extreme(ca.mmin), "rank"),
    aten.cumsum.default: (_cumsum, "rank"),
    aten.sort.default: (_sort, "rank"),
    aten.topk.default: (_topk, "rank"),
    aten.kthvalue.default: (_kthvalue, "rank"),
    aten.median.dim: (_median, "rank"),
    aten.median.default: (_median_all, None),
    aten.max.dim: (_max_dim(True), "rank"),
    aten.min.dim: (_max_dim(False), "rank"),
    aten.max.default: (lambda out, x: ca.mmax(x), None),  # of every value: any rank
    aten.min.default: (lambda out, x: ca.mmin(x), None),
    aten.cumprod.default: (_running(lambda prev, c: prev * c), "rank"),
    aten.logcumsumexp.default: (_running(_log_add_exp), "rank"),
    aten.cummax.default: (_running_extreme(True), "rank"),
    aten.cummin.default: (_running_extreme(False), "rank"),
    aten.copysign.Tensor: (_binary(ca.copysign), None),
    aten.copysign.Scalar: (_binary(ca.copysign), None),
    aten.isnan.default: (lambda out, x: ca.logic_not(x <= ca.inf), None),  # (x != x folds to 0)
    aten.addmv.default: (_addmv, None),
    # (solves and inverses: casadi_symbolic's per-system translation)
    aten._linalg_solve_ex.default: (None, "solve"),
    aten.linalg_solve.default: (None, "solve"),
    aten.linalg_inv_ex.default: (None, "solve"),
    aten.linalg_inv.default: (None, "solve"),
    aten._linalg_check_errors.default: (lambda out, *_, **__: None, None),  # (of info only)
    aten.full.default: (_filled(1), None),
    aten.full_like.default: (_filled(1), None),
    aten.scalar_tensor.default: (_filled(0), None),
    aten.zeros.default: (_filled(None), None),
    aten.zeros_like.default: (_filled(None), None),
    aten.ones.default: (_filled(None, like=True), None),
    aten.ones_like.default: (_filled(None, like=True), None),
}
# operations that are correct on a flattened tensor of rank 3 or more: views (the row-major
# order stays), and elementwise ones on equal shapes or with single numbers
# (and the conversions of dtype and device, which the translation ignores)
VIEWS = PHYSICAL_VIEWS | {
    aten._to_copy.default, aten.lift_fresh_copy.default,
    *(getattr(aten.to, o) for o in aten.to.overloads()),
}  # fmt: skip
FLAT_SAFE = VIEWS | {
    op for op, (handler, extra) in OPS.items()
    if extra is None and op not in (
        aten.linear.default, aten.addmm.default, aten.mm.default, aten.mv.default,
        aten.addmv.default,
        aten.t.default, aten.transpose.int, aten.permute.default, aten.numpy_T.default,
        aten.layer_norm.default, aten.prelu.default, aten.expand.default,
    )
}  # fmt: skip
