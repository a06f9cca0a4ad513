"""Interval forward-mode differentiation of a surrogate's exported graph, for many boxes at once.

Every value of the one-point ``torch.export`` graph becomes an enclosure over a box of inputs:
lower and upper bounds of the value and of its derivatives with respect to the inputs (interval
forward mode), with a leading axis over boxes. Linear layers use the center-radius form
(``W c`` and ``|W| r``: exact for an affine map of a box); elementwise functions use their
the numpy route's rules (``elementwise.py``: the value and derivative as torch computes them),
evaluated at the interval's ends and at the points inside it where the value or the derivative
can turn (critical points, kinks with both one-sided slopes, poles). This bounds V, grad V and f
over a box, so the Lyapunov conditions can be *proven* box by box (``lyapunov.certify``).

At a kink (ReLU at 0, a clamp at its bound) the derivative bounds hold both one-sided slopes,
so for a piecewise-smooth network they enclose Clarke's generalized gradient; a ``where`` whose
condition is undecided over a box takes the hull of both branches. Where a function is undefined
on part of a box (a log of a box reaching 0 or below) its bounds are NaN and the box is never
proven.

The bounds are computed in float64 without directed rounding: enclosures are exact up to float64
rounding (about 1e-16 relative), which the certificate's strict margins absorb.
"""

from __future__ import annotations

import functools
import math
import operator

import numpy as np
import torch

from .elementwise import ACTIVATIONS
from .physical import constants_of

__all__ = ["Cond", "IntervalProgram", "Iv", "box_r2", "interval_mul"]

aten = torch.ops.aten


class Iv:
    """``lo <= value <= hi`` (shape (B, ...)) and ``dlo <= d value / dx <= dhi`` (shape (B, ...,
    n)); ``d*`` are None for constants."""

    __slots__ = ("dhi", "dlo", "hi", "lo")

    def __init__(self, lo, hi, dlo=None, dhi=None) -> None:
        self.lo, self.hi, self.dlo, self.dhi = lo, hi, dlo, dhi

    @staticmethod
    def const(c) -> Iv:
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


def _dscale(slo, shi, a: Iv):
    """(s * da) for an interval factor s (shape of a's value) and a's derivative."""
    if a.dlo is None:
        return None, None
    return interval_mul(slo[..., None], shi[..., None], a.dlo, a.dhi)


def _add(a: Iv, b: Iv, sign: float = 1.0) -> Iv:
    blo, bhi = (b.lo, b.hi) if sign > 0 else (-b.hi, -b.lo)
    lo, hi = a.lo + blo, a.hi + bhi
    if a.dlo is None and b.dlo is None:
        return Iv(lo, hi)
    if b.dlo is None:
        return Iv(lo, hi, a.dlo, a.dhi)
    bdlo, bdhi = (b.dlo, b.dhi) if sign > 0 else (-b.dhi, -b.dlo)
    if a.dlo is None:
        return Iv(lo, hi, bdlo, bdhi)
    return Iv(lo, hi, a.dlo + bdlo, a.dhi + bdhi)


def _times(a: Iv, b: Iv) -> Iv:
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
        w = w.reshape(-1, *[1] * (a.lo.ndim - 2))
    return _RULES[aten.leaky_relu.default](a, w)


# comparisons and where ----------------------------------------------------------------------------


class Cond:
    """A comparison over boxes: ``surely`` true at every point of a box, ``maybe`` at some (also
    where its bounds are NaN, so that a ``where`` then keeps both branches)."""

    __slots__ = ("maybe", "surely")

    def __init__(self, surely, maybe) -> None:
        self.surely, self.maybe = surely, maybe


def _compare(kind: str):
    def op(a, b) -> Cond:
        d = _add(_iv(a), _iv(b), -1.0)  # a - b
        lo, hi = torch.as_tensor(d.lo), torch.as_tensor(d.hi)
        if kind == "ge":
            return Cond(lo >= 0, ~(hi < 0))
        if kind == "gt":
            return Cond(lo > 0, ~(hi <= 0))
        if kind == "le":
            return Cond(hi <= 0, ~(lo > 0))
        return Cond(hi < 0, ~(lo >= 0))

    return op


def _where(cond, a, b) -> Iv:
    """The branch the condition takes on the box, or the hull of both where it is undecided."""
    if not isinstance(cond, Cond):
        cond = Cond(torch.as_tensor(cond), torch.as_tensor(cond))
    a, b = _iv(a), _iv(b)

    def pick(x, y, join, surely, maybe):
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        return torch.where(surely, x, torch.where(maybe, join(x, y), y))

    lo = pick(a.lo, b.lo, torch.minimum, cond.surely, cond.maybe)
    hi = pick(a.hi, b.hi, torch.maximum, cond.surely, cond.maybe)
    if a.dlo is None and b.dlo is None:
        return Iv(lo, hi)
    n = (a.dlo if a.dlo is not None else b.dlo).shape[-1]
    zero = lo.new_zeros((*lo.shape, n))
    da = (a.dlo, a.dhi) if a.dlo is not None else (zero, zero)
    db = (b.dlo, b.dhi) if b.dlo is not None else (zero, zero)
    s, m = cond.surely[..., None], cond.maybe[..., None]
    return Iv(lo, hi, pick(da[0], db[0], torch.minimum, s, m),
              pick(da[1], db[1], torch.maximum, s, m))  # fmt: skip


def _linear(x: Iv, W, b=None) -> Iv:
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


def _right_constant(a, b) -> Iv:
    """``a @ B`` for an input-dependent a and a constant matrix B: a linear layer."""
    if isinstance(b, Iv) or not isinstance(a, Iv) or b.ndim != 2:
        raise ValueError("a matrix product other than (input) @ (constant matrix)")
    return _linear(a, b.T)


def _scale(a: Iv, c: float) -> Iv:
    lo, hi = (a.lo * c, a.hi * c) if c >= 0 else (a.hi * c, a.lo * c)
    if a.dlo is None:
        return Iv(lo, hi)
    dlo, dhi = (a.dlo * c, a.dhi * c) if c >= 0 else (a.dhi * c, a.dlo * c)
    return Iv(lo, hi, dlo, dhi)


def _structural(fn, dim_of=None):
    """Ops that move entries (select, stack, ...): applied to bounds and to derivatives, whose
    extra last axis shifts negative dims by one."""

    def op(*args, **kwargs):
        ivs = [a for a in _flat(args) if isinstance(a, Iv)]
        lo = fn(*_map(args, lambda a: a.lo), **kwargs)
        hi = fn(*_map(args, lambda a: a.hi), **kwargs)
        if all(a.dlo is None for a in ivs):
            return Iv(lo, hi)
        if any(a.dlo is None for a in ivs):
            raise ValueError("mixing constants and inputs in a structural operation")
        dargs, dkw = dim_of(args, kwargs) if dim_of else (args, kwargs)
        dlo = fn(*_map(dargs, lambda a: a.dlo), **dkw)
        dhi = fn(*_map(dargs, lambda a: a.dhi), **dkw)
        return Iv(lo, hi, dlo, dhi)

    return op


def _flat(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from _flat(a)
        else:
            yield a


def _map(args, get):
    return [
        type(a)(get(b) if isinstance(b, Iv) else b for b in a)
        if isinstance(a, (list, tuple))
        else (get(a) if isinstance(a, Iv) else a)
        for a in args
    ]


def _shift_dim(position: int):
    """A negative ``dim`` (argument ``position``) moves one left on derivatives."""

    def fix(args, kwargs):
        args = list(args)
        if "dim" in kwargs:
            kwargs = {**kwargs, "dim": kwargs["dim"] - 1 if kwargs["dim"] < 0 else kwargs["dim"]}
        elif len(args) > position and args[position] < 0:
            args[position] -= 1
        return args, kwargs

    return fix


def _iv(a) -> Iv:
    return a if isinstance(a, Iv) else Iv.const(torch.as_tensor(a, dtype=torch.float64))


def _binary(kind):
    def op(a, b, alpha=1):
        a, b = _iv(a), _iv(b)
        if kind == "add":
            return _add(a, b if alpha == 1 else _scale(b, alpha))
        if kind == "sub":
            return _add(a, b if alpha == 1 else _scale(b, alpha), -1.0)
        if kind == "mul":
            return _times(a, b)
        if b.dlo is None and torch.all(torch.as_tensor(b.lo == b.hi)):
            return _times(a, Iv.const(1 / torch.as_tensor(b.lo)))
        return _times(a, _RULES[aten.reciprocal.default](b))

    return op


def _unbind(a: Iv, dim: int = 0) -> list:
    dim %= a.lo.ndim  # (derivatives carry one more axis, last)
    parts = zip(a.lo.unbind(dim), a.hi.unbind(dim), strict=True)
    if a.dlo is None:
        return [Iv(lo, hi) for lo, hi in parts]
    slopes = zip(a.dlo.unbind(dim), a.dhi.unbind(dim), strict=True)
    return [Iv(lo, hi, dlo, dhi) for (lo, hi), (dlo, dhi) in zip(parts, slopes, strict=True)]


def _logsumexp(a: Iv, dims, keepdim=False) -> Iv:
    """log sum exp over the last axis: increasing in each value, with the gradient
    ``p_i = 1 / (1 + sum_j!=i exp(h_j - h_i))`` bounded by the values' bounds."""
    rank = a.lo.ndim
    if [d % rank for d in dims] != [rank - 1]:
        raise ValueError("logsumexp over other axes than the last")
    lo = torch.logsumexp(a.lo, -1, keepdim=keepdim)
    hi = torch.logsumexp(a.hi, -1, keepdim=keepdim)
    if a.dlo is None:
        return Iv(lo, hi)

    def share(top, bottom):  # 1 / (1 + sum_j!=i exp(top_j - bottom_i)), stably
        z = top[..., None, :] - bottom[..., :, None]  # (..., i, j)
        eye = torch.eye(z.shape[-1], dtype=torch.bool, device=z.device)
        z = z.masked_fill(eye, 0.0)  # exp(0) = 1: the 1 + ...
        return torch.exp(-torch.logsumexp(z, -1))

    p_lo, p_hi = share(a.hi, a.lo), share(a.lo, a.hi)
    dlo, dhi = interval_mul(p_lo[..., None], p_hi[..., None], a.dlo, a.dhi)
    return Iv(lo, hi, dlo.sum(-2, keepdim=keepdim), dhi.sum(-2, keepdim=keepdim))


_RULES = {
    aten.linear.default: _linear,
    aten.addmm.default: lambda b, x, Wt, beta=1, alpha=1: _linear(x, alpha * Wt.T, beta * b),
    aten.matmul.default: lambda a, b: _right_constant(a, b),
    aten.mm.default: lambda a, b: _right_constant(a, b),
    aten.add.Tensor: _binary("add"),
    aten.add.Scalar: _binary("add"),
    aten.sub.Tensor: _binary("sub"),
    aten.sub.Scalar: _binary("sub"),
    aten.mul.Tensor: _binary("mul"),
    aten.mul.Scalar: _binary("mul"),
    aten.div.Tensor: _binary("div"),
    aten.div.Scalar: _binary("div"),
    aten.rsub.Scalar: lambda a, s, alpha=1: _add(_iv(torch.as_tensor(s)), _scale(a, alpha), -1.0),
    aten.neg.default: lambda a: _scale(a, -1.0),
    **{target: _elementwise(target) for target in ACTIVATIONS},
    aten.prelu.default: _prelu,
    # (tensor bounds: the clamp rule, built once above, with per-value kinks)
    aten.clamp.Tensor: lambda a, lo=None, hi=None: _RULES[aten.clamp.default](a, lo, hi),
    aten.clip.Tensor: lambda a, lo=None, hi=None: _RULES[aten.clamp.default](a, lo, hi),
    aten.clamp_min.Tensor: lambda a, lo: _RULES[aten.clamp.default](a, lo, None),
    aten.clamp_max.Tensor: lambda a, hi: _RULES[aten.clamp.default](a, None, hi),
    **{getattr(aten, k).Scalar: _compare(k) for k in ("ge", "gt", "le", "lt")},
    **{getattr(aten, k).Tensor: _compare(k) for k in ("ge", "gt", "le", "lt")},
    aten.where.self: _where,
    aten.select.int: _structural(torch.select, _shift_dim(1)),
    aten.slice.Tensor: _structural(torch.ops.aten.slice.Tensor, _shift_dim(1)),
    aten.stack.default: _structural(torch.stack, _shift_dim(1)),
    aten.cat.default: _structural(torch.cat, _shift_dim(1)),
    aten.unsqueeze.default: _structural(torch.unsqueeze, _shift_dim(1)),
    aten.squeeze.dim: _structural(torch.squeeze, _shift_dim(1)),
    aten.sum.dim_IntList: lambda a, dims, keepdim=False, dtype=None: _sum(a, dims, keepdim),
    aten.logsumexp.default: _logsumexp,
    aten.unbind.int: _unbind,
    operator.getitem: lambda parts, i: parts[i],
}
_IDENTITY = {aten.clone.default, aten.alias.default, aten.detach.default, aten._to_copy.default,
             aten.contiguous.default, aten.dropout.default}  # fmt: skip


def _sum(a: Iv, dims, keepdim) -> Iv:
    rank = a.lo.ndim
    dims = [d % rank for d in dims]
    lo, hi = a.lo.sum(dims, keepdim=keepdim), a.hi.sum(dims, keepdim=keepdim)
    if a.dlo is None:
        return Iv(lo, hi)
    return Iv(lo, hi, a.dlo.sum(dims, keepdim=keepdim), a.dhi.sum(dims, keepdim=keepdim))


class IntervalProgram:
    """Bounds of a one-point exported program's output and its Jacobian over boxes.

    ``program``: ``Surrogate.export(one_point=True)``; ``__call__(lo, hi)`` with lo, hi of shape
    (B, n) returns an ``Iv`` of the (B, m) output with (B, m, n) derivative bounds. An operation
    without an interval rule, or one whose bounds would prove nothing (a discontinuous function),
    raises ``ValueError`` naming it, here rather than at the first box.
    """

    def __init__(self, program) -> None:
        self.program = program
        self.consts = constants_of(program)
        varying: set[str] = set()  # nodes that depend on the input: these need a rule
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name not in self.consts:
                varying.add(node.name)
            elif node.op == "call_function" and any(
                isinstance(a, torch.fx.Node) and a.name in varying
                for a in _flat([*node.args, *node.kwargs.values()])
            ):
                varying.add(node.name)
                known = node.target in _RULES or node.target in _IDENTITY
                if not known and not str(node.target).startswith("aten._assert"):
                    raise ValueError(f"operation {node.target} has no interval rule")
        n = next(node for node in program.graph.nodes if node.name in varying).meta["val"].shape[-1]
        self(torch.zeros(1, n, dtype=torch.float64), torch.zeros(1, n, dtype=torch.float64))

    def __call__(self, lo: torch.Tensor, hi: torch.Tensor) -> Iv:
        B, n = lo.shape
        eye = torch.eye(n, dtype=lo.dtype).expand(B, n, n)
        env: dict = {}
        out = None
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                env[node.name] = (
                    self.consts.get(node.name) if node.name in self.consts else Iv(lo, hi, eye, eye)
                )
            elif node.op == "call_function":
                if node.target in _IDENTITY:
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
                except TypeError as err:
                    raise ValueError(
                        f"operation {node.target} with these arguments: {err}"
                    ) from err
            elif node.op == "output":
                out = env[node.args[0][0].name]
        return out if isinstance(out, Iv) else Iv.const(out)


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
