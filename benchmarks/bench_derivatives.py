"""Derivative cost: one point (what solver callbacks pay) and batches (what analysis pays).

(a) One point, per call, numpy in and out, float64, on a 2-64-64-1 and a 10-256-256-3 tanh MLP:
    the Surrogate (a fresh point every call, so the cache never answers), a raw eager torch call
    of the same float64 model (``torch.from_numpy`` -> forward -> ``autograd.grad`` -> numpy; for
    the Hessian ``torch.autograd.functional.hessian``, what users write), and a hand-written numpy
    forward/backward (and forward-over-reverse for the Hessian): the floor.
(b) Batches, points per second for Jacobians and Hessians, N = 10^3..10^5 (10^6 on a GPU): the
    Surrogate against the per-sample ``backward()`` loop users write and per-sample
    ``torch.autograd.functional.jacobian/hessian``. The slow baselines are timed on the first
    min(N, 300) points and reported as a rate (their cost is linear in N).

Fairness: same float64 weights everywhere; exact derivatives everywhere; warm-up calls before
timing; median of 5 rounds; one torch thread for (a) (per-point work is too small for two),
the default for (b). Run: ``python benchmarks/bench_derivatives.py [--quick]``.
"""

from __future__ import annotations

import sys
from functools import partial

import numpy as np
import torch
from _common import machine, table, timeit, write_section

import surrogate_bridge as sb


def mlp(n, h, m, seed=0):
    return sb.mlp((n, h, h, m), "tanh", seed=seed)


class NumpyMLP:
    """Hand-written tanh MLP (two hidden layers): value, Jacobian, Hessians."""

    def __init__(self, net):
        p = [t.detach().numpy() for t in net.parameters()]
        self.W1, self.b1, self.W2, self.b2, self.W3, self.b3 = p

    def value(self, x):
        h1 = np.tanh(self.W1 @ x + self.b1)
        h2 = np.tanh(self.W2 @ h1 + self.b2)
        return self.W3 @ h2 + self.b3

    def value_jac(self, x):
        h1 = np.tanh(self.W1 @ x + self.b1)
        h2 = np.tanh(self.W2 @ h1 + self.b2)
        ga2 = self.W3 * (1 - h2**2)  # (m, H)
        ga1 = (ga2 @ self.W2) * (1 - h1**2)
        return self.W3 @ h2 + self.b3, ga1 @ self.W1

    def hess(self, x):
        """Forward-over-reverse by hand: Hessian of every output, (m, n, n)."""
        h1 = np.tanh(self.W1 @ x + self.b1)
        d1 = 1 - h1**2
        T1 = d1[:, None] * self.W1  # dh1/dx (H, n)
        h2 = np.tanh(self.W2 @ h1 + self.b2)
        d2 = 1 - h2**2
        T2 = d2[:, None] * (self.W2 @ T1)  # dh2/dx
        out = []
        for w in self.W3:
            ga2 = w * d2
            gh1 = self.W2.T @ ga2
            dga2 = (w * -2 * h2)[:, None] * T2  # d(ga2)/dx
            dga1 = (self.W2.T @ dga2) * d1[:, None] + (gh1 * -2 * h1)[:, None] * T1
            out.append(self.W1.T @ dga1)
        return np.stack(out)


def one_point(n, h, m, rows):
    net = mlp(n, h, m)
    ref = NumpyMLP(net)
    frozen = mlp(n, h, m).requires_grad_(False)
    sur = sb.Surrogate(net)
    sur_nopf = sb.Surrogate(net, prefetch_grad=False)
    rng = np.random.default_rng(0)
    pts = iter(rng.normal(size=(10**7 // (n * 8), n)).tolist() * 100)
    fresh = lambda: np.array(next(pts))  # noqa: E731 (a new point, so the cache misses)

    def raw_value():
        with torch.no_grad():
            return frozen(torch.from_numpy(fresh())[None])[0].numpy()

    def raw_vg():
        x = torch.from_numpy(fresh()).requires_grad_(True)
        y = frozen(x[None])[0]
        if m == 1:
            (g,) = torch.autograd.grad(y[0], x)
            return y.detach().numpy(), g.numpy()
        return y.detach().numpy(), torch.autograd.functional.jacobian(
            lambda z: frozen(z[None])[0], x
        ).numpy()

    def raw_hess():
        f = (lambda z: frozen(z[None])[0, 0]) if m == 1 else (lambda z: frozen(z[None])[0])
        x = torch.from_numpy(fresh())
        if m == 1:
            return torch.autograd.functional.hessian(f, x).numpy()
        return torch.autograd.functional.jacobian(
            lambda z: torch.autograd.functional.jacobian(f, z, create_graph=True), x
        ).numpy()

    vg = (
        (lambda: sur.value_and_grad(fresh()))
        if m == 1
        else (lambda: (sur(x := fresh()), sur.jac(x)))
    )
    cases = {
        "value": (lambda: sur_nopf(fresh()), raw_value, lambda: ref.value(fresh())),
        "value+grad": (vg, raw_vg, lambda: ref.value_jac(fresh())),
        "hessian": (lambda: sur.hess(fresh()), raw_hess, lambda: ref.hess(fresh())),
    }
    for name, (s, r, f) in cases.items():
        ts, tr, tf = timeit(s), timeit(r), timeit(f)
        rows.append([f"{n}-{h}-{h}-{m}", name, ts * 1e6, tr * 1e6, tf * 1e6, ts / tr, ts / tf])


def loop_jac(net, X):
    """The per-sample backward() loop, with x.grad and retain_graph, as users write it."""
    out = []
    for x in X:
        x = x.clone().requires_grad_(True)
        y = net(x[None])[0]
        rows = []
        for k in range(y.shape[0]):
            x.grad = None
            y[k].backward(retain_graph=True)
            rows.append(x.grad.clone())
        out.append(torch.stack(rows))
    return out


def loop_hess(net, X):
    out = []
    for x in X:
        x = x.clone().requires_grad_(True)
        y = net(x[None])[0, 0]
        (g,) = torch.autograd.grad(y, x, create_graph=True)
        rows = []
        for j in range(x.shape[0]):
            x.grad = None
            g[j].backward(retain_graph=True)
            rows.append(x.grad.clone())
        out.append(torch.stack(rows))
    return out


def _rate(fn, n_points: int, sync) -> float:
    def run():
        fn()
        sync()

    return n_points / timeit(run, min_time=0.05, repeats=3, warmup=1)


def batches(n, h, m, sizes, rows, device):
    net = mlp(n, h, m).to(device)
    frozen = mlp(n, h, m).to(device).requires_grad_(False)
    sur = sb.Surrogate(net, device=device)
    scalar = (lambda z: frozen(z[None])[0, 0]) if m == 1 else (lambda z: frozen(z[None])[0])
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    kinds = [("jacobian", sur.jac, loop_jac, torch.autograd.functional.jacobian)]
    if m == 1:
        kinds.append(("hessian", sur.hess, loop_hess, torch.autograd.functional.hessian))
    for N in sizes:
        X = torch.randn(N, n, dtype=torch.float64, device=device)
        sub = X[: min(N, 300)]
        for name, ours, loop, functional in kinds:
            ps = _rate(partial(ours, X), N, sync)
            pl = _rate(partial(loop, frozen, sub), len(sub), sync)
            pf = _rate(partial(_each, functional, scalar, sub), len(sub), sync)
            rows.append([f"{n}-{h}-{h}-{m}", device, name, N, ps, pl, pf, ps / pl, ps / pf])


def _each(functional, f, points):
    return [functional(f, x) for x in points]


def main(quick: bool = False) -> None:
    torch.set_num_threads(1)
    one = []
    for n, h, m in ((2, 64, 1), (10, 256, 3)):
        one_point(n, h, m, one)
    torch.set_num_threads(torch.get_num_interop_threads())
    many = []
    sizes = (10**3, 10**4) if quick else (10**3, 10**4, 10**5)
    for n, h, m in ((2, 64, 1), (10, 256, 1)):
        batches(n, h, m, sizes, many, "cpu")
    if torch.cuda.is_available():
        for n, h, m in ((2, 64, 1), (10, 256, 1)):
            batches(n, h, m, (10**4, 10**5, 10**6), many, "cuda")
    body = f"Machine: {machine()}\n\n"
    body += (
        "(a) One point, microseconds per call (numpy in/out, float64, fresh point each call):\n\n"
    )
    body += table(
        [
            "net",
            "call",
            "Surrogate us",
            "raw torch us",
            "numpy floor us",
            "Surrogate / raw",
            "Surrogate / floor",
        ],
        one,
    )
    body += "\n\n(b) Batches, points per second:\n\n"
    body += table(
        [
            "net",
            "device",
            "derivative",
            "N",
            "Surrogate pts/s",
            "backward() loop pts/s",
            "autograd.functional pts/s",
            "speed-up vs loop",
            "speed-up vs functional",
        ],
        many,
    )
    body += (
        "\n\nTargets: one-point value+grad at most 1.5x a raw torch call; batched Hessians at "
        "least 100x the per-sample loop."
    )
    write_section("bench_derivatives", body)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
