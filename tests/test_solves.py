"""Models that solve linear systems in their forward: a mass matrix's M(q)^-1 tau, an inverse,
a Lagrangian network's accelerations (gradient and Hessian of L inside the forward, then a
solve). CasADi translates each solve per system with its symbolic ``solve`` (exact
derivatives), a saved file may hold them, and every route agrees with torch, whose
derivatives agree with central differences."""

import numpy as np
import pytest
import torch
from problems import Inverse, Lagrangian, MassMatrix

import surrogate_bridge as sb

ca = pytest.importorskip("casadi")

MODELS = {"mass-matrix": (MassMatrix, 4), "inverse": (Inverse, 4), "lagrangian": (Lagrangian, 2)}
pytestmark = pytest.mark.filterwarnings(  # torch's own, from its batching rule for solve
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)


def points(n_in: int) -> np.ndarray:
    return np.random.default_rng(3).uniform(-0.8, 0.8, (3, n_in))


def central(f, x, h):
    return np.stack([(f(x + e) - f(x - e)) / (2 * h) for e in np.eye(len(x)) * h], -1)


@pytest.mark.parametrize("name", list(MODELS))
def test_torch_derivatives_are_central_differences(name):
    make, n_in = MODELS[name]
    sur = sb.Surrogate(make(), n_in=n_in, point_route="torch")
    for x in points(n_in):
        np.testing.assert_allclose(
            sur.jac(x).reshape(-1, n_in), central(sur, x, 1e-6).reshape(-1, n_in), atol=1e-7
        )
        jac = central(lambda p: sur.jac(p), x, 1e-5)
        np.testing.assert_allclose(sur.hess(x).reshape(jac.shape), jac, atol=1e-6)


@pytest.mark.parametrize("name", list(MODELS))
def test_casadi_and_a_saved_file_agree_with_torch(name, tmp_path):
    make, n_in = MODELS[name]
    model = make()
    ref = sb.Surrogate(model, n_in=n_in, point_route="torch")
    sb.save(ref, tmp_path / "s.sbz")
    others = [sb.load(tmp_path / "s.sbz"), sb.Surrogate(model, n_in=n_in, point_route="casadi")]
    F, z = sb.casadi_function(ref, mode="symbolic"), ca.MX.sym("z", n_in)
    v = np.linspace(1.0, -1.0, ref.n_out)
    H = ca.Function("H", [z], [ca.hessian(ca.dot(ca.DM(v), F(z)), z)[0]])
    X = points(n_in)
    for sur in others:
        np.testing.assert_allclose(sur(X), ref(X), rtol=1e-13, atol=1e-14)
    for x in X:
        want = ref.lagrangian_hess(x, v) if ref.n_out > 1 else ref.hess(x)
        np.testing.assert_allclose(np.array(F(x)).ravel(), np.ravel(ref(x)), rtol=1e-13)
        np.testing.assert_allclose(np.array(H(x)), want, rtol=1e-11, atol=1e-12)
        for sur in others:
            np.testing.assert_allclose(sur.jac(x), ref.jac(x), rtol=1e-12, atol=1e-13)
            got = sur.lagrangian_hess(x, v) if ref.n_out > 1 else sur.hess(x)
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)


def test_the_translation_of_a_solve_against_numpy():
    """One system and a batch of them (broadcast), B a vector or a matrix: CasADi's values are
    numpy's solution."""

    class Systems(torch.nn.Module):
        def forward(self, z):
            A = z[:, :4].reshape(-1, 1, 2, 2) + torch.tensor(
                [[[3.0, 0.0], [0.0, 2.0]], [[1.0, 0.5], [0.0, 4.0]]], dtype=z.dtype
            )
            vec = torch.linalg.solve(A, z[:, 4:6, None].transpose(1, 2).expand(-1, 2, 2))
            mat = torch.linalg.solve(A[:, 0], z[:, :4].reshape(-1, 2, 2))
            return torch.cat([vec.flatten(1), mat.flatten(1)], 1)

    sur = sb.Surrogate(Systems(), n_in=6)
    F = sb.casadi_function(sur, mode="symbolic")
    x = np.linspace(-0.5, 0.7, 6)
    A = x[:4].reshape(1, 2, 2) + np.array([[[3.0, 0.0], [0.0, 2.0]], [[1.0, 0.5], [0.0, 4.0]]])
    vec = np.linalg.solve(A, np.broadcast_to(x[4:6], (2, 2))[..., None])[..., 0]
    mat = np.linalg.solve(A[0], x[:4].reshape(2, 2))
    np.testing.assert_allclose(np.array(F(x)).ravel(), np.r_[vec.ravel(), mat.ravel()], rtol=1e-13)
