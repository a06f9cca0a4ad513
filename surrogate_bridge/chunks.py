"""How many rows one chunk of a batch holds: a number the user sets, or ``"auto"``.

A batch's results are allocated once and filled chunk by chunk, so beyond them memory is one
chunk's work for any N. ``"auto"`` sizes the chunk by what was measured
(``benchmarks/RESULTS.md``, ``bench_device``):

* on the CPU, 4096 rows: a chunk's work then stays in cache, and larger chunks ran slower;
* on a CUDA device, as many rows as fit a memory budget. A small net's chunk there is bound by
  kernel launches, not arithmetic (on an H100, a 2-64-64-1 net's Hessians at N = 1e7 ran at
  7.55x the rate of 16384-row chunks in chunks sized so), while a wide net's work per row is
  large (so that rows alone bound no memory). So the first chunk of each derivative order
  (4096 rows) is measured with the allocator's statistics, and later chunks hold
  ``budget / bytes per row`` rows, the budget being ``CHUNK_BYTES`` or a quarter of the
  device's free memory, whichever is less. The user's statistics are read, never reset: where
  the first chunk set a new peak, that peak less the memory allocated before it is exactly the
  chunk's work and results. Where an earlier, higher peak hides it (a model trained before in
  the same process, or the input check of a large batch), the sum of every allocation the
  chunk made still bounds its work from above, loosely (memory freed and allocated again is
  counted each time): the chunk is then sized from that bound but never below
  ``FALLBACK_ROWS`` (the fixed GPU chunk before ``"auto"``), and the next batch measures again.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CPU_ROWS = 4096  # the CPU's chunk (and the measured first chunk on a GPU)
FALLBACK_ROWS = 16384  # a GPU's chunk before a measurement says more, and other devices'
CHUNK_BYTES = 2 * 2**30  # one chunk's work on a GPU, at most
MAX_ROWS = 2**20  # beyond this, launches are amortized: more rows only hold more memory


def rows_for(per_row: float, budget: float) -> int:
    """Rows of a chunk whose work takes about ``budget`` bytes at ``per_row`` bytes a row: at
    least 1, at most ``MAX_ROWS``, a multiple of 1024 where above it."""
    rows = int(budget // max(per_row, 1.0))
    rows = min(max(rows, 1), MAX_ROWS)
    return rows - rows % 1024 if rows > 1024 else rows


def check_chunk_size(value) -> int | str:
    """``value`` if it is ``"auto"`` or an int >= 1; else a ValueError naming it."""
    ok = value == "auto" if isinstance(value, str) else (
        isinstance(value, int) and not isinstance(value, bool) and value >= 1
    )  # fmt: skip
    if not ok:
        raise ValueError(
            f"Surrogate.chunk_size must be 'auto' or an int >= 1 (rows per chunk), got {value!r}."
        )
    return value


class Chunks:
    """The ``"auto"`` chunk of one surrogate's device: bytes of work per row, by order, exact
    (``per_row``) or an upper bound still to be measured again (``bound``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.per_row: dict[int, float] = {}
        self.bound: dict[int, float] = {}

    def __getstate__(self) -> dict:  # measured on one machine's device: measured again
        return {"device": self.device, "per_row": {}, "bound": {}}

    def rows(self, order: int) -> int:
        """Rows of every chunk for ``order``, as known now."""
        if self.device.type == "cpu":
            return CPU_ROWS
        if order in self.per_row:
            return rows_for(self.per_row[order], self._budget())
        if order in self.bound:
            return max(rows_for(self.bound[order], self._budget()), FALLBACK_ROWS)
        return FALLBACK_ROWS

    def to_measure(self, order: int) -> bool:
        return self.device.type == "cuda" and order not in self.per_row

    def measured(self, order: int, work: Callable[[torch.Tensor], list], X: torch.Tensor):
        """``work(X)``, recording its bytes of work per row of ``X``: exact where it set a new
        peak, else the upper bound that the sum of its allocations gives."""
        dev = self.device
        torch.cuda.synchronize(dev)
        stats = torch.cuda.memory_stats(dev)
        base, peak0 = stats["allocated_bytes.all.current"], stats["allocated_bytes.all.peak"]
        made0 = stats["allocated_bytes.all.allocated"]  # (cumulative: every allocation's bytes)
        part = work(X)
        torch.cuda.synchronize(dev)
        stats = torch.cuda.memory_stats(dev)
        peak, made = stats["allocated_bytes.all.peak"], stats["allocated_bytes.all.allocated"]
        held = sum({p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in part}
                   .values())  # fmt: skip
        if peak > peak0:
            self.per_row[order] = max(peak - base - held, 0) / X.shape[0]
        else:
            self.bound[order] = max(made - made0 - held, 0) / X.shape[0]
        return part

    def _budget(self) -> float:
        free, _ = torch.cuda.mem_get_info(self.device)
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return min(CHUNK_BYTES, (free + cached) / 4)
