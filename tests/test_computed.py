"""Layers whose weights are computed at each forward: torch's parametrizations (spectral and
weight norm, orthogonal), pruning masks, the older hook-based norms. Each is the user's own
function on every route, pickled, deep-copied, saved and translated for CasADi; the user's model
(in training mode, where spectral norm's power iteration changes its buffers at every read) is
never changed; new weights load by the model's own keys. Quantized layers are refused."""

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, prune

import surrogate_bridge as sb


def _old_weight_norm(layer):
    with warnings.catch_warnings():  # (deprecated in favour of parametrizations.weight_norm)
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(layer)


def _pruned_twice(layer):
    prune.l1_unstructured(layer, "weight", amount=0.3)
    prune.random_unstructured(layer, "weight", amount=0.3)  # (a PruningContainer of both)
    return prune.l1_unstructured(layer, "bias", amount=0.5)


KINDS = {
    "spectral_norm": parametrizations.spectral_norm,
    "weight_norm": parametrizations.weight_norm,
    "orthogonal": parametrizations.orthogonal,
    "pruned": lambda layer: prune.l1_unstructured(layer, "weight", amount=0.5),
    "pruned-twice": _pruned_twice,
    "old-spectral_norm": nn.utils.spectral_norm,
    "old-weight_norm": _old_weight_norm,
}


def _net(kind, seed=0):
    torch.manual_seed(seed)
    first, second = nn.Linear(3, 3).double(), nn.Linear(3, 8).double()
    KINDS[kind](first)
    KINDS[kind](second)
    return nn.Sequential(first, nn.Tanh(), second, nn.SiLU(), nn.Linear(8, 2)).double()


def _reference(model, X):
    """The user's function and its Jacobian at the rows of X, by torch on the model itself in
    eval mode (spectral norm then reads its vectors as they are; a model with a hook-computed
    weight cannot be deep-copied by torch)."""
    was = model.training
    model.eval()
    try:
        Z = torch.as_tensor(X)
        with torch.no_grad():
            y = model(Z).numpy()
        J = torch.func.vmap(torch.func.jacrev(lambda z: model(z[None])[0]))(Z)
        return y, J.detach().numpy()
    finally:
        model.train(was)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


X = np.random.default_rng(7).uniform(-1.5, 1.5, size=(5, 3))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_users_function_on_every_route_and_the_model_untouched(kind):
    model = _net(kind).train()  # training mode: spectral norm's reads would iterate
    before = _state(model)
    want, J_want = _reference(model, X)  # (a hook's tensor attribute is now torch.func's)
    for route in ("torch", "numpy", "casadi"):
        sur = sb.Surrogate(model, point_route=route)  # n_in read from the first Linear layer
        assert sur.n_in == 3
        for x, y, J in zip(X, want, J_want, strict=True):
            v, jac = sur(x), sur.jac(x)
            np.testing.assert_allclose(v, y, rtol=1e-14, atol=1e-15, err_msg=route)
            np.testing.assert_allclose(jac, J, rtol=1e-12, atol=1e-14, err_msg=route)
        h = 1e-6  # (central differences of the values: the derivatives are the function's)
        fd = (sur(X[0] + h * np.eye(3)) - sur(X[0] - h * np.eye(3))).T / (2 * h)
        np.testing.assert_allclose(sur.jac(X[0]), fd, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(sur(X), want, rtol=1e-14, atol=1e-15)
    assert model.training
    now = model.state_dict()
    assert set(now) == set(before) and all(torch.equal(now[k], before[k]) for k in before)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_pickled_copied_saved_and_translated_as_the_same_function(kind, tmp_path):
    """A parametrized module's class is made on the fly and refused pickling (so no process
    pool or dask worker could take such a surrogate); a pruning hook assigns its tensor as an
    attribute, which torch.export refused (no numpy or CasADi route, no save)."""
    import casadi as ca

    sur = sb.Surrogate(_net(kind))
    sur(X[0])
    y, J, H = sur(X), sur.jac(X), sur.hess(X)
    clones = [pickle.loads(pickle.dumps(sur)), copy.deepcopy(sur)]
    sb.save(sur, tmp_path / "m.sbz")
    clones.append(sb.load(tmp_path / "m.sbz"))
    for clone in clones:
        np.testing.assert_allclose(clone(X), y, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(clone.jac(X), J, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(clone.hess(X), H, rtol=1e-12, atol=1e-14)
    F = sb.casadi_function(sur, mode="symbolic")
    x = ca.SX.sym("x", 3)
    dF = ca.Function("dF", [x], [ca.jacobian(F(x), x)])
    for p, yp, Jp in zip(X, y, J, strict=True):
        np.testing.assert_allclose(np.asarray(F(p)).ravel(), yp, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(np.asarray(dF(p)), Jp, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_new_weights_load_by_the_models_own_keys(kind):
    sur = sb.Surrogate(_net(kind, seed=0))
    new = _net(kind, seed=1)
    sb.update_weights(pickle.loads(pickle.dumps(sur)), new)  # (a pickled copy's class too)
    sb.update_weights(sur, new.state_dict())
    want, _ = _reference(new, X)
    np.testing.assert_allclose(sur(X), want, rtol=1e-14, atol=1e-15)


def test_weight_norm_loads_the_older_weight_norms_keys():
    """parametrizations.weight_norm reads a state dict of nn.utils.weight_norm's keys (weight_g,
    weight_v) by a hook of torch's; the surrogate's copy keeps that (as an object it can pickle)."""
    sur = pickle.loads(pickle.dumps(sb.Surrogate(_net("weight_norm"))))
    old = _net("old-weight_norm", seed=3)
    assert "0.weight_g" in old.state_dict()
    sb.update_weights(sur, old.state_dict())
    want, _ = _reference(old, X)
    np.testing.assert_allclose(sur(X), want, rtol=1e-14, atol=1e-15)


def test_a_quantized_model_is_refused_naming_its_layer():
    float_model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    with warnings.catch_warnings():  # (torch.ao.quantization's deprecation notes)
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(float_model, {nn.Linear})
    with pytest.raises(TypeError, match=r"layer '0' is quantized .*the float model"):
        sb.Surrogate(quantized, dtype=torch.float32)
    sb.Surrogate(float_model)  # the model it was quantized from
