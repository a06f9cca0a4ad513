"""Shared benchmark plumbing: timing, the machine line, and RESULTS.md sections."""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


class Behind(torch.nn.Module):
    """An exact physical function g behind scalers: normalized z -> normalized g(z * c + s), so
    that every method benchmarked works on the same function in physical units."""

    def __init__(self, g, s, c, ys, yc):
        super().__init__()
        self.g = g
        for name, v in dict(s=s, c=c, ys=ys, yc=yc).items():
            self.register_buffer(name, torch.as_tensor(np.asarray(v, dtype=np.float64)))

    def forward(self, z):
        return (self.g(z * self.c + self.s) - self.ys) / self.yc


def _calls_per_round(fn, min_time: float, warmup: int) -> int:
    """Warm ``fn`` up, then find how many calls take at least ``min_time``."""
    for _ in range(warmup):
        fn()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 > min_time or n > 1e6:
            return n
        n *= 4


def timeit(fn, *, min_time: float = 0.2, repeats: int = 5, warmup: int = 3) -> float:
    """Median seconds per call over ``repeats`` rounds of at least ``min_time`` each."""
    n = _calls_per_round(fn, min_time / 5, warmup)
    per = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        per.append((time.perf_counter() - t0) / n)
    return statistics.median(per)


def interleaved(fns: dict, *, min_time: float = 0.05, repeats: int = 7, warmup: int = 3) -> dict:
    """Median seconds per call of each callable, timed in alternating rounds, so that a machine
    whose speed drifts (a shared one) does not favour whichever was timed first."""
    counts = {key: _calls_per_round(fn, min_time, warmup) for key, fn in fns.items()}
    per = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(counts[key]):
                fn()
            per[key].append((time.perf_counter() - t0) / counts[key])
    return {key: statistics.median(v) for key, v in per.items()}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = re.findall(r"model name\s*:\s*(.*)", fh.read())
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{datetime.date.today().isoformat()}; {cpu}, {os.cpu_count()} cores, {gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}; "
        f"torch threads {torch.get_num_threads()}"
    )


def table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section of RESULTS.md between this benchmark's markers."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n## {name}\n\n{body.strip()}\n{end}"
    head = "# Benchmark results\n\nWritten by the scripts in this folder; each section says "
    head += "its machine and date.\n"
    text = RESULTS.read_text() if RESULTS.exists() else head
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
    print(body)
