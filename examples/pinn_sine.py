"""A physics-informed network: learn sin on [0, 2 pi] from f'' + f = 0, f(0) = 0, f'(0) = 1.

The residual's second derivative comes from ``sb.derivatives(net, x, order=2)``, which keeps
the graph (``create_graph=True``), so the loss trains the network's parameters; no data of sin
itself is used. Adam, then L-BFGS to polish.

Prints: the loss and the maximum error against sin on a fine grid (below 1e-2).
Run: ``python examples/pinn_sine.py``.
"""

from __future__ import annotations

import math

import torch

import surrogate_bridge as sb


def main(adam_steps: int = 1000, lbfgs_steps: int = 500, n_points: int = 64) -> float:
    net = sb.mlp((1, 32, 32, 1), "tanh", seed=0)
    x = torch.linspace(0, 2 * math.pi, n_points, dtype=torch.float64)[:, None]
    x0 = torch.zeros(1, 1, dtype=torch.float64)

    def loss_fn() -> torch.Tensor:
        f, _, d2f = sb.derivatives(net, x, order=2)
        f0, df0 = sb.derivatives(net, x0, order=1)
        residual = d2f[:, 0, 0, 0] + f[:, 0]
        return (residual**2).mean() + f0[0, 0] ** 2 + (df0[0, 0, 0] - 1) ** 2

    adam = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(adam_steps):
        adam.zero_grad()
        loss = loss_fn()
        loss.backward()
        adam.step()
    lbfgs = torch.optim.LBFGS(
        net.parameters(),
        max_iter=lbfgs_steps,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
    )

    def closure():
        lbfgs.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    lbfgs.step(closure)
    grid = torch.linspace(0, 2 * math.pi, 1000, dtype=torch.float64)[:, None]
    with torch.no_grad():
        err = float((net(grid)[:, 0] - torch.sin(grid[:, 0])).abs().max())
    print(f"loss {float(loss_fn().detach()):.2e}, max |f - sin| on [0, 2 pi]: {err:.2e}")
    return err


if __name__ == "__main__":
    main()
