"""Minimize a learned Lyapunov function with scipy: finite differences vs exact derivatives.

Trains a surrogate of V(x) = x^T P x (the seed problem) from samples with ``sb.fit``, then
minimizes it from the same start with BFGS and finite differences (scipy's default, what users
do without this library), BFGS with the exact gradient, and Newton-CG and trust-exact with the
exact Hessian.

Prints: a table of method, derivatives, iterations, nfev/njev/nhev, wall time and distance of
the result to the origin (the true minimum).
Run: ``python examples/scipy_lyapunov.py``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy.optimize import minimize

import surrogate_bridge as sb

P = np.array([[20.1892, -26.6218], [-26.6218, 38.0375]])


def train(n_grid: int, epochs: int) -> sb.Surrogate:
    g = np.linspace(-3, 3, n_grid)
    X = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    V = np.einsum("ni,ij,nj->n", X, P, X)
    net = sb.mlp((2, 32, 32, 1), "softplus", seed=0, dtype=torch.float32)
    # minmax output: V's minimum (0) is the output shift, so f near the minimum has full precision
    return sb.fit(
        net,
        X,
        V,
        output_scaler="minmax",
        epochs=epochs,
        seed=0,
        progress=False,
        extrapolation="ignore",
    )


def main(n_grid: int = 25, epochs: int = 3000) -> list[dict]:
    sur = train(n_grid, epochs)
    x0 = np.array([2.5, -1.5])
    runs = [
        ("BFGS", "finite differences", {}),
        ("BFGS", "exact gradient", {"jac": sur.grad}),
        ("Newton-CG", "exact Hessian", {"jac": sur.grad, "hess": sur.hess}),
        ("trust-exact", "exact Hessian", {"jac": sur.grad, "hess": sur.hess}),
    ]
    rows = []
    print(
        f"{'method':<12}{'derivatives':<20}{'nit':>5}{'nfev':>6}{'njev':>6}{'nhev':>6}"
        f"{'time ms':>9}{'|x*|':>10}"
    )
    for method, kind, kw in runs:
        sur.cache_clear()
        t0 = time.perf_counter()
        res = minimize(sur, x0, method=method, **kw)
        ms = 1e3 * (time.perf_counter() - t0)
        row = dict(
            method=method,
            derivatives=kind,
            nit=res.nit,
            nfev=res.nfev,
            njev=res.get("njev", 0),
            nhev=res.get("nhev", 0),
            ms=ms,
            dist=float(np.linalg.norm(res.x)),
        )
        rows.append(row)
        print(
            f"{method:<12}{kind:<20}{row['nit']:>5}{row['nfev']:>6}{row['njev']:>6}"
            f"{row['nhev']:>6}{ms:>9.1f}{row['dist']:>10.2e}"
        )
    return rows


if __name__ == "__main__":
    main()
