"""A compiled single-point route: the surrogate's CasADi translation, called through
``Function.buffer()`` (numpy arrays in place, no DM conversion).

Built once per surrogate from its one-point ``torch.export`` graph: value, value+Jacobian,
value+Jacobian+Hessian, the Lagrangian Hessian and (scalar outputs) the Hessian-vector product,
each a CasADi Function over the translation inlined into one expression graph (faster than a
call node in the forms tried, as was ``jacobian(gradient)`` for the Hessian; the route's cost
against a numpy floor is in ``benchmarks/RESULTS.md``). It answers the
same calls with the same shapes as ``derivatives.TorchPointRoute``; ``routes.MeasuredRoute``
decides, by timing both, which one answers each kind of request.
"""

from __future__ import annotations

import casadi as ca
import numpy as np

from ..points import DENSE_HESSP_MAX
from .casadi_symbolic import translate_program

__all__ = ["CasadiPointRoute"]


class _Call:
    """One CasADi Function bound to fixed numpy buffers: ``call(*inputs) -> outputs``, fresh
    arrays in the route protocol's shapes, read from views of the buffers set up once (CasADi
    writes them dense and column-major). Not reentrant: the caller holds a lock.

    ``shapes`` names each output's layout for a surrogate with ``n`` inputs and ``m`` outputs:
    "y" values (1, m), "J" the Jacobian (1, m, n), "H" Hessians (1, m, n, n), "L" one (n, n),
    "v" a vector (n,)."""

    def __init__(self, f: ca.Function, shapes: str, n: int, m: int) -> None:
        self.f, self.shapes, self.n, self.m = f, shapes, n, m
        self.buf, self.trigger = f.buffer()
        self.ins = [np.zeros(f.nnz_in(i)) for i in range(f.n_in())]
        outs = [np.zeros(f.nnz_out(i)) for i in range(f.n_out())]
        for i, a in enumerate(self.ins):
            self.buf.set_arg(i, memoryview(a))
        for i, a in enumerate(outs):
            self.buf.set_res(i, memoryview(a))
        layout = {
            "y": lambda o: o.reshape(1, m),
            "J": lambda o: o.reshape(n, m).T[None],
            "H": lambda o: o.reshape(n, m * n).T.reshape(m, n, n)[None],
            "L": lambda o: o.reshape(n, n).T,
            "v": lambda o: o,
        }
        self.views = [layout[k](o) for k, o in zip(shapes, outs, strict=True)]

    def __call__(self, x: np.ndarray, *more: np.ndarray) -> list[np.ndarray]:
        self.ins[0][:] = x
        if more:  # (the Lagrangian's weights, a Hessian-vector product's direction)
            for dst, src in zip(self.ins[1:], more, strict=True):
                dst[:] = src
        self.trigger()
        return [v.copy() for v in self.views]  # the buffers are overwritten at the next call

    def __getstate__(self):  # buffers hold raw pointers: rebuilt from the Function
        return {"f": self.f, "shapes": self.shapes, "n": self.n, "m": self.m}

    def __setstate__(self, state):
        self.__init__(**state)


class _AtPoint:
    """Hessian-vector products at one point from the Hessian-vector product Function (no dense
    Hessian); the Hessian there, a call of the Hessian Function as without it."""

    def __init__(self, route: CasadiPointRoute, x: np.ndarray) -> None:
        self.route, self.x = route, x

    def mv(self, p: np.ndarray) -> np.ndarray:
        return self.route._hvp(self.x, p)[0]

    def hessian(self) -> np.ndarray:
        return self.route.hessian(self.x)[2]


class CasadiPointRoute:
    """Single points through CasADi: numpy (n,) in, numpy out with a leading point axis."""

    name = "casadi"

    def __init__(self, program, n: int, m: int, probes) -> None:
        f = translate_program(program, n, m, "f", probes)
        self.n, self.m = n, m
        x = ca.MX.sym("x", n)
        y = f.call([x], True, False)[0]  # inlined: one expression graph, not a call node
        J = ca.jacobian(y, x)
        H = ca.vertcat(*[ca.jacobian(ca.gradient(y[i], x), x) for i in range(m)])
        v, p = ca.MX.sym("v", m), ca.MX.sym("p", n)
        g = ca.gradient(ca.dot(v, y), x)
        dense = ca.densify
        self._value = _Call(ca.Function("value", [x], [y]), "y", n, m)
        self._jac = _Call(ca.Function("value_jac", [x], [y, dense(J)]), "yJ", n, m)
        self._hess = _Call(ca.Function("hessian", [x], [y, dense(J), dense(H)]), "yJH", n, m)
        self._lag = _Call(ca.Function("lagrangian", [x, v], [dense(ca.jacobian(g, x))]), "L", n, m)
        self._hvp = None
        if m == 1:
            hv = ca.jtimes(ca.gradient(y, x), x, p)
            self._hvp = _Call(ca.Function("hvp", [x, p], [dense(hv)]), "v", n, m)

    def value(self, x: np.ndarray) -> np.ndarray:
        return self._value(x)[0]

    def value_jac(self, x: np.ndarray, keep_graph: bool = False):
        y, J = self._jac(x)
        # a kept point pays only for Hessian-vector products beyond the dense-Hessian limit:
        # the Hessian itself is one call of its Function either way (x: the cache's own copy)
        keep = keep_graph and self.m == 1 and self.n > DENSE_HESSP_MAX
        return y, J, (_AtPoint(self, x) if keep else None)

    def hessian(self, x: np.ndarray):
        return tuple(self._hess(x))

    def lagrangian_hessian(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self._lag(x, v)[0]
