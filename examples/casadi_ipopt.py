"""Optimal control with a learned dynamics model: multiple shooting in CasADi, solved by IPOPT.

Learns the discrete-time dynamics x+ = f(x, u) of a damped pendulum with torque (RK4 over
dt = 0.1) from random samples with ``sb.fit``, hands it to CasADi with
``sb.casadi_function``, and steers the pendulum from rest at 1 rad to the origin over 20 steps:

    min  sum_k |x_k|^2 + 0.1 u_k^2   s.t.  x_{k+1} = f(x_k, u_k),  x_0 given,  |u_k| <= 1.

The 20 shooting constraints are one ``F.map(20)`` call. IPOPT uses exact Hessians, in symbolic
mode (native CasADi expressions, no Python in the loop) and in callback mode (torch in the
loop). The optimal controls are then applied to the *true* pendulum.

Prints: per mode, IPOPT status, iterations, solve time, cost, and the gap between the planned
and the true final state.
Run: ``python examples/casadi_ipopt.py``.
"""

from __future__ import annotations

import time

import casadi as ca
import numpy as np
import torch

import surrogate_bridge as sb

DT, STEPS = 0.1, 20


def true_step(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """RK4 step of theta' = omega, omega' = -sin(theta) - 0.1 omega + u; x (..., 2), u (...,)."""

    def f(s):
        return np.stack([s[..., 1], -np.sin(s[..., 0]) - 0.1 * s[..., 1] + u], -1)

    k1 = f(x)
    k2 = f(x + DT / 2 * k1)
    k3 = f(x + DT / 2 * k2)
    k4 = f(x + DT * k3)
    return x + DT / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def learn(n_samples: int, epochs: int) -> sb.Surrogate:
    rng = np.random.default_rng(0)
    XU = rng.uniform([-1.5, -2.0, -1.0], [1.5, 2.0, 1.0], size=(n_samples, 3))
    Y = true_step(XU[:, :2], XU[:, 2])
    net = sb.mlp((3, 32, 32, 2), "tanh", seed=0, dtype=torch.float32)
    return sb.fit(net, XU, Y, epochs=epochs, seed=0, progress=False, extrapolation="ignore")


def solve(sur: sb.Surrogate, mode: str) -> dict:
    F = sb.casadi_function(sur, name="step", mode=mode)
    X = ca.MX.sym("X", 2, STEPS + 1)
    U = ca.MX.sym("U", 1, STEPS)
    x0 = np.array([1.0, 0.0])
    shoot = X[:, 1:] - F.map(STEPS)(ca.vertcat(X[:, :-1], U))  # one batched call per evaluation
    cost = ca.sumsqr(X) + 0.1 * ca.sumsqr(U)
    nlp = {"x": ca.veccat(X, U), "f": cost, "g": ca.veccat(X[:, 0] - x0, shoot)}
    b = sur.bounds()
    lbx = np.concatenate([np.tile(b.lb[:2], STEPS + 1), np.full(STEPS, b.lb[2])])
    ubx = np.concatenate([np.tile(b.ub[:2], STEPS + 1), np.full(STEPS, b.ub[2])])
    S = ca.nlpsol(
        "S", "ipopt", nlp, {"ipopt.print_level": 0, "print_time": False, "ipopt.sb": "yes"}
    )
    t0 = time.perf_counter()
    r = S(x0=0, lbx=lbx, ubx=ubx, lbg=0, ubg=0)
    seconds = time.perf_counter() - t0
    z = np.array(r["x"]).ravel()
    Xo, Uo = z[: 2 * (STEPS + 1)].reshape(STEPS + 1, 2), z[2 * (STEPS + 1) :]
    xt = x0
    for u in Uo:  # the plan applied to the true pendulum
        xt = true_step(xt, u)
    return dict(
        mode=mode,
        status=S.stats()["return_status"],
        iters=S.stats()["iter_count"],
        seconds=seconds,
        cost=float(r["f"]),
        planned=Xo[-1],
        gap=float(np.abs(xt - Xo[-1]).max()),
    )


def main(n_samples: int = 3000, epochs: int = 1500) -> list[dict]:
    sur = learn(n_samples, epochs)
    rows = [solve(sur, mode) for mode in ("symbolic", "callback")]
    print(f"{'mode':<10}{'status':<18}{'iters':>6}{'time s':>8}{'cost':>9}{'|true - plan|':>15}")
    for r in rows:
        print(
            f"{r['mode']:<10}{r['status']:<18}{r['iters']:>6}{r['seconds']:>8.3f}"
            f"{r['cost']:>9.4f}{r['gap']:>15.2e}"
        )
    return rows


if __name__ == "__main__":
    main()
