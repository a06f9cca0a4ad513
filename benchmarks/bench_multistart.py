"""Many starts: ``sb.multistart`` against a loop of ``scipy.optimize.minimize`` from each start.

Problems: Himmelblau in 2-D (four global minima) and a Rastrigin-like separable function in 10-D
(``sum z^2 - 2 cos(2 pi z) + 2``, many local minima), each as an exact surrogate behind scalers
(the model computes the function of physical inputs, so both methods optimize the same function).
For S = 16, 256 and 4096 starts drawn in the box (S = 4096 is timed on the loop's first 256 starts
and scaled: its cost is linear in S), both methods L-BFGS-B with exact gradients and tolerance
``gtol = 1e-5`` (scipy's default): wall time, minima found, and for how many starts the joint
solve ended at the same point as the loop's own solve from that start (to 1e-6) or a better one.

Fairness: float64 everywhere; one torch thread; the loop uses the surrogate's own single-point
callbacks (``minimize(sur, x0, jac=sur.grad)``), warmed up so its single-point route has measured;
caches cleared before each timed run. Run: ``python benchmarks/bench_multistart.py [--quick]``.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from _common import machine, table, write_section
from scipy.optimize import minimize
from torch import nn

import surrogate_bridge as sb


class Exact(nn.Module):
    """f(physical x) from normalized z, its value normalized again."""

    def __init__(self, f, s, c, ys, yc):
        super().__init__()
        self.f = f
        for name, v in dict(s=s, c=c, ys=ys, yc=yc).items():
            self.register_buffer(name, torch.as_tensor(np.asarray(v, dtype=np.float64)))

    def forward(self, z):
        return ((self.f(z * self.c + self.s) - self.ys) / self.yc)[:, None]


def himmelblau(x):
    return (x[:, 0] ** 2 + x[:, 1] - 11) ** 2 + (x[:, 0] + x[:, 1] ** 2 - 7) ** 2


def rastrigin(x):
    return (x**2 - 2 * torch.cos(2 * torch.pi * x) + 2).sum(-1)


def problem(f, n, half):
    s, c = np.full(n, 0.1), np.full(n, half / 2)
    sur = sb.Surrogate(Exact(f, s, c, [5.0], [20.0]), sb.Affine(s, c), sb.Affine([5.0], [20.0]),
                       domain=(-half * np.ones(n), half * np.ones(n)))  # fmt: skip
    return sur


def loop(sur, starts, bounds):
    out = []
    for x0 in starts:
        r = minimize(sur, x0, jac=sur.grad, method="L-BFGS-B", bounds=bounds)
        out.append((r.x, r.fun))
    return out


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
        for S in sizes:
            starts = np.random.default_rng(S).uniform(-half, half, (S, n))
            sur.cache_clear()
            t0 = time.perf_counter()
            res = sb.multistart(sur, starts, bounds=bounds)
            t_joint = time.perf_counter() - t0
            timed = starts[: min(S, 256)]
            sur.cache_clear()
            t0 = time.perf_counter()
            ref = loop(sur, timed, bounds)
            t_loop = (time.perf_counter() - t0) * S / len(timed)
            same = sum(
                np.linalg.norm(res.xs[i] - x) <= 1e-6 or res.funs[i] <= fx + 1e-9
                for i, (x, fx) in enumerate(ref)
            )
            rows.append([name, S, t_joint * 1e3, t_loop * 1e3, t_loop / t_joint,
                         len(res.minima), f"{same}/{len(ref)}", res.nfev])  # fmt: skip
            if name.startswith("Himmelblau") and S in (256, 4096):
                goal = 10 if S == 256 else 50
                ratio = t_loop / t_joint
                verdicts.append(
                    f"- {name}, {S} starts: multistart is {ratio:.1f}x faster than the scipy "
                    f"loop (target >= {goal}x: {'met' if ratio >= goal else 'not met'}); "
                    f"{same} of {len(ref)} compared starts ended at the loop's point or better."
                )
    body = f"Machine: {machine()}\n\n"
    body += table(
        ["problem", "starts", "multistart ms", "scipy loop ms", "speed-up", "minima found",
         "same or better than loop", "batched evaluations"],
        rows,
    )  # fmt: skip
    body += "\n\nTargets, judged from these numbers:\n\n" + "\n".join(verdicts)
    write_section("bench_multistart", body)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
