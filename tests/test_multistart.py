"""Many starts at once: known minima found, bounds kept, per-start answers as scipy's."""

import numpy as np
import pytest
import torch
from problems import P_SEED, ScaledQuadratic
from scipy.optimize import minimize
from torch import nn

import surrogate_bridge as sb

TOL = {"x": 1e-6}

HIMMELBLAU_MINIMA = np.array(
    [[3.0, 2.0], [-2.805118, 3.131312], [-3.779310, -3.283186], [3.584428, -1.848126]]
)


class Himmelblau(nn.Module):
    """(x^2 + y - 11)^2 + (x + y^2 - 7)^2 of physical x = z * c + s, output normalized."""

    def __init__(self, s, c, ys, yc):
        super().__init__()
        for name, v in dict(s=s, c=c, ys=ys, yc=yc).items():
            self.register_buffer(name, torch.as_tensor(np.asarray(v, dtype=np.float64)))

    def forward(self, z):
        x = z * self.c + self.s
        f = (x[:, 0] ** 2 + x[:, 1] - 11) ** 2 + (x[:, 0] + x[:, 1] ** 2 - 7) ** 2
        return ((f - self.ys) / self.yc)[:, None]


def himmelblau():
    s, c, ys, yc = [0.5, -0.3], [4.0, 3.0], [100.0], [50.0]
    model = Himmelblau(s, c, ys, yc)
    return sb.Surrogate(model, sb.Affine(s, c), sb.Affine(ys, yc), domain=([-5, -5], [5, 5]))


def test_himmelblau_behind_scalers_every_minimum_from_256_starts():
    res = sb.multistart(himmelblau(), n_starts=256, seed=0)
    assert res.success and res.converged.all()
    assert len(res.minima) == 4 and res.minima_count.sum() == 256
    for m in HIMMELBLAU_MINIMA:
        assert np.linalg.norm(res.minima - m, axis=1).min() < 1e-5  # the minima to 6 digits
    np.testing.assert_allclose(res.minima_fun, 0.0, atol=1e-9)
    assert res.fun == pytest.approx(0.0, abs=1e-9)


def test_bounds_are_kept_and_bind_at_the_box_constrained_minimum():
    sur = sb.Surrogate(ScaledQuadratic(P_SEED, [0.0, 0.0], [1.0, 1.0], [0.0], [1.0]), n_in=2)
    lb, ub = np.array([1.0, 0.5]), np.array([3.0, 2.0])  # the minimum (origin) lies outside
    res = sb.multistart(sur, bounds=list(zip(lb, ub, strict=True)), n_starts=32, seed=1)
    assert np.all(res.xs >= lb) and np.all(res.xs <= ub)
    ref = minimize(lambda x: x @ P_SEED @ x, [2.0, 1.0], jac=lambda x: 2 * P_SEED @ x,
                   method="L-BFGS-B", bounds=list(zip(lb, ub, strict=True)),
                   options={"gtol": 1e-12, "ftol": 1e-15})  # fmt: skip
    np.testing.assert_allclose(res.x, ref.x, atol=TOL["x"])
    assert len(res.minima) == 1


def test_every_start_reaches_what_scipy_reaches_from_it():
    P = np.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])
    s, c = [0.1, 0.2, 0.3], [2.0, 1.0, 3.0]
    model = ScaledQuadratic(P, s, c, [1.0], [2.0])
    sur = sb.Surrogate(model, sb.Affine(s, c), sb.Affine([1.0], [2.0]))
    x0 = np.random.default_rng(3).uniform(-4, 4, (20, 3))
    res = sb.multistart(sur, x0, bounds=[(-5, 5)] * 3, tol=1e-10)
    for x, end in zip(x0, res.xs, strict=True):
        one = minimize(sur, x, jac=sur.grad, method="L-BFGS-B", bounds=[(-5, 5)] * 3,
                       options={"gtol": 1e-10, "ftol": 1e-15})  # fmt: skip
        np.testing.assert_allclose(end, one.x, atol=TOL["x"])


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        (dict(method="BFGS"), ValueError, "L-BFGS-B"),
        (dict(constraints=[object()]), NotImplementedError, "not supported yet"),
        (dict(bounds=[(1, 0), (0, 1)]), ValueError, "lb <= ub"),
        (dict(bounds=[(0, 1)]), ValueError, "2 \\(min, max\\) pairs"),
        (dict(n_starts=0), ValueError, "n_starts must be a positive int"),
        (dict(x0=np.zeros((3, 3))), ValueError, "x0 has 3 features"),
    ],
)
def test_errors(kwargs, err, match):
    sur = himmelblau()
    with pytest.raises(err, match=match):
        sb.multistart(sur, **kwargs)


def test_vector_surrogate_and_unknown_domain_are_refused():
    with pytest.raises(ValueError, match="must be scalar"):
        sb.multistart(sb.Surrogate(sb.mlp((2, 4, 2), seed=0)), bounds=[(0, 1)] * 2)
    with pytest.raises(ValueError, match="no bounds given"):
        sb.multistart(sb.Surrogate(sb.mlp((2, 4, 1), seed=0)))
