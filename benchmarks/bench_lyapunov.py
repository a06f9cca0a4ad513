"""Lyapunov analysis: ``sb.lyapunov`` against a dense grid and a loop of scipy solves.

Systems: n/2 reversed Van der Pol oscillators in a ring (n = 2, 4, 6), each
``a' = -b, b' = a - (1 - a^2) b + 0.2 (a_next - a)``, with the quadratic V of their linearization
(``solve_continuous_lyapunov``); V and f are surrogates behind scalers (exact torch models, so every
method analyses the same functions). Box: |a| <= 2.5, |b| <= 3.5. Excluded ball radius 0.07.

Per system:
- ``region_of_attraction`` (seconds, level) and ``falsify`` on the whole box (counterexamples
  exist) and on the estimated region just inside the level (none should);
- a dense grid over the box, evaluated in batches through the same surrogates (V, grad V, f):
  the least V over violating grid points and the faces, for growing points per axis until a time
  budget; the gap to our level says how fine a grid must be to match it;
- the scipy loop: the same two subproblems solved start by start with the surrogates'
  single-point callbacks (L-BFGS-B on each face, SLSQP for min V s.t. V-dot >= 0), from as many
  starts as ``region_of_attraction`` uses, drawn uniformly.
- ``certify`` (interval bounds with branch and bound: a proof, where falsification only fails
  to find a counterexample) of the levels 0.99, 0.9 and 0.5 times the estimated one, in 2-D and
  4-D (its boxes grow exponentially with the dimension; it stops at its default 2,000,000
  boxes): seconds, boxes, and the boxes left unresolved.

No GPU figures: the machine that wrote RESULTS.md has none (its line says so).
Run: ``python benchmarks/bench_lyapunov.py [--quick]``.
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
import scipy.linalg
import torch
from _common import Behind, machine, table, write_section
from scipy.optimize import minimize
from torch import nn

import surrogate_bridge as sb

RADIUS = 0.07


class Ring(nn.Module):
    """n/2 reversed Van der Pol oscillators in a ring, states (a1, b1, a2, b2, ...)."""

    def forward(self, x):
        a, b = x[:, 0::2], x[:, 1::2]
        push = 0.2 * (torch.roll(a, -1, dims=1) - a) if a.shape[1] > 1 else 0.0
        out = torch.stack([-b, a - (1 - a**2) * b + push], -1)
        return out.reshape(x.shape)


def linearization(n):
    m = n // 2
    A = np.zeros((n, n))
    for i in range(m):
        A[2 * i, 2 * i + 1] = -1.0
        A[2 * i + 1, 2 * i], A[2 * i + 1, 2 * i + 1] = 1.0, -1.0
        if m > 1:
            A[2 * i + 1, 2 * i] -= 0.2
            A[2 * i + 1, 2 * ((i + 1) % m)] += 0.2
    assert np.linalg.eigvals(A).real.max() < 0
    return A


class Quadratic(nn.Module):
    def __init__(self, P):
        super().__init__()
        self.register_buffer("P", torch.as_tensor(P))

    def forward(self, x):
        return ((x @ self.P) * x).sum(-1, keepdim=True)


def system(n):
    P = scipy.linalg.solve_continuous_lyapunov(linearization(n).T, -np.eye(n))
    half = np.tile([2.5, 3.5], n // 2)
    s, c = np.full(n, 0.1), half
    V = sb.Surrogate(Behind(Quadratic(P), s, c, [1.0], [10.0]), sb.Affine(s, c),
                     sb.Affine([1.0], [10.0]), extrapolation="ignore")  # fmt: skip
    f = sb.Surrogate(Behind(Ring(), s, c, np.zeros(n), np.full(n, 5.0)), sb.Affine(s, c),
                     sb.Affine(np.zeros(n), np.full(n, 5.0)), extrapolation="ignore")  # fmt: skip
    return V, f, list(zip(-half, half, strict=True))


def grid_level(V, f, box, k, budget):
    """Least V over violating grid points (k per axis) and the box's faces, in batches."""
    lb, ub = np.array(box).T
    axes = [np.linspace(lo, hi, k) for lo, hi in box]
    n, total, best, t0 = len(box), k ** len(box), np.inf, time.perf_counter()
    chunk = 1 << 18
    for start in range(0, total, chunk):
        idx = np.unravel_index(np.arange(start, min(start + chunk, total)), (k,) * n)
        X = np.stack([axes[j][idx[j]] for j in range(n)], 1)
        v = V(X)
        vdot = np.einsum("ij,ij->i", V.grad(X), f(X))
        bad = (np.linalg.norm(X, axis=1) >= RADIUS) & (vdot >= 0)
        face = np.any((X == lb) | (X == ub), axis=1)
        best = min(best, v[bad | face].min(initial=np.inf))
        if time.perf_counter() - t0 > budget:
            return None, time.perf_counter() - t0
    return best, time.perf_counter() - t0


def scipy_loop(V, f, box, starts, rng):
    """The same two subproblems, start by start, with single-point callbacks."""
    lb, ub = np.array(box).T
    n = len(box)
    best = np.inf
    for x0 in starts:  # faces: each start on one face, L-BFGS-B with that coordinate fixed
        i, side = rng.integers(n), rng.integers(2)
        lo, hi = lb.copy(), ub.copy()
        lo[i] = hi[i] = (lb, ub)[side][i]
        x = np.clip(x0, lo, hi)
        r = minimize(V, x, jac=V.grad, method="L-BFGS-B", bounds=list(zip(lo, hi, strict=True)))
        best = min(best, r.fun)

    def vdot(x):
        return V.grad(x) @ f(x)

    def vdot_grad(x):
        return V.hess(x) @ f(x) + f.jac(x).T @ V.grad(x)

    def outside(x):
        return x @ x - RADIUS**2

    cons = [{"type": "ineq", "fun": vdot, "jac": vdot_grad},
            {"type": "ineq", "fun": outside, "jac": lambda x: 2 * x}]  # fmt: skip
    for x0 in starts:
        r = minimize(V, x0, jac=V.grad, method="SLSQP", bounds=list(zip(lb, ub, strict=True)),
                     constraints=cons, options={"ftol": 1e-12, "maxiter": 200})  # fmt: skip
        if r.success and vdot(r.x) >= -1e-8 and r.x @ r.x >= RADIUS**2 * (1 - 1e-9):
            best = min(best, r.fun)
    return best


def main(quick: bool = False) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", sb.ExtrapolationWarning)
    rows, grid_rows, cert_rows, verdicts = [], [], [], []
    budget = 5.0 if quick else 60.0
    for n in (2, 4) if quick else (2, 4, 6):
        V, f, box = system(n)
        kw = dict(exclude_radius=RADIUS, seed=0)
        sb.lyapunov.region_of_attraction(V, f, box, n_samples=256, n_starts=8, **kw)  # warm-up
        t0 = time.perf_counter()
        roa = sb.lyapunov.region_of_attraction(V, f, box, **kw)
        t_roa = time.perf_counter() - t0
        t0 = time.perf_counter()
        whole = sb.lyapunov.falsify(V, f, box, **kw)
        t_whole = time.perf_counter() - t0
        t0 = time.perf_counter()
        inside = sb.lyapunov.falsify(V, f, box, level=roa.level * (1 - 1e-6), **kw)
        t_inside = time.perf_counter() - t0
        if n <= 4:
            for frac in (0.99, 0.9, 0.5):
                t0 = time.perf_counter()
                cert = sb.lyapunov.certify(V, f, box, level=roa.level * frac, exclude_radius=RADIUS)
                t_cert = time.perf_counter() - t0
                left = len(cert.unresolved)
                cert_rows.append([f"{n}-D", frac, cert.level, t_cert, cert.boxes, left,
                                  "yes" if cert.proven else "no"])  # fmt: skip
        V.cache_clear(), f.cache_clear()
        starts = np.random.default_rng(1).uniform(*np.array(box).T, (64, n))
        t0 = time.perf_counter()
        level_loop = scipy_loop(V, f, box, starts, np.random.default_rng(2))
        t_loop = time.perf_counter() - t0
        rows.append([f"{n}-D", roa.level, roa.limit, t_roa, t_whole, whole.n_violations, t_inside,
                     inside.n_violations, level_loop, t_loop, t_loop / t_roa])  # fmt: skip
        matched = None
        for k in (11, 21, 41, 81, 161, 321, 641, 1281, 2561, 5121):
            if k**n > 5e8:
                break
            level_grid, t_grid = grid_level(V, f, box, k, budget)
            if level_grid is None:
                grid_rows.append([f"{n}-D", k, k**n, t_grid, "stopped at the time budget"])
                break
            gap = level_grid / roa.level - 1
            grid_rows.append([f"{n}-D", k, k**n, t_grid, f"{gap:+.2e}"])
            if abs(gap) <= 1e-3 and matched is None:
                matched = (k, t_grid)
        if matched:
            verdicts.append(
                f"- {n}-D: a grid first came within 0.1% of our level at {matched[0]} points per "
                f"axis, in {matched[1]:.3g} s: {matched[1] / t_roa:.1f}x the time of "
                f"region_of_attraction ({t_roa:.3g} s)."
            )
        else:
            verdicts.append(
                f"- {n}-D: no grid within the {budget:g} s budget came within 0.1% of our level "
                f"(region_of_attraction: {t_roa:.3g} s)."
            )
        verdicts.append(
            f"  The scipy loop (64 starts, single-point callbacks) took {t_loop:.3g} s, "
            f"{t_loop / t_roa:.1f}x region_of_attraction's time; its level is "
            f"{level_loop / roa.level - 1:+.2e} relative to ours."
        )
    body = f"Machine: {machine()}\n\n"
    body += table(["system", "level", "limit", "region s", "falsify box s", "violations found",
                   "falsify region s", "violations in region", "scipy loop level",
                   "scipy loop s", "loop / region"], rows)  # fmt: skip
    body += "\n\nDense grids through the same surrogates (gap: grid level / our level - 1):\n\n"
    body += table(["system", "points per axis", "points", "seconds", "gap"], grid_rows)
    body += "\n\nProofs by interval bounds (`certify`) of a fraction of our level:\n\n"
    body += table(["system", "fraction", "level", "seconds", "boxes", "unresolved boxes",
                   "proven"], cert_rows)  # fmt: skip
    for name in sorted({r[0] for r in cert_rows}):
        proven = [r for r in cert_rows if r[0] == name and r[6] == "yes"]
        if proven:
            best = max(proven, key=lambda r: r[1])
            verdicts.append(
                f"- {name}: certify proved {best[1]:g} of our level in {best[3]:.3g} s."
            )
        else:
            verdicts.append(f"- {name}: certify proved none of the fractions tried.")
    body += "\n\nJudged from these numbers:\n\n" + "\n".join(verdicts)
    body += "\n\nNo GPU on this machine: no GPU figures."
    write_section("bench_lyapunov", body)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
