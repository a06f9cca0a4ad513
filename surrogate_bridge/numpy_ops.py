"""The operations of the numpy route (``numpy_route.py``), each on one row of values: the
value, tangents pushed forward (``push``: (k, r) columns) and adjoints pulled back (``pull``:
(r, k) rows, one array per input, or None for none: a :class:`Compare` mask has no
derivative). All are linear in their hidden inputs except :class:`Activation`,
:class:`Product`, :class:`Norm`, :class:`Softmax`, :class:`LogSumExp`, :class:`Glu` and
:class:`Spread`, whose ``second = True`` marks the only second derivatives of a layer graph
(:class:`Select`, :class:`Larger` and :class:`Peak` set it too, to keep their mask or weights on
the forward tape, and give zero curvature). These also give, for an
adjoint row ``a`` at their output, the curvature ``M(a)`` (the Hessian of ``a . op(h)`` in h)
applied to tangents: ``curvature(a, Ts)`` is ``T^T M T`` for (k, n) columns T,
``curvature_mv(a, ts)`` is ``M t`` for one column t (k, 1), one term per input (a
:class:`Product` has two hidden inputs).
"""

from __future__ import annotations

import math

import numpy as np

from .elementwise import FIRST, VALUES, _logistic

__all__ = [
    "Activation", "Binary", "Cat", "Choose", "Compare", "CumSum", "Gather", "Glu",
    "GraphUnsupported", "Larger",
    "Linear", "LogSumExp", "Norm", "Peak", "PerFeature", "Picked", "Pool", "Product", "Scale",
    "Select",
    "Softmax", "Spread", "Sum", "Total",
]  # fmt: skip


class GraphUnsupported(ValueError):
    """The exported graph is not a layer graph the numpy route computes; the message says
    where."""


class Linear:
    """h -> W h + b."""

    second = False

    def __init__(self, W: np.ndarray, b: np.ndarray | None) -> None:
        self.W, self.b = np.ascontiguousarray(W), b

    def __call__(self, h):
        z = self.W @ h
        return z if self.b is None else z + self.b

    def push(self, Ts, _):
        return self.W @ Ts[0]

    def pull(self, A, _):
        return (A @ self.W,)


class PerFeature:
    """h -> h * alpha + beta with constant vectors: an eval-mode batch norm, in the form torch's
    CPU kernel computes it (``alpha = weight / sqrt(var + eps)``, ``beta = bias - mean *
    alpha``)."""

    second = False

    def __init__(self, alpha: np.ndarray, beta: np.ndarray) -> None:
        self.alpha, self.beta, self.col = alpha, beta, alpha[:, None]

    def __call__(self, h):
        return h * self.alpha + self.beta

    def push(self, Ts, _):
        return Ts[0] * self.col

    def pull(self, A, _):
        return (A * self.alpha,)


class Scale:
    """Elementwise arithmetic with a constant c: h + c, h - c, c - h, h * c, h / c, computed as
    torch computes it; its derivative is the same for every h (a division stays a division)."""

    second = False

    def __init__(self, op: str, c) -> None:
        self.op, self.c = op, c
        self.col = c if np.ndim(c) == 0 else c[:, None]  # c along a tangent's rows

    @classmethod
    def of(cls, op: str, c, hidden_first: bool, where: str) -> Scale:
        """torch's ``h op c`` (``hidden_first``) or ``c op h`` (op: add, sub, rsub, mul,
        div) as a Scale; a constant divided by a hidden tensor is refused."""
        if op == "rsub":
            op = "rsub" if hidden_first else "sub"
        elif not hidden_first:
            if op == "sub":
                op = "rsub"
            elif op == "div":
                raise GraphUnsupported(f"{where}: a constant divided by a hidden tensor")
        return cls(op, c)

    def __call__(self, h):
        op, c = self.op, self.c
        if op == "add":
            return h + c
        if op == "sub":
            return h - c
        if op == "rsub":
            return c - h
        return h * c if op == "mul" else h / c

    def push(self, Ts, _):
        op, T = self.op, Ts[0]
        if op in ("add", "sub"):
            return T
        if op == "rsub":
            return -T
        return T * self.col if op == "mul" else T / self.col

    def pull(self, A, _):
        op = self.op
        if op in ("add", "sub"):
            return (A,)
        if op == "rsub":
            return (-A,)
        return (A * self.c,) if op == "mul" else (A / self.c,)


def _summed(terms, single):
    """Each input's adjoint term summed over the row where that input is a single value that
    broadcast along it."""
    return tuple(
        t.sum(axis=-1, keepdims=True) if one and t.shape[-1] != 1 else t
        for t, one in zip(terms, single, strict=True)
    )


class Sum:
    """h1 + h2 or h1 - h2 of two hidden tensors (a residual connection), or of a row and a
    single value that broadcasts along it."""

    second = False

    def __init__(self, sign: float, sizes: tuple[int, int] = (0, 0)) -> None:
        self.sign = sign
        self.single = tuple(s == 1 for s in sizes)

    def __call__(self, a, b):
        return a + b if self.sign > 0 else a - b

    def push(self, Ts, _):
        return Ts[0] + Ts[1] if self.sign > 0 else Ts[0] - Ts[1]

    def pull(self, A, _):
        return _summed((A, A if self.sign > 0 else -A), self.single)


class Cat:
    """Hidden tensors side by side."""

    second = False

    def __init__(self, sizes: list[int]) -> None:
        self.bounds = np.cumsum([0, *sizes])

    def __call__(self, *hs):
        return np.concatenate(hs)

    def push(self, Ts, _):
        return np.concatenate(Ts, axis=0)

    def pull(self, A, _):
        b = self.bounds
        return tuple(A[:, b[i] : b[i + 1]] for i in range(len(b) - 1))


class Compare:
    """A comparison of a hidden row with a constant ``c`` (or, with ``c`` None, of two hidden
    rows): a mask of booleans, which has no derivative. Only :class:`Select` reads a mask, and
    it passes no adjoint back to it (``None``), so none reaches the rows compared."""

    second = False

    def __init__(self, compare, c=None, hidden_first: bool = True) -> None:
        self.compare, self.c, self.hidden_first = compare, c, hidden_first

    def __call__(self, *hs):
        if self.c is None:
            return self.compare(*hs)
        return self.compare(hs[0], self.c) if self.hidden_first else self.compare(self.c, hs[0])

    def push(self, Ts, _):
        return None

    def pull(self, A, _):
        return (None,) * (1 if self.c is not None else 2)


def _branches(consts: tuple, hs, constant) -> list:
    """A selection's two branches: the next of the hidden ``hs`` where ``consts`` holds None,
    else ``constant`` of the constant held (its value, or 0.0 for a tangent)."""
    hs = iter(hs)
    return [next(hs) if c is None else constant(c) for c in consts]


class Select:
    """``torch.where(mask, a, b)`` with a mask from :class:`Compare`, each branch a hidden row
    of the mask's length or a constant (``consts``: None where the branch is the next hidden
    input), or ``h * mask`` (``product``: computed as torch does, a product). For a fixed mask
    it is linear in the branches, and the mask has no derivative: ``second`` is True only so
    that the forward pass keeps the mask on the tape; its curvature is zero."""

    second = True

    def __init__(self, consts: tuple, product: bool = False) -> None:
        self.consts, self.product = consts, product

    def __call__(self, mask, *hs):
        if self.product:
            return hs[0] * mask
        a, b = _branches(self.consts, hs, lambda c: c)
        return np.where(mask, a, b)

    def first(self, pre):
        return self(*pre), pre[0]

    def derivatives(self, pre):
        return (*self.first(pre), None)

    def push(self, Ts, mask):
        a, b = _branches(self.consts, Ts[1:], lambda c: 0.0)
        return np.where(mask[:, None], a, b)

    def pull(self, A, mask):
        taken = (np.where(mask, A, 0.0), np.where(mask, 0.0, A))
        return (None, *(t for t, c in zip(taken, self.consts, strict=True) if c is None))

    def curvature(self, a, d, dd, Ts):
        return 0.0

    def curvature_mv(self, a, d, dd, ts):
        return (None,) * len(ts)


class Larger:
    """``torch.maximum(a, b)`` (``largest``) or ``torch.minimum(a, b)`` of two hidden rows, a
    row and a single value, or a row and a constant ``c`` (then the one hidden input). The
    derivative takes the winner's, and half of each at a tie, as torch's; for a fixed winner it
    is linear: ``second`` keeps the weights on the tape, and the curvature is zero."""

    second = True

    def __init__(self, largest: bool, sizes: tuple[int, ...], c=None) -> None:
        self.pick = np.maximum if largest else np.minimum
        self.largest, self.c = largest, c
        self.single = tuple(s == 1 for s in sizes)

    def first(self, ab):
        a, b = (ab, self.c) if self.c is not None else ab
        y = self.pick(a, b)
        wins = a > b if self.largest else a < b
        return y, np.where(a == b, 0.5, wins.astype(np.float64))  # a's share

    def __call__(self, *hs):
        return self.pick(*hs, self.c) if self.c is not None else self.pick(*hs)

    def derivatives(self, ab):
        return (*self.first(ab), None)

    def push(self, Ts, w):
        if self.c is not None:
            return w[:, None] * Ts[0]
        return w[:, None] * Ts[0] + (1.0 - w)[:, None] * Ts[1]

    def pull(self, A, w):
        if self.c is not None:
            return (A * w,)
        return _summed((A * w, A * (1.0 - w)), self.single)

    def curvature(self, a, d, dd, Ts):
        return 0.0

    def curvature_mv(self, a, d, dd, ts):
        return (None,) * len(ts)


class Peak:
    """The greatest (``largest``) or least of a row's values: a row of one value, with zero
    curvature, as for :class:`Larger`. Its derivative is shared evenly between the values that
    tie for it (``amax``, ``max()``), or (``first``: ``max(dim)``, whose positions torch
    differentiates through) taken by the first of them, as torch's."""

    second = True

    def __init__(self, largest: bool, first: bool = False) -> None:
        self.largest, self.first_only = largest, first

    def first(self, h):
        i = int(np.argmax(h) if self.largest else np.argmin(h))
        w = (h == h[i]).astype(np.float64)
        if self.first_only:
            w[:] = 0.0
            w[i] = 1.0
        return h[i : i + 1].copy(), w / w.sum()

    def __call__(self, h):
        return np.array([h.max() if self.largest else h.min()])

    def derivatives(self, h):
        return (*self.first(h), None)

    def push(self, Ts, w):
        return (w @ Ts[0])[None]

    def pull(self, A, w):
        return (A * w,)

    def curvature(self, a, d, dd, Ts):
        return 0.0

    def curvature_mv(self, a, d, dd, ts):
        return (None,)


class Picked:
    """A row's values at positions found from its values (``positions(h)``: a sort's order, a
    top-k's, a k-th value's or median's position, a running maximum's record holders): for the
    positions found, a gather (as :class:`Gather`), so each value's derivatives are those of
    the input it holds, as torch's, and the curvature is zero. ``second`` keeps the positions
    on the tape."""

    second = True

    def __init__(self, k_in: int, positions) -> None:
        self.k_in, self.positions = k_in, positions

    def first(self, h):
        p = self.positions(h)
        return h[p], p

    def __call__(self, h):
        return h[self.positions(h)]

    def derivatives(self, h):
        return (*self.first(h), None)

    def push(self, Ts, p):
        return Ts[0][p]

    def pull(self, A, p):
        out = np.zeros((A.shape[0], self.k_in))
        np.add.at(out, (slice(None), p), A)
        return (out,)

    def curvature(self, a, d, dd, Ts):
        return 0.0

    def curvature_mv(self, a, d, dd, ts):
        return (None,)


class Choose:
    """``torch.where(mask, a, b)`` with a constant mask (k,) and branches that are hidden rows
    of k values or constants (``consts``: None where the branch is the next hidden input): a
    fixed choice per value, linear in the branches."""

    second = False

    def __init__(self, mask: np.ndarray, consts: tuple) -> None:
        self.mask, self.consts, self.col = mask, consts, mask[:, None]

    def __call__(self, *hs):
        return np.where(self.mask, *_branches(self.consts, hs, lambda c: c))

    def push(self, Ts, _):
        return np.where(self.col, *_branches(self.consts, Ts, lambda c: 0.0))

    def pull(self, A, _):
        taken = (np.where(self.mask, A, 0.0), np.where(self.mask, 0.0, A))
        return tuple(t for t, c in zip(taken, self.consts, strict=True) if c is None)


class Gather:
    """Values of a row at constant positions: a slice of it, or an index array (a feature
    selection or permutation, where a position may repeat)."""

    second = False

    def __init__(self, k_in: int, idx: np.ndarray | slice) -> None:
        self.k_in, self.idx = k_in, idx
        self.unique = isinstance(idx, slice) or len(np.unique(idx)) == len(idx)

    def __call__(self, h):
        return h[self.idx]

    def push(self, Ts, _):
        return Ts[0][self.idx]

    def pull(self, A, _):
        out = np.zeros((A.shape[0], self.k_in))
        if self.unique:
            out[:, self.idx] = A
        else:
            np.add.at(out, (slice(None), self.idx), A)
        return (out,)


class CumSum:
    """The running sum along the row (``torch.cumsum``): tangents summed the same way, adjoints
    summed from the end."""

    second = False

    def __call__(self, h):
        return np.cumsum(h)

    def push(self, Ts, _):
        return np.cumsum(Ts[0], axis=0)

    def pull(self, A, _):
        return (np.cumsum(A[:, ::-1], axis=1)[:, ::-1],)


class Activation:
    """h -> sigma(h) elementwise, with sigma' and sigma'' (the only second derivatives)."""

    second = True

    def __init__(self, fn, params: tuple, kwparams: dict) -> None:
        self.fn, self.params, self.kwparams = fn, params, kwparams
        plain = not params and not kwparams
        self.value, self._first = (VALUES.get(fn), FIRST.get(fn)) if plain else (None, None)

    def __call__(self, h):
        if self.value is not None:
            return self.value(h)
        return self.fn(h, *self.params, **self.kwparams)[0]

    def first(self, h):
        """(sigma, sigma')."""
        if self._first is not None:
            return self._first(h)
        return self.fn(h, *self.params, **self.kwparams)[:2]

    def derivatives(self, h):
        """(sigma, sigma', sigma'')."""
        return self.fn(h, *self.params, **self.kwparams)

    def push(self, Ts, d):
        return d[:, None] * Ts[0]

    def pull(self, A, d):
        return (A * d,)

    @staticmethod
    def curvature(a, d, dd, Ts):
        """T^T diag(a sigma'') T as one BLAS product."""
        T = Ts[0]
        return (T.T * (a * dd)) @ T

    @staticmethod
    def curvature_mv(a, d, dd, ts):
        return (a * dd * ts[0][:, 0],)


class Binary:
    """f(a, b) elementwise for two hidden rows of one length (or a row and a single value), or
    for a hidden row and a constant ``c`` (``hidden_first``: the row is a): ``rule`` gives the
    value, ``(f_a, f_b)`` and ``(f_aa, f_ab, f_bb)`` (``elementwise.BINARY``: atan2, hypot,
    pow, xlogy). The Hessian of ``c . y`` in (a, b) is the block matrix ``diag(c [[f_aa, f_ab],
    [f_ab, f_bb]])``."""

    second = True

    def __init__(self, rule, sizes: tuple[int, ...], c=None, hidden_first: bool = True) -> None:
        self.rule, self.c, self.hidden_first = rule, c, hidden_first
        self.single = tuple(s == 1 for s in sizes)

    def _args(self, pre):
        if self.c is None:
            return pre
        return (pre, self.c) if self.hidden_first else (self.c, pre)

    def derivatives(self, pre):
        a, b = np.broadcast_arrays(*self._args(pre))
        y, d, dd = self.rule(a, b)
        if self.c is None:
            return y, d, dd
        return (y, d[0], dd[0]) if self.hidden_first else (y, d[1], dd[2])

    def first(self, pre):
        return self.derivatives(pre)[:2]

    def __call__(self, *hs):
        return self.first(hs if self.c is None else hs[0])[0]

    def push(self, Ts, d):
        if self.c is not None:
            return d[:, None] * Ts[0]
        return d[0][:, None] * Ts[0] + d[1][:, None] * Ts[1]

    def pull(self, A, d):
        if self.c is not None:
            return (A * d,)
        return _summed((A * d[0], A * d[1]), self.single)

    def curvature(self, c, d, dd, Ts):
        if self.c is not None:
            return Activation.curvature(c, d, dd, Ts)
        daa, dab, dbb = dd  # (None where a rule has none: a product's daa and dbb)
        k = len(c)
        Ta, Tb = (np.broadcast_to(T, (k, T.shape[1])) for T in Ts)
        M = (Ta.T * (c * dab)) @ Tb
        M = M + M.T
        if daa is not None:
            M = M + (Ta.T * (c * daa)) @ Ta
        return M if dbb is None else M + (Tb.T * (c * dbb)) @ Tb

    def curvature_mv(self, c, d, dd, ts):
        if self.c is not None:
            return Activation.curvature_mv(c, d, dd, ts)
        daa, dab, dbb = dd
        k = c.shape[-1]
        ta, tb = (np.broadcast_to(t[:, 0], (k,)) for t in ts)
        cab = c * dab
        ra = cab * tb if daa is None else cab * tb + c * daa * ta
        rb = cab * ta if dbb is None else cab * ta + c * dbb * tb
        return _summed((ra, rb), self.single)


class Product(Binary):
    """a * b or a / b of two hidden rows of k values, or of a row and a single value that
    broadcasts along it: a :class:`Binary` whose derivatives are written out (``daa`` is None,
    and so is ``dbb`` for a product). A single value's tangent row is repeated along the row,
    its adjoint summed."""

    def __init__(self, divide: bool, sizes: tuple[int, int] = (0, 0)) -> None:
        super().__init__(None, sizes)
        self.divide = divide

    def first(self, ab):
        a, b = ab
        if not self.divide:
            return a * b, (b, a)
        with np.errstate(divide="ignore", invalid="ignore"):
            y = a / b
            return y, (1.0 / b, -y / b)

    def __call__(self, a, b):
        return a / b if self.divide else a * b

    def derivatives(self, ab):
        y, d = self.first(ab)
        if not self.divide:
            return y, d, (None, 1.0, None)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = d[0]
            return y, d, (None, -r * r, 2.0 * y * r * r)


class _ByShares:
    """An operation whose ``first(h)`` gives its value and the shares ``p`` (a softmax), all its
    derivatives need."""

    second = True

    def __call__(self, h):
        return self.first(h)[0]

    def derivatives(self, h):
        y, p = self.first(h)
        return y, p, p


class Softmax(_ByShares):
    """softmax (``log=False``) or log_softmax of the whole row, computed as torch does (the
    maximum subtracted first). For softmax y with ``g = y (a - a . y)``, the Hessian of ``a . y``
    is ``diag(g) - g y^T - y g^T``; for log_softmax, with p = softmax(h), it is
    ``-sum(a) (diag(p) - p p^T)``."""

    def __init__(self, log: bool) -> None:
        self.log = log

    def first(self, h):
        """(output, p): p = softmax(h)."""
        z = h - h.max()
        e = np.exp(z)
        total = e.sum()
        p = e / total
        return (z - math.log(total) if self.log else p), p

    def push(self, Ts, p):
        T = Ts[0]
        pT = p @ T
        return T - pT[None] if self.log else p[:, None] * T - p[:, None] * pT[None]

    def pull(self, A, p):
        if self.log:
            return (A - A.sum(axis=1, keepdims=True) * p,)
        return (A * p - (A @ p)[:, None] * p,)

    def _weights(self, a, p):
        """(w, u, v): the Hessian of ``a . y`` is ``diag(w) - u v^T - v u^T``."""
        if self.log:
            sigma = a.sum()
            return -sigma * p, -sigma * p / 2.0, p  # -s (diag(p) - p p^T)
        g = p * (a - a @ p)
        return g, g, p

    def curvature(self, a, p, dd, Ts):
        w, u, v = self._weights(a, p)
        T = Ts[0]
        Tu, Tv = u @ T, v @ T
        M = np.outer(Tu, Tv)
        return (T.T * w) @ T - M - M.T

    def curvature_mv(self, a, p, dd, ts):
        w, u, v = self._weights(a[0], p)
        t = ts[0][:, 0]
        return ((w * t - u * (v @ t) - v * (u @ t))[None],)


class LogSumExp(_ByShares):
    """log sum exp of the whole row (a row of one value), computed as torch does: the maximum
    subtracted first, and the gradient ``p = exp(h - y)`` (softmax); the Hessian of ``a y`` is
    ``a (diag(p) - p p^T)``."""

    def first(self, h):
        m = h.max()
        y = math.log(np.exp(h - m).sum()) + m
        return np.array([y]), np.exp(h - y)

    def push(self, Ts, p):
        return (p @ Ts[0])[None]

    def pull(self, A, p):
        return (A * p,)

    def curvature(self, a, p, dd, Ts):
        T = Ts[0]
        pT = p @ T
        return a[0] * ((T.T * p) @ T - np.outer(pT, pT))

    def curvature_mv(self, a, p, dd, ts):
        t = ts[0][:, 0]
        return (a[0, 0] * (p * t - p * (p @ t))[None],)


class Glu:
    """glu over the row: its halves a, b give ``a * sigmoid(b)``."""

    second = True

    def __init__(self, k: int) -> None:
        self.k = k  # values out: half the row

    def first(self, h):
        a, b = h[: self.k], h[self.k :]
        s = _logistic(b)
        return a * s, (a, s, s * (1.0 - s))

    def __call__(self, h):
        return self.first(h)[0]

    def derivatives(self, h):
        y, d = self.first(h)
        _a, s, ds = d
        return y, d, ds * (1.0 - 2.0 * s)  # sigmoid''

    def push(self, Ts, d):
        a, s, ds = d
        T = Ts[0]
        return s[:, None] * T[: self.k] + (a * ds)[:, None] * T[self.k :]

    def pull(self, A, d):
        a, s, ds = d
        return (np.concatenate([A * s, A * (a * ds)], axis=1),)

    def curvature(self, c, d, dd, Ts):
        a, _s, ds = d
        T = Ts[0]
        Ta, Tb = T[: self.k], T[self.k :]
        M = (Ta.T * (c * ds)) @ Tb
        return M + M.T + (Tb.T * (c * a * dd)) @ Tb

    def curvature_mv(self, c, d, dd, ts):
        a, _s, ds = d
        t = ts[0][:, 0]
        ta, tb = t[: self.k], t[self.k :]
        cds = c * ds
        return (np.concatenate([cds * tb, cds * ta + c * a * dd * tb], axis=1),)


class Total:
    """The sum (or mean) of a row's k values: a row of one value."""

    second = False

    def __init__(self, k: int, mean: bool) -> None:
        self.k, self.mean = k, mean

    def __call__(self, h):
        t = h.sum(keepdims=True)
        return t / self.k if self.mean else t

    def push(self, Ts, _):
        t = Ts[0].sum(axis=0, keepdims=True)
        return t / self.k if self.mean else t

    def pull(self, A, _):
        out = np.repeat(A, self.k, axis=1)
        return (out / self.k if self.mean else out,)


class Spread:
    """One value measuring a row's spread: ``q = c . c / divisor`` with ``c = h - mean(h)``
    (``center``: a variance, its divisor k minus the correction) or ``c = h`` (a squared
    length), or its root ``r = sqrt(q)`` (``root``: a standard deviation, a Euclidean norm).
    With ``P`` the centring projection (or I), the gradient is ``g = 2 c / divisor`` (``c /
    (divisor r)``) and the Hessian of ``a q`` is ``a (2 / divisor) P`` (``a (P / (divisor r) -
    c c^T / (divisor^2 r^3))``). At a zero spread or norm the gradient is zero, and the Hessian
    zero (a spread) or NaN (a norm), as torch's."""

    second = True

    def __init__(self, k: int, center: bool, divisor: float, root: bool) -> None:
        self.k, self.center, self.divisor, self.root = k, center, divisor, root

    def first(self, h):
        """(the value, (g, c, alpha, beta)): the Hessian of ``a q`` is ``a (alpha P - beta c
        c^T)``."""
        c = h - h.sum() / self.k if self.center else h
        q = c @ c / self.divisor
        if not self.root:
            return np.array([q]), (2.0 * c / self.divisor, c, 2.0 / self.divisor, 0.0)
        r = math.sqrt(q)
        if r == 0.0:  # torch's: a zero gradient; a Hessian of zeros (std) or NaNs (norm)
            curved = 0.0 if self.center else math.nan
            return np.array([r]), (np.zeros(self.k), c, curved, curved)
        alpha = 1.0 / (self.divisor * r)
        return np.array([r]), (c * alpha, c, alpha, alpha / (self.divisor * r * r))

    def __call__(self, h):
        return self.first(h)[0]

    def derivatives(self, h):
        y, d = self.first(h)
        return y, d, d

    def push(self, Ts, d):
        return (d[0] @ Ts[0])[None]

    def pull(self, A, d):
        return (A * d[0],)

    def _projected(self, T):
        return T - T.sum(axis=0, keepdims=True) / self.k if self.center else T

    def curvature(self, a, d, dd, Ts):
        _, c, alpha, beta = d
        T = Ts[0]
        M = alpha * (T.T @ self._projected(T))
        if beta:
            cT = c @ T
            M = M - beta * np.outer(cT, cT)
        return a[0] * M

    def curvature_mv(self, a, d, dd, ts):
        _, c, alpha, beta = d
        t = ts[0][:, 0]
        m = alpha * self._projected(t[:, None])[:, 0] - beta * c * (c @ t)
        return (a[0, 0] * m[None],)


class Pool:
    """The sum (or mean) of several hidden rows of one length: their stack reduced over the
    stacking axis (a deep ensemble's ``torch.stack(members).mean(0)``)."""

    second = False

    def __init__(self, count: int, mean: bool) -> None:
        self.count, self.mean = count, mean

    def _reduce(self, parts):
        t = parts[0]
        for u in parts[1:]:
            t = t + u
        return t / self.count if self.mean else t

    def __call__(self, *hs):
        return self._reduce(hs)

    def push(self, Ts, _):
        return self._reduce(Ts)

    def pull(self, A, _):
        part = A / self.count if self.mean else A
        return (part,) * self.count


class Norm:
    """torch's layer_norm (``center=True``) or rms_norm (``center=False``) of the whole row of k
    values: ``u = c s`` with ``c = h - mean(h)`` (or ``h``) and ``s = (mean(c^2) + eps)^-1/2``,
    then ``u w + b``. With the rows ``B = [1; u]`` (or ``[u]``), ``du/dh = s (I - B^T B / k)``,
    and the Hessian of ``a . u`` is ``W^T C W - alpha (s^2 / k) I`` with the rows ``W = [u; P a;
    1]`` (or ``[u; a]``), ``alpha = a . u``, ``P`` the centring projection (or I) and
    ``C = (s^2 / k) [[3 alpha / k, -1, 0], [-1, 0, 0], [0, 0, alpha / k]]`` (or its upper left
    block): every product over k is one BLAS call, the rest is (n, n) or smaller."""

    second = True

    def __init__(self, k: int, center: bool, w, b, eps: float) -> None:
        self.k, self.center, self.w, self.b, self.eps = k, center, w, b, eps
        q = 3 if center else 2  # C = (s^2 / k) (alpha C1 + C0)
        self._C1 = np.diag([3.0 / k, 0.0, 1.0 / k][:q])
        self._C0 = np.zeros((q, q))
        self._C0[0, 1] = self._C0[1, 0] = -1.0

    def first(self, h):
        """(output, (u, s, B))."""
        k = self.k
        c = h - h.sum() / k if self.center else h
        s = 1.0 / math.sqrt(c @ c / k + self.eps)
        u = c * s
        if self.center:
            B = np.empty((2, k))
            B[0], B[1] = 1.0, u
        else:
            B = u[None]
        y = u if self.w is None else u * self.w
        return (y if self.b is None else y + self.b), (u, s, B)

    def __call__(self, h):
        return self.first(h)[0]

    def derivatives(self, h):
        y, d = self.first(h)
        return y, d, d  # the curvature needs only u, s and B

    def push(self, Ts, d):
        _, s, B = d
        T = Ts[0]
        Tu = s * T - (s / self.k) * (B.T @ (B @ T))
        return Tu if self.w is None else self.w[:, None] * Tu

    def pull(self, A, d):
        _, s, B = d
        Au = A if self.w is None else A * self.w
        return (s * Au - (s / self.k) * ((Au @ B.T) @ B),)

    def _hessian_terms(self, a, d):
        """(W (q, k), C (q, q), alpha s^2 / k) of the Hessian of ``a . u``."""
        u, s, _ = d
        a = a if self.w is None else a * self.w
        k, alpha, c = self.k, a @ u, s * s / self.k
        W = np.empty((3 if self.center else 2, k))
        W[0] = u
        if self.center:
            W[1], W[2] = a - a.sum() / k, 1.0
        else:
            W[1] = a
        return W, c * (alpha * self._C1 + self._C0), alpha * c

    def curvature(self, a, d, dd, Ts):
        W, C, diag = self._hessian_terms(a, d)
        T = Ts[0]
        V = W @ T  # (q, n)
        return V.T @ C @ V - diag * (T.T @ T)

    def curvature_mv(self, a, d, dd, ts):
        W, C, diag = self._hessian_terms(a[0], d)
        t = ts[0]
        return ((W.T @ (C @ (W @ t)) - diag * t).T,)
