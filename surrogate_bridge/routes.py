"""Which route answers single points, chosen by measuring, per kind of request.

No route wins everywhere (``benchmarks/RESULTS.md``): the compiled CasADi route is several times
faster than eager torch on small nets, where per-call overhead dominates, and slower on wide ones,
where CasADi's dense products (plain loops, no BLAS) lose to torch's. So under
``point_route="auto"`` a surrogate starts on torch, and once it has computed ``_AUTO_AFTER``
single points (a solver at work; casual use never pays) it builds the compiled route, checks that
both agree on the current point, times both there for each kind of request (value,
value+Jacobian, Hessian, Lagrangian Hessian) and keeps the faster for each. What it measured is
``Surrogate.point_route_report``. ``"torch"`` never builds the compiled route; ``"casadi"``
builds it at once and uses it for every kind (an error if it cannot be built).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

__all__ = ["POINT_ROUTES", "MeasuredRoute", "RouteUnavailable"]

POINT_ROUTES = ("auto", "torch", "casadi")
_AUTO_AFTER = 32  # single-point computations before "auto" measures
_REPEATS = 7  # timed calls per route and kind (the minimum is kept), after one warm-up
_AGREE = 1e-10  # relative to the result's size: a translation that differs more is not used


class RouteUnavailable(ValueError):
    """The compiled route cannot be built for this surrogate; the message says why."""


class MeasuredRoute:
    """The route protocol (``value``, ``value_jac``, ``hessian``, ``lagrangian_hessian``),
    answered for each kind by whichever route measured faster."""

    KINDS = ("value", "value_jac", "hessian", "lagrangian_hessian")

    def __init__(self, torch_route, build: Callable[[], object], policy: str) -> None:
        self.torch, self._build, self.policy = torch_route, build, policy
        self._start()
        if policy == "casadi":
            self._adopt_compiled()  # at once: RouteUnavailable names why it cannot be built

    def _start(self) -> None:
        """Torch answers every kind until the policy's pending step runs at a call."""
        self.choice = dict.fromkeys(self.KINDS, self.torch)
        self._pending = {"auto": "measure", "casadi": "build"}.get(self.policy)
        self._countdown = _AUTO_AFTER
        self.report = {"policy": self.policy, "chosen": "torch"}
        if self.policy == "auto":
            self.report["note"] = f"measures after {_AUTO_AFTER} single points"
        if self._pending is None:
            self._bind()

    def _bind(self) -> None:
        """Once the choice is final, each kind is the chosen route's own method (an instance
        attribute, found before the class's counting one): no per-call bookkeeping."""
        for kind in self.KINDS:
            setattr(self, kind, getattr(self.choice[kind], kind))

    def _adopt_compiled(self) -> None:
        self._pending = None
        self.choice = dict.fromkeys(self.KINDS, self._build())
        self.report = {"policy": "casadi", "chosen": "casadi"}
        self._bind()

    # a copy starts again where it runs (the engine that builds may not be restored yet when
    # this is: a reference cycle, so the build waits for the first call)
    def __getstate__(self) -> dict:
        return {"torch": self.torch, "_build": self._build, "policy": self.policy}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._start()

    @property
    def name(self) -> str:
        if self._pending == "build":
            return "casadi"
        names = {k: r.name for k, r in self.choice.items()}
        if len(set(names.values())) == 1:
            return next(iter(names.values()))
        return ", ".join(f"{k}: {v}" for k, v in names.items())

    # the route protocol ----------------------------------------------------------------------
    def _tick(self, x: np.ndarray) -> None:
        if self._pending == "build":
            self._adopt_compiled()
        elif self._pending == "measure":
            self._countdown -= 1
            if self._countdown <= 0:
                self.measure(x)

    def value(self, x):
        self._tick(x)
        return self.choice["value"].value(x)

    def value_jac(self, x, keep_graph: bool = False):
        self._tick(x)
        return self.choice["value_jac"].value_jac(x, keep_graph=keep_graph)

    def hessian(self, x):
        self._tick(x)
        return self.choice["hessian"].hessian(x)

    def lagrangian_hessian(self, x, v):
        self._tick(x)
        return self.choice["lagrangian_hessian"].lagrangian_hessian(x, v)

    # measuring -------------------------------------------------------------------------------
    def measure(self, x: np.ndarray) -> None:
        """Build the compiled route and keep, per kind, the faster route that agrees at ``x``."""
        self._pending = None
        t0 = time.perf_counter()
        try:
            compiled = self._build()
        except RouteUnavailable as err:
            self.report.update(chosen="torch", note=f"compiled route unavailable: {err}")
            self._bind()
            return
        t1 = time.perf_counter()
        v = np.linspace(1.0, 2.0, self.torch.m)
        calls = {
            "value": lambda r: [r.value(x)],
            "value_jac": lambda r: list(r.value_jac(x)[:2]),
            "hessian": lambda r: list(r.hessian(x)),
            "lagrangian_hessian": lambda r: [r.lagrangian_hessian(x, v)],
        }
        timings = {}
        for kind, call in calls.items():
            ref, got = call(self.torch), call(compiled)  # also the warm-up
            if not all(_agree(a, b) for a, b in zip(ref, got, strict=True)):
                timings[kind] = "disagree: kept torch"
                continue
            us = _best_us(
                {r.name: (lambda r=r, call=call: call(r)) for r in (self.torch, compiled)}
            )
            timings[kind] = us
            self.choice[kind] = compiled if us[compiled.name] < us["torch"] else self.torch
        self.report.update(
            chosen=self.name,
            build_s=t1 - t0,
            probe_s=time.perf_counter() - t1,
            us=timings,
            note=f"measured after {_AUTO_AFTER} single points" if self.policy == "auto" else "",
        )
        self._bind()


def _agree(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.abs(a - b).max(initial=0.0) <= _AGREE * max(np.abs(a).max(initial=0.0), 1.0))


def _best_us(calls: dict[str, Callable[[], object]]) -> dict[str, float]:
    """The best of ``_REPEATS`` timed calls of each, in alternating rounds: a machine whose speed
    drifts (a shared one) does not favour whichever was timed first."""
    best = dict.fromkeys(calls, np.inf)
    for _ in range(_REPEATS):
        for key, call in calls.items():
            t = time.perf_counter()
            call()
            best[key] = min(best[key], time.perf_counter() - t)
    return {key: b * 1e6 for key, b in best.items()}
