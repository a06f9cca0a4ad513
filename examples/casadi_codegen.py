"""A LayerNorm/BatchNorm surrogate inside IPOPT, translated to CasADi and compiled to C.

Trains a small network with LayerNorm and BatchNorm layers on a process cost (a Rosenbrock-like
valley in physical units), translates it to native CasADi expressions (``mode="symbolic"``: the
normalization layers become MX, not a Python callback), solves a constrained design problem
with IPOPT and exact Hessians, then generates C code for the whole NLP
(``solver.generate_dependencies``), compiles it with the system's C compiler and solves again
with the compiled functions: the same optimum, no Python and no torch in the solver loop.

Prints: both solutions and times. Run: ``python examples/casadi_codegen.py`` (a few seconds;
the compiled solve needs gcc or cc on PATH).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import casadi as ca
import numpy as np
import torch
from torch import nn

import surrogate_bridge as sb


def cost(X):
    return (1 - X[:, 0]) ** 2 + 5 * (X[:, 1] - X[:, 0] ** 2) ** 2


def model(width=32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, width), nn.LayerNorm(width), nn.Tanh(),
                         nn.Linear(width, width), nn.BatchNorm1d(width), nn.Tanh(),
                         nn.Linear(width, 1)).double()  # fmt: skip


def main(n_samples: int = 2000, epochs: int = 1500, compile_c: bool = True):
    rng = np.random.default_rng(0)
    X = rng.uniform([-1.5, -0.5], [1.5, 2.5], (n_samples, 2))
    sur = sb.fit(model(), X, cost(X), epochs=epochs, lr=3e-3, seed=0, progress=False,
                 domain=([-1.5, -0.5], [1.5, 2.5]))  # fmt: skip
    F = sb.casadi_function(sur, mode="symbolic")  # LayerNorm and BatchNorm as native MX
    x = ca.MX.sym("x", 2)
    nlp = {"x": x, "f": F(x), "g": ca.sumsqr(x - ca.DM([0.0, 1.0]))}  # inside a disk
    opts = {"ipopt.print_level": 0, "print_time": 0, "ipopt.sb": "yes"}
    bounds = dict(x0=[-1.0, 2.0], lbx=[-1.5, -0.5], ubx=[1.5, 2.5], lbg=0, ubg=1.0)
    solver = ca.nlpsol("S", "ipopt", nlp, opts)
    t0 = time.perf_counter()
    sol = solver(**bounds)
    t_mx = time.perf_counter() - t0
    x_mx = np.array(sol["x"]).ravel()
    print(f"MX (symbolic translation): x = {np.round(x_mx, 6)}, f = {float(sol['f']):.6f} "
          f"(true cost there {cost(x_mx[None])[0]:.6f}), {solver.stats()['iter_count']} "
          f"iterations, {t_mx * 1e3:.1f} ms")  # fmt: skip
    x_c = None
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compile_c and compiler:
        with tempfile.TemporaryDirectory() as tmp:
            here = os.getcwd()
            os.chdir(tmp)
            try:
                solver.generate_dependencies("nlp.c")  # f, g, their gradients and Hessians
                subprocess.run([compiler, "-fPIC", "-shared", "-O2", "nlp.c", "-o", "nlp.so"],
                               check=True)  # fmt: skip
                compiled = ca.nlpsol("C", "ipopt", os.path.join(tmp, "nlp.so"), opts)
                t0 = time.perf_counter()
                sol_c = compiled(**bounds)
                t_c = time.perf_counter() - t0
            finally:
                os.chdir(here)
        x_c = np.array(sol_c["x"]).ravel()
        print(f"compiled C:                x = {np.round(x_c, 6)}, f = {float(sol_c['f']):.6f}, "
              f"{compiled.stats()['iter_count']} iterations, {t_c * 1e3:.1f} ms; "
              f"|x_C - x_MX| = {np.abs(x_c - x_mx).max():.1e}")  # fmt: skip
    else:
        print("no C compiler on PATH (or compile_c=False): the compiled solve is skipped")
    return sur, x_mx, x_c


if __name__ == "__main__":
    main()
