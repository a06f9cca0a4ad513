"""Interval forward-mode differentiation of a surrogate's exported graph, for many boxes at once.

Every value of the one-point ``torch.export`` graph becomes an enclosure over a box of inputs:
lower and upper bounds of the value and of its derivatives with respect to the inputs (interval
forward mode), with a leading axis over boxes. Linear layers use the center-radius form
(``W c`` and ``|W| r``: exact for an affine map of a box); elementwise functions use their
monotonicity and the range of their derivative over the interval. This bounds V, grad V and f
over a box, so the Lyapunov conditions can be *proven* box by box (``lyapunov.certify``).

The bounds are computed in float64 without directed rounding: enclosures are exact up to float64
rounding (about 1e-16 relative), which the certificate's strict margins absorb.
"""

from __future__ import annotations

import torch

from .physical import constants_of

__all__ = ["IntervalProgram", "Iv", "box_r2", "interval_mul"]

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
    """The interval product, elementwise with broadcasting."""
    p = torch.stack(torch.broadcast_tensors(alo * blo, alo * bhi, ahi * blo, ahi * bhi))
    return p.amin(0), p.amax(0)


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


def _monotone(a: Iv, fn, dfn_range) -> Iv:
    """An increasing fn; ``dfn_range(lo, hi)`` bounds fn' over [lo, hi]."""
    slo, shi = dfn_range(a.lo, a.hi)
    return Iv(fn(a.lo), fn(a.hi), *_dscale(slo, shi, a))


def _tanh_slope(lo, hi):
    t_lo, t_hi = torch.tanh(lo) ** 2, torch.tanh(hi) ** 2
    inside = (lo <= 0) & (hi >= 0)
    return 1 - torch.maximum(t_lo, t_hi), torch.where(inside, 1.0, 1 - torch.minimum(t_lo, t_hi))


def _sigmoid_slope(lo, hi):
    s = lambda v: torch.sigmoid(v) * (1 - torch.sigmoid(v))  # noqa: E731
    inside = (lo <= 0) & (hi >= 0)
    return torch.minimum(s(lo), s(hi)), torch.where(inside, 0.25, torch.maximum(s(lo), s(hi)))


def _pow(a: Iv, p) -> Iv:
    if not (float(p).is_integer() and p >= 1):
        raise ValueError(f"pow with exponent {p} (integer exponents >= 1 are bounded)")
    p = int(p)

    def powr(lo, hi, k):
        if k == 0:
            return torch.ones_like(lo), torch.ones_like(hi)
        l_k, h_k = lo**k, hi**k
        if k % 2:
            return l_k, h_k
        inside = (lo <= 0) & (hi >= 0)
        return torch.where(inside, 0.0, torch.minimum(l_k, h_k)), torch.maximum(l_k, h_k)

    lo, hi = powr(a.lo, a.hi, p)
    slo, shi = powr(a.lo, a.hi, p - 1)
    return Iv(lo, hi, *_dscale(p * slo, p * shi, a))


def _softplus(a: Iv, beta) -> Iv:
    if beta != 1:
        raise ValueError(f"softplus with beta = {beta} (beta = 1 is bounded)")
    slope = lambda lo, hi: (torch.sigmoid(lo), torch.sigmoid(hi))  # noqa: E731
    return _monotone(a, torch.nn.functional.softplus, slope)


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
    return a if isinstance(a, Iv) else Iv.const(a)


def _binary(kind):
    def op(a, b, alpha=1):
        a, b = _iv(a), _iv(b)
        if kind == "add":
            return _add(a, b if alpha == 1 else _scale(b, alpha))
        if kind == "sub":
            return _add(a, b if alpha == 1 else _scale(b, alpha), -1.0)
        if kind == "mul":
            return _times(a, b)
        if b.dlo is not None or not torch.all(torch.as_tensor(b.lo == b.hi)):
            raise ValueError("division by a non-constant")
        return _times(a, Iv.const(1 / torch.as_tensor(b.lo)))

    return op


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
    aten.pow.Tensor_Scalar: _pow,
    aten.square.default: lambda a: _pow(a, 2),
    aten.tanh.default: lambda a: _monotone(a, torch.tanh, _tanh_slope),
    aten.sigmoid.default: lambda a: _monotone(a, torch.sigmoid, _sigmoid_slope),
    aten.exp.default: lambda a: _monotone(a, torch.exp, lambda lo, hi: (lo.exp(), hi.exp())),
    aten.softplus.default: lambda a, beta=1, threshold=20: _softplus(a, beta),
    aten.select.int: _structural(torch.select, _shift_dim(1)),
    aten.slice.Tensor: _structural(torch.ops.aten.slice.Tensor, _shift_dim(1)),
    aten.stack.default: _structural(torch.stack, _shift_dim(1)),
    aten.cat.default: _structural(torch.cat, _shift_dim(1)),
    aten.unsqueeze.default: _structural(torch.unsqueeze, _shift_dim(1)),
    aten.squeeze.dim: _structural(torch.squeeze, _shift_dim(1)),
    aten.sum.dim_IntList: lambda a, dims, keepdim=False, dtype=None: _sum(a, dims, keepdim),
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
    without an interval rule raises ``ValueError`` naming it.
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
                if not any(isinstance(a, Iv) for a in _flat([*args, *kwargs.values()])):
                    env[node.name] = node.target(*args, **kwargs)  # constants only: exact
                else:
                    env[node.name] = _RULES[node.target](*args, **kwargs)
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
