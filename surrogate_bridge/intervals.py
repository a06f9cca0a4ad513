"""Interval forward-mode differentiation of a surrogate's exported graph, for many boxes at once.

Every value of the one-point ``torch.export`` graph becomes an enclosure over a box of inputs:
lower and upper bounds of the value and of its derivatives with respect to the inputs (interval
forward mode), with a box axis in front of the program's own shape. Linear layers use the
center-radius form (``W c`` and ``|W| r``: exact for an affine map of a box); other products
(a constant on the left, the input times itself) are sums of interval products. Elementwise
functions use the numpy route's rules (``elementwise.py``: the value and derivative as torch
computes them), evaluated at the interval's ends and at the points inside it where the value or
the derivative can turn (critical points, kinks with both one-sided slopes, poles). Operations
that move, copy or sum entries (views, transposes, indexing, concatenation, sums, means,
running sums) are linear with nonnegative coefficients, so they map bounds to bounds: each is
applied as it is, with the program's own shapes, per box (``torch.vmap``). maximum, amax and
their kin take the hull of the derivatives of the operands that can win on a box; sorts,
top-k, k-th values, medians and running maxima are the order statistics of the bounds (each is
increasing in every value), each place's derivative the hull of those of the entries that can
hold it; softmax, log-softmax, layer norm, vector norms, running products and log-sum-exps are
written in these. An operation with no rule is
replaced by torch's own decomposition of it (``lowering.lowered``), where torch has one. This
bounds V, grad V and f over a box, so the Lyapunov conditions can be *proven* box by box
(``lyapunov.certify``).

At a kink (ReLU at 0, a clamp at its bound) the derivative bounds hold both one-sided slopes,
so for a piecewise-smooth network they enclose Clarke's generalized gradient; a ``where`` whose
condition is undecided over a box takes the hull of both branches. Where a function is undefined
on part of a box (a log of a box reaching 0 or below) its bounds are NaN and the box is never
proven. Before any box is bounded, boxes of one point at probe points must hold torch's own value
and Jacobian there: a reading of the graph that disagrees with torch is refused, not used.

The bounds are computed in float64 without directed rounding: enclosures are exact up to float64
rounding (about 1e-16 relative), which the certificate's strict margins absorb.
"""

from __future__ import annotations

import functools
import math
import operator

import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from .elementwise import ACTIVATIONS
from .lowering import lowered
from .physical import constants_of

__all__ = ["Cond", "IntervalProgram", "Iv", "box_r2", "interval_mul", "knows"]

aten = torch.ops.aten


class Iv:
    """``lo <= value <= hi`` and ``dlo <= d value / dx <= dhi``. Bounds have the shape (b, *shape)
    of the program's value with a box axis in front (b: the number of boxes, or 1 for a value
    that is the same on every box); derivatives have the input's axis (n) last, and are None for
    constants."""

    __slots__ = ("dhi", "dlo", "hi", "lo")

    def __init__(self, lo, hi, dlo=None, dhi=None) -> None:
        self.lo, self.hi, self.dlo, self.dhi = lo, hi, dlo, dhi

    @staticmethod
    def const(c) -> Iv:
        """A program's constant (its own shape), the same on every box."""
        c = torch.as_tensor(c, dtype=torch.float64)[None]
        return Iv(c, c)


def interval_mul(alo, ahi, blo, bhi):
    """The interval product, elementwise with broadcasting; an exact 0 times an unbounded
    factor (a pole's slope on a derivative that does not depend on that input) is 0."""
    p = torch.stack(torch.broadcast_tensors(alo * blo, alo * bhi, ahi * blo, ahi * bhi))
    lo = p.amin(0)  # (NaN wherever a product is)
    if lo.isnan().any():

        def times(x, y):
            return torch.where((x == 0) | (y == 0), 0.0, x * y)

        p = torch.stack(torch.broadcast_tensors(times(alo, blo), times(alo, bhi),
                                                times(ahi, blo), times(ahi, bhi)))  # fmt: skip
        lo = p.amin(0)
    return lo, p.amax(0)


def _lift(t, rank: int):
    """A box-first tensor (b, *shape), with the input's axis last for a derivative, given unit
    axes after the box axis up to ``rank`` axes in all: as the program broadcasts a value of
    fewer axes against one of more, from the left of its own shape."""
    return t if t is None or t.ndim >= rank else t.reshape(t.shape[0], *[1] * (rank - t.ndim),
                                                           *t.shape[1:])  # fmt: skip


def _aligned(*ivs: Iv, rank: int = 0) -> list:
    """The operands of an elementwise operation with as many axes each as the program's result
    (or ``rank``, where more)."""
    rank = max(rank, *(a.lo.ndim for a in ivs))
    return [a if a.lo.ndim == rank else
            Iv(_lift(a.lo, rank), _lift(a.hi, rank), _lift(a.dlo, rank + 1), _lift(a.dhi, rank + 1))
            for a in ivs]  # fmt: skip


def _dscale(slo, shi, a: Iv):
    """(s * da) for an interval factor s (shape of a's value) and a's derivative."""
    if a.dlo is None:
        return None, None
    return interval_mul(slo[..., None], shi[..., None], a.dlo, a.dhi)


def _add(a: Iv, b: Iv, sign: float = 1.0) -> Iv:
    a, b = _aligned(a, b)
    blo, bhi = (b.lo, b.hi) if sign > 0 else (-b.hi, -b.lo)
    lo, hi = a.lo + blo, a.hi + bhi
    if a.dlo is None and b.dlo is None:
        return Iv(lo, hi)
    if b.dlo is None:
        return Iv(lo, hi, *torch.broadcast_tensors(a.dlo, a.dhi, lo[..., None])[:2])
    bdlo, bdhi = (b.dlo, b.dhi) if sign > 0 else (-b.dhi, -b.dlo)
    if a.dlo is None:
        return Iv(lo, hi, *torch.broadcast_tensors(bdlo, bdhi, lo[..., None])[:2])
    return Iv(lo, hi, a.dlo + bdlo, a.dhi + bdhi)


def _times(a: Iv, b: Iv) -> Iv:
    a, b = _aligned(a, b)
    lo, hi = interval_mul(a.lo, a.hi, b.lo, b.hi)
    parts = [_dscale(b.lo, b.hi, a), _dscale(a.lo, a.hi, b)]
    parts = [p for p in parts if p[0] is not None]
    if not parts:
        return Iv(lo, hi)
    dlo = sum(p[0] for p in parts)
    dhi = sum(p[1] for p in parts)
    return Iv(lo, hi, dlo, dhi)


# elementwise functions ----------------------------------------------------------------------------
# Each function's value and slope come from the numpy route's rule (as torch computes them); over
# [lo, hi] they range between their values at the ends and at the points listed here that lie
# inside: where the value or the slope turns, and each kink with the floats either side of it (so
# both one-sided slopes are held). A pole inside makes the bounds infinite.


def _kinks(*points) -> list:
    out = []
    for k in points:
        if k is not None:
            k = np.asarray(k, dtype=np.float64)
            out += [np.nextafter(k, -np.inf), k, np.nextafter(k, np.inf)]
    return out


@functools.cache
def _turns(target, brackets: tuple, params: tuple) -> tuple:
    """The points in each bracket ``(order, a, b)`` where the rule's derivative of that order (1:
    the value turns, 2: the slope turns) changes sign, found by bisection to adjacent floats
    (both kept). Computed once per function and parameters."""
    rule, out = ACTIVATIONS[target], []
    for order, a, b in brackets:
        with np.errstate(all="ignore"):
            g = lambda x: float(rule(np.array([x]), *params)[order][0])  # noqa: B023, E731
            ga = g(a)
            while a < (m := 0.5 * (a + b)) < b:
                if (g(m) > 0) == (ga > 0):
                    a = m
                else:
                    b = m
        out += [a, b]
    return tuple(out)


def _none(*_, **__):
    return [], []


def _at(*points):
    return lambda *_, **__: (list(points), [])


def _kinked(at):
    """Kinks where ``at(*params, **kw)`` says (a tuple of points; None for an absent bound)."""
    return lambda lo, hi, *params, **kw: (_kinks(*at(*params, **kw)), [])


def _smooth(target, *brackets):
    def points(lo, hi, *params, **kw):
        return list(_turns(target, brackets, (*params, *kw.values()))), []

    return points


def _periodic(lo, hi, *_):
    """sin, cos: value and slope turn at multiples of pi / 2; five from lo on cover a period."""
    first = np.ceil(lo / (math.pi / 2)) * (math.pi / 2)
    return [first + j * (math.pi / 2) for j in range(5)], []


def _tan(lo, hi):
    first_pole = np.ceil((lo - math.pi / 2) / math.pi) * math.pi + math.pi / 2
    return _periodic(lo, hi)[0], [first_pole]


def _discontinuous(name):
    def refuse(*_, **__):
        raise ValueError(f"{name} is discontinuous: bounds of its derivative prove nothing")

    return refuse


def _threshold_points(lo, hi, threshold, value):
    if value != threshold:
        return _discontinuous(f"threshold with value {value} != threshold {threshold}")()
    return _kinks(threshold), []


def _gelu_points(lo, hi, approximate="none"):
    return list(_turns(aten.gelu.default, ((1, -1.5, -0.5), (2, -2.0, -1.0), (2, 1.0, 2.0)),
                       (approximate,))), []  # fmt: skip


def _pow_points(lo, hi, p):
    return [0.0], ([0.0] if p < 0 else [])


def _logit_points(lo, hi, eps=None):
    """The slope turns at 1/2; poles at 0 and 1; with eps, kinks at eps and 1 - eps."""
    return [0.5, *([] if eps is None else _kinks(eps, 1.0 - eps))], [0.0, 1.0]


# the points where each of elementwise.ACTIVATIONS can turn, kink or blow up
_POINTS = {
    aten.tanh.default: _at(0.0),
    aten.sigmoid.default: _at(0.0),
    aten.special_expit.default: _at(0.0),
    aten.softplus.default: _kinked(lambda beta=1.0, threshold=20.0: (threshold / beta,)),
    aten.silu.default: _smooth(aten.silu.default, (1, -2.0, -0.5), (2, -3.0, -2.0), (2, 2.0, 3.0)),
    aten.mish.default: _smooth(aten.mish.default, (1, -2.0, -0.5), (2, -3.0, -2.0), (2, 1.0, 2.0)),
    aten.log_sigmoid.default: _none,
    aten.gelu.default: _gelu_points,
    aten.elu.default: _kinked(lambda *_: (0.0,)),
    aten.selu.default: _kinked(lambda: (0.0,)),
    aten.hardtanh.default: _kinked(lambda min_val=-1.0, max_val=1.0: (min_val, max_val)),
    aten.relu6.default: _kinked(lambda: (0.0, 6.0)),
    aten.relu.default: _kinked(lambda: (0.0,)),
    aten.leaky_relu.default: _kinked(lambda *_: (0.0,)),
    aten.sin.default: _periodic,
    aten.cos.default: _periodic,
    aten.exp.default: _none,
    aten.abs.default: _kinked(lambda: (0.0,)),
    aten.clamp.default: _kinked(lambda lo=None, hi=None: (lo, hi)),
    aten.clip.default: _kinked(lambda lo=None, hi=None: (lo, hi)),
    aten.clamp_min.default: _kinked(lambda lo: (lo,)),
    aten.clamp_max.default: _kinked(lambda hi: (hi,)),
    aten.hardswish.default: lambda lo, hi: ([-1.5, *_kinks(-3.0, 3.0)], []),
    aten.softshrink.default: _kinked(lambda lambd=0.5: (-lambd, lambd)),
    aten.threshold.default: _threshold_points,
    aten.rrelu.default: _kinked(lambda *_: (0.0,)),
    aten.pow.Tensor_Scalar: _pow_points,
    aten.square.default: _at(0.0),
    aten.log.default: _none,
    aten.sqrt.default: _none,
    aten.reciprocal.default: lambda lo, hi: ([], [0.0]),
    aten.rsqrt.default: _none,
    aten.sinh.default: _at(0.0),
    aten.cosh.default: _at(0.0),
    aten.tan.default: _tan,
    aten.asin.default: _at(0.0),
    aten.acos.default: _at(0.0),
    aten.atan.default: _at(0.0),
    aten.asinh.default: _at(0.0),
    aten.acosh.default: _none,
    aten.atanh.default: _at(0.0),
    aten.expm1.default: _none,
    aten.exp2.default: _none,
    aten.log1p.default: _none,
    aten.log2.default: _none,
    aten.log10.default: _none,
    aten.erf.default: _at(0.0),
    aten.erfc.default: _at(0.0),
    aten.logit.default: _logit_points,
    aten.hardshrink.default: _discontinuous("hardshrink"),
    aten.sign.default: _discontinuous("sign"),
}


def _number(p):
    """A call's parameter for a numpy rule: a tensor as an array, anything else as it is."""
    return p.detach().cpu().numpy() if isinstance(p, torch.Tensor) else p


def _tanh(h):
    t = torch.tanh(h)
    return t, 1.0 - t * t


def _sigmoid(h):
    s = torch.sigmoid(h)
    return s, s * (1.0 - s)


# the common smooth activations' value and slope in torch, which is faster on large boxes
_TORCH_FIRST = {
    aten.tanh.default: _tanh,
    aten.sigmoid.default: _sigmoid,
    aten.special_expit.default: _sigmoid,
    aten.exp.default: lambda h: (h.exp(),) * 2,
}


def _elementwise(target):
    rule, where, fast = ACTIVATIONS[target], _POINTS[target], _TORCH_FIRST.get(target)

    def op(a: Iv, *params, **kw) -> Iv:
        params, kw = [_number(p) for p in params], {k: _number(v) for k, v in kw.items()}
        lo, hi = a.lo, a.hi
        points, poles = where(lo.detach().cpu().numpy(), hi.detach().cpu().numpy(), *params, **kw)

        def value_slope(h: torch.Tensor):
            if fast is not None:
                return fast(h)
            with np.errstate(all="ignore"):
                f, d = rule(h.detach().cpu().numpy(), *params, **kw)[:2]
            return tuple(torch.as_tensor(np.asarray(v, dtype=np.float64)).to(lo) for v in (f, d))

        (f_lo, d_lo), (f_hi, d_hi) = value_slope(lo), value_slope(hi)
        f_min, f_max = torch.minimum(f_lo, f_hi), torch.maximum(f_lo, f_hi)
        d_min, d_max = torch.minimum(d_lo, d_hi), torch.maximum(d_lo, d_hi)
        for p in points:  # (a fixed point is evaluated once, not per entry)
            p = torch.as_tensor(np.asarray(p, dtype=np.float64)).to(lo)
            f_p, d_p = value_slope(p.reshape(-1) if p.ndim == 0 else p)
            inside = (lo <= p) & (p <= hi)
            f_min = torch.where(inside, torch.minimum(f_min, f_p), f_min)
            f_max = torch.where(inside, torch.maximum(f_max, f_p), f_max)
            d_min = torch.where(inside, torch.minimum(d_min, d_p), d_min)
            d_max = torch.where(inside, torch.maximum(d_max, d_p), d_max)
        for p in poles:
            p = torch.as_tensor(p).to(lo)
            inside = (lo <= p) & (p <= hi)
            f_min, d_min = (
                f_min.masked_fill(inside, -math.inf),
                d_min.masked_fill(inside, -math.inf),
            )
            f_max, d_max = f_max.masked_fill(inside, math.inf), d_max.masked_fill(inside, math.inf)
        return Iv(f_min, f_max, *_dscale(d_min, d_max, a))

    return op


def _prelu(a: Iv, weight) -> Iv:
    """prelu: a leaky ReLU whose slope is a weight per channel (dim 1) or one for all."""
    w = weight.detach()
    if w.numel() > 1:
        w = w.reshape(-1, *[1] * (a.lo.ndim - 3))  # (the box axis, then the program's dims)
    return _RULES[aten.leaky_relu.default](a, w)


# comparisons, where and extremes ------------------------------------------------------------------


class Cond:
    """A comparison over boxes: ``surely`` true at every point of a box, ``maybe`` at some (also
    where its bounds are NaN, so that a ``where`` then keeps both branches); box axis first."""

    __slots__ = ("maybe", "surely")

    def __init__(self, surely, maybe) -> None:
        self.surely, self.maybe = surely, maybe


def _compare(kind: str):
    def op(a, b) -> Cond:
        d = _add(_iv(a), _iv(b), -1.0)  # a - b
        if kind == "ge":
            return Cond(d.lo >= 0, ~(d.hi < 0))
        if kind == "gt":
            return Cond(d.lo > 0, ~(d.hi <= 0))
        if kind == "le":
            return Cond(d.hi <= 0, ~(d.lo > 0))
        if kind == "lt":
            return Cond(d.hi < 0, ~(d.lo >= 0))
        equal = Cond((d.lo == 0) & (d.hi == 0), ~((d.lo > 0) | (d.hi < 0)))
        return equal if kind == "eq" else Cond(~equal.maybe, ~equal.surely)

    return op


def _where(cond, a, b) -> Iv:
    """The branch the condition takes on the box, or the hull of both where it is undecided."""
    if not isinstance(cond, Cond):  # a program's constant mask
        cond = torch.as_tensor(cond)[None]
        cond = Cond(cond, cond)
    a, b = _iv(a), _iv(b)
    rank = max(a.lo.ndim, b.lo.ndim, cond.surely.ndim)
    a, b = _aligned(a, b, rank=rank)
    surely, maybe = _lift(cond.surely, rank), _lift(cond.maybe, rank)

    def pick(x, y, join, surely, maybe):
        return torch.where(surely, x, torch.where(maybe, join(x, y), y))

    lo = pick(a.lo, b.lo, torch.minimum, surely, maybe)
    hi = pick(a.hi, b.hi, torch.maximum, surely, maybe)
    if a.dlo is None and b.dlo is None:
        return Iv(lo, hi)
    n = (a.dlo if a.dlo is not None else b.dlo).shape[-1]
    zero = lo.new_zeros((*lo.shape, n))
    da = (a.dlo, a.dhi) if a.dlo is not None else (zero, zero)
    db = (b.dlo, b.dhi) if b.dlo is not None else (zero, zero)
    s, m = surely[..., None], maybe[..., None]
    return Iv(lo, hi, pick(da[0], db[0], torch.minimum, s, m),
              pick(da[1], db[1], torch.maximum, s, m))  # fmt: skip


def _larger(kind: str):
    """maximum / minimum of two values: the bounds' own maximum (minimum); the derivative is the
    operand that surely wins on the box, or the hull of both (torch's even split at a tie lies
    in it)."""
    top = torch.maximum if kind == "max" else torch.minimum

    def op(a, b) -> Iv:
        a, b = _aligned(_iv(a), _iv(b))
        lo, hi = top(a.lo, b.lo), top(a.hi, b.hi)
        if a.dlo is None and b.dlo is None:
            return Iv(lo, hi)
        if kind == "max":
            wins, loses = a.lo > b.hi, a.hi < b.lo
        else:
            wins, loses = a.hi < b.lo, a.lo > b.hi
        d = _where(Cond(wins, ~loses), a, b)
        return Iv(lo, hi, d.dlo, d.dhi)

    return op


def _box_dims(a: Iv, dim) -> list[int]:
    """A program's reduction dims (all for none) as the bounds' dims (after the box axis); the
    same dims on derivatives, whose extra axis is last."""
    rank = a.lo.ndim - 1
    dims = range(rank) if dim is None or (isinstance(dim, (list, tuple)) and not dim) else dim
    return [d % rank + 1 for d in ([dims] if isinstance(dims, int) else dims)]


def _peak(kind: str):
    """amax / amin over dims: the bounds' own extremes; the derivative is the hull of those
    entries' derivatives that can be the extreme somewhere on the box (any whose upper bound
    reaches the largest lower bound, for amax), which holds torch's even split at a tie."""

    def op(a: Iv, dim=None, keepdim=False) -> Iv:
        dims = _box_dims(a, dim)
        if kind == "max":
            lo, hi = a.lo.amax(dims, keepdim), a.hi.amax(dims, keepdim)
            can = ~(a.hi < a.lo.amax(dims, keepdim=True))  # (NaN bounds: can)
        else:
            lo, hi = a.lo.amin(dims, keepdim), a.hi.amin(dims, keepdim)
            can = ~(a.lo > a.hi.amin(dims, keepdim=True))
        if a.dlo is None:
            return Iv(lo, hi)
        can = can[..., None]
        dlo = a.dlo.masked_fill(~can, math.inf).amin(dims, keepdim)
        dhi = a.dhi.masked_fill(~can, -math.inf).amax(dims, keepdim)
        return Iv(lo, hi, dlo, dhi)

    return op


def _held(a: Iv, lo: torch.Tensor, hi: torch.Tensor, can: torch.Tensor) -> Iv:
    """Values picked from ``a`` (its last axis, L entries) into positions whose bounds are
    ``lo``, ``hi``; ``can[..., j, i]``: entry j may be the one at position i somewhere on the
    box. The derivative at i is that of the entry held there: the hull over those that can."""
    if a.dlo is None:
        return Iv(lo, hi)
    m = can[..., None]
    dlo = a.dlo[..., :, None, :].masked_fill(~m, math.inf).amin(-3)
    dhi = a.dhi[..., :, None, :].masked_fill(~m, -math.inf).amax(-3)
    return Iv(lo, hi, dlo, dhi)


def _along_last(rule):
    """``rule(a)`` on the program's ``dim`` moved last (bounds (.., L), derivatives (.., L, n)),
    and its result moved back."""

    def op(a: Iv, dim, *args) -> Iv:
        move = _moved(torch.movedim)
        return move(rule(move(a, dim, -1), *args), -1, dim)

    return op


@_along_last
def _ordered(a: Iv, descending: bool = False) -> Iv:
    """The values along ``dim`` in order: the i-th least value is increasing in each value, so
    its bounds are the i-th least lower and upper bounds; entry j can hold rank i where fewer
    than i + 1 entries surely lie below it and fewer than L - i surely above it."""
    size = a.lo.shape[-1]
    lo = a.lo.sort(-1, descending).values
    hi = a.hi.sort(-1, descending).values
    below = (a.hi[..., None, :] < a.lo[..., :, None]).sum(-1)  # (.., j): entries surely below j
    above = (a.lo[..., None, :] > a.hi[..., :, None]).sum(-1)
    first, final = (above, size - 1 - below) if descending else (below, size - 1 - above)
    i = torch.arange(size)
    can = (first[..., :, None] <= i) & (i <= final[..., :, None])
    return _held(a, lo, hi, can)


def _place(a: Iv, dim: int, i: int, keepdim: bool) -> Iv:
    """The i-th place along ``dim``, the axis kept or not (torch's select and slice rules)."""
    if keepdim:
        return _RULES[aten.slice.Tensor](a, dim, i, i + 1)
    return _RULES[aten.select.int](a, dim, i)


def _sort(a: Iv, dim=-1, descending=False):
    return _ordered(a, dim, descending), None


def _topk(a: Iv, k, dim=-1, largest=True, sorted=True):
    if not sorted:
        raise ValueError("topk with sorted=False: its order is torch's own")
    return _RULES[aten.slice.Tensor](_ordered(a, dim, largest), dim, 0, k), None


def _kthvalue(a: Iv, k, dim=-1, keepdim=False):
    return _place(_ordered(a, dim), dim, k - 1, keepdim), None


def _median(a: Iv, dim, keepdim=False):
    """torch's median: the lower middle value."""
    size = a.lo.shape[_box_dims(a, dim)[0]]
    return _place(_ordered(a, dim), dim, (size - 1) // 2, keepdim), None


def _running_extreme(kind: str):
    """cummax / cummin: the running bounds' own extremes (increasing in each value); entry j can
    hold position t if j <= t and it can be the extreme of the first t + 1 (as :func:`_peak`)."""

    @_along_last
    def values(a: Iv) -> Iv:
        i = torch.arange(a.lo.shape[-1])
        if kind == "max":
            lo, hi = a.lo.cummax(-1).values, a.hi.cummax(-1).values
            can = ~(a.hi[..., :, None] < lo[..., None, :])
        else:
            lo, hi = a.lo.cummin(-1).values, a.hi.cummin(-1).values
            can = ~(a.lo[..., :, None] > hi[..., None, :])
        return _held(a, lo, hi, can & (i[:, None] <= i[None, :]))

    return lambda a, dim: (values(a, dim), None)


def _running(step):
    """cumprod / logcumsumexp along ``dim``: ``step(previous, next)`` from the first position on,
    by the rules of the operations it is made of."""

    def op(a: Iv, dim, dtype=None):
        size = a.lo.shape[_box_dims(a, dim)[0]]
        done = [_place(a, dim, 0, True)]
        for t in range(1, size):
            done.append(step(done[-1], _place(a, dim, t, True), dim))
        return _RULES[aten.cat.default](done, dim)

    return op


# products ----------------------------------------------------------------------------------------


def _linear(x: Iv, W, b=None) -> Iv:
    """A linear layer of constant weights: center and radius (exact for an affine map of a box)."""
    if isinstance(W, Iv) or isinstance(b, Iv) or not isinstance(x, Iv) or not _finite(x):
        out = _product(x, _moved(torch.t)(W) if isinstance(W, Iv) else W.T)
        return out if b is None else _add(out, _iv(b))
    c, r = (x.lo + x.hi) / 2, (x.hi - x.lo) / 2
    yc, yr = c @ W.T, r @ W.abs().T
    if b is not None:
        yc = yc + b
    out = Iv(yc - yr, yc + yr)
    if x.dlo is not None:
        dc, dr = (x.dlo + x.dhi) / 2, (x.dhi - x.dlo) / 2
        dyc = torch.einsum("...kn,jk->...jn", dc, W)
        dyr = torch.einsum("...kn,jk->...jn", dr, W.abs())
        out.dlo, out.dhi = dyc - dyr, dyc + dyr
    return out


def _finite(x: Iv) -> bool:
    """Bounds without an infinity (which the center-radius form would turn into NaN)."""
    return all(bool(t.isfinite().all()) for t in (x.lo, x.hi, x.dlo, x.dhi) if t is not None)


def _matmul(a, b) -> Iv:
    """torch.matmul of bounds: (input) @ (constant matrix) as a linear layer, any other product
    as :func:`_product`."""
    if isinstance(a, Iv) and not isinstance(b, Iv) and b.ndim == 2 and _finite(a):
        return _linear(a, b.T)
    return _product(a, b)


def _product(a, b) -> Iv:
    """torch.matmul as sums of interval products (``a[..., i, k] * b[..., k, j]`` over k, the
    leading dims broadcast as the program does): for a constant on the left, both operands
    depending on the input, or unbounded operands (where an exact 0 times an infinite bound
    is 0)."""
    a, b = _iv(a), _iv(b)
    vector_a, vector_b = a.lo.ndim == 2, b.lo.ndim == 2  # (the box axis, then one)
    unsqueeze, squeeze = _moved(torch.unsqueeze), _moved(torch.squeeze)
    if vector_a:
        a = unsqueeze(a, 0)
    if vector_b:
        b = unsqueeze(b, -1)
    out = _moved(torch.sum)(_times(unsqueeze(a, -1), unsqueeze(b, -3)), -2)
    if vector_a:
        out = squeeze(out, -2)
    return squeeze(out, -1) if vector_b else out


def _scale(a: Iv, c: float) -> Iv:
    lo, hi = (a.lo * c, a.hi * c) if c >= 0 else (a.hi * c, a.lo * c)
    if a.dlo is None:
        return Iv(lo, hi)
    dlo, dhi = (a.dlo * c, a.dhi * c) if c >= 0 else (a.dhi * c, a.dlo * c)
    return Iv(lo, hi, dlo, dhi)


# moving, copying and summing entries --------------------------------------------------------------


def _moved(fn):
    """An operation linear with nonnegative coefficients in its tensors (it moves, copies, sums
    or averages entries: views, indexing, concatenation, sums, running sums): it maps lower
    bounds to lower bounds, so it is applied as it is to each box's lower and upper bounds and
    to their derivatives for each input, with the program's own shapes (``torch.vmap``, in one
    call over all of them). A constant operand keeps its value on the bounds and is zero on the
    derivatives; an integer or boolean one (an index) is kept on both."""

    def op(*args, **kwargs):
        leaves, spec = tree_flatten((args, kwargs))
        at = [i for i, v in enumerate(leaves) if isinstance(v, Iv)]
        ivs = [leaves[i] for i in at]
        boxes = max(v.lo.shape[0] for v in ivs)
        n = next((v.dlo.shape[-1] for v in ivs if v.dlo is not None), 0)

        def each(fixed, tensors):
            def call(*ts):
                full = list(fixed)
                for i, t in zip(at, ts, strict=True):
                    full[i] = t
                inner_args, inner_kwargs = tree_unflatten(full, spec)
                return fn(*inner_args, **inner_kwargs)

            return torch.vmap(call)(*tensors)

        def samples(v: Iv, bounds: bool, slopes: bool) -> torch.Tensor:
            """(k, *shape): the boxes' lower and upper bounds, and (box, input) derivatives."""
            shape = v.lo.shape[1:]
            parts = [v.lo.expand(boxes, *shape), v.hi.expand(boxes, *shape)] if bounds else []
            if slopes:
                for d in (v.dlo, v.dhi):
                    d = v.lo.new_zeros((*v.lo.shape, n)) if d is None else d
                    d = d.movedim(-1, 1).expand(boxes, n, *shape)
                    parts.append(d.reshape(boxes * n, *shape))
            return torch.cat(parts)

        def unpack(out, parts: list[str]) -> Iv:
            sizes = {"lo": boxes, "hi": boxes, "dlo": boxes * n, "dhi": boxes * n}
            got = dict(zip(parts, out.split([sizes[p] for p in parts]), strict=True))
            for d in ("dlo", "dhi"):
                if d in got:
                    got[d] = got[d].reshape(boxes, n, *got[d].shape[1:]).movedim(1, -1)
            return Iv(got.get("lo"), got.get("hi"), got.get("dlo"), got.get("dhi"))

        def run(fixed, bounds: bool, slopes: bool):
            parts = ["lo", "hi"] * bounds + ["dlo", "dhi"] * slopes
            out = each(fixed, [samples(v, bounds, slopes) for v in ivs])
            return (
                unpack(out, parts)
                if isinstance(out, torch.Tensor)
                else [unpack(o, parts) for o in out]
            )

        constants = [isinstance(v, torch.Tensor) and v.is_floating_point() for v in leaves]
        if n == 0 or not any(constants):  # bounds and derivatives in one call
            return run(leaves, True, n > 0)
        zeroed = [torch.zeros_like(v) if c else v for v, c in zip(leaves, constants, strict=True)]
        bounds, slopes = run(leaves, True, False), run(zeroed, False, True)
        if isinstance(bounds, Iv):
            return Iv(bounds.lo, bounds.hi, slopes.dlo, slopes.dhi)
        return [Iv(b.lo, b.hi, d.dlo, d.dhi) for b, d in zip(bounds, slopes, strict=True)]

    return op


def _shifted(fn, grows: bool = False):
    """An operation of the program's dim (or dims) as its second argument (select, slice, sums,
    concatenation, ...), on values that all carry derivatives: ``fn`` itself on their bounds and
    derivatives, the dim counted past the box axis (and, as it is counted from the front, the
    same on derivatives, whose input axis is last); ``grows``: the result has one axis more.
    Other calls go through :func:`_moved` (this is the common case, without its ``vmap``)."""
    general = _moved(fn)

    def op(*args, **kwargs):
        first = args[0]
        ivs = list(first) if isinstance(first, (list, tuple)) else [first]
        dims = args[1] if len(args) > 1 else None
        if (
            kwargs
            or not isinstance(dims, (int, list, tuple))
            or dims == []
            or not all(isinstance(v, Iv) and v.dlo is not None for v in ivs)
        ):
            return general(*args, **kwargs)
        rank = ivs[0].lo.ndim - 1 + grows
        dims = dims % rank + 1 if isinstance(dims, int) else [d % rank + 1 for d in dims]
        boxes = max(v.lo.shape[0] for v in ivs)

        def apply(name):
            ts = [getattr(v, name) for v in ivs]
            if len(ts) > 1:
                ts = [t.expand(boxes, *t.shape[1:]) for t in ts]
            return fn(ts if isinstance(first, (list, tuple)) else ts[0], dims, *args[2:])

        return Iv(apply("lo"), apply("hi"), apply("dlo"), apply("dhi"))

    return op


def _padded(a: Iv, pad, value=0.0) -> Iv:
    """constant_pad_nd: the padding value on the bounds, zero on the derivatives."""
    out = _moved(torch.ops.aten.constant_pad_nd.default)(a, pad)
    if value:
        out = _add(out, _iv(torch.ops.aten.constant_pad_nd.default(
            torch.zeros(a.lo.shape[1:], dtype=a.lo.dtype), pad, value)))  # fmt: skip
    return out


def _like(fn):
    """zeros_like and its kin: a constant of the operand's shape."""
    return lambda a, *args, **kwargs: fn(a.lo[0], *args, **kwargs)


def _base_power(base, a: Iv) -> Iv:
    """base ** x for a constant base > 0: exp(x log base)."""
    if not (isinstance(base, (int, float)) and base > 0):
        raise ValueError(f"a power of base {base}: only a constant base > 0 has an interval rule")
    return _RULES[aten.exp.default](_scale(a, math.log(base)))


def _iv(a) -> Iv:
    if isinstance(a, Cond):
        raise ValueError(
            "a comparison used as a number (a mask such as h * (h > 0)) is a step: "
            "discontinuous unless its factor vanishes where it switches, so bounds of its "
            "derivative prove nothing (torch.where or relu say what is meant)"
        )
    return a if isinstance(a, Iv) else Iv.const(a)


def _binary(kind):
    def op(a, b, alpha=1):
        a, b = _iv(a), _iv(b)
        if kind == "add":
            return _add(a, b if alpha == 1 else _scale(b, alpha))
        if kind == "sub":
            return _add(a, b if alpha == 1 else _scale(b, alpha), -1.0)
        if kind == "mul":  # (x * x as the square: bounds of x^2 are >= 0, and tight)
            return _RULES[aten.square.default](a) if a is b else _times(a, b)
        if b.dlo is None and torch.all(b.lo == b.hi):
            return _times(a, Iv(1 / b.lo, 1 / b.lo))
        return _times(a, _RULES[aten.reciprocal.default](b))

    return op


def _share(top, bottom):
    """``1 / (1 + sum_j!=i exp(top_j - bottom_i))`` over the last axis, stably."""
    z = top[..., None, :] - bottom[..., :, None]  # (..., i, j)
    eye = torch.eye(z.shape[-1], dtype=torch.bool, device=z.device)
    z = z.masked_fill(eye, 0.0)  # exp(0) = 1: the 1 + ...
    return torch.exp(-torch.logsumexp(z, -1))


def _logsumexp(a: Iv, dims, keepdim=False) -> Iv:
    """log sum exp over the last axis: increasing in each value, with the gradient
    ``p_i = 1 / (1 + sum_j!=i exp(h_j - h_i))`` bounded by the values' bounds."""
    box = _box_dims(a, dims)
    if len(box) != 1:
        raise ValueError("logsumexp over more than one axis")
    if box[0] != a.lo.ndim - 1:  # (over another axis: moved last, and back)
        move = _moved(torch.movedim)
        out = _logsumexp(move(a, box[0] - 1, -1), [-1], keepdim)
        return move(out, -1, box[0] - 1) if keepdim else out
    lo = torch.logsumexp(a.lo, -1, keepdim=keepdim)
    hi = torch.logsumexp(a.hi, -1, keepdim=keepdim)
    if a.dlo is None:
        return Iv(lo, hi)

    p_lo, p_hi = _share(a.hi, a.lo), _share(a.lo, a.hi)
    dlo, dhi = interval_mul(p_lo[..., None], p_hi[..., None], a.dlo, a.dhi)
    return Iv(lo, hi, dlo.sum(-2, keepdim=keepdim), dhi.sum(-2, keepdim=keepdim))


def _norm(a: Iv, ord=2, dim=None, keepdim=False, *, dtype=None) -> Iv:
    """linalg_vector_norm of order 2 (the root of a sum of squares: tight bounds of the value),
    1 (a sum of absolute values) or inf (their largest)."""
    dims = [d - 1 for d in _box_dims(a, dim)]
    if ord == 2:
        total = _moved(torch.sum)(_RULES[aten.square.default](a), dims, keepdim)
        return _RULES[aten.sqrt.default](total)
    size = _RULES[aten.abs.default](a)
    if ord == 1:
        return _moved(torch.sum)(size, dims, keepdim)
    if ord == math.inf:
        return _peak("max")(size, dims, keepdim)
    raise ValueError(f"vector_norm of order {ord}: only orders 2, 1 and inf have interval rules")


def _softmax(a: Iv, dim, half_to_float=False) -> Iv:
    """exp(x - logsumexp(x)) over ``dim``; its values bounded tightly, as each
    ``p_i = 1 / (1 + sum_j!=i exp(x_j - x_i))`` increases with x_i and decreases with the rest."""
    out = _RULES[aten.exp.default](_log_softmax(a, dim))
    move = _moved(torch.movedim)
    last = move(a, dim, -1)
    tight = move(Iv(_share(last.hi, last.lo), _share(last.lo, last.hi)), -1, dim)
    return Iv(torch.maximum(out.lo, tight.lo), torch.minimum(out.hi, tight.hi), out.dlo, out.dhi)


def _log_softmax(a: Iv, dim, half_to_float=False) -> Iv:
    """x - logsumexp(x) over ``dim``."""
    return _add(a, _logsumexp(a, [dim], True), -1.0)


def _layer_norm(a: Iv, shape, weight=None, bias=None, eps=1e-5) -> tuple:
    """native_layer_norm as its definition, (x - mean) / sqrt(var + eps) * weight + bias over
    the last ``len(shape)`` dims; with the mean and the reciprocal deviation it also returns."""
    dims = list(range(-len(shape), 0))
    mean = _moved(torch.mean)(a, dims, True)
    centred = _add(a, mean, -1.0)
    var = _moved(torch.mean)(_RULES[aten.square.default](centred), dims, True)
    rstd = _RULES[aten.rsqrt.default](_add(var, _iv(eps)))
    out = _times(centred, rstd)
    if weight is not None:
        out = _times(out, _iv(weight))
    if bias is not None:
        out = _add(out, _iv(bias))
    return out, mean, rstd


def _extreme_at(kind):
    """max(dim) / min(dim): the values (the program may not use the indices, see
    IntervalProgram)."""
    return lambda a, dim, keepdim=False: (_peak(kind)(a, [dim], keepdim), None)


_MOVED = (
    aten.squeeze.dims, aten.squeeze.default,
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.expand.default,
    aten.permute.default, aten.transpose.int, aten.t.default, aten.numpy_T.default,
    aten.flip.default, aten.roll.default, aten.narrow.default, aten.movedim.int,
    aten.flatten.using_ints, aten.unflatten.int, aten.repeat.default, aten.diagonal.default,
    aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default, aten.unbind.int,
    aten.index_select.default, aten.gather.default, aten.index.Tensor,
    aten.sum.default, aten.mean.dim, aten.mean.default, aten.cumsum.default, aten.unfold.default,
)  # fmt: skip
# (these of one dim, the common case, without vmap; with _moved's reading otherwise)
_SHIFTED = (aten.select.int, aten.slice.Tensor, aten.cat.default, aten.squeeze.dim,
            aten.sum.dim_IntList)  # fmt: skip
_GROWS = (aten.unsqueeze.default, aten.stack.default)
# (a view of bounds that a box axis in front makes non-contiguous is read as a reshape)
_VIEWS = {aten.view.default: torch.reshape, aten._unsafe_view.default: torch.reshape}
_LIKE = (aten.zeros_like.default, aten.ones_like.default, aten.full_like.default,
         aten.new_zeros.default, aten.new_ones.default, aten.new_full.default)  # fmt: skip
_PRODUCTS = (aten.matmul.default, aten.mm.default, aten.bmm.default, aten.mv.default,
             aten.dot.default)  # fmt: skip

_RULES = {
    aten.linear.default: _linear,
    aten.addmm.default: lambda b, x, W, beta=1, alpha=1: _add(
        _scale(_iv(b), beta), _scale(_matmul(x, W), alpha)
    ),
    **{target: _matmul for target in _PRODUCTS},
    aten.add.Tensor: _binary("add"),
    aten.add.Scalar: _binary("add"),
    aten.sub.Tensor: _binary("sub"),
    aten.sub.Scalar: _binary("sub"),
    aten.mul.Tensor: _binary("mul"),
    aten.mul.Scalar: _binary("mul"),
    aten.div.Tensor: _binary("div"),
    aten.div.Scalar: _binary("div"),
    aten.rsub.Scalar: lambda a, s, alpha=1: _add(_iv(s), _scale(a, alpha), -1.0),
    aten.neg.default: lambda a: _scale(a, -1.0),
    **{target: _elementwise(target) for target in ACTIVATIONS},
    aten.prelu.default: _prelu,
    # (tensor bounds: the clamp rule, built once above, with per-value kinks)
    aten.clamp.Tensor: lambda a, lo=None, hi=None: _RULES[aten.clamp.default](a, lo, hi),
    aten.clip.Tensor: lambda a, lo=None, hi=None: _RULES[aten.clamp.default](a, lo, hi),
    aten.clamp_min.Tensor: lambda a, lo: _RULES[aten.clamp.default](a, lo, None),
    aten.clamp_max.Tensor: lambda a, hi: _RULES[aten.clamp.default](a, None, hi),
    **{getattr(aten, k).Scalar: _compare(k) for k in ("ge", "gt", "le", "lt", "eq", "ne")},
    **{getattr(aten, k).Tensor: _compare(k) for k in ("ge", "gt", "le", "lt", "eq", "ne")},
    aten.pow.Scalar: _base_power,
    # NaN somewhere on the box where a bound is NaN (a where on it then keeps both branches)
    aten.isnan.default: lambda a: Cond(
        torch.zeros_like(a.lo, dtype=torch.bool), a.lo.isnan() | a.hi.isnan()
    ),
    aten.where.self: _where,
    aten.maximum.default: _larger("max"),
    aten.minimum.default: _larger("min"),
    aten.amax.default: _peak("max"),
    aten.amin.default: _peak("min"),
    aten.max.dim: _extreme_at("max"),
    aten.min.dim: _extreme_at("min"),
    aten.max.default: lambda a: _peak("max")(a),
    aten.min.default: lambda a: _peak("min")(a),
    aten.addmv.default: lambda c, M, v, beta=1, alpha=1: _add(
        _scale(_iv(c), beta), _scale(_matmul(M, v), alpha)
    ),
    aten.sort.default: _sort,
    aten.topk.default: _topk,
    aten.kthvalue.default: _kthvalue,
    aten.median.dim: _median,
    aten.median.default: lambda a: _median(_moved(torch.flatten)(a), -1)[0],
    aten.cummax.default: _running_extreme("max"),
    aten.cummin.default: _running_extreme("min"),
    aten.cumprod.default: _running(lambda p, c, dim: _times(p, c)),
    aten.logcumsumexp.default: _running(
        lambda p, c, dim: _logsumexp(_RULES[aten.cat.default]([p, c], dim), [dim], True)
    ),
    **{target: _moved(_VIEWS.get(target, target)) for target in _MOVED},
    **{target: _shifted(target) for target in _SHIFTED},
    **{
        target: _shifted(target, grows=True)
        for target in (aten.unsqueeze.default, aten.stack.default)
    },
    aten.constant_pad_nd.default: _padded,
    **{target: _like(target) for target in _LIKE},
    aten.logsumexp.default: _logsumexp,
    aten.linalg_vector_norm.default: _norm,
    aten._softmax.default: _softmax,
    aten.softmax.int: _softmax,
    aten._log_softmax.default: _log_softmax,
    aten.log_softmax.int: _log_softmax,
    aten.native_layer_norm.default: _layer_norm,
    operator.getitem: lambda parts, i: parts[i],
}
_SELECTIONS = (
    aten.max.dim,
    aten.min.dim,
    aten.sort.default,
    aten.topk.default,
    aten.kthvalue.default,
    aten.median.dim,
    aten.cummax.default,
    aten.cummin.default,
)  # (values, indices): bounds of the indices prove nothing
_IDENTITY = {aten.clone.default, aten.alias.default, aten.detach.default, aten._to_copy.default,
             aten.contiguous.default, aten.dropout.default}  # fmt: skip
_CHECK = 1e-9  # a box of one point: bounds hold torch's value and Jacobian to rounding


def knows(target) -> bool:
    """Whether an operation has an interval rule (an operation without one is lowered to
    torch's own decomposition of it first, where torch has one)."""
    return target in _RULES or target in _IDENTITY or str(target).startswith("aten._assert")


class IntervalProgram:
    """Bounds of a one-point exported program's output and its Jacobian over boxes.

    ``program``: ``Surrogate.export(one_point=True)``; ``__call__(lo, hi)`` with lo, hi of shape
    (B, n) returns an ``Iv`` of the (B, m) output with (B, m, n) derivative bounds. An operation
    without an interval rule is replaced by torch's own decomposition of it where ``probes``
    (k, n) are given and torch has one (``lowering.lowered``, checked there to be the same
    function at the probes); one left without a rule, or one whose bounds would prove nothing
    (a discontinuous function), raises ``ValueError`` naming it, here rather than at the first
    box. At the probes (or at 0), boxes of one point must hold torch's own value and Jacobian,
    or ``ValueError`` is raised: a reading of the graph that disagrees with torch proves
    nothing.
    """

    def __init__(self, program, probes: torch.Tensor | None = None) -> None:
        unknown = _unknown(program)
        if unknown and probes is not None:
            program = lowered(program, knows, probes)
            unknown = _unknown(program)
        self.program = program
        self.consts = {  # (float64 values; indices and masks as they are)
            name: c.to(torch.float64) if c.is_floating_point() else c
            for name, c in constants_of(program, float64=False).items()
        }
        if unknown:
            raise ValueError(f"operation {unknown[0]} has no interval rule")
        for node in program.graph.nodes:
            if node.target in _SELECTIONS and any(
                user.target is not operator.getitem or (user.args[1] != 0 and user.users)
                for user in node.users
            ):
                raise ValueError(f"{node.target}: bounds of its indices prove nothing")
        x = next(node for node in program.graph.nodes
                 if node.op == "placeholder" and node.name not in self.consts)  # fmt: skip
        n = x.meta["val"].shape[-1]
        points = torch.zeros(1, n, dtype=torch.float64) if probes is None else probes[:4]
        self._check(torch.as_tensor(points, dtype=torch.float64))

    def _check(self, points: torch.Tensor) -> None:
        """Boxes of one point hold torch's value and Jacobian there."""
        iv = self(points, points)
        module = self.program.module()
        for b, point in enumerate(points):
            x = point[None].clone().requires_grad_(True)
            y = module(x).reshape(-1)
            jac = torch.stack([
                torch.autograd.grad(y[k], x, retain_graph=True, allow_unused=True,
                                    materialize_grads=True)[0].reshape(-1)
                for k in range(len(y))
            ])  # fmt: skip
            for value, lo, hi in ((y.detach(), iv.lo[b], iv.hi[b]), (jac, iv.dlo[b], iv.dhi[b])):
                tol = _CHECK * (1.0 + value.abs())
                wrong = value.isfinite() & ~((lo - tol <= value) & (value <= hi + tol))
                if wrong.any():
                    raise ValueError(
                        "interval bounds disagree with torch's own value or Jacobian at "
                        f"{point.tolist()}: an operation is read wrongly here"
                    )

    def __call__(self, lo: torch.Tensor, hi: torch.Tensor) -> Iv:
        B, n = lo.shape
        eye = torch.eye(n, dtype=lo.dtype).expand(B, 1, n, n)
        env: dict = {}
        out = None
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                env[node.name] = (
                    self.consts.get(node.name)
                    if node.name in self.consts
                    else Iv(lo[:, None], hi[:, None], eye, eye)  # (the program's one row)
                )
            elif node.op == "call_function":
                if node.target in _IDENTITY and isinstance(env[node.args[0].name], (Iv, Cond)):
                    env[node.name] = env[node.args[0].name]
                    continue
                if str(node.target).startswith("aten._assert"):
                    continue
                args = _map_nodes(node.args, env)
                skip = ("memory_format", "layout", "device", "pin_memory")
                kwargs = {k: v for k, v in _map_nodes_kw(node.kwargs, env).items() if k not in skip}
                if not any(isinstance(a, (Iv, Cond)) for a in _flat([*args, *kwargs.values()])):
                    env[node.name] = node.target(*args, **kwargs)  # constants only: exact
                    continue
                try:
                    env[node.name] = _RULES[node.target](*args, **kwargs)
                except ValueError:
                    raise
                except Exception as err:  # (torch's own error, on bounds: this reading fails)
                    raise ValueError(
                        f"operation {node.target} with these arguments: {err}"
                    ) from err
            elif node.op == "output":
                out = env[node.args[0][0].name]
        return _rows(_iv(out), B, n)


def _rows(out: Iv, B: int, n: int) -> Iv:
    """The program's (1, m) output as (B, m) bounds and (B, m, n) derivative bounds."""
    lo, hi = out.lo.reshape(out.lo.shape[0], -1), out.hi.reshape(out.hi.shape[0], -1)
    m = lo.shape[1]
    if out.dlo is None:
        dlo = dhi = lo.new_zeros(B, m, n)
    else:
        dlo, dhi = (d.reshape(d.shape[0], m, n).expand(B, m, n) for d in (out.dlo, out.dhi))
    return Iv(lo.expand(B, m), hi.expand(B, m), dlo, dhi)


def _unknown(program) -> list:
    """The operations on the input's path that have no interval rule."""
    consts = constants_of(program)
    varying: set[str] = set()  # nodes that depend on the input: these need a rule
    unknown = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name not in consts:
            varying.add(node.name)
        elif node.op == "call_function" and any(
            isinstance(a, torch.fx.Node) and a.name in varying
            for a in _flat([*node.args, *node.kwargs.values()])
        ):
            varying.add(node.name)
            if not knows(node.target) and node.target not in unknown:
                unknown.append(node.target)
    return unknown


def _flat(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from _flat(a)
        else:
            yield a


def _map_nodes(args, env):
    return [
        type(a)(_map_nodes([b], env)[0] for b in a)
        if isinstance(a, (list, tuple))
        else (env[a.name] if isinstance(a, torch.fx.Node) else a)
        for a in args
    ]


def _map_nodes_kw(kwargs, env):
    return {k: _map_nodes([v], env)[0] for k, v in kwargs.items()}


def box_r2(lo, hi, center) -> torch.Tensor:
    """The largest |x - center|^2 over each box."""
    return torch.maximum((lo - center) ** 2, (hi - center) ** 2).sum(-1)
