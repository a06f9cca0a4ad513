"""Which route answers single points, chosen by measuring, per kind of request.

No route wins everywhere (``benchmarks/RESULTS.md``): eager torch pays a per-call overhead that
dominates small nets; the compiled CasADi route has almost none, but its dense products are plain
loops (no BLAS) that lose on wide nets; the numpy route (``numpy_route.py``: the hand-written
forward and reverse pass, read off the graph) has BLAS and little overhead, but covers layer
graphs only (MLPs, residual nets). So under ``point_route="auto"`` a surrogate starts on torch,
and once it has computed ``_AUTO_AFTER`` single points (a solver at work; casual use never pays)
it builds every other route it can, checks that each agrees with torch on the current point,
times them there for each kind of request (value, value+Jacobian, Hessian, Lagrangian Hessian)
and keeps the fastest for each. What it measured is ``Surrogate.point_route_report``.
``"torch"`` builds no other route; ``"numpy"`` and ``"casadi"`` build theirs at once and use it
for every kind (an error if it cannot be built). Either way, a route answers only if it gives
torch's value, Jacobian and Hessian at the model's probe rows (:func:`same_as_torch`): the other
routes rewrite the user's layers, and a rewrite must be the same function. ("auto" checks a
route only once it is the fastest of some kind: the check is the dearest step of measuring for
a route that loses anyway.)
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

__all__ = ["POINT_ROUTES", "MeasuredRoute", "RouteUnavailable", "same_as_torch", "torch_reference"]

POINT_ROUTES = ("auto", "torch", "numpy", "casadi")
_AUTO_AFTER = 32  # single-point computations before "auto" measures
_REPEATS = 7  # timed calls per route and kind (the minimum is kept), each after an untimed one
_HOPELESS = 8.0  # a route this many times slower than the fastest (at its first call of a kind,
# or after two rounds of timing) is timed no more for that kind
_AGREE = 1e-10  # relative to the result's size: a translation that differs more is not used


class RouteUnavailable(ValueError):
    """A route cannot be built for this surrogate; the message says why."""


class MeasuredRoute:
    """The route protocol (``value``, ``value_jac``, ``hessian``, ``lagrangian_hessian``),
    answered for each kind by whichever route measured fastest. ``builders`` maps each other
    route's name to a callable that builds it (or raises :class:`RouteUnavailable`); ``check``
    returns a built route once it is shown to be the same function as torch's (or raises
    :class:`RouteUnavailable`), and is called only for a route about to answer (None: the
    builders' routes need no check)."""

    KINDS = ("value", "value_jac", "hessian", "lagrangian_hessian")

    def __init__(
        self,
        torch_route,
        builders: dict[str, Callable[[], object]],
        policy: str,
        check: Callable[[object], object] | None = None,
    ) -> None:
        self.torch, self._builders, self.policy = torch_route, builders, policy
        self._check = check
        self._start()
        if policy in builders:
            self._adopt()  # at once: RouteUnavailable names why it cannot be built

    def _start(self) -> None:
        """Torch answers every kind until the policy's pending step runs at a call."""
        self.choice = dict.fromkeys(self.KINDS, self.torch)
        self._pending = "measure" if self.policy == "auto" else None
        if self.policy in self._builders:
            self._pending = "build"
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

    def _adopt(self) -> None:
        self._pending = None
        self.choice = dict.fromkeys(self.KINDS, self._checked(self._builders[self.policy]()))
        self.report = {"policy": self.policy, "chosen": self.policy}
        self._bind()

    # a copy starts again where it runs (the engine that builds may not be restored yet when
    # this is: a reference cycle, so the build waits for the first call)
    def __getstate__(self) -> dict:
        keep = ("torch", "_builders", "policy", "_check")
        return {k: v for k, v in self.__dict__.items() if k in keep}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"_check": None, **state})  # (_check: absent from older pickles)
        self._start()

    def _checked(self, route):
        return route if self._check is None else self._check(route)

    @property
    def name(self) -> str:
        if self._pending == "build":
            return self.policy
        names = {k: r.name for k, r in self.choice.items()}
        if len(set(names.values())) == 1:
            return next(iter(names.values()))
        return ", ".join(f"{k}: {v}" for k, v in names.items())

    # the route protocol ----------------------------------------------------------------------
    def _tick(self, x: np.ndarray) -> None:
        if self._pending == "build":
            self._adopt()
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
        """Build every other route, and keep, per kind, the fastest route that agrees at ``x``
        with torch (``report["disagree"]`` names, per kind, those that did not) and passes
        ``check``: a route is checked only once it is the fastest of a kind (the check asks
        for Hessians at every probe row, a second or more of a wide net's losing CasADi
        route), and one that fails it gives its kinds to the next fastest."""
        self._pending = None
        t0 = time.perf_counter()
        others, notes = [], []
        for name, build in self._builders.items():
            try:
                others.append(build())
            except RouteUnavailable as err:
                notes.append(f"{name} route unavailable: {err}")
            except Exception as err:  # a reader's failure on an unforeseen model: choosing a
                # route is for speed, and must never fail the caller's evaluation
                notes.append(f"{name} route unavailable: {type(err).__name__}: {err}")
        t1 = time.perf_counter()
        if not others:
            self.report.update(chosen="torch", note="; ".join(notes))
            self._bind()
            return
        v = np.linspace(1.0, 2.0, self.torch.m)
        calls = {
            "value": lambda r: [r.value(x)],
            "value_jac": lambda r: list(r.value_jac(x)[:2]),
            "hessian": lambda r: list(r.hessian(x)),
            "lagrangian_hessian": lambda r: [r.lagrangian_hessian(x, v)],
        }
        timings, disagree, ranked = {}, {}, {}
        for kind, call in calls.items():
            start = time.perf_counter()
            try:
                ref = call(self.torch)  # also the warm-up
            except _NO_DERIVATIVE:  # no second derivative in torch: the surrogate refuses these
                notes.append(f"{kind}: torch cannot take it, not measured")
                self.choice[kind] = self.torch
                continue
            first = {self.torch.name: time.perf_counter() - start}  # (its first call, timed)
            agree = []
            for r in others:
                start = time.perf_counter()
                if _agrees(ref, call, r):
                    agree.append(r)
                    first[r.name] = time.perf_counter() - start
            if len(agree) < len(others):
                disagree[kind] = [r.name for r in others if r not in agree]
            # a route whose first call took _HOPELESS times the fastest one's is timed no more
            # (a wide net's CasADi Hessian: 40 times numpy's, ~0.15 s a call)
            hopeful = [r for r in agree if first[r.name] <= _HOPELESS * min(first.values())]
            us = {r.name: first[r.name] * 1e6 for r in agree}  # (the dropped: that one call)
            us |= _best_us(
                {r.name: (lambda r=r, call=call: call(r)) for r in (self.torch, *hopeful)}
            )
            timings[kind] = us
            ranked[kind] = sorted((self.torch, *hopeful), key=lambda r: us[r.name])
        t2, verdicts = time.perf_counter(), {self.torch.name: True}
        for kind, candidates in ranked.items():
            self.choice[kind] = next(r for r in candidates if self._passes(r, verdicts, notes))
        t3 = time.perf_counter()
        self.report.update(
            chosen=self.name,
            build_s=t1 - t0,
            probe_s=t2 - t1,
            check_s=t3 - t2,
            us=timings,
            **({"disagree": disagree} if disagree else {}),
            note="; ".join(
                ([f"measured after {_AUTO_AFTER} single points"] if self.policy == "auto" else [])
                + notes
            ),
        )
        self._bind()

    def _passes(self, route, verdicts: dict, notes: list) -> bool:
        """Whether ``route`` passes ``check`` (once per route; a failure is noted)."""
        if route.name not in verdicts:
            try:
                self._checked(route)
                verdicts[route.name] = True
            except RouteUnavailable as err:
                notes.append(f"{route.name} route unavailable: {err}")
                verdicts[route.name] = False
            except Exception as err:  # (as a builder's failure: never the caller's evaluation)
                notes.append(f"{route.name} route unavailable: {type(err).__name__}: {err}")
                verdicts[route.name] = False
        return verdicts[route.name]


def _agrees(ref: list, call, route) -> bool:
    """Whether ``route`` answers as torch did (``ref``); a route that fails disagrees."""
    try:
        got = call(route)
    except Exception:  # (as above: measuring never fails the caller's evaluation)
        return False
    return all(_gap(a, b) <= _AGREE for a, b in zip(ref, got, strict=True))


_KINDS_CHECKED = {
    "value and Jacobian": lambda r, x: r.value_jac(x)[:2],
    "Hessian": lambda r, x: r.hessian(x),
}


_NO_DERIVATIVE = (RuntimeError, NotImplementedError)  # what torch raises for a missing one


def torch_reference(torch_route, points: np.ndarray) -> list:
    """The torch route's value, Jacobian and Hessian at each of ``points`` (k, n): what
    :func:`same_as_torch` compares other routes with (computed once for all of them). Where
    torch cannot take the Hessian (an operation without a second derivative), there is none
    to compare: the surrogate refuses every Hessian request of such a model itself."""
    reference = []
    for x in points:
        answers = {}
        for kind, call in _KINDS_CHECKED.items():
            try:
                answers[kind] = call(torch_route, x)
            except _NO_DERIVATIVE:
                if kind == "value and Jacobian":
                    raise
        reference.append((x, answers))
    return reference


def same_as_torch(route, reference: list):
    """``route`` itself if it gives the torch route's value, Jacobian and Hessian at every point
    of ``reference`` (:func:`torch_reference` at the model's probe rows), else
    :class:`RouteUnavailable` saying which differs: a route that rewrites the user's layers is
    used only where it is the same function, derivatives included, measured or forced. Where
    torch's answer is NaN or infinite (a root or logarithm of a negative output, say), the
    route's must be the same there; at least one probe point must have a finite value."""
    if not any(np.isfinite(expected["value and Jacobian"][0]).all() for _, expected in reference):
        raise RouteUnavailable(
            "torch's own value is not finite at any probe point, so no other route can be "
            "checked against it"
        )
    for x, expected in reference:
        for kind, answer in expected.items():
            for a, b in zip(answer, _KINDS_CHECKED[kind](route, x), strict=True):
                gap = _gap(a, b)
                if gap > _AGREE:
                    raise RouteUnavailable(
                        f"its {kind} differs from torch's by {gap:.1e} (relative) at a probe "
                        f"point, more than {_AGREE:g}: it is not the same function"
                        if np.isfinite(gap)
                        else f"its {kind} is not finite where torch's is, or the converse, at a "
                        "probe point: it is not the same function"
                    )
    return route


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    """The largest difference of b from a, relative to the size of a's finite values (at least
    1); infinite unless b is NaN, or the same infinity, exactly where a is."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    finite = np.isfinite(a)
    same_pattern = np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(
        a[np.isinf(a)], b[np.isinf(a)]
    )
    if not same_pattern or not np.isfinite(b[finite]).all():
        return np.inf
    gap = np.abs(a[finite] - b[finite]).max(initial=0.0)
    return float(gap / max(np.abs(a[finite]).max(initial=0.0), 1.0))


def _best_us(calls: dict[str, Callable[[], object]]) -> dict[str, float]:
    """The best of ``_REPEATS`` timed calls of each, in alternating rounds: a machine whose speed
    drifts (a shared one) does not favour whichever was timed first. Each timed call follows an
    untimed one of the same route, so a route is timed as it runs when it answers a solver's
    requests in turn, not just after another route's thread pool (torch's OpenMP threads, or
    BLAS's, still spinning on the cores) has slowed it several times over. After two rounds, a
    route more than ``_HOPELESS`` times slower than the fastest is timed no more (a wide net's
    CasADi Hessian, 40 times numpy's, took seconds of a solver's time to confirm)."""
    best = dict.fromkeys(calls, np.inf)
    timed = dict(calls)
    for round_ in range(_REPEATS):
        for key, call in timed.items():
            call()
            t = time.perf_counter()
            call()
            best[key] = min(best[key], time.perf_counter() - t)
        if round_ >= 1:
            fastest = min(best.values())
            timed = {k: c for k, c in timed.items() if best[k] <= _HOPELESS * fastest}
    return {key: b * 1e6 for key, b in best.items()}
