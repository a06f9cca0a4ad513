"""Rewrites of a user's layers in the surrogate's copy (rewrites.py): the same values bit for
bit, exact derivatives, and the user's model untouched."""

import numpy as np
import pytest
import torch
from torch import nn

import surrogate_bridge as sb
from surrogate_bridge.rewrites import exact_layers

EDGES = [0.0, -0.0, 3.0, -3.0, 1e-300, -1e-300, float("inf"), float("-inf")]


def _grid(lo, hi):
    return torch.cat([torch.linspace(lo, hi, 200_001, dtype=torch.float64), torch.tensor(EDGES)])


@pytest.mark.parametrize(
    "layer", [nn.CELU(0.7), nn.CELU(), nn.CELU(2.5), nn.CELU(1e-3), nn.Hardsigmoid()]
)
def test_rewritten_layers_give_the_same_values_bit_for_bit(layer):
    x = _grid(-40.0, 8.0)
    new = exact_layers(nn.Sequential(layer))[0]
    assert type(new) is not type(layer)
    assert torch.equal(new(x), layer(x))


def test_celu_derivatives_are_exact_and_the_users_model_is_untouched():
    """torch's own CELU derivative takes 1 / alpha in single precision (off by ~1e-8 relative
    at alpha = 0.7); the surrogate's is the analytic exp(x / alpha) to float64 rounding, on
    every route."""
    alpha = 0.7
    model = nn.Sequential(nn.CELU(alpha))
    x = torch.tensor([[-0.3], [-1.2], [-2.0]], dtype=torch.float64, requires_grad=True)
    (g_torch,) = torch.autograd.grad(model(x).sum(), x)
    exact = torch.exp(x.detach() / alpha)
    assert (g_torch / exact - 1).abs().max() > 1e-9  # torch's own error, which is not ours
    for route in ("torch", "numpy", "casadi"):
        sur = sb.Surrogate(model, n_in=1, point_route=route)
        for xi in x.detach().numpy():
            e = np.exp(xi[0] / alpha)
            np.testing.assert_allclose(sur.grad(xi), [e], rtol=1e-15)
            np.testing.assert_allclose(sur.hess(xi), [[e / alpha]], rtol=1e-15)
    assert type(model[0]) is nn.CELU  # the rewrite is in the surrogate's copy only


def test_hardsigmoid_has_a_zero_second_derivative_with_the_smoothness_warning():
    model = nn.Sequential(nn.Linear(2, 4), nn.Hardsigmoid(), nn.Linear(4, 1)).double()
    sur = sb.Surrogate(model)
    x = np.array([0.2, -0.1])
    with pytest.warns(sb.SmoothnessWarning, match="hardtanh"):
        H = sur.hess(x)
    np.testing.assert_array_equal(H, np.zeros((2, 2)))
    with torch.no_grad():  # the gradient is torch's: W2 diag(1/6 inside (-3, 3)) W1
        pre = model[0](torch.as_tensor(x))
        inside = ((pre > -3) & (pre < 3)).double() / 6
        g = (model[2].weight * inside) @ model[0].weight
    np.testing.assert_allclose(sur.grad(x), g[0].numpy(), rtol=1e-15)
    assert type(model[1]) is nn.Hardsigmoid


def test_subclasses_and_functional_calls_are_not_rewritten():
    class MyCELU(nn.CELU):  # a subclass may change forward: left alone
        pass

    copy = exact_layers(nn.Sequential(MyCELU(0.7), nn.Tanh()))
    assert type(copy[0]) is MyCELU and type(copy[1]) is nn.Tanh
