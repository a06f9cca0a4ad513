"""Design with a rate that spans decades: trained in log units with sklearn, optimized in physical.

An Arrhenius rate k(T, c) = A c exp(-E / (R T)) runs over six decades between 300 K and 500 K.
Trained on k itself (StandardScaler), a surrogate's error is set by the largest rates and the
small ones come out wrong, even negative; the usual remedy is to train on log k, here with a
sklearn ``Pipeline(FunctionTransformer(np.log, np.exp), StandardScaler())`` handed to
``sb.fit`` as the output scaler. The surrogate then answers k, its gradient and Hessian in
physical units, and the design problem

    minimize  T / 100 + c   subject to  k(T, c) >= k_target

is solved with scipy's trust-constr (exact constraint Jacobian and Hessian through
``sb.scipy_constraint``) and with IPOPT on the symbolic CasADi translation, against the design
that the true k gives.

Prints: each output scaling's median and largest relative error of k on test points, then each
solver's design (T, c), the true rate there and the cost, beside the true optimum.
Run: ``python examples/log_scaled_design.py``.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

import surrogate_bridge as sb

A, E_R, K_TARGET = 1e7, 8000.0, 0.05  # pre-factor, activation temperature (K), required rate
LB, UB = np.array([300.0, 0.1]), np.array([500.0, 10.0])  # T (K), c (mol/L)


def rate(X: np.ndarray) -> np.ndarray:
    return A * X[..., 1] * np.exp(-E_R / X[..., 0])


def cost(x: np.ndarray) -> float:
    return float(x[0] / 100.0 + x[1])


def cost_grad(x: np.ndarray) -> np.ndarray:
    return np.array([0.01, 1.0])


def cost_hess(x: np.ndarray) -> np.ndarray:
    return np.zeros((2, 2))


def train(n_samples: int, epochs: int) -> dict[str, sb.Surrogate]:
    X = np.random.default_rng(0).uniform(LB, UB, (n_samples, 2))
    k = rate(X)[:, None]
    log_k = make_pipeline(FunctionTransformer(np.log, np.exp), StandardScaler()).fit(k)
    out = {}
    for name, scaler in (("standard", "standard"), ("log + standard", log_k)):
        net = sb.mlp((2, 32, 32, 1), "tanh", seed=0)
        out[name] = sb.fit(net, X, k, output_scaler=scaler, epochs=epochs, seed=0, progress=False)
    return out


def design(sur: sb.Surrogate, x0: np.ndarray) -> dict[str, np.ndarray]:
    con = sb.scipy_constraint(sur, K_TARGET, np.inf)
    bounds = sur.bounds()
    bounds.keep_feasible = True  # trust-constr's steps stay in the training domain
    opts = {"gtol": 1e-10, "xtol": 1e-12}
    scipy_x = minimize(cost, x0, jac=cost_grad, hess=cost_hess, constraints=[con],
                       bounds=bounds, method="trust-constr", options=opts).x  # fmt: skip
    import casadi as ca

    F = sb.casadi_function(sur, mode="symbolic")
    x = ca.MX.sym("x", 2)
    nlp = {"x": x, "f": x[0] / 100 + x[1], "g": F(x)}
    opts = {"print_time": 0, "ipopt.print_level": 0, "ipopt.sb": "yes"}
    sol = ca.nlpsol("S", "ipopt", nlp, opts)(x0=x0, lbx=bounds.lb, ubx=bounds.ub, lbg=K_TARGET)
    return {"trust-constr": scipy_x, "IPOPT": np.array(sol["x"]).ravel()}


def main(n_samples: int = 2000, epochs: int = 3000) -> dict:
    surs = train(n_samples, epochs)
    lo, hi = surs["standard"].domain  # (the training samples' range)
    test = np.random.default_rng(1).uniform(lo, hi, (2000, 2))
    truth = rate(test)
    errors = {}
    print(f"{'output scaling':>16} {'median rel err':>15} {'max rel err':>12}")
    for name, sur in surs.items():
        rel = np.abs(sur(test) / truth - 1.0)
        errors[name] = (float(np.median(rel)), float(rel.max()))
        print(f"{name:>16} {errors[name][0]:>15.2e} {errors[name][1]:>12.2e}")

    # the true optimum: the constraint is active (cost grows with T and c, the rate too)
    con_true = {"type": "ineq", "fun": lambda x: np.log(rate(x)) - np.log(K_TARGET)}
    x0 = np.array([450.0, 5.0])
    best = minimize(cost, x0, jac=cost_grad, constraints=[con_true],
                    bounds=list(zip(LB, UB, strict=True)), method="SLSQP").x  # fmt: skip
    designs = {"true rate (SLSQP)": best, **design(surs["log + standard"], x0)}
    print(f"\n{'solver':>18} {'T (K)':>8} {'c':>7} {'true k':>9} {'cost':>7}")
    for name, x in designs.items():
        print(f"{name:>18} {x[0]:>8.2f} {x[1]:>7.3f} {rate(x):>9.4f} {cost(x):>7.3f}")
    return {"errors": errors, "designs": designs}


if __name__ == "__main__":
    main()
