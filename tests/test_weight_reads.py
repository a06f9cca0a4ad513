"""A forward whose Python reads its own weights' values (``weight_reads.py``): neuromancer's
soft exponential branches on its parameter, a model computes with a weight's ``.item()``. Each
exports as the branch taken, so it has every route, a saved file and a symbolic CasADi
translation; a saved graph refuses new weights that take another branch."""

import copy
import io
import pickle

import numpy as np
import pytest
import torch
from problems import ReadsWeights, SoftExponential
from torch import nn

import surrogate_bridge as sb

BRANCHES = {"identity": 0.0, "logarithm": -0.4, "exponential": 0.3}
X = np.array([[0.1, -0.2], [0.7, 0.4], [-0.5, 0.9]])


def net(alpha: float, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 8), SoftExponential(alpha), nn.Linear(8, 1)).double()


def reloaded(sur: sb.Surrogate) -> sb.Surrogate:
    buf = io.BytesIO()
    sb.save(sur, buf)
    buf.seek(0)
    return sb.load(buf)


def central_grad(f, x, h=1e-6):
    return np.array([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(len(x))]).T


def check_against_torch(model, sur):
    """Values against the model itself; gradients and Hessians against central differences."""
    with torch.no_grad():
        truth = model(torch.tensor(X)).numpy()
    np.testing.assert_allclose(sur(X), truth.reshape(sur(X).shape), rtol=1e-13, atol=1e-14)
    for x in X:
        g = sur.grad(x)
        np.testing.assert_allclose(g, central_grad(lambda p: float(sur(p)), x), atol=1e-8)
        np.testing.assert_allclose(sur.hess(x), central_grad(sur.grad, x, 1e-5), atol=1e-6)


@pytest.mark.parametrize("alpha", BRANCHES.values(), ids=list(BRANCHES))
@pytest.mark.parametrize("route", ["torch", "numpy", "casadi"])
def test_each_branch_on_each_route(alpha, route):
    model = net(alpha)
    sur = sb.Surrogate(model, point_route=route)
    check_against_torch(model, sur)
    assert model[1].alpha.item() == alpha  # the user's model untouched


@pytest.mark.parametrize("alpha", BRANCHES.values(), ids=list(BRANCHES))
def test_each_branch_saved_and_translated(alpha):
    model = net(alpha)
    sur = sb.Surrogate(model)
    check_against_torch(model, reloaded(sur))
    ca = pytest.importorskip("casadi")
    F = sb.casadi_function(sur, mode="symbolic")
    x = ca.MX.sym("x", 2)
    H = ca.Function("H", [x], [ca.hessian(F(x), x)[0]])
    for p in X:
        np.testing.assert_allclose(float(F(p)), float(sur(p)), rtol=1e-13)
        np.testing.assert_allclose(np.array(H(p)), sur.hess(p), rtol=1e-12, atol=1e-13)


def test_capturing_prints_nothing(capfd):
    """(torch.export, failing on the branch, logged its graph to stderr before the retry.)"""
    reloaded(sb.Surrogate(net(0.3)))
    assert capfd.readouterr() == ("", "")


def test_numbers_read_from_weights_and_a_tensor_kept_on_the_model():
    """``.item()`` and ``float()`` of weights are constants of the graph; the attribute the
    forward assigns (torch.export notes it in a warning, an error under this suite's filters)
    is the model's business."""
    model = ReadsWeights()
    for route in ("torch", "numpy", "casadi"):
        sur = sb.Surrogate(model, point_route=route)
        check_against_torch(model, sur)
        check_against_torch(model, copy.deepcopy(sur))  # (self.last, a non-leaf, is detached)
        check_against_torch(model, pickle.loads(pickle.dumps(sur)))
    check_against_torch(model, reloaded(sb.Surrogate(model)))


def test_a_branch_on_the_input_is_still_refused():
    class OnInput(nn.Module):
        def forward(self, z):
            return z.sum(-1, keepdim=True) if z.sum() > 0 else -z.sum(-1, keepdim=True)

    with pytest.raises(ValueError, match="branches on its input"):
        sb.save(sb.Surrogate(OnInput(), n_in=2), io.BytesIO())


def test_a_saved_graph_refuses_weights_that_take_another_branch():
    exp, other_exp, log = (
        reloaded(sb.Surrogate(net(a, s))) for a, s in [(0.3, 0), (0.5, 1), (-0.2, 1)]
    )
    sb.update_weights(exp, other_exp._model.state_dict())  # the same branch: the same graph
    np.testing.assert_array_equal(exp(X), other_exp(X))
    with pytest.raises(ValueError, match=r"update_weights: .* read False from its weights"):
        sb.update_weights(exp, log._model.state_dict())
    np.testing.assert_array_equal(exp(X), other_exp(X))  # left as it was


def test_new_weights_of_a_live_model_take_their_own_branch():
    sur = sb.Surrogate(net(0.3), point_route="numpy")
    sb.update_weights(sur, net(-0.4, 1))
    check_against_torch(net(-0.4, 1), sur)
    check_against_torch(net(-0.4, 1), reloaded(sur))


def test_a_read_of_the_input_through_a_table_written_in_place_is_refused():
    """A forward that vmap cannot run (the input written into a tensor of its own in place)
    is followed call by call: a read of that table is a read of the input, and no graph is
    made of it; a read of the weights beside it is fixed as under vmap."""

    class Table(nn.Module):
        def __init__(self, reads_input: bool, into_view: bool = False):
            super().__init__()
            self.lin, self.reads_input = nn.Linear(2, 1).double(), reads_input
            self.into_view = into_view
            self.register_buffer("gain", torch.tensor([2.0], dtype=torch.float64))

        def forward(self, z):
            table = torch.zeros(2, *z.shape, dtype=z.dtype)
            if self.into_view:  # (written through views: the table's storage)
                table[0].copy_(z)
                table[1].copy_(z * float(self.gain))
            else:
                table[0] = z
                table[1] = z * float(self.gain)
            if self.reads_input and table.sum() > 0:
                return self.lin(table[1])
            return self.lin(table[0] + table[1])

    for into_view in (False, True):
        with pytest.raises(ValueError, match="data-dependent"):
            sb.save(sb.Surrogate(Table(True, into_view), n_in=2), io.BytesIO())
    model = Table(False)
    check_against_torch(model, reloaded(sb.Surrogate(model, n_in=2)))
