"""Region of attraction of a learned Lyapunov function, checked by falsification and simulation.

The reversed Van der Pol oscillator ``x1' = -x2, x2' = x1 - (1 - x1^2) x2`` has a stable origin
whose region of attraction is bounded by an unstable limit cycle. A Lyapunov function is learned
from *gradient samples only* (``sb.fit(..., dydx=...)``: here the gradients 2 P x of the quadratic
V of the linearization, with V(0) = 0 as anchor), then:

1. ``sb.lyapunov.falsify`` searches the whole box for points where V fails (there are many: V is
   only a local Lyapunov function);
2. ``sb.lyapunov.region_of_attraction`` finds the largest sublevel set {V <= c} in the box with no
   counterexample, and the point that limits it;
3. points drawn inside the region are simulated with torchdiffeq: every one must converge;
4. ``sb.lyapunov.certify`` proves the conditions on 95% of the level (outside a small ball) by
   interval bounds of the exact derivatives, box by box.

Prints the level against the exact quadratic V's, and, given a file name, plots the region, the
counterexamples and trajectories. Run: ``python examples/lyapunov_roa.py [out.png]`` (a few
seconds on a laptop CPU).
"""

from __future__ import annotations

import sys

import numpy as np
import scipy.linalg
import torch

import surrogate_bridge as sb

BOX = [(-2.5, 2.5), (-3.5, 3.5)]
A = np.array([[0.0, -1.0], [1.0, -1.0]])  # the linearization at the origin
P = scipy.linalg.solve_continuous_lyapunov(A.T, -np.eye(2))  # A^T P + P A = -I


class VanDerPol(torch.nn.Module):
    """Reversed Van der Pol, batched: (N, 2) -> (N, 2)."""

    def forward(self, x):
        return torch.stack([-x[:, 1], x[:, 0] - (1 - x[:, 0] ** 2) * x[:, 1]], -1)


def main(n_samples: int = 800, epochs: int = 2000, n_sim: int = 200, png: str | None = None):
    rng = np.random.default_rng(0)
    lb, ub = np.array(BOX).T
    X = rng.uniform(lb, ub, (n_samples, 2))
    V = sb.fit(sb.mlp((2, 32, 32, 1), "tanh", seed=0), X, dydx=2 * X @ P, anchor=([0, 0], [0]),
               epochs=epochs, lr=3e-3, seed=0, progress=False, domain=(lb, ub))  # fmt: skip
    f = sb.Surrogate(VanDerPol(), n_in=2)

    box = sb.lyapunov.falsify(V, f, BOX, seed=0)
    print(f"whole box: {box.n_violations} counterexamples; worst decrease margin "
          f"{box.worst['decrease']:.3g} at {np.round(box.worst_x['decrease'], 3)}")  # fmt: skip
    roa = sb.lyapunov.region_of_attraction(V, f, BOX, seed=0, simulate=n_sim)
    Pt = torch.as_tensor(P)
    exact = sb.Surrogate(lambda x: ((x @ Pt) * x).sum(-1), n_in=2)
    ref = sb.lyapunov.region_of_attraction(exact, f, BOX, seed=0)
    print(f"learned V: level {roa.level:.4f} (limit: {roa.limit} at "
          f"{np.round(roa.x_limit, 3)}), no counterexample inside: {roa.certified}")  # fmt: skip
    print(f"exact quadratic V: level {ref.level:.4f}; learned / exact {roa.level / ref.level:.4f}")
    print(f"simulation: {roa.simulation}")
    # a learned V's gradient at the origin is small but not zero (here ~5e-3), so the proof
    # leaves out a ball larger than the search's default one (radius 0.07 here)
    proof = sb.lyapunov.certify(V, f, BOX, level=0.95 * roa.level, exclude_radius=0.15)
    print(f"proof on {{V <= {0.95 * roa.level:.4f}}} (95% of the level) outside |x| < 0.15: "
          f"{proof}")  # fmt: skip
    print(f"time: falsify {box.seconds:.2f} s, region {roa.seconds:.2f} s")
    if png:
        _plot(V, f, roa, box, png)
    return roa, ref, box, proof


def _plot(V, f, roa, box, png):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import torchdiffeq
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    g1, g2 = np.linspace(*BOX[0], 201), np.linspace(*BOX[1], 241)
    G = np.stack(np.meshgrid(g1, g2), -1).reshape(-1, 2)
    fig, ax = plt.subplots(figsize=(5.5, 6))
    ax.contour(g1, g2, V(G).reshape(241, 201), levels=[roa.level], colors="C0")
    vdot = np.einsum("ij,ij->i", V.grad(G), f(G)).reshape(241, 201)
    ax.contourf(g1, g2, vdot, levels=[0, np.inf], colors=["mistyrose"])  # where V grows
    C = box.counterexamples
    ax.scatter(*C.T, s=4, c="C3", label=f"counterexamples (worst {len(C)})")
    x0 = torch.as_tensor(roa.simulation.x0[:40])
    t = torch.linspace(0, 15, 300, dtype=torch.float64)
    with torch.no_grad():
        paths = torchdiffeq.odeint(lambda _, y: f.function(y), x0, t).numpy()
    for k in range(paths.shape[1]):
        ax.plot(paths[:, k, 0], paths[:, k, 1], lw=0.6, c="0.5")
    ax.scatter(*roa.x_limit, marker="*", s=120, c="k", label="limiting point")
    ax.set(xlabel="x1", ylabel="x2", xlim=BOX[0], ylim=BOX[1],
           title=f"region {{V <= {roa.level:.3f}}}; shaded: V-dot >= 0")  # fmt: skip
    ax.legend(loc="lower left", fontsize=8)
    fig.savefig(png, dpi=120, bbox_inches="tight")
    print(f"plot: {png}")


if __name__ == "__main__":
    main(png=sys.argv[1] if len(sys.argv) > 1 else None)
