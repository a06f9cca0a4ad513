"""Beyond one process: batched Hessians of 10^7 points and many multistart batches on dask.

A surrogate pickles, so dask ships it once to every worker; ``sb.distributed.evaluate`` cuts a
large point set into chunks (one task each) and gathers the Hessians in order, and
``sb.distributed.multistart`` runs one multistart batch per seed on the workers. Here the cluster
is a ``LocalCluster`` of processes; the same code runs against a real cluster's scheduler
(``Client("tcp://scheduler:8786")``).

Prints: points per second for the Hessians (workers vs one local process) and the best minimum
over all batches. Run: ``python examples/distributed_hessians.py`` (10^7 points: about a minute
on 2 cores; pass a smaller N as the first argument).
"""

from __future__ import annotations

import sys
import time

import numpy as np
from dask.distributed import Client, LocalCluster

import surrogate_bridge as sb


def himmelblau(X):
    return (X[:, 0] ** 2 + X[:, 1] - 11) ** 2 + (X[:, 0] + X[:, 1] ** 2 - 7) ** 2


def main(n_points: int = 10**7, n_seeds: int = 8, workers: int = 2, epochs: int = 1500):
    rng = np.random.default_rng(0)
    X = rng.uniform(-5, 5, (2000, 2))
    sur = sb.fit(sb.mlp((2, 32, 32, 1), seed=0), X, himmelblau(X), epochs=epochs, lr=3e-3,
                 seed=0, progress=False, domain=([-5, -5], [5, 5]))  # fmt: skip
    points = rng.uniform(-5, 5, (n_points, 2))
    chunk = max(1, min(250_000, n_points // (4 * workers)))
    with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            t0 = time.perf_counter()
            H = sb.distributed.evaluate(client, sur, points, "hess", chunk_size=chunk)
            t_workers = time.perf_counter() - t0
            t0 = time.perf_counter()
            results = sb.distributed.multistart(client, sur, range(n_seeds), n_starts=256,
                                                method="newton")  # fmt: skip
            t_starts = time.perf_counter() - t0
    head = points[: min(n_points, 200_000)]
    with sb.limit_threads(1):
        t0 = time.perf_counter()
        local = sur.hess(head)
        t_local = (time.perf_counter() - t0) * n_points / len(head)
    assert np.allclose(H[: len(head)], local, rtol=1e-12, atol=1e-12)
    best = min(results, key=lambda r: r.fun)
    print(f"Hessians of {n_points:.3g} points: {n_points / t_workers:.3g} points/s on {workers} "
          f"workers, {n_points / t_local:.3g} points/s in one local process "
          f"({t_workers:.2f} s vs {t_local:.2f} s)")  # fmt: skip
    print(f"{n_seeds} multistart batches of 256 starts in {t_starts:.2f} s; best minimum "
          f"{best.fun:.4f} at {np.round(best.x, 4)}; "
          f"{sum(len(r.minima) for r in results)} minima over all batches")  # fmt: skip
    return H, results


if __name__ == "__main__":
    main(int(float(sys.argv[1])) if len(sys.argv) > 1 else 10**7)
