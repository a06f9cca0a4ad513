"""Derivative cost: one point (what solver callbacks pay) and batches (what analysis pays).

(a) One point, per call, numpy in and out, float64, on a 2-64-64-1 and a 10-256-256-1 tanh MLP
    behind scalers: every single-point route of the Surrogate (``point_route="torch"``,
    ``"numpy"``, ``"casadi"``, and ``"auto"`` after it has measured), a raw eager torch call of
    the same float64 model (``torch.from_numpy`` -> forward -> ``autograd.grad`` -> numpy; for
    the Hessian ``torch.autograd.functional.hessian``, what users write), and a hand-written numpy
    forward/backward (forward-over-reverse for the Hessian): the floor. Every call takes a fresh
    point (a cycle through 200 000 points, far more than the cache holds), so the cache never
    answers.
(a') The same on nets beyond a plain MLP, as a multiple of the eager torch route: 10-256-256-1
    nets with a LayerNorm or RMSNorm before each activation, and a batched ensemble of five
    10-256-256-1 members (weights stacked (members, in, out), ``baddbmm`` per layer, the
    members' mean: a tensor of several rows on the numpy route).
(b) Batches, points per second for Jacobians and Hessians, N = 10^3..10^5 (10^6 on a GPU): the
    Surrogate against the per-sample ``backward()`` loop users write, per-sample
    ``torch.autograd.functional``, and ``torch.func`` (``vmap(jacrev)``, ``vmap(hessian)``). The
    per-sample baselines are timed on the first min(N, 300) points and reported as a rate (their
    cost is linear in N).

Fairness: same float64 weights everywhere; exact derivatives everywhere; warm-up calls before
timing; median of 5 rounds; the torch thread count of each part is in its heading (one for (a):
per-point work is too small for two). Run: ``python benchmarks/bench_derivatives.py [--quick]``.
"""

from __future__ import annotations

import itertools
import sys
from functools import partial

import numpy as np
import torch
from _common import interleaved, machine, table, timeit, write_section

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


class Fresh:
    """A new point at every call, cycling through a fixed array (no per-call Python lists)."""

    def __init__(self, n: int, count: int = 200_000) -> None:
        self.pts, self.i = np.random.default_rng(0).normal(size=(count, n)), 0

    def __call__(self) -> np.ndarray:
        self.i = (self.i + 1) % len(self.pts)
        return self.pts[self.i].copy()


def every_route(net, fresh, ins=None, outs=None) -> dict:
    """A surrogate of ``net`` on each single-point route; "auto" has measured first (32 single
    points) and is timed on what it chose."""
    routes = {}
    for route in ("torch", "numpy", "casadi", "auto"):
        sur = sb.Surrogate(net, ins, outs, point_route=route, extrapolation="ignore")
        if route == "auto":
            for _ in range(40):
                sur.hess(fresh())
        routes[route] = sur
    return routes


def one_point(n, h, rows):
    """Scalar nets: value, value+grad and Hessian by every route, the raw call and the floor."""
    net = mlp(n, h, 1)
    ref = NumpyMLP(net)
    frozen = mlp(n, h, 1).requires_grad_(False)
    ins, outs = sb.Affine(np.zeros(n), np.ones(n)), sb.Affine([0.0], [1.0])  # identity values
    fresh = Fresh(n)
    routes = every_route(net, fresh, ins, outs)
    # what a user's surrogate pays besides: real scalers and the training-domain check (warn)
    users = sb.Surrogate(
        net, sb.Affine(np.full(n, 0.5), np.full(n, 2.0)), sb.Affine([1.0], [3.0]),
        domain=(np.full(n, -50.0), np.full(n, 50.0)),
    )  # fmt: skip
    for _ in range(40):
        users.hess(fresh())

    def raw_value():
        with torch.no_grad():
            return frozen(torch.from_numpy(fresh())[None])[0].numpy()

    def raw_vg():
        x = torch.from_numpy(fresh()).requires_grad_(True)
        y = frozen(x[None])[0]
        (g,) = torch.autograd.grad(y[0], x)
        return y.detach().numpy(), g.numpy()

    def raw_hess():
        return torch.autograd.functional.hessian(
            lambda z: frozen(z[None])[0, 0], torch.from_numpy(fresh())
        ).numpy()

    calls = {
        "value": (lambda s: s(fresh()), raw_value, lambda: ref.value(fresh())),
        "value+grad": (lambda s: s.value_and_grad(fresh()), raw_vg, lambda: ref.value_jac(fresh())),
        "hessian": (lambda s: s.hess(fresh()), raw_hess, lambda: ref.hess(fresh())),
    }
    for name, (ours, raw, floor) in calls.items():
        fns = {r: partial(ours, s) for r, s in routes.items()}
        fns["users"] = partial(ours, users)
        times = interleaved({**fns, "raw torch": raw, "floor": floor})
        tf = times.pop("floor")
        for who, t in times.items():
            label = who if who != "auto" else f"auto ({routes['auto'].point_route})"
            if who == "users":
                label = f"scalers + domain check, auto ({users.point_route})"
            rows.append([f"{n}-{h}-{h}-1", name, label, t * 1e6, t / tf])
        rows.append([f"{n}-{h}-{h}-1", name, "numpy floor", tf * 1e6, 1.0])
    report = routes["auto"].point_route_report
    return {
        "net": f"{n}-{h}-{h}-1",
        "chosen": routes["auto"].point_route,
        "build_s": report.get("build_s", float("nan")),
        "probe_s": report.get("probe_s", float("nan")),
        "check_s": report.get("check_s", float("nan")),
    }


def normed_mlp(n, h, norm, seed=0):
    """n-h-h-1 with a normalization layer before each tanh (weights moved off 1 and 0)."""
    torch.manual_seed(seed)
    layer = {"LayerNorm": torch.nn.LayerNorm, "RMSNorm": torch.nn.RMSNorm}[norm]
    net = torch.nn.Sequential(
        torch.nn.Linear(n, h), layer(h), torch.nn.Tanh(),
        torch.nn.Linear(h, h), layer(h), torch.nn.Tanh(), torch.nn.Linear(h, 1),
    ).double()  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


class BatchedEnsemble(torch.nn.Module):
    """``members`` n-h-h-1 tanh nets with their weights stacked (members, in, out): the input
    broadcast to every member, one ``baddbmm`` per layer, the members' mean."""

    def __init__(self, n, h, members=5, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        sizes = (n, h, h, 1)
        self.W = torch.nn.ParameterList(
            torch.nn.Parameter(
                torch.randn(members, a, b, generator=g, dtype=torch.float64) / a**0.5
            )
            for a, b in itertools.pairwise(sizes)
        )
        self.b = torch.nn.ParameterList(
            torch.nn.Parameter(0.1 * torch.randn(members, 1, b, generator=g, dtype=torch.float64))
            for b in sizes[1:]
        )

    def forward(self, x):
        z = x.expand(self.W[0].shape[0], *x.shape)
        for i, (W, b) in enumerate(zip(self.W, self.b, strict=True)):
            z = torch.baddbmm(b, z, W)
            z = torch.tanh(z) if i < len(self.W) - 1 else z
        return z.mean(0)


def one_point_other(n, h, kind, rows):
    """Nets beyond a plain MLP (a normalization layer, a batched ensemble): every route per
    call, as a multiple of the torch route (no hand-written floor: users do not hand-write a
    LayerNorm's Hessian)."""
    if kind == "ensemble":
        net, label = BatchedEnsemble(n, h), f"5 x {n}-{h}-{h}-1 baddbmm ensemble"
    else:
        net, label = normed_mlp(n, h, kind), f"{n}-{h}-{h}-1 {kind}"
    fresh = Fresh(n)
    routes = every_route(net, fresh)
    calls = {
        "value+grad": lambda s: s.value_and_grad(fresh()),
        "hessian": lambda s: s.hess(fresh()),
    }
    for name, call in calls.items():
        times = interleaved({r: partial(call, s) for r, s in routes.items()})
        for who, t in times.items():
            chosen = who if who != "auto" else f"auto ({routes['auto'].point_route})"
            rows.append([label, name, chosen, t * 1e6, t / times["torch"]])


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
    tf = torch.func
    kinds = [
        (
            "jacobian",
            sur.jac,
            loop_jac,
            torch.autograd.functional.jacobian,
            tf.vmap(tf.jacrev(scalar)),
        )
    ]
    if m == 1:
        kinds.append(
            ("hessian", sur.hess, loop_hess, torch.autograd.functional.hessian,
             tf.vmap(tf.hessian(scalar)))
        )  # fmt: skip
    for N in sizes:
        X = torch.randn(N, n, dtype=torch.float64, device=device)
        sub = X[: min(N, 300)]
        for name, ours, loop, functional, vmapped in kinds:
            ps = _rate(partial(ours, X), N, sync)
            pl = _rate(partial(loop, frozen, sub), len(sub), sync)
            pf = _rate(partial(_each, functional, scalar, sub), len(sub), sync)
            pv = _rate(partial(_chunked, vmapped, X, sur.chunk_size), N, sync)
            rows.append([f"{n}-{h}-{h}-{m}", device, name, N, ps, pl, pf, pv, ps / pl, ps / pv])


def _chunked(fn, X, chunk):
    return [fn(X[i : i + chunk]) for i in range(0, X.shape[0], chunk)]


def _each(functional, f, points):
    return [functional(f, x) for x in points]


def _verdicts(one: list[list], many: list[list]) -> str:
    """The issue's targets, each judged from the numbers above."""
    ratio = {(r[0], r[1], r[2].split(" ")[0]): r[4] for r in one}
    lines = []
    for net, call, bound in (("2-64-64-1", "value+grad", 1.5), ("2-64-64-1", "hessian", 2.0)):
        got = ratio[(net, call, "auto")]
        lines.append(
            f"- {net} {call}: the auto route costs {got:.2f}x the numpy floor (target <= {bound}x:"
            f" {'met' if got <= bound else 'not met'})."
        )
    for call in ("value+grad", "hessian"):
        net = "10-256-256-1"
        eager = ratio[(net, call, "torch")] / ratio[(net, call, "auto")]
        auto = ratio[(net, call, "auto")]
        lines.append(
            f"- {net} {call}: auto is {1 / eager:.2f}x the eager torch route (target <= 1.2x: "
            f"{'met' if 1 / eager <= 1.2 else 'not met'}) and {auto:.2f}x the floor (stretch "
            f"<= 3x: {'met' if auto <= 3 else 'not met'})."
        )
    for net in sorted({r[0] for r in many}):
        hess = [r for r in many if r[0] == net and r[2] == "hessian" and r[1] == "cpu"]
        if hess:
            lo, hi = min(r[8] for r in hess), max(r[8] for r in hess)
            vm = min(r[9] for r in hess)
            lines.append(
                f"- {net} batched Hessians: {lo:.0f}-{hi:.0f}x the per-sample backward() loop, "
                f"and at least {vm:.2f}x torch.func's vmap(hessian)."
            )
    return "\n".join(lines)


def _other_verdicts(rows: list[list]) -> str:
    lines = []
    for net in dict.fromkeys(r[0] for r in rows):
        for call in ("value+grad", "hessian"):
            auto = next(r for r in rows if r[0] == net and r[1] == call and r[2].startswith("auto"))
            lines.append(
                f"- {net} {call}: auto ({auto[2][6:-1]}) costs {auto[4]:.2f}x the eager torch "
                "route."
            )
    return "\n".join(lines)


def main(quick: bool = False) -> None:
    torch.set_num_threads(1)
    one, builds = [], []
    for n, h in ((2, 64), (10, 256)):
        builds.append(one_point(n, h, one))
    normed = []
    for kind in ("LayerNorm", "RMSNorm", "ensemble"):
        one_point_other(10, 256, kind, normed)
    threads_a = torch.get_num_threads()
    torch.set_num_threads(torch.get_num_interop_threads())
    threads_b = torch.get_num_threads()
    many = []
    sizes = (10**3, 10**4) if quick else (10**3, 10**4, 10**5)
    for n, h, m in ((2, 64, 1), (10, 256, 1)):
        batches(n, h, m, sizes, many, "cpu")
    if torch.cuda.is_available():
        for n, h, m in ((2, 64, 1), (10, 256, 1)):
            batches(n, h, m, (10**4, 10**5, 10**6), many, "cuda")
    body = f"Machine: {machine()}\n\n"
    body += (
        f"(a) One point, microseconds per call, torch threads {threads_a} (numpy in/out, float64,"
        " a fresh point every call; ratio to the hand-written numpy floor). The routes' rows"
        " have identity scalers and no domain, as the floor; the 'scalers + domain check' row is"
        " auto with real input and output scalers and the training-domain check (warn) that a"
        " user's surrogate makes at every call, which the floor does not:\n\n"
    )
    body += table(["net", "call", "route", "us per call", "/ numpy floor"], one)
    body += "\n\nThe auto route's choice and what choosing cost (once per surrogate):\n\n"
    body += table(
        ["net", "chosen", "build s", "probe s", "check s"],
        [[b["net"], b["chosen"], b["build_s"], b["probe_s"], b["check_s"]] for b in builds],
    )
    body += (
        "\n\n(a') One point on nets beyond a plain MLP (a normalization layer before each "
        "activation; a batched ensemble of five members), as (a); ratio to the eager torch "
        "route:\n\n"
    )
    body += table(["net", "call", "route", "us per call", "/ torch route"], normed)
    body += f"\n\n(b) Batches, points per second, torch threads {threads_b}:\n\n"
    body += table(
        [
            "net",
            "device",
            "derivative",
            "N",
            "Surrogate pts/s",
            "backward() loop pts/s",
            "autograd.functional pts/s",
            "torch.func vmap pts/s",
            "speed-up vs loop",
            "speed-up vs vmap",
        ],
        many,
    )
    body += "\n\nTargets, judged from these numbers:\n\n" + _verdicts(one, many)
    body += "\n" + _other_verdicts(normed)
    write_section("bench_derivatives", body)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
