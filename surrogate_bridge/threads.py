"""Threads: opt-in single-threaded execution for small problems, and the lock that keeps
torch's tracers one at a time.

Small solves can run several times slower with more threads than a loaded machine has free cores
(the threads table of ``benchmarks/RESULTS.md``, bench_scipy). Nothing here changes global settings
unless asked, and everything is restored on exit.

``torch.export``, ``ExportedProgram.run_decompositions`` and the TorchScript converter keep
process-wide state while they trace (a slot for their dispatch mode, the module hierarchy being
traced, a patcher): two at once in two threads fail inside torch ("ProxyTorchDispatchMode slot
already occupied", "_EXPORT_MODULE_HIERARCHY must not be None"), so that a surrogate saved in
one thread while another measured its routes lost its numpy and CasADi routes. Every trace
here holds :data:`TRACING`; evaluating a built route never does.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

__all__ = ["TRACING", "limit_threads"]

TRACING = threading.RLock()  # (re-entrant: an export may lower, and retry, inside another)


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
