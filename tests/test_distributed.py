"""dask.distributed scale-out: workers' results identical to local ones."""

import numpy as np
import pytest

import surrogate_bridge as sb

distributed = pytest.importorskip("dask.distributed")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def sur():
    """A trained-looking tanh net behind scalers; used once before shipping (a used surrogate
    pickles too)."""
    s = sb.Surrogate(sb.mlp((3, 16, 16, 1), seed=0), sb.Affine([0.1, 0.2, 0.3], [2.0, 1.0, 3.0]),
                     sb.Affine([1.0], [4.0]), domain=([-3] * 3, [3] * 3))  # fmt: skip
    s.hess(np.zeros(3))
    return s


def test_points_on_workers_equal_local_chunks(client, sur):
    X = np.random.default_rng(0).uniform(-3, 3, (5000, 3))
    H = sb.distributed.evaluate(client, sur, X, "hess", chunk_size=1000)
    local = np.concatenate([sur.hess(X[i : i + 1000]) for i in range(0, 5000, 1000)])
    assert H.shape == (5000, 3, 3)
    np.testing.assert_array_equal(H, local)  # the same bits
    f, g = sb.distributed.evaluate(client, sur, X, "value_and_grad", chunk_size=1500)
    np.testing.assert_allclose(g, sur.grad(X), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(f, sur(X), rtol=1e-13, atol=1e-15)
    d = sb.distributed.evaluate(client, sur, X[:300], "derivatives", chunk_size=100, order=3)
    assert [a.shape for a in d] == [(300,), (300, 3), (300, 3, 3), (300, 3, 3, 3)]


def test_multistart_batches_on_workers_equal_local_runs(client, sur):
    results = sb.distributed.multistart(client, sur, [0, 1, 2, 3], n_starts=32, method="newton")
    for seed, remote in enumerate(results):
        local = sb.multistart(sur, n_starts=32, seed=seed, method="newton")
        np.testing.assert_array_equal(remote.xs, local.xs)
        assert remote.fun == local.fun and remote.success == local.success


def test_arguments_are_checked_before_any_task(client, sur):
    with pytest.raises(ValueError, match="method='inverse'"):
        sb.distributed.evaluate(client, sur, np.zeros((4, 3)), "inverse")
    with pytest.raises(ValueError, match=r"X must have shape \(N, 3\)"):
        sb.distributed.evaluate(client, sur, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="chunk_size"):
        sb.distributed.evaluate(client, sur, np.zeros((4, 3)), chunk_size=0)
