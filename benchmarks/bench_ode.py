"""Neural ODE simulation: the bridge's right-hand side against the raw model, and Radau Jacobians.

(a) ``torchdiffeq.odeint`` with fixed-step RK4 (so every variant makes the same number of
    right-hand-side evaluations) on a 2-64-64-2 tanh vector field with input and output scalers,
    batch sizes 1, 64, 1024, 16384 (and 65536 on a GPU): wall time and state evaluations per
    second through ``sb.ode_rhs`` against the raw model with the normalization written by hand
    in its forward. Target: the bridge adds under 10%.
(b) ``solve_ivp(Radau)`` on a stiff nonlinear 10-D surrogate, dx/dt = A x - x^3 (A with
    eigenvalues -1 .. -1000, behind scalers): finite-difference Jacobian (pointwise and
    ``vectorized=True``) against the exact Jacobian from ``sb.scipy_ode``; the error is against
    a tight numpy solve.

Fairness: float64; the same weights; one warm-up run; median of 5. Run:
``python benchmarks/bench_ode.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from _common import machine, table, timeit, write_section
from scipy.integrate import solve_ivp
from torchdiffeq import odeint

import surrogate_bridge as sb


class HandRHS(torch.nn.Module):
    """What users write without the bridge: the normalization by hand around the network."""

    def __init__(self, net, ins: sb.Affine, outs: sb.Affine):
        super().__init__()
        self.net = net
        for name, v in (("s", ins.shift), ("c", ins.scale), ("ys", outs.shift), ("yc", outs.scale)):
            self.register_buffer(name, torch.as_tensor(v))

    def forward(self, t, y):
        return self.net((y - self.s) / self.c) * self.yc + self.ys


def field_rows(device, sizes, rows):
    net = sb.mlp((2, 64, 64, 2), "tanh", seed=0).to(device)
    ins, outs = sb.Affine([0.1, -0.2], [2.0, 1.5]), sb.Affine([0.0, 0.1], [1.3, 0.7])
    rhs = sb.ode_rhs(sb.Surrogate(net, ins, outs, device=device, extrapolation="ignore"))
    hand = HandRHS(net, ins, outs).to(device)
    t = torch.linspace(0, 1, 2, dtype=torch.float64, device=device)
    steps = 50
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for B in sizes:
        y0 = torch.randn(B, 2, dtype=torch.float64, device=device)
        times = {}
        for name, f in (("bridge", rhs), ("hand-written", hand)):

            def run(f=f, y0=y0):
                with torch.no_grad():
                    odeint(f, y0, t, method="rk4", options={"step_size": 1 / steps})
                sync()

            times[name] = timeit(run, min_time=0.3, repeats=5, warmup=1)
        evals = 4 * steps * B  # state evaluations per solve
        rows.append(
            [
                device,
                B,
                times["bridge"] * 1e3,
                times["hand-written"] * 1e3,
                evals / times["bridge"],
                evals / times["hand-written"],
                f"{100 * (times['bridge'] / times['hand-written'] - 1):+.1f}%",
            ]
        )


class StiffCubic(torch.nn.Module):
    def __init__(self, A, ins, outs):
        super().__init__()
        self.register_buffer("A", torch.as_tensor(A))
        self.ins, self.outs = ins, outs

    def forward(self, z):
        x = z * torch.as_tensor(self.ins.scale) + torch.as_tensor(self.ins.shift)
        f = x @ self.A.T - x**3
        return (f - torch.as_tensor(self.outs.shift)) / torch.as_tensor(self.outs.scale)


def radau_rows(rows):
    n = 10
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    A = -Q @ np.diag(np.logspace(0, 3, n)) @ Q.T
    ins, outs = (
        sb.Affine(rng.normal(size=n), rng.uniform(0.5, 2, n)),
        sb.Affine(rng.normal(size=n), rng.uniform(0.5, 2, n)),
    )
    sur = sb.Surrogate(StiffCubic(A, ins, outs), ins, outs, extrapolation="ignore")
    ode = sb.scipy_ode(sur)
    y0 = np.ones(n)
    pts = iter(rng.normal(size=(100000, n)))
    t_val = timeit(lambda: sur(next(pts)), min_time=0.2)
    t_jac = timeit(lambda: sur.jac(next(pts)), min_time=0.2)
    ref = solve_ivp(
        lambda _, y: A @ y - y**3,
        (0, 10),
        y0,
        method="Radau",
        rtol=1e-12,
        atol=1e-14,
        jac=lambda _, y: A - np.diag(3 * y**2),
    ).y[:, -1]
    for label, kw in (
        ("finite differences", {}),
        ("finite differences, vectorized=True", {"vectorized": True}),
        ("exact Jacobian", {"jac": ode.jac}),
    ):

        def run(kw=kw):
            return solve_ivp(ode.fun, (0, 10), y0, method="Radau", rtol=1e-8, atol=1e-10, **kw)

        sol = run()
        err = np.abs(sol.y[:, -1] - ref).max()
        rows.append([label, sol.nfev, sol.njev, timeit(run, min_time=0.3, repeats=5) * 1e3, err])
    return t_val, t_jac


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    field_rows("cpu", (1, 64, 1024, 16384), rows)
    if torch.cuda.is_available():
        field_rows("cuda", (1, 64, 1024, 16384, 65536), rows)
    rrows = []
    t_val, t_jac = radau_rows(rrows)
    body = f"Machine: {machine()}\n\n(a) odeint, RK4, 50 steps (200 evaluations of the field):\n\n"
    body += table(
        [
            "device",
            "batch",
            "bridge ms",
            "hand-written ms",
            "bridge states/s",
            "hand-written states/s",
            "bridge overhead",
        ],
        rows,
    )
    ratios = [r[2] / r[3] for r in rows]
    body += (
        f"\n\nThe bridge takes {min(ratios):.2f}x to {max(ratios):.2f}x the hand-written "
        "field's time over these batches.\n\n"
    )
    body += (
        "(b) solve_ivp(Radau), stiff dx/dt = A x - x^3 in 10-D as a surrogate, t in [0, 10]:\n\n"
    )
    body += table(["Jacobian", "nfev", "njev", "wall ms", "error vs reference"], rrows)
    runs = {r[0]: r for r in rrows}
    fd, ex = runs["finite differences"], runs["exact Jacobian"]
    body += (
        f"\n\nOne point here: value {t_val * 1e6:.0f} us, exact Jacobian {t_jac * 1e6:.0f} us "
        f"({t_jac / t_val:.1f} values; forward differences cost 10). With the exact Jacobian, "
        f"Radau took {ex[3] / fd[3]:.2f}x the wall time of finite differences, "
        f"{ex[2]} Jacobian evaluations against {fd[2]}, and ended {ex[4]:.1e} from the "
        f"reference against {fd[4]:.1e}."
    )
    write_section("bench_ode", body)


if __name__ == "__main__":
    main()
