"""Quickstart: a network trained on scaled data, minimized by scipy with exact derivatives.

Fits a small tanh network to the Lyapunov function V(x) = x^T P x (the seed problem) on
standardized data, wraps it in a ``Surrogate`` so that value, gradient and Hessian are in
physical units, prints them beside the analytic ones at a few points, and minimizes it with
``scipy.optimize.minimize(sur, x0, jac=sur.grad, hess=sur.hess, method="trust-exact")``.
Needs only the base install; fitted sklearn scalers (``StandardScaler().fit(X)``) go into
``sb.Surrogate`` exactly where the ``sb.Affine`` scalers go here.

Prints: a table of V, grad V and Hessian (surrogate vs analytic) and the minimizer found.
Run: ``python examples/quickstart.py`` (about 5 seconds on a laptop CPU).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize

import surrogate_bridge as sb

P = np.array([[20.1892, -26.6218], [-26.6218, 38.0375]])


def train(X: np.ndarray, y: np.ndarray, steps: int, seed: int = 0):
    """The user's side: scale the data, fit a network in normalized units."""
    xs, ys = sb.Affine.fit(X, kind="standard"), sb.Affine.fit(y, kind="standard")
    Z = torch.as_tensor(xs.transform(X))
    T = torch.as_tensor(ys.transform(y))
    net = sb.mlp((2, 32, 32, 1), "tanh", seed=seed)
    opt = torch.optim.LBFGS(net.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = ((net(Z) - T) ** 2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return net, xs, ys


def main(n_grid: int = 25, steps: int = 500) -> np.ndarray:
    g = np.linspace(-3, 3, n_grid)
    X = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    y = np.einsum("ni,ij,nj->n", X, P, X)[:, None]
    net, xs, ys = train(X, y, steps)

    sur = sb.Surrogate(net, xs, ys)  # physical units in, physical units out, float64
    print(f"{'x':>16} {'V sur':>9} {'V true':>9} {'|dV err|':>9} {'|d2V err|/|d2V|':>16}")
    for x in ([1.0, 1.0], [-2.0, 0.5], [0.5, -1.5]):
        x = np.array(x)
        g_err = np.abs(sur.grad(x) - 2 * P @ x).max()
        h_err = np.abs(sur.hess(x) - 2 * P).max() / np.abs(2 * P).max()
        print(f"{x!s:>16} {sur(x):9.3f} {x @ P @ x:9.3f} {g_err:9.3f} {h_err:16.4f}")

    res = minimize(sur, x0=[2.0, -2.0], jac=sur.grad, hess=sur.hess, method="trust-exact")
    print(
        f"trust-exact: x* = {res.x}, |grad| = {np.linalg.norm(sur.grad(res.x)):.1e}, "
        f"{res.nit} iterations, cache {sur.cache_info()}"
    )
    return res.x


if __name__ == "__main__":
    main()
