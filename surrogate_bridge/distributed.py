"""Scale-out on dask.distributed: many points, or many multistart batches, across workers.

A ``Surrogate`` pickles (its frozen function, scalers and settings; never its cache or lock),
so dask ships it once to every worker (``client.scatter(..., broadcast=True)``); each task then
evaluates one chunk of points, or runs one multistart batch, with the worker's copy, and the
client gathers the pieces in order. The same code runs on a ``LocalCluster`` and on a real
cluster; dask is the engine, these two functions only cut and gather.

Workers run torch with one thread each (``limit_threads``), so that processes x threads does
not oversubscribe a machine's cores.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .multistart import multistart as _multistart
from .surrogate import Surrogate, require_surrogate
from .threads import limit_threads

__all__ = ["evaluate", "multistart"]

_METHODS = ("__call__", "grad", "jac", "hess", "value_and_grad", "derivatives")


def evaluate(client, sur: Surrogate, X, method: str = "hess", *, chunk_size: int = 100_000,
             **kwargs):  # fmt: skip
    """``sur.<method>(X)`` for a large batch ``X`` (N, n_in), in chunks on dask workers.

    Parameters
    ----------
    client : dask.distributed.Client
    sur : Surrogate
    X : array_like, shape (N, n_in)
    method : {"__call__", "grad", "jac", "hess", "value_and_grad", "derivatives"}
    chunk_size : int
        Points per task.
    **kwargs
        Passed to the method (e.g. ``order=3`` for ``derivatives``).

    Returns
    -------
    numpy.ndarray, or a tuple/list of them (``value_and_grad``, ``derivatives``), row for row as
    ``sur.<method>(X)`` computed chunk by chunk on one machine.

    Examples
    --------
    >>> import numpy as np, torch, surrogate_bridge as sb
    >>> from dask.distributed import Client, LocalCluster
    >>> sur = sb.Surrogate(torch.nn.Linear(2, 1))
    >>> with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
    ...     with Client(cluster) as client:
    ...         H = sb.distributed.evaluate(client, sur, np.zeros((10, 2)), "hess", chunk_size=4)
    >>> H.shape
    (10, 2, 2)
    """
    require_surrogate(sur, "distributed.evaluate")
    if method not in _METHODS:
        raise ValueError(f"distributed.evaluate: method={method!r} is not one of {_METHODS}.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(
            f"distributed.evaluate: chunk_size must be an int >= 1, got {chunk_size!r}."
        )
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != sur.n_in:
        raise ValueError(f"distributed.evaluate: X must have shape (N, {sur.n_in}), got {X.shape}.")
    remote = client.scatter(sur, broadcast=True, hash=False)  # a key of its own
    chunks = [X[i : i + chunk_size] for i in range(0, len(X), chunk_size)]
    futures = [client.submit(_apply, remote, c, method, kwargs, pure=False) for c in chunks]
    parts = client.gather(futures)
    if method in ("value_and_grad", "derivatives"):
        joined = [np.concatenate(col) for col in zip(*parts, strict=True)]
        return tuple(joined) if method == "value_and_grad" else joined
    return np.concatenate(parts)


def multistart(client, sur: Surrogate, seeds: Iterable[int], **kwargs) -> list:
    """``sb.multistart(sur, seed=s, **kwargs)`` for every seed, one task each, on dask workers:
    many batches of starts at once, spread over machines. Results in the order of ``seeds``,
    each identical to the same call made locally.

    Examples
    --------
    >>> import torch, surrogate_bridge as sb
    >>> from dask.distributed import Client, LocalCluster
    >>> class Wells(torch.nn.Module):
    ...     def forward(self, z):
    ...         return ((z ** 2 - 1) ** 2).sum(-1)
    >>> sur = sb.Surrogate(Wells(), n_in=1)
    >>> with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
    ...     with Client(cluster) as client:
    ...         runs = sb.distributed.multistart(client, sur, range(3), bounds=[(-2, 2)])
    >>> [len(r.minima) for r in runs]
    [2, 2, 2]
    """
    require_surrogate(sur, "distributed.multistart")
    remote = client.scatter(sur, broadcast=True, hash=False)  # a key of its own
    futures = [client.submit(_one_batch, remote, s, kwargs, pure=False) for s in seeds]
    return client.gather(futures)


def _apply(sur, X, method, kwargs):
    with limit_threads(1):
        return getattr(sur, method)(X, **kwargs)


def _one_batch(sur, seed, kwargs):
    with limit_threads(1):
        return _multistart(sur, seed=seed, **kwargs)
