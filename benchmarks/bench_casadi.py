"""CasADi: the surrogate as a casadi.Function, against the same network written by hand.

For a 2-64-64-1 and a 10-256-256-1 tanh MLP (float64, with input and output scalers): time per
call of F, of its Jacobian and of its Hessian, and a full IPOPT solve of
``min F(x) + 0.5 |x|^2`` over the box [-1, 1]^n (time, iterations, time per iteration), for
``casadi_function`` in symbolic and callback mode, the network written by hand as MX with dense
matrix products (the floor), and the same as a scalar SX expansion. torch2casadi is run when it
imports and works with this CasADi; l4casadi when it installs (both are reported either way).

A radial basis layer ``exp(-|x - c_k|^2)`` with K = 50, 500 and 3000 centres in 10-D (a rank-3
tensor of differences, summed over the coordinates) is timed the same way against the layer
written by hand as MX, with the symbolic translation's build time.

A third table solves a 6-node problem (the sum of F over six points coupled by
0.5 |x_{k+1} - x_k|^2, plus 0.5 |x|^2, on [-1, 1]^(6n)) for a 2-64-64-1 and a 4-512-512-1 net in
every mode: symbolic, callback, callback + ``F.map(6)`` (one batched torch call for the six
nodes), and ``mode="auto"`` (which measures and picks one of the first two).

Fairness: every variant is called the same way (a numpy point from Python, so each call pays
CasADi's Python call overhead once); derivative functions are built once before timing; the
calls of F, J and H of every variant are timed in alternating rounds (medians of 9), so a
shared machine's drift favours none; IPOPT with exact Hessians, default tolerance, quiet, after
one warm-up solve; medians of 5 rounds. The surrogate's cache is cleared before every timed
solve (otherwise a repeated identical solve is answered by it); builds are timed after one
warm-up build (torch.export's first use in a process costs seconds of imports). Run:
``python benchmarks/bench_casadi.py``.
"""

from __future__ import annotations

import time
from itertools import cycle

import casadi as ca
import numpy as np
import torch
from _common import interleaved, machine, table, write_section

import surrogate_bridge as sb


def make(n, h, seed=0):
    net = sb.mlp((n, h, h, 1), "tanh", seed=seed)
    rng = np.random.default_rng(seed)
    ins = sb.Affine(rng.normal(size=n), rng.uniform(0.5, 2.0, n))
    outs = sb.Affine([1.0], [3.0])
    return sb.Surrogate(net, ins, outs, extrapolation="ignore"), net, ins, outs


def by_hand(kind, net, ins, outs, n):
    """The same network written directly in CasADi (x a column, W @ z products)."""
    sym = ca.MX if kind == "MX" else ca.SX
    x = sym.sym("x", n)
    z = (x - ca.DM(ins.shift)) / ca.DM(ins.scale)
    layers = [m for m in net if isinstance(m, torch.nn.Linear)]
    for i, lin in enumerate(layers):
        W, b = (ca.DM(t.detach().numpy()) for t in (lin.weight, lin.bias))
        z = ca.mtimes(W, z) + b
        if i < len(layers) - 1:
            z = ca.tanh(z)
    return ca.Function(f"hand_{kind}", [x], [z * outs.scale[0] + outs.shift[0]])


def torch2casadi_function(net, sur, n, tmp):
    """torch2casadi's export of the physical function, if it works here (else a reason)."""
    try:
        from torch2casadi import export
    except ImportError as err:
        return None, f"not installed ({err})"
    try:
        path = export(
            sur.function.cpu(), torch.zeros(1, n, dtype=torch.float64), tmp, overwrite=True
        )
        return ca.GraphBuilder(str(path)).create("t2c"), "ok"
    except Exception as err:  # report whatever stops it, verbatim
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"


def partial(f, points):
    """A fresh point per call (the callback's cache never answers)."""
    return lambda: f(next(points))


def derivative_functions(F, n):
    x = ca.MX.sym("x", n)
    y = F(x)
    J = ca.Function("J", [x], [ca.jacobian(y, x)])
    H = ca.Function("H", [x], [ca.hessian(y, x)[0]])
    return J, H


QUIET = {"ipopt.print_level": 0, "print_time": False, "ipopt.sb": "yes"}


def _solve(S, args, clear):
    S(**args)  # warm-up
    times = []
    for _ in range(5):
        clear()  # the cache must not answer a repeated identical solve
        t0 = time.perf_counter()
        S(**args)
        times.append(time.perf_counter() - t0)
    st = S.stats()
    return float(np.median(times)), st["iter_count"], st["return_status"]


def ipopt(F, n, clear=lambda: None):
    x = ca.MX.sym("x", n)
    S = ca.nlpsol("S", "ipopt", {"x": x, "f": F(x) + 0.5 * ca.sumsqr(x)}, QUIET)
    return _solve(S, dict(x0=np.full(n, 0.5), lbx=-np.ones(n), ubx=np.ones(n)), clear)


def six_nodes(F, n, mapped, clear):
    """min sum_k F(x_k) + 0.5 sum_k |x_{k+1} - x_k|^2 + 0.5 |x|^2 over six nodes."""
    X = ca.MX.sym("X", n, 6)
    f = ca.sum2(F.map(6)(X)) if mapped else sum(F(X[:, k]) for k in range(6))
    f += 0.5 * ca.sumsqr(X[:, 1:] - X[:, :-1]) + 0.5 * ca.sumsqr(X)
    S = ca.nlpsol("S6", "ipopt", {"x": ca.vec(X), "f": f}, QUIET)
    x0 = np.tile(np.linspace(0.5, -0.5, 6), n)
    return _solve(S, dict(x0=x0, lbx=-np.ones(6 * n), ubx=np.ones(6 * n)), clear)


def multi_node(rows):
    verdicts = []
    for n, h in ((2, 64), (4, 512)):
        sur, *_ = make(n, h)
        label = f"{n}-{h}-{h}-1"
        auto = sb.casadi_function(sur, "fa")
        variants = {
            "symbolic": (sb.casadi_function(sur, "fs", "symbolic"), False),
            "callback": (sb.casadi_function(sur, "fc", "callback"), False),
            "callback + map(6)": (sb.casadi_function(sur, "fm", "callback"), True),
            f"auto (chose {auto.mode})": (auto, False),
        }
        times = {}
        for name, (F, mapped) in variants.items():
            t, iters, status = six_nodes(F, n, mapped, sur.cache_clear)
            times[name] = t
            rows.append([label, name, status, iters, t * 1e3])
        t_auto = times[f"auto (chose {auto.mode})"]
        better = min(times["symbolic"], times["callback"])
        best = min(v for k, v in times.items() if not k.startswith("auto"))
        ratio = t_auto / better
        verdicts.append(
            f"- {label}: the default mode (auto, which chose {auto.mode}) takes {ratio:.2f}x the "
            f"better of symbolic and callback (target <= 1.3x: "
            f"{'met' if ratio <= 1.3 else 'not met'}) and {t_auto / best:.2f}x the best row, "
            "callback + map included (map is the NLP's structure: the user writes F.map(N))."
        )
    return verdicts


class RBF(torch.nn.Module):
    def __init__(self, n, k):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.centres = torch.nn.Parameter(torch.randn(k, n, generator=gen, dtype=torch.float64))
        self.weight = torch.nn.Parameter(torch.randn(k, 1, generator=gen, dtype=torch.float64))

    def forward(self, x):
        return torch.exp(-((x[:, None, :] - self.centres) ** 2).sum(-1)) @ self.weight


def rbf_layers(rows):
    """Radial basis layers: symbolic translation and callback against the layer by hand."""
    verdicts = []
    for k in (50, 500, 3000):
        n = 10
        model = RBF(n, k)
        sur = sb.Surrogate(model, n_in=n)
        C, w = model.centres.detach().numpy(), model.weight.detach().numpy()
        x = ca.MX.sym("x", n)
        diff = ca.repmat(x.T, k, 1) - ca.DM(C)
        hand = ca.Function("hand", [x], [ca.mtimes(ca.DM(w).T, ca.exp(-ca.sum2(diff**2)))])
        t0 = time.perf_counter()
        symbolic = sb.casadi_function(sur, "fs", "symbolic")
        t_build = time.perf_counter() - t0
        variants = {"hand MX (floor)": hand, "symbolic": symbolic,
                    "callback": sb.casadi_function(sur, "fc", "callback")}  # fmt: skip
        pts = np.random.default_rng(0).uniform(-1, 1, (4096, n)) * 0.5
        calls = {}
        for name, F in variants.items():
            J, H = derivative_functions(F, n)
            for kind, f in zip("FJH", (F, J, H), strict=True):
                calls[(name, kind)] = partial(f, cycle(pts))
        timed = interleaved(calls, min_time=0.05, repeats=9)
        floor = [timed[("hand MX (floor)", kind)] for kind in "FJH"]
        for name in variants:
            per = [timed[(name, kind)] for kind in "FJH"]
            build = f"{t_build:.3g}" if name == "symbolic" else ""
            rows.append([f"{n}-D, {k} centres", name, build, *(p * 1e6 for p in per),
                         *(f"{a / b:.2f}" for a, b in zip(per, floor, strict=True))])  # fmt: skip
        worst = max(timed[("symbolic", kind)] / f for kind, f in zip("FJH", floor, strict=True))
        verdicts.append(
            f"- RBF with {k} centres: symbolic costs at most {worst:.2f}x the hand-written MX "
            f"over F, J and H; its translation took {t_build:.3g} s."
        )
    return verdicts


def main() -> None:
    torch.set_num_threads(1)
    make(2, 8)[0].export(one_point=True)  # warm torch.export up: its first use imports for seconds
    rows, solves, notes = [], [], []
    for n, h in ((2, 64), (10, 256)):
        sur, net, ins, outs = make(n, h)
        label = f"{n}-{h}-{h}-1"
        t0 = time.perf_counter()
        variants = {"hand MX (floor)": by_hand("MX", net, ins, outs, n)}
        build = {"hand MX (floor)": time.perf_counter() - t0}
        for name, fn, args in (
            ("symbolic", sb.casadi_function, (sur, "f", "symbolic")),
            ("callback", sb.casadi_function, (sur, "f", "callback")),
            ("hand SX", by_hand, ("SX", net, ins, outs, n)),
        ):
            t0 = time.perf_counter()
            variants[name] = fn(*args)
            build[name] = time.perf_counter() - t0
        t2c, why = torch2casadi_function(net, sur, n, f"/tmp/t2c_{label}")
        notes.append(f"torch2casadi on {label}: {why}")
        if t2c is not None:
            variants["torch2casadi"] = t2c
        pts = np.random.default_rng(0).uniform(-1, 1, (4096, n))
        ref = sur.hess(pts[0])
        calls, errs = {}, {}
        for name, F in variants.items():
            t0 = time.perf_counter()
            J, H = derivative_functions(F, n)
            build[name] += time.perf_counter() - t0
            errs[name] = float(np.abs(np.array(H(pts[0])) - ref).max())
            for kind, f in zip("FJH", (F, J, H), strict=True):
                calls[(name, kind)] = partial(f, cycle(pts))
        timed = interleaved(calls, min_time=0.05, repeats=9)  # alternating: drift hits all
        times = {}
        for name, F in variants.items():
            per = times[name] = [timed[(name, k)] for k in "FJH"]
            rows.append([label, name, build[name], *(p * 1e6 for p in per), errs[name]])
            t_solve, iters, status = ipopt(F, n, sur.cache_clear)
            per_iter = t_solve / max(iters, 1) * 1e3
            solves.append([label, name, status, iters, t_solve * 1e3, per_iter])
        floor = times["hand MX (floor)"]
        for r in rows[-len(variants) :]:
            r.extend(f"{a / b:.2f}" for a, b in zip(times[r[1]], floor, strict=True))
    body = f"Machine: {machine()}\n\n"
    body += table(
        [
            "net",
            "variant",
            "build s (F, J, H)",
            "F us",
            "Jacobian us",
            "Hessian us",
            "Hessian err vs torch",
            "F / floor",
            "J / floor",
            "H / floor",
        ],
        rows,
    )
    body += "\n\nIPOPT, min F(x) + 0.5|x|^2 on [-1, 1]^n, exact Hessian, default tol:\n\n"
    body += table(["net", "variant", "status", "iterations", "solve ms", "ms / iteration"], solves)
    rbf_rows = []
    rbf_verdicts = rbf_layers(rbf_rows)
    body += "\n\nRadial basis layers (a fresh point per call; medians of 9 alternating rounds):\n\n"
    body += table(["layer", "variant", "build s", "F us", "Jacobian us", "Hessian us",
                   "F / floor", "J / floor", "H / floor"], rbf_rows)  # fmt: skip
    six = []
    verdicts = multi_node(six) + rbf_verdicts
    body += "\n\nIPOPT on the 6-node problem (cache cleared before every timed solve):\n\n"
    body += table(["net", "mode", "status", "iterations", "solve ms"], six)
    body += "\n\n" + "\n".join(f"- {s}" for s in notes)
    body += (
        "\n- l4casadi: not run. PyPI has only its source distribution (2.0.0); `pip install "
        "l4casadi` fails here in its build step (it needs torch and scikit-build in the build "
        "environment and compiles a libtorch C++ library)."
    )
    body += "\n\nTargets, judged from these numbers:\n\n" + "\n".join(verdicts)
    for r in rows:
        if r[1] == "symbolic":
            worst = max(float(v) for v in r[-3:])
            body += (
                f"\n- {r[0]}: symbolic mode costs at most {worst:.2f}x the hand-written MX over "
                f"F, J and H (target <= 1.3x: {'met' if worst <= 1.3 else 'not met'})."
            )
    write_section("bench_casadi", body)


if __name__ == "__main__":
    main()
