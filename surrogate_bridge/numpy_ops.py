"""The operations of the numpy route (``numpy_route.py``), each on one row of values: the
value, tangents pushed forward (``push``: (k, r) columns) and adjoints pulled back (``pull``:
(r, k) rows, one array per input). All are linear in their hidden inputs except
:class:`Activation`, whose ``second = True`` marks the only second derivatives of a layer graph.
"""

from __future__ import annotations

import numpy as np

from .elementwise import FIRST, VALUES

__all__ = ["Activation", "Cat", "Linear", "Scale", "Slice", "Sum"]


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


class Scale:
    """Elementwise arithmetic with a constant c: h + c, h - c, c - h, h * c, h / c, computed as
    torch computes it; its derivative is the same for every h (a division stays a division)."""

    second = False

    def __init__(self, op: str, c) -> None:
        self.op, self.c = op, c
        self.col = c if np.ndim(c) == 0 else c[:, None]  # c along a tangent's rows

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


class Sum:
    """h1 + h2 or h1 - h2 of two hidden tensors (a residual connection)."""

    second = False

    def __init__(self, sign: float) -> None:
        self.sign = sign

    def __call__(self, a, b):
        return a + b if self.sign > 0 else a - b

    def push(self, Ts, _):
        return Ts[0] + Ts[1] if self.sign > 0 else Ts[0] - Ts[1]

    def pull(self, A, _):
        return (A, A if self.sign > 0 else -A)


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


class Slice:
    """A slice of the last axis."""

    second = False

    def __init__(self, k_in: int, start: int, stop: int, step: int) -> None:
        self.k_in, self.s = k_in, slice(start, stop, step)

    def __call__(self, h):
        return h[self.s]

    def push(self, Ts, _):
        return Ts[0][self.s]

    def pull(self, A, _):
        out = np.zeros((A.shape[0], self.k_in))
        out[:, self.s] = A
        return (out,)


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
