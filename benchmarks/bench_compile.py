"""Would ``torch.compile`` make a faster single-point route? (issue: a compiled torch route.)

For 2-64-64-1 and 10-256-256-1 tanh nets, one point, float64, one thread, a fresh point every
call: value+gradient (``torch.func.vjp``) and Hessian (``torch.func.hessian``) of the surrogate's
physical function compiled with ``torch.compile(fullgraph=True)`` (inductor; it needs a C++
compiler at run time), against the surrogate's own eager single-point route and the hand-written
numpy floor of ``bench_derivatives.py``. Compile times are the first calls' wall time.

Run: ``python benchmarks/bench_compile.py``.
"""

from __future__ import annotations

import time
import warnings

import torch
from _common import interleaved, machine, table, write_section
from bench_derivatives import Fresh, NumpyMLP, mlp

import surrogate_bridge as sb


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # inductor's notes about its own internals
    rows, verdicts = [], []
    for n, h in ((2, 64), (10, 256)):
        measure(n, h, rows, verdicts)
    body = f"Machine: {machine()}\n\n"
    body += table(["net", "call", "compile s", "compiled us", "compiled / floor",
                   "eager route / floor"], rows)  # fmt: skip
    body += "\n\nJudged from these numbers:\n\n" + "\n".join(verdicts)
    write_section("bench_compile", body)


def measure(n, h, rows, verdicts) -> None:
    net = mlp(n, h, 1)
    ref, fresh = NumpyMLP(net), Fresh(n)
    sur = sb.Surrogate(net, point_route="torch", extrapolation="ignore")
    fn = sur.function

    def vj(x):
        y, pull = torch.func.vjp(lambda z: fn(z[None])[0], x)
        return y, pull(torch.ones_like(y))[0]

    def hs(x):
        return torch.func.hessian(lambda z: fn(z[None])[0, 0])(x)

    compiled = {}
    for name, f in (("value+grad", vj), ("hessian", hs)):
        c = torch.compile(f, dynamic=False, fullgraph=True)
        t0 = time.perf_counter()
        with torch.no_grad():
            c(torch.from_numpy(fresh()))
        compiled[name] = (c, time.perf_counter() - t0)

    def run(name):
        with torch.no_grad():
            out = compiled[name][0](torch.from_numpy(fresh()))
        return [t.numpy() for t in out] if isinstance(out, tuple) else out.numpy()

    t = interleaved({
        "vg compiled": lambda: run("value+grad"),
        "vg eager": lambda: sur.value_and_grad(fresh()),
        "vg floor": lambda: ref.value_jac(fresh()),
        "h compiled": lambda: run("hessian"),
        "h eager": lambda: sur.hess(fresh()),
        "h floor": lambda: ref.hess(fresh()),
    })  # fmt: skip
    for call, k in (("value+grad", "vg"), ("hessian", "h")):
        floor = t[f"{k} floor"]
        ratio = t[f"{k} compiled"] / floor
        rows.append([f"{n}-{h}-{h}-1", call, compiled[call][1], t[f"{k} compiled"] * 1e6, ratio,
                     t[f"{k} eager"] / floor])  # fmt: skip
        verdicts.append(
            f"- {n}-{h}-{h}-1 {call}: torch.compile {ratio:.2f}x the numpy floor "
            f"({'within' if ratio <= 2 else 'beyond'} 2x), the eager route "
            f"{t[f'{k} eager'] / floor:.2f}x; compiling took {compiled[call][1]:.1f} s."
        )


if __name__ == "__main__":
    main()
