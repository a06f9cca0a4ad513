"""scipy with a surrogate: what exact derivatives and the cache buy, and what threads cost.

Problems: a softplus MLP trained on the seed V(x) = x^T P x (2-D), and one trained on a random
SPD quadratic in 10-D (both with ``sb.fit``). From fixed starts: BFGS with finite differences
(scipy's default: what users do without this library), BFGS with the exact gradient, and
trust-exact with the exact Hessian, trust-constr with exact Hessian-vector products (several per
point, each from the point's cached Hessian); wall time, nfev/njev/nhev, and the fraction of the
time spent inside the surrogate's callbacks.

Threads: the same solves with default threads against ``sb.limit_threads(1)``, and L-BFGS-B
with bounds. solve_ivp: Radau on a learned 2-D vector field with and without the exact
Jacobian, and the one-point cost of a Jacobian against a function evaluation.

Many starts: BFGS (exact gradient) from 50 random starts with the surrogate's callbacks
(``minimize(sur, x0, jac=sur.grad)``, after one warm-up solve, so the auto route has measured)
against the same 50 solves with a hand-written numpy value-and-gradient of the same network
(``jac=True``): the floor a user could write by hand.

Fairness: float64 everywhere; each configuration run 5 times, the median reported; the cache
is cleared before each solve. Run: ``python benchmarks/bench_scipy.py``.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import numpy as np
import torch
from _common import machine, table, timeit, write_section
from scipy.integrate import solve_ivp
from scipy.optimize import minimize

import surrogate_bridge as sb

P2 = np.array([[20.1892, -26.6218], [-26.6218, 38.0375]])


def spd(n, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return Q @ np.diag(rng.uniform(0.5, 20.0, n)) @ Q.T


def trained(P, n_samples, epochs):
    """Values and gradients (Sobolev): in 10-D values alone leave a net that is unbounded below
    off the data, and every method then runs away."""
    n = len(P)
    X = np.random.default_rng(1).uniform(-3, 3, (n_samples, n))
    V = np.einsum("ni,ij,nj->n", X, P, X)
    net = sb.mlp((n, 32, 32, 1), "softplus", seed=0, dtype=torch.float32)
    return sb.fit(
        net,
        X,
        V,
        2 * X @ P,
        output_scaler="minmax",
        epochs=epochs,
        seed=0,
        progress=False,
        extrapolation="ignore",
    )


class Timed:
    """Wraps a callback and adds up the time spent in it."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args):
        t0 = time.perf_counter()
        try:
            return self.fn(*args)
        finally:
            self.seconds += time.perf_counter() - t0


def solve(sur, x0, method, kind, **kw):
    sur.cache_clear()
    f = Timed(sur)
    if kind != "fd":
        kw["jac"] = Timed(sur.grad)
    if kind == "hess":
        kw["hess"] = Timed(sur.hess)
    if kind == "hessp":
        kw["hessp"] = Timed(sur.hessp)
    t0 = time.perf_counter()
    res = minimize(f, x0, method=method, **kw)
    wall = time.perf_counter() - t0
    inside = sum(c.seconds for c in [f, *(v for v in kw.values() if isinstance(v, Timed))])
    return res, wall, inside / wall


def solves(name, sur, x0, rows):
    for label, method, kind in (
        ("BFGS, finite differences", "BFGS", "fd"),
        ("BFGS, exact gradient", "BFGS", "grad"),
        ("trust-exact, exact Hessian", "trust-exact", "hess"),
        ("trust-constr, exact Hessian-vector products", "trust-constr", "hessp"),
    ):
        runs = [solve(sur, x0, method, kind) for _ in range(5)]
        res = runs[0][0]
        wall = statistics.median(r[1] for r in runs)
        frac = statistics.median(r[2] for r in runs)
        rows.append(
            [
                name,
                label,
                res.nit,
                res.nfev,
                res.get("njev", 0),
                res.get("nhev", 0),
                wall * 1e3,
                f"{100 * frac:.0f}%",
                f"{np.linalg.norm(sur.grad(res.x)):.1e}",
            ]
        )


class Load:
    """A busy process on one core: the shared-machine condition under which threads hurt."""

    def __enter__(self):
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


_nothing = contextlib.nullcontext


def threads(name, sur, x0, rows):
    b = sur.bounds() if sur.domain is not None else None
    for label, kw in (
        ("BFGS, exact gradient", dict(method="BFGS", jac=sur.grad)),
        ("L-BFGS-B, exact gradient", dict(method="L-BFGS-B", jac=sur.grad, bounds=b)),
        ("trust-exact, exact Hessian", dict(method="trust-exact", jac=sur.grad, hess=sur.hess)),
    ):

        def run(kw=kw):
            sur.cache_clear()
            minimize(sur, x0, **kw)

        for condition in ("idle", "one core busy"):
            with Load() if condition != "idle" else _nothing():
                default = timeit(run, min_time=0.3, repeats=5, warmup=1)
                with sb.limit_threads(1):
                    single = timeit(run, min_time=0.3, repeats=5, warmup=1)
            rows.append(
                [
                    name,
                    label,
                    condition,
                    torch.get_num_threads(),
                    default * 1e3,
                    single * 1e3,
                    default / single,
                ]
            )


def radau(rows):
    rng = np.random.default_rng(0)
    X = rng.uniform(-2.5, 2.5, (2000, 2))
    F = np.stack([X[:, 1], -np.sin(X[:, 0]) - 0.2 * X[:, 1]], 1)
    net = sb.mlp((2, 64, 64, 2), "tanh", seed=0, dtype=torch.float32)
    sur = sb.fit(net, X, F, epochs=300, seed=0, progress=False, extrapolation="ignore")
    ode = sb.scipy_ode(sur)
    y = np.array([1.0, 0.0])
    t_fun = timeit(lambda: sur(y + rng.normal(size=2) * 1e-3), min_time=0.2)
    t_jac = timeit(lambda: sur.jac(y + rng.normal(size=2) * 1e-3), min_time=0.2)
    for label, kw in (("finite-difference Jacobian", {}), ("exact Jacobian", {"jac": ode.jac})):

        def run(kw=kw):
            sur.cache_clear()
            return solve_ivp(ode.fun, (0, 20), y, method="Radau", rtol=1e-8, atol=1e-10, **kw)

        sol = run()
        wall = timeit(run, min_time=0.5, repeats=5, warmup=1)
        rows.append([label, sol.nfev, sol.njev, sol.nlu, wall * 1e3])
    return t_fun, t_jac


class NumpySoftplusMLP:
    """The trained network by hand in numpy, scalers included: value and gradient together."""

    def __init__(self, sur):
        lins = [m for m in sur.function.model if isinstance(m, torch.nn.Linear)]
        self.layers = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
                       for m in lins]  # fmt: skip
        self.si, self.ci = sur.input_scaler.shift, sur.input_scaler.scale
        self.so, self.co = sur.output_scaler.shift[0], sur.output_scaler.scale[0]

    def __call__(self, x):
        z = (x - self.si) / self.ci
        sig = []
        for W, b in self.layers[:-1]:
            a = W @ z + b
            sig.append(1 / (1 + np.exp(-a)))
            z = np.logaddexp(0, a)
        W, b = self.layers[-1]
        g = W[0]
        for (Wk, _), s in zip(reversed(self.layers[:-1]), reversed(sig), strict=True):
            g = (g * s) @ Wk
        return (W[0] @ z + b[0]) * self.co + self.so, g * self.co / self.ci


def many_starts(name, sur, rows, verdicts):
    n = sur.n_in
    starts = np.random.default_rng(2).uniform(-2.5, 2.5, (50, n))
    hand = NumpySoftplusMLP(sur)
    x = starts[0]
    assert abs(hand(x)[0] - sur(x)) < 1e-9 and np.abs(hand(x)[1] - sur.grad(x)).max() < 1e-9

    def with_surrogate():
        for x0 in starts:
            minimize(sur, x0, jac=sur.grad, method="BFGS")

    def with_numpy():
        for x0 in starts:
            minimize(hand, x0, jac=True, method="BFGS")

    with_surrogate()  # warm-up: the auto route measures within it
    t_s = statistics.median(_timed(with_surrogate, sur.cache_clear) for _ in range(3))
    t_n = statistics.median(_timed(with_numpy, lambda: None) for _ in range(3))
    rows.append([name, sur.point_route, t_s * 1e3, t_n * 1e3, t_s / t_n])
    ratio = t_s / t_n
    verdicts.append(
        f"- {name}: 50 BFGS solves with surrogate callbacks take {ratio:.2f}x the same solves "
        f"with hand-written numpy callbacks (target <= 2x: {'met' if ratio <= 2 else 'not met'})."
    )


def _timed(fn, before):
    before()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    torch.set_num_threads(2)
    problems = [
        ("2-D seed V", trained(P2, 961, 3000), np.array([2.5, -1.5])),
        ("10-D SPD V", trained(spd(10), 4000, 1500), np.full(10, 1.0)),
    ]
    rows, trows, rrows, mrows, verdicts = [], [], [], [], []
    for name, sur, x0 in problems:
        solves(name, sur, x0, rows)
        threads(name, sur, x0, trows)
        many_starts(name, sur, mrows, verdicts)
    t_fun, t_jac = radau(rrows)
    body = f"Machine: {machine()}\n\n"
    body += table(
        [
            "problem",
            "method",
            "nit",
            "nfev",
            "njev",
            "nhev",
            "wall ms",
            "in surrogate",
            "|grad| at end",
        ],
        rows,
    )
    body += "\n\nThreads (`sb.limit_threads(1)` vs torch's default):\n\n"
    body += table(
        [
            "problem",
            "method",
            "machine",
            "default threads",
            "default ms",
            "1 thread ms",
            "default / 1 thread",
        ],
        trows,
    )
    body += (
        "\n\nsolve_ivp(Radau) on a learned 2-D vector field, t in [0, 20]; one-point cost "
        f"here: value {t_fun * 1e6:.0f} us, Jacobian {t_jac * 1e6:.0f} us "
        f"(Jacobian / value = {t_jac / t_fun:.2f}; finite differences cost n = 2 values):\n\n"
    )
    body += table(["Radau with", "nfev", "njev", "nlu", "wall ms"], rrows)
    body += "\n\nBFGS from 50 starts, exact gradients:\n\n"
    body += table(
        ["problem", "surrogate route", "surrogate ms", "numpy callbacks ms", "ratio"], mrows
    )
    body += "\n\n" + "\n".join(verdicts)
    write_section("bench_scipy", body)


if __name__ == "__main__":
    main()
