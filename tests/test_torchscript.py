"""TorchScript models (torch.jit.script, trace, load): accepted with exact derivatives; saved
and translated to CasADi where torch's converter captures their graph; a clear message where
not."""

import io
import warnings
from typing import List  # noqa: UP035 (TorchScript reads the annotation)

import numpy as np
import pytest
import torch

import surrogate_bridge as sb

X = np.array([0.3, -0.7])
SCALER = sb.Affine([0.1, 0.2], [2.0, 3.0])


def scripted(kind, net):
    with warnings.catch_warnings():  # torch deprecates TorchScript; users still deploy it
        warnings.simplefilter("ignore")
        if kind == "trace":
            return torch.jit.trace(net, torch.zeros(3, 2, dtype=torch.float64))
        module = torch.jit.script(net)
        if kind == "load":
            buf = io.BytesIO()
            torch.jit.save(module, buf)
            buf.seek(0)
            module = torch.jit.load(buf)
        return module


@pytest.mark.parametrize("kind", ["script", "trace", "load"])
def test_torchscript_models_give_the_eager_models_derivatives(kind, tmp_path):
    net = sb.mlp((2, 16, 16, 1), seed=0)
    ref = sb.Surrogate(net, SCALER)
    module = scripted(kind, net)
    before = [(p.dtype, p.requires_grad, p.clone()) for p in module.parameters()]
    sur = sb.Surrogate(module, SCALER)
    assert sur.n_in == 2
    # without a scaler, n_in from the first Linear (a traced one keeps no in_features)
    assert sb.Surrogate(module).n_in == 2
    # the same function to float64 rounding (the eager copy has its scalers folded into its
    # Linear layers; the converted graph keeps them apart)
    assert sur(X) == pytest.approx(ref(X), rel=1e-14)
    np.testing.assert_allclose(sur.grad(X), ref.grad(X), rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(sur.hess(X), ref.hess(X), rtol=1e-13, atol=1e-16)
    assert sb.check_derivatives(sur, X).ok
    for p, (dtype, req, value) in zip(module.parameters(), before, strict=True):
        assert p.dtype == dtype and p.requires_grad == req and torch.equal(p, value)
    path = tmp_path / "scripted.sbz"
    sb.save(sur, path)
    np.testing.assert_allclose(sb.load(path).hess(X), sur.hess(X), rtol=1e-14, atol=1e-17)
    # the copy handed out, without torch's pytree note (an error under -W error, as here)
    x = torch.tensor(X)
    assert float(sur.function(x)) == pytest.approx(sur(X), rel=1e-15)


@pytest.mark.parametrize("kind", ["script", "trace"])
def test_torchscript_translates_to_symbolic_casadi(kind):
    ca = pytest.importorskip("casadi")
    net = sb.mlp((2, 16, 1), seed=1)
    sur = sb.Surrogate(scripted(kind, net), SCALER)
    F = sb.casadi_function(sur, mode="symbolic")
    x = ca.MX.sym("x", 2)
    H = ca.Function("H", [x], [ca.hessian(F(x), x)[0]])
    np.testing.assert_allclose(float(F(X)), sur(X), rtol=1e-13)
    np.testing.assert_allclose(np.array(H(X)), sur.hess(X), rtol=1e-11, atol=1e-13)


class RowLoop(torch.nn.Module):
    """A loop over rows with data-dependent branches: beyond torch's TorchScript converter."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)

    def forward(self, z):
        out: List[torch.Tensor] = []  # noqa: UP006
        for i in range(z.shape[0]):
            r = z[i]
            if bool(r.sum() > 100.0):
                out.append(self.lin(r) * 2)
            else:
                out.append(torch.tanh(self.lin(r)))
        return torch.stack(out)


def test_unconvertible_torchscript_still_has_exact_derivatives_and_says_what_it_cannot_do():
    torch.manual_seed(0)
    sur = sb.Surrogate(scripted("script", RowLoop().double()), n_in=2)
    w = sur.function.model.script.lin.weight.detach().numpy()[0]
    b = float(sur.function.model.script.lin.bias.detach()[0])
    t = np.tanh(w @ X + b)
    assert sur(X) == pytest.approx(t, rel=1e-15)
    np.testing.assert_allclose(sur.grad(X), (1 - t**2) * w, rtol=1e-14)
    np.testing.assert_allclose(sur.hess(X), -2 * t * (1 - t**2) * np.outer(w, w), rtol=1e-13)
    with pytest.raises(ValueError, match="TorchScript model could not be converted.*prim::Loop"):
        sb.save(sur, "never-written.sbz")
    ca = pytest.importorskip("casadi")
    with pytest.warns(sb.CasadiFallbackWarning):
        F = sb.casadi_function(sur, mode="auto")
    assert F.mode == "callback"
    np.testing.assert_allclose(float(F(ca.DM(X))), sur(X), rtol=1e-15)


def test_a_script_model_without_a_linear_layer_needs_n_in():
    class Square(torch.nn.Module):
        def forward(self, z):
            return (z**2).sum(-1)

    module = scripted("script", Square())
    with pytest.raises(ValueError, match="TorchScript model does not say its input count"):
        sb.Surrogate(module)
    assert sb.Surrogate(module, n_in=3).grad([1.0, 2.0, 3.0]).tolist() == [2.0, 4.0, 6.0]


@pytest.mark.parametrize("kind", ["script", "trace", "load"])
def test_a_converted_relu_model_warns_as_the_eager_one_does(kind, tmp_path):
    """The converter's aten calls do not name F.relu to the probe: the converted graph declares
    its non-smooth calls, so the torch route's Hessian warns too, and a saved file keeps them."""
    net = sb.mlp((2, 8, 1), activation="relu", seed=2)
    sur = sb.Surrogate(scripted(kind, net), SCALER)
    assert sur.nonsmooth_ops == sb.Surrogate(net, SCALER).nonsmooth_ops == ("relu",)
    with pytest.warns(sb.SmoothnessWarning, match="relu"):
        sur.hess(X)
    sb.save(sur, tmp_path / "relu.sbz")
    assert sb.load(tmp_path / "relu.sbz").nonsmooth_ops == ("relu",)
