"""A small LRU cache of single-point results, keyed on a private copy of x.

scipy and CasADi ask for value, gradient and Hessian at one point in separate calls, in an order
that depends on the method, and some methods (Newton-CG, SLSQP) mutate the array they handed us.
The key is built from the bytes of the validated *copy* of x, with its shape and dtype, so equal
points hit and in-place mutation by a caller cannot alias an entry.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch


class CacheInfo(NamedTuple):
    """Like ``functools.lru_cache``'s, plus ``passes``: model evaluations made for single points."""

    hits: int
    misses: int
    maxsize: int
    currsize: int
    passes: int


@dataclass
class Entry:
    """What is known at one point, as tensors: y (m,), J (m, n), H (m, n, n)."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    J: torch.Tensor | None = None
    H: torch.Tensor | None = None
    graph: tuple | None = None  # (leaf, gradient with graph) for Hessian-vector products


class PointCache:
    def __init__(self, maxsize: int) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"cache_size must be an int >= 0, got {maxsize!r}.")
        self.maxsize = maxsize
        self._d: OrderedDict[tuple, Entry] = OrderedDict()
        self._graph_key: tuple | None = None
        self.hits = self.misses = self.passes = 0

    @staticmethod
    def key(x: np.ndarray) -> tuple:
        return (x.tobytes(), x.shape, x.dtype.str)

    def entry(self, key: tuple, make) -> Entry:
        """The entry at ``key``, created by ``make()`` if absent (most recent last)."""
        e = self._d.get(key)
        if e is None:
            e = make()
            if self.maxsize:
                self._d[key] = e
                if len(self._d) > self.maxsize:
                    self._d.popitem(last=False)
        else:
            self._d.move_to_end(key)
        return e

    def count(self, hit: bool, passes: int = 0) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1
            self.passes += passes

    def keep_graph(self, key: tuple, e: Entry, graph) -> None:
        """Only the most recent point keeps its autograd graph: memory stays bounded."""
        old = self._d.get(self._graph_key) if self._graph_key != key else None
        if old is not None:
            old.graph = None
        e.graph, self._graph_key = graph, key

    def info(self) -> CacheInfo:
        return CacheInfo(self.hits, self.misses, self.maxsize, len(self._d), self.passes)

    def clear(self) -> None:
        self._d.clear()
        self._graph_key = None
        self.hits = self.misses = self.passes = 0
