"""Global design: every local minimum of a trained surrogate at once, and the best of them.

Trains a small tanh network on samples of Himmelblau's function (four global minima, value 0)
in physical units, then runs ``sb.multistart`` from a few hundred starts in the training domain:
one batched value-and-gradient per iteration for all of them. Prints the distinct minima found
(with how many starts reached each) beside the true ones, and, given a file name, plots them over
the surrogate's contour.

Prints: the minima table and the best point. Run: ``python examples/global_design.py [out.png]``
(about 10 seconds on a laptop CPU).
"""

from __future__ import annotations

import sys

import numpy as np

import surrogate_bridge as sb

TRUE_MINIMA = np.array(
    [[3.0, 2.0], [-2.805118, 3.131312], [-3.779310, -3.283186], [3.584428, -1.848126]]
)


def himmelblau(X: np.ndarray) -> np.ndarray:
    return (X[:, 0] ** 2 + X[:, 1] - 11) ** 2 + (X[:, 0] + X[:, 1] ** 2 - 7) ** 2


def main(n_samples: int = 2000, epochs: int = 3000, n_starts: int = 256, png: str | None = None):
    rng = np.random.default_rng(0)
    X = rng.uniform(-5, 5, (n_samples, 2))
    sur = sb.fit(sb.mlp((2, 64, 64, 1), "tanh", seed=0), X, himmelblau(X), epochs=epochs,
                 lr=3e-3, seed=0, progress=False)  # fmt: skip
    res = sb.multistart(sur, n_starts=n_starts, seed=0)  # starts drawn in the training domain
    print(f"{res.message}; {len(res.minima)} distinct minima, {res.nit} joint iterations")
    print(f"{'minimum':>24} {'surrogate':>10} {'starts':>7} {'nearest true':>24} {'distance':>9}")
    for m, f, count in zip(res.minima, res.minima_fun, res.minima_count, strict=True):
        true = TRUE_MINIMA[np.argmin(np.linalg.norm(TRUE_MINIMA - m, axis=1))]
        dist = np.linalg.norm(true - m)
        print(f"{np.round(m, 3)!s:>24} {f:10.3f} {count:7d} {np.round(true, 3)!s:>24} {dist:9.3f}")
    print(f"best: x = {res.x}, surrogate {res.fun:.4f}, true {himmelblau(res.x[None])[0]:.4f}")
    if png:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot")
        else:
            lo, hi = sur.domain  # the training data's range: no extrapolation on the plot
            g1, g2 = np.linspace(lo[0], hi[0], 121), np.linspace(lo[1], hi[1], 121)
            G = np.stack(np.meshgrid(g1, g2), -1).reshape(-1, 2)
            fig, ax = plt.subplots(figsize=(5.5, 5))
            levels = np.geomspace(0.5, 800, 18)
            ax.contour(g1, g2, sur(G).reshape(121, 121), levels=levels, cmap="viridis")
            ax.scatter(*res.minima.T, s=20 + 3 * res.minima_count, c="C3", label="minima found")
            ax.scatter(*TRUE_MINIMA.T, marker="x", c="k", label="true minima")
            ax.set(xlabel="x1", ylabel="x2", title="surrogate contours and its local minima")
            ax.legend(loc="lower left")
            fig.savefig(png, dpi=120, bbox_inches="tight")
            print(f"plot: {png}")
    return res


if __name__ == "__main__":
    main(png=sys.argv[1] if len(sys.argv) > 1 else None)
