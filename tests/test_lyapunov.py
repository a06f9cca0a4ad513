"""sb.lyapunov: falsification and regions of attraction, against closed forms, dense grids and
simulation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from problems import (
    A_DYN,
    P_SEED,
    Hamiltonian,
    linear_field_surrogate,
    scaled_quadratic_surrogate,
)

import surrogate_bridge as sb

# reversed Van der Pol: x1' = -x2, x2' = x1 - (1 - x1^2) x2; stable origin, bounded region
VDP_BOX = [(-2.5, 2.5), (-3.5, 3.5)]
VDP_A = np.array([[0.0, -1.0], [1.0, -1.0]])  # its linearization at the origin
VDP_P = scipy.linalg.solve_continuous_lyapunov(VDP_A.T, -np.eye(2))


def vdp_torch(x):
    return torch.stack([-x[:, 1], x[:, 0] - (1 - x[:, 0] ** 2) * x[:, 1]], -1)


def vdp_numpy(X):
    return np.stack([-X[:, 1], X[:, 0] - (1 - X[:, 0] ** 2) * X[:, 1]], 1)


class VdP(torch.nn.Module):
    def forward(self, x):
        return vdp_torch(x)


def grid_level(v, vdot, X, box, radius):
    """Ground truth on a dense grid: the least V over grid points that break the decrease
    condition outside the ball, or that lie on the box's faces."""
    lb, ub = np.array(box).T
    bad = (np.linalg.norm(X, axis=1) >= radius) & (vdot >= 0)
    face = np.any((X == lb) | (X == ub), axis=1)
    return min(v[bad].min(initial=np.inf), v[face].min())


def vdp_grid(k1=1001, k2=1401):
    g1, g2 = np.meshgrid(np.linspace(*VDP_BOX[0], k1), np.linspace(*VDP_BOX[1], k2))
    return np.stack([g1.ravel(), g2.ravel()], 1)


# ---------------------------------------------------------------------------------------------
def test_hurwitz_linear_system_is_certified_on_a_box():
    """x' = A x with A Hurwitz and P from the Lyapunov equation: no counterexample, and the
    worst margins are positive; both surrogates sit behind non-trivial scalers."""
    P = scipy.linalg.solve_continuous_lyapunov(A_DYN.T, -np.eye(2))
    V, f = scaled_quadratic_surrogate(P), linear_field_surrogate()
    res = sb.lyapunov.falsify(V, f, [(-3, 3), (-3, 3)], seed=0)
    assert res.certified and res.counterexamples.shape == (0, 2)
    assert res.worst["positivity"] > 0 and res.worst["decrease"] > 0
    # the worst decrease margin sits on the excluded ball, where -Vdot = |x|^2 exactly
    x = res.worst_x["decrease"]
    assert np.isclose(res.worst["decrease"], x @ x, rtol=1e-9)


def test_seed_problem_counterexamples_truly_violate():
    """The seed P with dynamics for which x^T P x is not decreasing everywhere: the
    counterexamples each break V-dot < 0 by the closed form 2 x^T P A x."""
    V, f = scaled_quadratic_surrogate(P_SEED), linear_field_surrogate()
    res = sb.lyapunov.falsify(V, f, [(-2, 2), (-2, 2)], seed=1, n_samples=1024)
    assert not res.certified
    C = res.counterexamples
    assert len(C) > 10 and set(res.violated) == {"decrease"}
    vdot = 2 * np.einsum("ij,jk,ik->i", C, P_SEED, C @ A_DYN.T)
    assert np.all(vdot >= 0)
    assert np.allclose(res.margins, -vdot, rtol=1e-9, atol=1e-9)
    assert np.all(np.linalg.norm(C, axis=1) >= 0.04 * (1 - 1e-12))  # outside the ball
    assert np.all(np.abs(C) <= 2)
    # the worst (most normalized violation) comes first: along the eigenvector of the largest
    # eigenvalue of A^T P + P A, where V-dot / |x|^2 reaches that eigenvalue
    x = C[0]
    top = np.linalg.eigvalsh(A_DYN.T @ P_SEED + P_SEED @ A_DYN).max()
    assert np.isclose(-res.margins[0] / (x @ x), top, rtol=1e-6)


def test_positivity_counterexamples_and_the_level_restriction():
    """An indefinite V breaks positivity; restricted to a sublevel set, only points inside it
    are reported."""
    P = np.array([[1.0, 0.0], [0.0, -0.5]])
    V, f = scaled_quadratic_surrogate(P), linear_field_surrogate()
    res = sb.lyapunov.falsify(V, f, [(-1, 1), (-1, 1)], seed=0, n_samples=512)
    pos = res.counterexamples[np.isin(res.violated, ["positivity", "both"])]
    assert len(pos) and np.all(np.einsum("ij,jk,ik->i", pos, P, pos) <= 0)
    assert res.worst["positivity"] < 0
    inside = sb.lyapunov.falsify(V, f, [(-1, 1), (-1, 1)], seed=0, n_samples=512, level=0.1)
    v = np.einsum("ij,jk,ik->i", inside.counterexamples, P, inside.counterexamples)
    assert np.all(v <= 0.1 + 1e-12)


def test_region_of_attraction_van_der_pol_against_a_dense_grid_and_simulation():
    """The quadratic V of the linearization: level within 3% below the grid's truth and never
    above it; every simulated point inside converges."""
    Pt = torch.as_tensor(VDP_P)
    V = sb.Surrogate(lambda x: ((x @ Pt) * x).sum(-1), n_in=2)
    roa = sb.lyapunov.region_of_attraction(V, VdP(), VDP_BOX, seed=0, simulate=64)
    X = vdp_grid()
    v = np.einsum("ij,jk,ik->i", X, VDP_P, X)
    vdot = 2 * np.einsum("ij,jk,ik->i", X, VDP_P, vdp_numpy(X))
    truth = grid_level(v, vdot, X, VDP_BOX, 0.07)
    assert 0.97 * truth <= roa.level <= truth
    assert roa.limit == "decrease" and roa.certified
    x = roa.x_limit  # the limiting point is on the level set, where V-dot = 0
    assert np.isclose(x @ VDP_P @ x, roa.level, rtol=1e-9)
    assert abs(2 * x @ VDP_P @ vdp_numpy(x[None])[0]) < 1e-6
    assert roa.simulation.n_converged == 64
    inside = roa.sample(200, seed=1)
    assert roa.contains(inside).all() and np.all(
        np.einsum("ij,jk,ik->i", inside, VDP_P, inside) <= roa.level
    )


def test_region_of_attraction_with_a_trained_V_and_ode_rhs_dynamics():
    """V learned by sb.fit from samples, the dynamics given as an sb.ode_rhs module of a
    surrogate: the level against a dense grid of the learned V (never above, within 3%)."""
    rng = np.random.default_rng(0)
    X = rng.uniform([-2.5, -3.5], [2.5, 3.5], (600, 2))
    y = np.einsum("ij,jk,ik->i", X, VDP_P, X)
    V = sb.fit(
        sb.mlp([2, 24, 24, 1], seed=0),
        X,
        y,
        epochs=1500,
        seed=0,
        progress=False,
        domain=np.array(VDP_BOX).T,
    )
    rhs = sb.ode_rhs(sb.Surrogate(VdP(), n_in=2))
    roa = sb.lyapunov.region_of_attraction(V, rhs, VDP_BOX, seed=0, simulate=32, exclude_radius=0.2)
    G = vdp_grid(401, 561)
    v, g = V(G), V.grad(G)
    truth = grid_level(v, np.einsum("ij,ij->i", g, vdp_numpy(G)), G, VDP_BOX, 0.2)
    assert 0.97 * truth <= roa.level <= truth
    assert roa.certified and roa.simulation.fraction == 1.0
    # the learned V is close to the quadratic one, and so is its region
    assert abs(roa.level / 2.3045 - 1) < 0.15
    # and the learned tanh net is proven a Lyapunov function just inside its estimated region
    proof = sb.lyapunov.certify(V, rhs, VDP_BOX, level=0.95 * roa.level, exclude_radius=0.2)
    assert proof.proven, proof


def test_decay_and_a_shifted_equilibrium():
    """x' = -(x - e) + (x - e)^3 around e, V = |x - e|^2: V-dot = -2 r^2 + 2 sum (x-e)^4; with
    decay, the level is where the decrease first fails along an axis: 2 s^2 (1 - s^2) = decay s^2
    along an axis, i.e. s^2 = 1 - decay / 2."""
    e = np.array([0.5, -1.0])
    et = torch.as_tensor(e)
    V = sb.Surrogate(lambda x: ((x - et) ** 2).sum(-1), n_in=2)
    field = lambda x: -(x - et) + (x - et) ** 3  # noqa: E731
    box = [(-1.5, 2.5), (-3, 1)]
    for decay in (0.0, 0.5):
        roa = sb.lyapunov.region_of_attraction(V, field, box, equilibrium=e, decay=decay, seed=0)
        assert np.isclose(roa.level, 1 - decay / 2, rtol=1e-6), (decay, roa)
        assert roa.limit == "decrease"
    # a box smaller than the region: the box limits the level (V's least value on a face)
    roa = sb.lyapunov.region_of_attraction(V, field, [(0, 1.2), (-1.6, -0.3)], equilibrium=e)
    assert roa.limit == "box" and np.isclose(roa.level, 0.5**2, rtol=1e-9)  # the face x0 = 0
    assert np.allclose(roa.x_limit, [0.0, -1.0], atol=1e-6)


def test_simulation_counts_convergence_honestly():
    sim = sb.lyapunov.simulate(lambda x: x, [[0.1, 0.0], [0.0, 0.0]], t_final=5.0)
    assert sim.converged.tolist() == [False, True] and sim.fraction == 0.5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(f=lambda x: x[:, :1]), "f must map the 2 states"),
        (dict(bounds=[(-1, np.inf), (-1, 1)]), "finite box"),
        (dict(equilibrium=[0.0]), "equilibrium must be 2 finite numbers"),
        (dict(exclude_radius=-1.0), "exclude_radius must be a number >= 0"),
        (dict(decay=-0.1), "decay must be a number >= 0"),
        (dict(n_starts=1.5), "n_starts must be an int"),
        (dict(level=float("nan")), "level must be a finite number"),
        (dict(f=3), "f must be a Surrogate"),
    ],
)
def test_errors_name_the_argument(kwargs, message):
    V = sb.Surrogate(lambda x: (x**2).sum(-1), n_in=2)
    args = dict(f=lambda x: -x, bounds=[(-1, 1), (-1, 1)]) | kwargs
    with pytest.raises((ValueError, TypeError), match=message):
        sb.lyapunov.falsify(V, args.pop("f"), args.pop("bounds"), **args)


def test_refuses_vector_V_and_non_autonomous_dynamics():
    with pytest.raises(ValueError, match="V must be scalar"):
        sb.lyapunov.falsify(sb.Surrogate(torch.nn.Linear(2, 2)), lambda x: -x, [(-1, 1)] * 2)
    timed = sb.ode_rhs(sb.Surrogate(torch.nn.Linear(3, 2)), time_input=True)
    V = sb.Surrogate(lambda x: (x**2).sum(-1), n_in=2)
    with pytest.raises(ValueError, match="autonomous"):
        sb.lyapunov.falsify(V, timed, [(-1, 1)] * 2)


# certificates: interval bounds with branch and bound -------------------------------------------
@pytest.mark.parametrize("act", ["tanh", "softplus", "sigmoid", "relu", "silu", "gelu", "elu"])
def test_interval_bounds_enclose_values_and_derivatives(act):
    """On random boxes, every sampled point's value and Jacobian lie inside the bounds."""
    from surrogate_bridge.intervals import IntervalProgram

    rng = np.random.default_rng(0)
    sur = sb.Surrogate(sb.mlp((3, 8, 8, 2), act, seed=1), sb.Affine([0.1, 0.2, 0.3], [2, 1, 3]),
                       sb.Affine([1.0, -1.0], [3.0, 0.5]))  # fmt: skip
    program = IntervalProgram(sur.export(one_point=True))
    center = rng.uniform(-2, 2, (20, 3))
    half = rng.uniform(0.01, 0.5, (20, 3))
    iv = program(torch.as_tensor(center - half), torch.as_tensor(center + half))
    for b in range(20):
        X = center[b] + half[b] * rng.uniform(-1, 1, (50, 3))
        Y, J = sur(X), sur.jac(X)
        tol = 1e-12
        assert np.all(Y >= iv.lo[b].numpy() - tol) and np.all(Y <= iv.hi[b].numpy() + tol)
        assert np.all(J >= iv.dlo[b].numpy() - tol) and np.all(J <= iv.dhi[b].numpy() + tol)


def test_certificate_proves_a_hurwitz_system_and_refuses_the_seed_problem():
    P = scipy.linalg.solve_continuous_lyapunov(A_DYN.T, -np.eye(2))
    f = linear_field_surrogate()
    proof = sb.lyapunov.certify(scaled_quadratic_surrogate(P), f, [(-3, 3), (-3, 3)])
    assert proof.proven and proof.unresolved.shape == (0, 2, 2)
    seed = sb.lyapunov.certify(scaled_quadratic_surrogate(P_SEED), f, [(-2, 2), (-2, 2)],
                               max_boxes=20_000)  # fmt: skip
    assert not seed.proven
    # the unresolved boxes hold the falsifier's counterexamples
    C = sb.lyapunov.falsify(scaled_quadratic_surrogate(P_SEED), f, [(-2, 2), (-2, 2)],
                            seed=1, n_samples=512).counterexamples  # fmt: skip
    lo, hi = seed.unresolved[:, 0], seed.unresolved[:, 1]
    inside = np.all((C[:, None] >= lo - 1e-12) & (C[:, None] <= hi + 1e-12), axis=2).any(1)
    assert inside.all()


class _PortHamiltonian(torch.nn.Module):
    """J grad H - damping * x: a Hamiltonian network's field (differentiated inside its
    forward) with linear damping, or with negative damping pumping energy in."""

    def __init__(self, damping: float) -> None:
        super().__init__()
        self.field, self.damping = Hamiltonian(seed=0), damping

    def forward(self, x):
        return self.field(x) - self.damping * x


class _SquaredNorm(torch.nn.Module):
    def forward(self, x):
        return (x * x).sum(-1, keepdim=True)


def test_a_field_that_differentiates_inside_its_forward_is_certified():
    """Interval bounds through the traced graph of J grad H (through_autograd.py: the backward
    operations included): damped, V = |x|^2 decreases outside a small ball, as a dense grid
    of torch's own values confirms; pumped, it is not proven."""
    V, box = sb.Surrogate(_SquaredNorm(), n_in=2), [(-0.5, 0.5), (-0.5, 0.5)]
    damped = sb.Surrogate(_PortHamiltonian(2.0))
    proof = sb.lyapunov.certify(V, damped, box, exclude_radius=0.05)
    assert proof.proven
    g = np.linspace(-0.5, 0.5, 81)
    X = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    X = X[np.linalg.norm(X, axis=1) >= 0.05]
    assert (np.sum(2 * X * damped(X), axis=1) < 0).all()
    pumped = sb.Surrogate(_PortHamiltonian(-0.5))
    assert not sb.lyapunov.certify(V, pumped, box, exclude_radius=0.05, max_boxes=2_000).proven


def test_certificate_of_the_van_der_pol_region_just_below_and_above_its_level():
    Pt = torch.as_tensor(VDP_P)
    V = sb.Surrogate(lambda x: ((x @ Pt) * x).sum(-1), n_in=2)
    level = sb.lyapunov.region_of_attraction(V, VdP(), VDP_BOX, seed=0).level
    below = sb.lyapunov.certify(V, VdP(), VDP_BOX, level=0.98 * level)
    above = sb.lyapunov.certify(V, VdP(), VDP_BOX, level=1.02 * level)
    assert below.proven and not above.proven
    # soundness against a dense grid: nothing in the proven set breaks the decrease condition
    X = vdp_grid(501, 701)
    v = np.einsum("ij,jk,ik->i", X, VDP_P, X)
    vdot = 2 * np.einsum("ij,jk,ik->i", X, VDP_P, vdp_numpy(X))
    assert not np.any((v <= 0.98 * level) & (np.linalg.norm(X, axis=1) >= 0.07) & (vdot >= 0))
    with pytest.raises(ValueError, match="cannot bound the model.*floor.*no interval rule"):
        sb.lyapunov.certify(sb.Surrogate(lambda x: torch.floor(x).sum(-1), n_in=2), VdP(), VDP_BOX)
    with pytest.raises(ValueError, match="cannot bound the model.*sign is discontinuous"):
        sb.lyapunov.certify(sb.Surrogate(lambda x: torch.sign(x).sum(-1), n_in=2), VdP(), VDP_BOX)


def test_certificates_read_the_forms_people_write():
    """V as an einsum quadratic form and the field as (A @ x.T).T (a product of the input with
    itself; a transpose that moves the batch axis; once refused by the bounds): the Hurwitz
    system is proven, and the seed problem, whose counterexamples are real, is not."""
    P = scipy.linalg.solve_continuous_lyapunov(A_DYN.T, -np.eye(2))
    At = torch.as_tensor(A_DYN)
    f = sb.Surrogate(lambda x: (At @ x.T).T, n_in=2)
    for Q, holds in ((P, True), (P_SEED, False)):
        Qt = torch.as_tensor(Q)
        V = sb.Surrogate(lambda x, Qt=Qt: torch.einsum("bi,ij,bj->b", x, Qt, x), n_in=2)
        proof = sb.lyapunov.certify(V, f, [(-2, 2), (-2, 2)], max_boxes=20_000)
        assert proof.proven is holds


def test_surrogates_on_a_device_give_the_cpu_results(device):
    """V and f on the device (the batched margins run there): the seed problem's
    counterexamples and the Van der Pol region are the CPU's, and the proof holds."""
    V, f = scaled_quadratic_surrogate(P_SEED, device=device), linear_field_surrogate(device=device)
    here = sb.lyapunov.falsify(V, f, [(-2, 2), (-2, 2)], seed=1, n_samples=256)
    ref = sb.lyapunov.falsify(scaled_quadratic_surrogate(P_SEED), linear_field_surrogate(),
                              [(-2, 2), (-2, 2)], seed=1, n_samples=256)  # fmt: skip
    assert not here.certified and len(here.counterexamples) == len(ref.counterexamples)
    np.testing.assert_allclose(here.counterexamples, ref.counterexamples, atol=1e-6)
    Pt = torch.as_tensor(VDP_P, device=device)
    Vq = sb.Surrogate(lambda x: ((x @ Pt) * x).sum(-1), n_in=2, device=device)
    roa = sb.lyapunov.region_of_attraction(Vq, VdP(), VDP_BOX, seed=0, simulate=16)
    Pc = torch.as_tensor(VDP_P)
    cpu = sb.lyapunov.region_of_attraction(sb.Surrogate(lambda x: ((x @ Pc) * x).sum(-1), n_in=2),
                                           VdP(), VDP_BOX, seed=0)  # fmt: skip
    assert roa.level == pytest.approx(cpu.level, rel=1e-9)
    assert roa.simulation.n_converged == 16
    cert = sb.lyapunov.certify(Vq, VdP(), VDP_BOX, level=0.95 * roa.level, exclude_radius=0.15)
    assert cert.proven


class L1(torch.nn.Module):
    """|x1| + |x2| as a ReLU network: relu(x) + relu(-x)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(2, 4, bias=False), torch.nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]]))
            self.b.weight.fill_(1.0)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_a_relu_network_is_certified_through_its_kinks():
    """V = |x|_1 for x' = -x: across the axes the bounds hold both one-sided slopes (Clarke's
    generalized gradient), and the decrease is still proven there; for x' = x it is refused."""
    V = sb.Surrogate(L1().double(), n_in=2)
    stable = sb.lyapunov.certify(V, lambda x: -x, [(-1, 1), (-1, 1)], exclude_radius=0.1)
    assert stable.proven
    unstable = sb.lyapunov.certify(V, lambda x: x, [(-1, 1), (-1, 1)], exclude_radius=0.1,
                                   max_boxes=2000)  # fmt: skip
    assert not unstable.proven


class SquaredFeatures(torch.nn.Module):
    def forward(self, z):
        return (z**2).sum(-1, keepdim=True)


@pytest.mark.parametrize("kind", ["log", "yeo-johnson"])
def test_certificates_through_log_and_power_input_scalers(kind):
    """V = |warp(x)|^2 with a log (equilibrium x* = (1, 1), f = -x log x, so z = log x decays
    as z' = -z) or a Yeo-Johnson input step (x* = 0, f = -x): both proven; a box that leaves
    where the log is defined is refused by name."""
    from sklearn.preprocessing import FunctionTransformer, PowerTransformer

    X = np.random.default_rng(0).uniform(0.2, 3.0, (64, 2))
    if kind == "log":
        scaler, eq, box = FunctionTransformer(np.log, np.exp).fit(X), [1.0, 1.0], [(0.4, 2.5)] * 2
        f = lambda x: -x * torch.log(x)  # noqa: E731
    else:
        scaler = PowerTransformer(standardize=False).fit(X - 1.0)
        eq, box, f = None, [(-1.5, 1.5)] * 2, (lambda x: -x)
    V = sb.Surrogate(SquaredFeatures(), scaler, n_in=2, extrapolation="ignore")
    proof = sb.lyapunov.certify(V, f, box, equilibrium=eq, exclude_radius=0.05)
    assert proof.proven, proof
    if kind == "log":
        with pytest.raises(ValueError, match=r"feature 0 leave where V's input scaler is defined"):
            sb.lyapunov.certify(V, f, [(-0.5, 2.0), (0.4, 2.5)], equilibrium=eq)
