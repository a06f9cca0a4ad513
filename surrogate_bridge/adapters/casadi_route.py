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

from .casadi_symbolic import translate_program

__all__ = ["CasadiPointRoute"]


class _Call:
    """One CasADi Function bound to fixed numpy buffers: ``call(*inputs) -> outputs`` (copies,
    dense, column-major as CasADi stores them). Not reentrant: the caller holds a lock."""

    def __init__(self, f: ca.Function) -> None:
        self.f = f
        self.buf, self.trigger = f.buffer()
        self.ins = [np.zeros(f.nnz_in(i)) for i in range(f.n_in())]
        self.outs = [np.zeros(f.nnz_out(i)) for i in range(f.n_out())]
        for i, a in enumerate(self.ins):
            self.buf.set_arg(i, memoryview(a))
        for i, a in enumerate(self.outs):
            self.buf.set_res(i, memoryview(a))

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        if len(inputs) == 1:  # the common case, without a loop
            self.ins[0][:] = inputs[0]
        else:
            for dst, src in zip(self.ins, inputs, strict=True):
                dst[:] = src
        self.trigger()
        return [o.copy() for o in self.outs]  # the buffers are overwritten at the next call

    def __getstate__(self):  # buffers hold raw pointers: rebuilt from the Function
        return {"f": self.f}

    def __setstate__(self, state):
        self.__init__(state["f"])


class _AtPoint:
    """Hessian-vector products and the Hessian at one point, without a new value pass."""

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
        self._value = _Call(ca.Function("value", [x], [y]))
        self._jac = _Call(ca.Function("value_jac", [x], [y, dense(J)]))
        self._hess = _Call(ca.Function("hessian", [x], [y, dense(J), dense(H)]))
        self._lag = _Call(ca.Function("lagrangian", [x, v], [dense(ca.jacobian(g, x))]))
        self._hvp = None
        if m == 1:
            hv = ca.jtimes(ca.gradient(y, x), x, p)
            self._hvp = _Call(ca.Function("hvp", [x, p], [dense(hv)]))

    def value(self, x: np.ndarray) -> np.ndarray:
        (y,) = self._value(x)
        return y[None]

    def value_jac(self, x: np.ndarray, keep_graph: bool = False):
        y, J = self._jac(x)
        at = _AtPoint(self, x) if keep_graph and self.m == 1 else None  # x: the cache's own copy
        J = J.reshape(1, 1, self.n) if self.m == 1 else J.reshape(self.n, self.m).T[None]
        return y[None], J, at

    def hessian(self, x: np.ndarray):
        y, J, H = self._hess(x)
        H = H.reshape(self.n, self.m * self.n).T.reshape(self.m, self.n, self.n)
        return y[None], J.reshape(self.n, self.m).T[None], H[None]

    def lagrangian_hessian(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        (L,) = self._lag(x, v)
        return L.reshape(self.n, self.n).T
