"""A field from three parameters, reduced by PCA, inverted from a noisy measurement.

A simulation returns a whole profile, here a damped oscillation sampled at 40 points,
u(s; a, b, w) = a exp(-b s) cos(w s) on s in [0, 1]. The usual reduced-order surrogate
predicts a few PCA coefficients of the profile, not the 40 values: the network is trained
through a sklearn ``Pipeline(StandardScaler(), PCA(k))`` handed to ``sb.fit`` as the output
scaler, and the surrogate answers the 40-point field and its exact 40 x 3 Jacobian in physical
units (the PCA is one linear layer around the network).

The inverse problem, find (a, b, w) from a measured profile, is then scipy's
``least_squares`` with ``jac=sur.jac``, against the same solve with finite differences (three
more field evaluations per Jacobian, which scipy's own nfev does not count: counted here) and
against the true parameters.

Prints: the share of variance the k components keep, the surrogate's field error on test
parameters, then each solve's parameters, residual norm, and the field evaluations and
exact Jacobians it asked the surrogate for.
Run: ``python examples/field_inversion.py``.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import surrogate_bridge as sb

S = np.linspace(0.0, 1.0, 40)  # where the profile is sampled
LB, UB = np.array([0.5, 0.5, 1.0]), np.array([2.0, 3.0, 6.0])  # a, b, w
TRUE = np.array([1.3, 1.7, 4.2])


def profile(P: np.ndarray) -> np.ndarray:
    """The simulation: (N, 3) parameters -> (N, 40) profiles."""
    a, b, w = (P[:, i : i + 1] for i in range(3))
    return a * np.exp(-b * S) * np.cos(w * S)


def main(n_samples: int = 1000, epochs: int = 2000, k: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    P = rng.uniform(LB, UB, (n_samples, 3))
    U = profile(P)
    out = make_pipeline(StandardScaler(), PCA(k))  # fit fits a copy on U
    net = sb.mlp((3, 32, 32, k), "tanh", seed=seed)
    sur = sb.fit(net, P, U, output_scaler=out, epochs=epochs, seed=seed, progress=False)
    kept = make_pipeline(StandardScaler(), PCA(k)).fit(U)[-1].explained_variance_ratio_.sum()
    P_test = rng.uniform(*sur.domain, (200, 3))  # inside the training domain
    field_err = np.abs(sur(P_test) - profile(P_test)).max() / np.abs(U).max()
    print(f"{k} PCA components keep {kept:.6f} of the variance; surrogate field error "
          f"{field_err:.2e} of the largest value on 200 test parameters")  # fmt: skip

    measured = profile(TRUE[None])[0] + rng.normal(0.0, 0.01, S.size)
    x0 = (LB + UB) / 2
    runs = {}
    for name, jac in (("exact Jacobian", sur.jac), ("finite differences", "2-point")):
        calls = {"fields": 0, "jacobians": 0}

        def residual(p, calls=calls):
            calls["fields"] += 1
            return sur(p) - measured

        def jacobian(p, calls=calls, jac=jac):
            calls["jacobians"] += 1
            return jac(p)

        sur.cache_clear()
        res = least_squares(residual, x0, jac=jacobian if callable(jac) else jac,
                            bounds=sur.bounds())  # fmt: skip
        runs[name] = {"x": res.x, "residual": float(np.linalg.norm(res.fun)), **calls}
    print(f"{'solve':20s} {'a':>7s} {'b':>7s} {'w':>7s} {'|residual|':>11s} fields jacobians")
    for name, r in runs.items():
        a, b, w = r["x"]
        print(f"{name:20s} {a:7.4f} {b:7.4f} {w:7.4f} {r['residual']:11.4e} {r['fields']:6d} "
              f"{r['jacobians']:9d}")  # fmt: skip
    a, b, w = TRUE
    true_res = float(np.linalg.norm(profile(TRUE[None])[0] - measured))
    print(f"{'true parameters':20s} {a:7.4f} {b:7.4f} {w:7.4f} {true_res:11.4e}")
    return {"kept": kept, "field_err": field_err, "runs": runs, "true_residual": true_res}


if __name__ == "__main__":
    main()
