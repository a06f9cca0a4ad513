"""Learn a damped pendulum's vector field and simulate it as a neural ODE with torchdiffeq.

Samples states (theta, omega) and their time derivatives (omega, -sin(theta) - 0.2 omega),
fits a network on normalized data with ``sb.fit``, wraps it with ``sb.ode_rhs`` (normalization
baked in), simulates 256 initial states at once with ``torchdiffeq.odeint``, and compares with
the true ODE solved by ``scipy.integrate.solve_ivp``.

Prints: the median and maximum trajectory error over [0, 5]. With ``png=`` (and matplotlib
installed) it also saves a phase portrait of learned and true trajectories.
Run: ``python examples/neural_ode.py [phase.png]``.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torchdiffeq import odeint

import surrogate_bridge as sb


def field(x: np.ndarray) -> np.ndarray:
    return np.stack([x[..., 1], -np.sin(x[..., 0]) - 0.2 * x[..., 1]], -1)


def main(n_samples: int = 2000, epochs: int = 1500, n_traj: int = 256, png: str | None = None):
    rng = np.random.default_rng(0)
    X = rng.uniform([-2.5, -2.5], [2.5, 2.5], size=(n_samples, 2))
    net = sb.mlp((2, 64, 64, 2), "tanh", seed=0, dtype=torch.float32)
    sur = sb.fit(net, X, field(X), epochs=epochs, seed=0, progress=False, extrapolation="ignore")
    rhs = sb.ode_rhs(sur)

    y0 = rng.uniform([-1.5, -1.0], [1.5, 1.0], size=(n_traj, 2))
    t = np.linspace(0, 5, 51)
    with torch.no_grad():
        learned = odeint(rhs, torch.as_tensor(y0), torch.as_tensor(t), rtol=1e-7, atol=1e-9)
    learned = learned.numpy().transpose(1, 0, 2)  # (n_traj, time, 2)
    true = np.stack(
        [
            solve_ivp(lambda _, y: field(y), (0, 5), y, t_eval=t, rtol=1e-10, atol=1e-12).y.T
            for y in y0
        ]
    )
    err = np.abs(learned - true).max(axis=(1, 2))
    print(
        f"{n_traj} trajectories over [0, 5]: median max-error {np.median(err):.2e}, "
        f"worst {err.max():.2e}"
    )
    if png:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no phase portrait")
        else:
            fig, ax = plt.subplots(figsize=(5, 5))
            for k in range(min(n_traj, 24)):
                ax.plot(*true[k].T, color="0.7", lw=2)
                ax.plot(*learned[k].T, color="C0", lw=1)
            ax.set(xlabel="theta", ylabel="omega", title="true (grey) vs learned (blue)")
            fig.savefig(png, dpi=120, bbox_inches="tight")
            print(f"phase portrait: {png}")
    return float(np.median(err)), float(err.max())


if __name__ == "__main__":
    main(png=sys.argv[1] if len(sys.argv) > 1 else None)
