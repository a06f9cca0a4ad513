"""Opt-in single-threaded execution for small problems.

Small solves can run several times slower with more threads than a loaded machine has free cores
(the threads table of ``benchmarks/RESULTS.md``, bench_scipy). Nothing here changes global settings
unless asked, and everything is restored on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["limit_threads"]


@contextlib.contextmanager
def limit_threads(n: int = 1) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads and ``n`` BLAS/OpenMP threads.

    The BLAS limit needs ``threadpoolctl`` (``pip install threadpoolctl``); without it only
    torch's thread count is limited. Previous settings are restored on exit.

    Examples
    --------
    >>> import torch, surrogate_bridge as sb
    >>> before = torch.get_num_threads()
    >>> with sb.limit_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"limit_threads: n must be a positive int, got {n!r}.")
    before = torch.get_num_threads()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: torch's own threads are still limited
        blas = contextlib.nullcontext()
    else:
        blas = threadpool_limits(limits=n)
    torch.set_num_threads(n)
    try:
        with blas:
            yield
    finally:
        torch.set_num_threads(before)
