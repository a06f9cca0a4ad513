"""Single-point evaluation: what solver callbacks ask for, one point at a time.

scipy and CasADi ask for value, gradient and Hessian at one point in separate calls, in an order
that depends on the method (recorded call by call in scipy 1.17: BFGS, L-BFGS-B, CG, SLSQP,
Newton-CG ask value then gradient; trust-krylov and trust-constr the gradient first; trust-exact
the full Hessian first, also at rejected trial points), and some methods (Newton-CG, SLSQP) mutate
the array they handed us. So:

* a small LRU cache keyed on the bytes, shape and dtype of a private *copy* of x (the caller's
  later mutation cannot alias an entry);
* a fill policy chosen once at construction, as scipy's ``ScalarFunction`` does: a value request
  at a new point of a scalar surrogate also computes the gradient in the same pass (solvers ask
  for it next); the most recent point keeps its gradient's graph (:class:`~.derivatives.KeptGraph`),
  so a later Hessian or Hessian-vector product there needs no second forward pass; a vector
  surrogate, once second derivatives were asked of it (constraints), fills value, Jacobian and
  Hessian in one pass. One model pass per distinct point, in any request order;
* counters like ``functools.lru_cache``'s, plus the model passes made;
* one lock: a surrogate may be shared between threads.

The route (``derivatives.TorchPointRoute``, or a compiled one) computes; this module decides what
to compute and remembers it. Arrays are numpy with a leading point axis: ``y`` (1, m), ``J``
(1, m, n), ``H`` (1, m, n, n).
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .convert import in_functorch, outside_transforms

__all__ = ["CacheInfo", "PointEvaluator"]


def _outside_transforms(method):
    """``method`` of a numpy point, computed as outside any torch.func transform of the caller's
    around the call (the point is none of its business, and the routes' autograd is refused
    inside one)."""

    @functools.wraps(method)
    def computed(self, *args):
        if in_functorch() is not None and (outside := outside_transforms()) is not None:
            with outside:
                return method(self, *args)
        return method(self, *args)

    return computed


DENSE_HESSP_MAX = 16  # up to this many inputs, hessp builds and caches the dense Hessian


class CacheInfo(NamedTuple):
    """Like ``functools.lru_cache``'s, plus ``passes``: model evaluations made for single points."""

    hits: int
    misses: int
    maxsize: int
    currsize: int
    passes: int


@dataclass(slots=True)
class Entry:
    """What is known at one point."""

    x: np.ndarray
    y: np.ndarray | None = None
    J: np.ndarray | None = None
    H: np.ndarray | None = None
    graph: object | None = None  # a KeptGraph: .mv(p) and .hessian() with no new forward pass


class PointEvaluator:
    """Cached single-point results from ``route`` for a surrogate with n inputs, m outputs."""

    def __init__(self, route, n: int, m: int, cache_size: int, prefetch_grad: bool) -> None:
        self.route, self.n, self.m = route, n, m
        self.maxsize, self.prefetch = cache_size, bool(prefetch_grad)
        self._all_orders = False  # set once a vector surrogate is asked for second derivatives
        self._reset()

    def _reset(self) -> None:
        self._d: OrderedDict[bytes, Entry] = OrderedDict()
        self._graph_key: bytes | None = None
        self._lock = threading.RLock()
        self.hits = self.misses = self.passes = 0
        self._choose_fills()

    def _choose_fills(self) -> None:
        """What each request computes at a new point, decided here and not per call."""
        if self._all_orders:  # constraints: value, Jacobian and Hessian in one pass
            value = jac = self._fill_hess
        else:
            value = self._fill_jac if (self.m == 1 and self.prefetch) else self._fill_value
            jac = self._fill_jac
        self._fills = {"y": value, "J": jac, "H": self._fill_hess}

    # copies and pickles carry the policy, not the cache, its graph or its lock
    def __getstate__(self) -> dict:
        skip = ("_d", "_graph_key", "_lock", "_fills")
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    # public -------------------------------------------------------------------------------------
    @_outside_transforms
    def get(self, x: np.ndarray, need: str) -> Entry:
        """The entry at ``x`` with ``need`` ("y", "J" or "H") and everything below it filled."""
        with self._lock:
            e, key = self._entry(x)
            self._fills[need](e, key)
            return e

    @_outside_transforms
    def hessp(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Hessian-vector product (n,) of a scalar surrogate: the cached dense Hessian for up to
        16 inputs (a matrix-vector product), else one backward pass on the kept graph."""
        with self._lock:
            e, key = self._entry(x)
            if e.H is not None or self.n <= DENSE_HESSP_MAX:
                self._fill_hess(e, key)
                return e.H[0, 0] @ p.astype(e.H.dtype)
            if e.graph is None:
                self._compute_jac(e, key, keep_graph=True)
            else:
                self._count(hit=False)
            return e.graph.mv(p)

    @_outside_transforms
    def lagrangian(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``sum_i v_i * Hessian of output i`` (n, n) in one pass; a cached Hessian serves it."""
        with self._lock:
            self._upgrade()
            e, _ = self._entry(x)
            if e.H is not None:
                self._count(hit=True)
                return np.einsum("i,ijk->jk", v.astype(e.H.dtype), e.H[0])
            self._count(hit=False, passes=1)
            return self.route.lagrangian_hessian(e.x, v)

    def info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self.hits, self.misses, self.maxsize, len(self._d), self.passes)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self._graph_key = None
            self.hits = self.misses = self.passes = 0

    # the cache ----------------------------------------------------------------------------------
    def _entry(self, x: np.ndarray) -> tuple[Entry, bytes | None]:
        if not self.maxsize:
            return Entry(x=x), None
        key = x.tobytes()  # x is a validated private float64 copy of shape (n,)
        e = self._d.get(key)
        if e is None:
            e = self._d[key] = Entry(x=x)
            if len(self._d) > self.maxsize:
                self._d.popitem(last=False)
        else:
            self._d.move_to_end(key)
        return e, key

    def _count(self, hit: bool, passes: int = 0) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1
            self.passes += passes

    def _keep_graph(self, key: bytes | None, e: Entry, graph) -> None:
        """Only the most recent point keeps its autograd graph: memory stays bounded."""
        if key is not None and self._graph_key != key:
            old = self._d.get(self._graph_key)
            if old is not None:
                old.graph = None
            self._graph_key = key
        e.graph = graph

    # the fill policy ----------------------------------------------------------------------------
    def _upgrade(self) -> None:
        """Vector surrogates asked for second derivatives (constraints): from now on a first
        request at a point fills value, Jacobian and Hessian in one pass."""
        if self.m > 1 and not self._all_orders:
            self._all_orders = True
            self._choose_fills()

    # (counts inline: these are the path of every solver iteration)
    def _fill_value(self, e: Entry, key) -> None:
        if e.y is not None:
            self.hits += 1
            return
        e.y = self.route.value(e.x)
        self.misses, self.passes = self.misses + 1, self.passes + 1

    def _fill_jac(self, e: Entry, key) -> None:
        if e.J is not None:
            self.hits += 1
            return
        self._compute_jac(e, key, keep_graph=self.m == 1 and key is not None)

    def _compute_jac(self, e: Entry, key, keep_graph: bool) -> None:
        e.y, e.J, graph = self.route.value_jac(e.x, keep_graph=keep_graph)
        self.misses, self.passes = self.misses + 1, self.passes + 1
        if graph is not None:
            self._keep_graph(key, e, graph)

    def _fill_hess(self, e: Entry, key) -> None:
        self._upgrade()
        if e.H is not None:
            self._count(hit=True)
        elif e.graph is not None:  # Hessian rows from the kept graph: no new forward pass
            e.H = e.graph.hessian()
            self._count(hit=False)
        else:
            e.y, e.J, e.H = self.route.hessian(e.x)
            self._count(hit=False, passes=1)
