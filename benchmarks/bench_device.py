"""At scale on each device: batched Hessians for N = 1e4..1e7 points, and 1e4 starts at once.

(a) Batched Hessians (``sur.derivatives(X, order=2)``: values, gradients and Hessians of N
torch points on the surrogate's device) of tanh MLPs 2-64-64-1 and 10-256-256-1 behind the
surrogate's own route, for N = 1e4, 1e5, 1e6 and 1e7 on every device present, at the default
chunk (``sur.chunk_size = "auto"``: 4096 rows on the CPU; on a GPU sized from the measured
memory of the first chunk, the rows it chose shown in brackets) and at fixed chunks: 16384 rows
on the CPU, 16384 (the GPU's default before "auto") and 131072 on a GPU. Points per second,
and the peak memory beyond the input and the results:
on a GPU from ``torch.cuda``'s allocator statistics, on the CPU the growth of the peak
resident memory of a fresh process over the call (``VmHWM``). Chunking keeps that figure flat
in N. On the CPU a net's next N (ten times the points) is
skipped where it would take over ``CPU_BUDGET_S``.

(b) ``sb.multistart`` from 1e4 starts (Himmelblau 2-D and the Rastrigin-like 10-D function of
``bench_multistart.py``, exact surrogates behind scalers) with lock-step L-BFGS-B and batched
Newton, on every device present; against the scipy loop (L-BFGS-B with exact gradients, from
the first 256 starts, timed and scaled to 1e4; CPU surrogate), with the minima found and how
many of those 256 starts ended at the loop's own end point (to 1e-6) or lower.

Fairness: float64 everywhere; caches cleared before every timed multistart (batches never use
the cache); GPU work synchronized before a clock is read; each timing the median of 3 runs (1
where one run takes over 5 s). Run: ``python benchmarks/bench_device.py [--quick]``; on a GPU
machine ``bash benchmarks/gpu.sh`` runs this with the CUDA tests in one go.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from _common import machine, table, write_section
from bench_multistart import agreement, himmelblau, loop, problem, rastrigin

import surrogate_bridge as sb

CPU_BUDGET_S = 60.0
NETS = ((2, 64), (10, 256))


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, device: str) -> float:
    times = []
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if times[-1] > 5.0:
            break
    return statistics.median(times)


_PEAK = """
import re, sys, torch, surrogate_bridge as sb
def hwm():  # this process's peak resident memory (its own address space's: reset by exec)
    with open("/proc/self/status") as fh:
        return int(re.search(r"VmHWM:\\s*(\\d+) kB", fh.read()).group(1)) * 1024
n, h, N = map(int, sys.argv[1:4])
sur = sb.Surrogate(sb.mlp((n, h, h, 1), "tanh", seed=0))
sur.chunk_size = sys.argv[4] if sys.argv[4] == "auto" else int(sys.argv[4])
X = torch.empty(N, n, dtype=torch.float64).uniform_(-1, 1)  # in place: no transient copies
sur.derivatives(X[:64], order=2)
before = hwm()
out = sur.derivatives(X, order=2)
grown = hwm() - before
print((grown - sum(t.numel() * t.element_size() for t in out)) / 2**20)
"""


def cpu_peak_mib(n: int, h: int, chunk: int | str, N: int) -> float:
    """Peak resident memory beyond the input and the results, in a fresh process (so that no
    memory the C allocator kept from earlier work hides the growth; ``ru_maxrss`` would carry
    the parent's peak over ``fork``, ``VmHWM`` starts afresh at ``exec``)."""
    args = [sys.executable, "-c", _PEAK, str(n), str(h), str(N), str(chunk)]
    return float(subprocess.run(args, capture_output=True, text=True, check=True).stdout)


def hessian_rows(device: str, sizes, rows: list) -> None:
    for n, h in NETS:
        sur = sb.Surrogate(sb.mlp((n, h, h, 1), "tanh", seed=0), device=device)
        for chunk in ("auto", 16384) + ((131072,) if device == "cuda" else ()):
            sur.chunk_size = chunk
            for N in sizes:
                X = torch.empty(N, n, dtype=torch.float64, device=device).uniform_(-1, 1)
                sur.derivatives(X[:64], order=2)  # warm-up
                if device == "cpu":
                    extra = cpu_peak_mib(n, h, chunk, N)
                else:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    out = sur.derivatives(X, order=2)
                    torch.cuda.synchronize()
                    held = sum(t.numel() * t.element_size() for t in out)
                    extra = (torch.cuda.max_memory_allocated() - base - held) / 2**20
                    del out
                t = _median_time(lambda X=X, s=sur: s.derivatives(X, order=2), device)
                results_mb = N * (1 + n + n * n) * 8 / 2**20
                # the rows per chunk ("auto": what it chose, on a GPU from its first chunk)
                per = min(sur._chunks.rows(2) if chunk == "auto" else chunk, N)
                rows.append([f"{n}-{h}-{h}-1", device, str(chunk), per, N, t, N / t,
                             results_mb, extra])  # fmt: skip
                print("row", rows[-1], flush=True)  # a run cut short still leaves its rows
                del X
                if device == "cpu" and t * 10 > CPU_BUDGET_S:  # the next N would take longer
                    break


def multistart_rows(device: str, S: int, rows: list, refs: dict) -> None:
    for name, f, n, half in (("Himmelblau 2-D", himmelblau, 2, 5.0),
                             ("Rastrigin 10-D", rastrigin, 10, 3.0)):  # fmt: skip
        sur = problem(f, n, half)
        bounds = list(zip(*sur.domain, strict=True))
        starts = np.random.default_rng(S).uniform(-half, half, (S, n))
        if name not in refs:  # the scipy loop, once, on the CPU surrogate
            loop(sur, np.random.default_rng(0).uniform(-half, half, (40, n)), bounds)  # warm-up
            head = starts[:256]
            sur.cache_clear()
            t0 = time.perf_counter()
            ref = loop(sur, head, bounds)
            refs[name] = (ref, (time.perf_counter() - t0) * S / len(head))
        ref, t_loop = refs[name]
        if device != "cpu":
            sur = problem(f, n, half, device=device)
        sb.multistart(sur, starts[:8], bounds=bounds, method="newton")  # warm-up
        for method in ("L-BFGS-B", "newton"):
            sur.cache_clear()
            _sync(device)
            t0 = time.perf_counter()
            r = sb.multistart(sur, starts, bounds=bounds, method=method)
            _sync(device)
            t = time.perf_counter() - t0
            same = agreement(r.xs[:256], r.funs[:256], ref)
            rows.append([name, device, S, method, t, t_loop, t_loop / t, r.nit, r.nfev,
                         int(r.converged.sum()), len(r.minima), f"{same}/{len(ref)}"])  # fmt: skip
            print("row", rows[-1], flush=True)


def _verdicts(hess: list, starts: list) -> str:
    lines = []
    for net in sorted({r[0] for r in hess}):
        for dev in devices():
            mine = [r for r in hess if r[0] == net and r[1] == dev]
            if not mine:
                continue
            best = max(mine, key=lambda r: r[6])
            lines.append(
                f"- {net} on {dev}: up to {best[6]:.3g} Hessian points/s (N = {best[4]:.0e}, "
                f"chunk {best[2]}), largest N run {max(r[4] for r in mine):.0e}."
            )
            chunks = list(dict.fromkeys(r[2] for r in mine))  # "auto" first, as measured
            rate = {(r[2], r[4]): r[6] for r in mine}
            for chunk in chunks[1:]:
                both = [N for (c, N) in rate if c == chunk and ("auto", N) in rate]
                if both:
                    N = max(both)
                    rows = next(r[3] for r in mine if r[2] == "auto" and r[4] == N)
                    lines.append(
                        f"  - at N = {N:.0e}, auto ({rows} rows a chunk) runs "
                        f"{rate['auto', N] / rate[chunk, N]:.2f}x the rate of chunk {chunk}."
                    )
            for chunk in chunks:
                extra = [r[8] for r in mine if r[2] == chunk]
                Ns = [r[4] for r in mine if r[2] == chunk]
                how = "allocated" if dev == "cuda" else "peak resident"
                lines.append(
                    f"  - chunk {chunk}: memory beyond the input and results ({how}) "
                    f"{min(extra):.0f}-{max(extra):.0f} MiB over N = {min(Ns):.0e}..{max(Ns):.0e}."
                )
    for r in starts:
        lines.append(
            f"- {r[0]}, {r[2]} starts on {r[1]}, {r[3]}: {r[6]:.1f}x faster than the scipy loop; "
            f"{r[9]}/{r[2]} converged, {r[10]} minima, {r[11]} of the loop's starts same or "
            "better."
        )
    return "\n".join(lines)


def main(quick: bool = False) -> None:
    torch.set_num_threads(torch.get_num_interop_threads())
    hess, starts, refs = [], [], {}
    for device in devices():
        hessian_rows(device, [10**k for k in range(4, 6 if quick else 8)], hess)
    S = 1024 if quick else 10**4
    for device in devices():
        multistart_rows(device, S, starts, refs)
    body = f"Machine: {machine()}\n\n"
    body += "(a) Batched Hessians (values, gradients and Hessians of N torch points):\n\n"
    body += table(["net", "device", "chunk", "rows a chunk", "N", "s", "points/s", "results MiB",
                   "peak beyond input and results MiB"], hess)  # fmt: skip
    body += (
        f"\n\n(b) Multistart from {S} starts; the scipy loop timed on the first 256 starts and"
        f" scaled to {S}:\n\n"
    )
    body += table(["problem", "device", "starts", "method", "s", "scipy loop s", "speed-up",
                   "iterations", "batched passes", "converged", "minima",
                   "same/better (first 256)"], starts)  # fmt: skip
    body += "\n\nRead from these numbers:\n\n" + _verdicts(hess, starts)
    write_section("bench_device", body)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
