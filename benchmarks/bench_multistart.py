"""Many starts: ``sb.multistart`` against a loop of ``scipy.optimize.minimize`` from each start.

Problems: Himmelblau in 2-D (four global minima) and a Rastrigin-like separable function in 10-D
(``sum z^2 - 2 cos(2 pi z) + 2``, many local minima), each as an exact surrogate behind scalers
(the model computes the function of physical inputs, so both methods optimize the same function).
For S = 16, 256 and 4096 starts drawn in the box (S = 4096 is timed on the loop's first 256 starts
and scaled: its cost is linear in S): ``sb.multistart`` with L-BFGS-B (scipy's own per start, in
lock step: one batched call per round of requests) and with the batched projected Newton;
BoTorch's ``gen_candidates_scipy`` where it installs (its batched port of scipy's L-BFGS-B, fed
through the surrogate's torch function); and the scipy loop, L-BFGS-B with exact gradients. All
to ``gtol = 1e-5`` (scipy's default): wall time, minima found, and for how many starts the
batched solve ended at the loop's own end point from that start (to 1e-6) or a better one.

Fairness: float64 everywhere; one torch thread; the loop uses the surrogate's own single-point
callbacks (``minimize(sur, x0, jac=sur.grad)``), warmed up so its single-point route has measured;
caches cleared before each timed run. Run: ``python benchmarks/bench_multistart.py [--quick]``.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from _common import Behind, machine, table, write_section
from scipy.optimize import minimize

import surrogate_bridge as sb


def himmelblau(x):
    return (x[:, 0] ** 2 + x[:, 1] - 11) ** 2 + (x[:, 0] + x[:, 1] ** 2 - 7) ** 2


def rastrigin(x):
    return (x**2 - 2 * torch.cos(2 * torch.pi * x) + 2).sum(-1)


def problem(f, n, half, device="cpu"):
    s, c = np.full(n, 0.1), np.full(n, half / 2)
    return sb.Surrogate(Behind(f, s, c, [5.0], [20.0]), sb.Affine(s, c), sb.Affine([5.0], [20.0]),
                        domain=(-half * np.ones(n), half * np.ones(n)), device=device)  # fmt: skip


def loop(sur, starts, bounds):
    out = []
    for x0 in starts:
        r = minimize(sur, x0, jac=sur.grad, method="L-BFGS-B", bounds=bounds)
        out.append((r.x, r.fun))
    return out


def botorch_joint(sur, starts, bounds):
    """BoTorch's gen_candidates_scipy (it maximizes, so it is handed -f), through the
    surrogate's physical torch function."""
    try:
        from botorch.generation.gen import gen_candidates_scipy
    except ImportError:
        return None
    lb, ub = (torch.as_tensor(b, dtype=torch.float64) for b in np.array(bounds).T)
    fn = sur.function
    X0 = torch.as_tensor(starts, dtype=torch.float64)[:, None, :]
    X, _ = gen_candidates_scipy(X0, lambda X: -fn(X[:, 0, :])[:, 0], lb, ub,
                                options={"maxiter": 1000})  # fmt: skip
    return X[:, 0, :].detach().numpy()


def agreement(xs, funs, ref):
    """Starts that ended at the loop's own end point from the same start (to 1e-6) or lower."""
    return sum(
        np.linalg.norm(xs[i] - x) <= 1e-6 or funs[i] <= fx + 1e-9 for i, (x, fx) in enumerate(ref)
    )


def main(quick: bool = False) -> None:
    torch.set_num_threads(1)
    rows, verdicts = [], []
    sizes = (16, 256) if quick else (16, 256, 4096)
    for name, f, n, half in (("Himmelblau 2-D", himmelblau, 2, 5.0),
                             ("Rastrigin 10-D", rastrigin, 10, 3.0)):  # fmt: skip
        sur = problem(f, n, half)
        bounds = list(zip(*sur.domain, strict=True))
        # warm-up from distinct starts: the single-point route measures (after 32 points) here,
        # not inside a timed loop
        loop(sur, np.random.default_rng(0).uniform(-half, half, (8, n)), bounds)
        assert "us" in sur.point_route_report, sur.point_route_report
        sb.multistart(sur, np.random.default_rng(1).uniform(-half, half, (8, n)), bounds=bounds,
                      method="newton")  # fmt: skip
        for S in sizes:
            starts = np.random.default_rng(S).uniform(-half, half, (S, n))
            timed = {}
            results = {}
            for method in ("L-BFGS-B", "newton"):
                sur.cache_clear()
                t0 = time.perf_counter()
                results[method] = sb.multistart(sur, starts, bounds=bounds, method=method)
                timed[method] = time.perf_counter() - t0
            t0 = time.perf_counter()
            X_bo = botorch_joint(sur, starts, bounds)
            t_bo = time.perf_counter() - t0 if X_bo is not None else None
            head = starts[: min(S, 256)]
            sur.cache_clear()
            t0 = time.perf_counter()
            ref = loop(sur, head, bounds)
            t_loop = (time.perf_counter() - t0) * S / len(head)
            lb, nt = results["L-BFGS-B"], results["newton"]
            row = [name, S, t_loop * 1e3]
            for method in ("L-BFGS-B", "newton"):
                r = results[method]
                row += [timed[method] * 1e3, t_loop / timed[method], len(r.minima),
                        f"{agreement(r.xs, r.funs, ref)}/{len(ref)}"]  # fmt: skip
            if X_bo is not None:
                bo_funs = np.asarray(sur(X_bo))
                row += [t_bo * 1e3, t_loop / t_bo, f"{agreement(X_bo, bo_funs, ref)}/{len(ref)}"]
            else:
                row += ["not installed"] * 3
            rows.append(row)
            if name.startswith("Himmelblau") and S in (256, 4096):
                goal = 10 if S == 256 else 50
                best = max(("L-BFGS-B", "newton"), key=lambda m: t_loop / timed[m])
                ratio = t_loop / timed[best]
                met = "met" if ratio >= goal else "not met"
                verdicts.append(
                    f"- {name}, {S} starts: the faster route ({best}) is {ratio:.1f}x faster "
                    f"than the scipy loop (target >= {goal}x: {met}); L-BFGS-B "
                    f"{t_loop / timed['L-BFGS-B']:.1f}x, newton "
                    f"{t_loop / timed['newton']:.1f}x; newton took at most {nt.nit} iterations "
                    f"and {nt.nfev} batched passes, L-BFGS-B {lb.nit} iterations and "
                    f"{lb.nfev} calls."
                )
    body = f"Machine: {machine()}\n\n"
    body += (
        "Scipy loop timed on the first 256 starts and scaled to S. 'same/better': starts that "
        "ended at the loop's own end point from that start (to 1e-6) or at a lower value.\n\n"
    )
    body += table(
        ["problem", "starts", "scipy loop ms",
         "lock-step L-BFGS-B ms", "speed-up", "minima", "same/better",
         "newton ms", "speed-up", "minima", "same/better",
         "BoTorch ms", "speed-up", "same/better"],
        rows,
    )  # fmt: skip
    body += "\n\nTargets, judged from these numbers:\n\n" + "\n".join(verdicts)
    write_section("bench_multistart", body)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
