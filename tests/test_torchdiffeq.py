"""torchdiffeq adapter against real odeint / odeint_adjoint and exact trajectories."""

import numpy as np
import pytest
import torch
from problems import (
    A_DYN,
    P_SEED,
    DecayInTime,
    Hamiltonian,
    LinearField,
    Quadratic,
    linear_field_surrogate,
)
from scipy.linalg import expm
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

import surrogate_bridge as sb

TOL = {"dopri5": 1e-8, "rk4": 1e-6, "adjoint": 1e-6, "jac": 1e-12}


@pytest.fixture
def linear(device):
    return linear_field_surrogate(device=device)


def exact(y0, t):
    return np.stack([y0 @ expm(tk * A_DYN).T for tk in t])


@pytest.mark.parametrize(("method", "opts"), [("dopri5", {}), ("rk4", {"step_size": 0.01})])
def test_linear_field_batch_of_64(linear, method, opts, device):
    rhs = sb.ode_rhs(linear)
    y0 = torch.as_tensor(np.random.default_rng(0).normal(size=(64, 2)), device=device)
    t = torch.linspace(0, 2, 5, dtype=torch.float64, device=device)
    y = odeint(rhs, y0, t, method=method, rtol=1e-10, atol=1e-12, options=opts)
    assert y.shape == (5, 64, 2) and y.device.type == device and y.dtype == torch.float64
    np.testing.assert_allclose(
        y.cpu().numpy(), exact(y0.cpu().numpy(), t.cpu().numpy()), atol=TOL[method]
    )


def test_adjoint_gradient_wrt_y0(linear, device):
    rhs = sb.ode_rhs(linear)
    f64 = {"dtype": torch.float64, "device": device}
    y0 = torch.tensor([[1.0, 0.5], [-0.3, 2.0]], **f64, requires_grad=True)
    t = torch.tensor([0.0, 1.5], **f64)
    w = torch.tensor([2.0, -1.0], **f64)
    loss = (odeint_adjoint(rhs, y0, t, rtol=1e-10, atol=1e-12)[-1] @ w).sum()
    loss.backward()
    analytic = expm(1.5 * A_DYN).T @ w.cpu().numpy()  # d(w . e^{tA} y0)/dy0
    np.testing.assert_allclose(
        y0.grad.cpu().numpy(), np.tile(analytic, (2, 1)), atol=TOL["adjoint"]
    )
    assert all(p.grad is None for p in rhs.parameters())  # frozen by default


def test_time_dependent_surrogate():
    rhs = sb.ode_rhs(sb.Surrogate(DecayInTime(), n_in=2), time_input=True)
    t = torch.linspace(0, 2, 9, dtype=torch.float64)
    y = odeint(rhs, torch.ones(3, 1, dtype=torch.float64), t, rtol=1e-11, atol=1e-13)
    assert y.shape == (9, 3, 1)  # a 1-D state stays (B, 1)
    np.testing.assert_allclose(
        y[:, 0, 0].numpy(), np.exp(-(t + t**2 / 2).numpy()), atol=TOL["dopri5"]
    )


def test_jacobian_closed_form(linear, device):
    rhs = sb.ode_rhs(linear)
    y = torch.zeros(5, 3, 2, dtype=torch.float64, device=device)
    J = rhs.jacobian(0.0, y)
    assert J.shape == (5, 3, 2, 2)
    np.testing.assert_allclose(
        J.cpu().numpy(), np.broadcast_to(A_DYN, (5, 3, 2, 2)), atol=TOL["jac"]
    )
    np.testing.assert_allclose(rhs.jacobian(0.0, y[0, 0]).cpu().numpy(), A_DYN, atol=TOL["jac"])


def test_gradient_flow_of_seed_v():
    V = sb.Surrogate(Quadratic(P_SEED), n_in=2)
    flow = sb.gradient_flow(V)
    y0 = torch.as_tensor(np.random.default_rng(1).uniform(-3, 3, size=(32, 2)))
    t = torch.linspace(0, 3, 61, dtype=torch.float64)
    y = odeint(flow, y0, t, rtol=1e-9, atol=1e-11)
    v = np.einsum("tbi,ij,tbj->tb", y.numpy(), P_SEED, y.numpy())
    assert np.all(np.diff(v, axis=0) <= 1e-12)  # V decreases along all 32 trajectories
    assert np.abs(y[-1].numpy()).max() < 1e-2  # and they reach the origin
    np.testing.assert_allclose(
        flow.jacobian(0.0, y0).numpy(), np.broadcast_to(-2 * P_SEED, (32, 2, 2)), atol=TOL["jac"]
    )


def test_gradient_flow_is_differentiable():
    V = sb.Surrogate(Quadratic(P_SEED), n_in=2)
    flow = sb.gradient_flow(V)
    y0 = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.01], dtype=torch.float64)
    odeint(flow, y0, t, rtol=1e-11, atol=1e-13)[-1].sum().backward()
    analytic = expm(-0.01 * 2 * P_SEED).T @ np.ones(2)
    np.testing.assert_allclose(y0.grad.numpy(), analytic, atol=1e-7)
    y0.grad = None
    odeint_adjoint(flow, y0, t, rtol=1e-11, atol=1e-13)[-1].sum().backward()
    np.testing.assert_allclose(y0.grad.numpy(), analytic, atol=1e-7)


def test_trainable_copy_gets_gradients_and_surrogate_stays_frozen():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    sur = sb.Surrogate(net)
    rhs = sb.ode_rhs(sur, trainable=True)
    y0 = torch.ones(4, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 0.5], dtype=torch.float64)
    odeint_adjoint(rhs, y0, t).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rhs.parameters())
    assert all(not p.requires_grad for p in sur.function.parameters())
    assert all(p.grad is None for p in net.parameters())


def test_right_hand_sides_follow_update_weights_and_a_trainable_copy_keeps_its_own():
    """New weights go into the surrogate as a fresh copy swapped in whole (threads never see half
    of them); a right-hand side reads the surrogate's current function at every call, so an ODE
    built before the update integrates the new field, as scipy and CasADi callbacks do."""
    old, new = (nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)).double() for _ in "ab")
    V_new = sb.mlp((2, 8, 1), seed=1)
    sur, V = sb.Surrogate(old), sb.Surrogate(sb.mlp((2, 8, 1), seed=0))
    rhs, frozen_copy, flow = sb.ode_rhs(sur), sb.ode_rhs(sur, trainable=True), sb.gradient_flow(V)
    y = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    before = frozen_copy(0.0, y).detach().clone()
    sb.update_weights(sur, new)
    sb.update_weights(V, V_new)
    with torch.no_grad():
        torch.testing.assert_close(rhs(0.0, y), new(y), rtol=1e-15, atol=0)
        torch.testing.assert_close(rhs.jacobian(0.0, y[0]), torch.func.jacrev(new)(y[0]))
        torch.testing.assert_close(frozen_copy(0.0, y), before, rtol=0, atol=0)
    expected = -torch.func.grad(lambda z: V_new(z).sum())(y)
    torch.testing.assert_close(flow(0.0, y), expected, rtol=1e-14, atol=1e-15)
    ends = odeint(rhs, y, torch.tensor([0.0, 0.5], dtype=torch.float64), rtol=1e-10, atol=1e-12)
    ref = odeint(lambda t, z: new(z), y, torch.tensor([0.0, 0.5], dtype=torch.float64),
                 rtol=1e-10, atol=1e-12)  # fmt: skip
    torch.testing.assert_close(ends, ref, rtol=1e-12, atol=1e-14)


def test_a_right_hand_side_evaluates_the_surrogate_not_the_function_it_hands_out():
    sur = sb.Surrogate(nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)).double())
    rhs, y = sb.ode_rhs(sur), torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    before = rhs(0.0, y).detach().clone()
    with torch.no_grad():  # torch code editing the module it was handed
        rhs.function.rows.model[0].weight.mul_(2.0)
    torch.testing.assert_close(rhs(0.0, y), before, rtol=0, atol=0)
    assert rhs.function is sur.function


def test_errors():
    with pytest.raises(ValueError, match="n_in = 2 and n_out = 1.*time_input=True"):
        sb.ode_rhs(sb.Surrogate(DecayInTime(), n_in=2))
    with pytest.raises(ValueError, match="V must be scalar"):
        sb.gradient_flow(sb.Surrogate(LinearField(), n_in=2))
    rhs = sb.ode_rhs(sb.Surrogate(LinearField(), n_in=2))
    with pytest.raises(ValueError, match=r"y has shape \(4, 3\), expected \(\.\.\., 2\)"):
        rhs(0.0, torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="torch.float32.*float64"):
        rhs(0.0, torch.zeros(4, 2))


def test_a_hamiltonian_network_conserves_its_energy_and_keeps_no_graph_of_its_own():
    """The field J grad H, differentiated inside the model's forward: the flow conserves H
    (the truth), and a plain state's trajectory carries no graph (the model's own would be
    kept across every step otherwise)."""
    model = Hamiltonian(seed=2)
    rhs = sb.ode_rhs(sb.Surrogate(model))
    y0 = torch.tensor([[0.4, -0.3], [0.1, 0.2]], dtype=torch.float64)
    t = torch.linspace(0.0, 3.0, 7, dtype=torch.float64)
    path = odeint(rhs, y0, t, rtol=1e-11, atol=1e-13)
    assert path.grad_fn is None
    with torch.no_grad():
        energy = model.H(path.reshape(-1, 2)).reshape(7, 2)
    torch.testing.assert_close(energy, energy[:1].expand(7, 2), rtol=0, atol=1e-9)
    start = y0.clone().requires_grad_(True)  # asked for: the graph is kept
    odeint(rhs, start, t[:3])[-1].sum().backward()
    assert start.grad is not None and torch.isfinite(start.grad).all()


class FlowMap(nn.Module):
    """A neural ODE's flow map as the model: x -> y(T) of dy/dt = A y + net(y), integrated by
    odeint inside the forward (the solver writes the state into its own table in place, and
    reads its time grid as Python numbers)."""

    def __init__(self, method: str, **kw) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(2, 12), nn.Tanh(), nn.Linear(12, 2)).double()
        self.register_buffer("t", torch.tensor([0.0, 0.5], dtype=torch.float64))
        self.register_buffer("A", torch.as_tensor(A_DYN, dtype=torch.float64))
        self.method, self.kw = method, kw

    def forward(self, x):
        field = lambda t, y: y @ self.A.T + self.net(y)  # noqa: E731
        return odeint(field, x, self.t, method=self.method, **self.kw)[-1]


def test_a_fixed_step_flow_map_translates_and_saves(tmp_path):
    """rk4 with a fixed step: one graph (weight_reads.py follows the state through the
    solver's table, as vmap cannot, and fixes the time grid it reads), so CasADi and a saved
    file have it, agreeing with torch, whose Jacobian is central differences. No smoothness
    warning: torchdiffeq's y.abs() only reads a dtype (it once made the flow map warn)."""
    model = FlowMap("rk4", options={"step_size": 0.05})
    ref = sb.Surrogate(model, point_route="torch")
    sb.save(ref, tmp_path / "flow.sbz")
    others = [sb.load(tmp_path / "flow.sbz"), sb.Surrogate(model, point_route="casadi")]
    v = np.array([1.0, -0.5])
    for x in np.random.default_rng(0).uniform(-1, 1, (3, 2)):
        h = 1e-6
        fd = np.stack([(ref(x + e) - ref(x - e)) / (2 * h) for e in np.eye(2) * h], -1)
        np.testing.assert_allclose(ref.jac(x), fd, atol=1e-8)
        for sur in others:
            np.testing.assert_allclose(sur(x), ref(x), rtol=1e-14, atol=1e-15)
            np.testing.assert_allclose(sur.jac(x), ref.jac(x), rtol=1e-12, atol=1e-14)
            got, want = sur.lagrangian_hess(x, v), ref.lagrangian_hess(x, v)
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)


def test_an_adaptive_flow_map_is_still_refused_a_graph(tmp_path):
    """dopri5 chooses its steps from the state's values: no one graph computes it."""
    sur = sb.Surrogate(FlowMap("dopri5", rtol=1e-9, atol=1e-11))
    with pytest.raises(ValueError, match="data-dependent"):
        sb.save(sur, tmp_path / "flow.sbz")
