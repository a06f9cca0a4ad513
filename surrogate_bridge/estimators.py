"""Objects that hold a torch model without being one, read as ``(model, input_scaler,
output_scaler)``: a ``torch.export.ExportedProgram`` (its ``module()``), and fitted sklearn
estimators.

skorch's ``NeuralNetRegressor`` trains a torch module inside sklearn: alone, as the last step of
a ``Pipeline`` whose steps before it scale the inputs, or inside a ``TransformedTargetRegressor``
whose transformer scales the targets. Its ``predict`` is then the module's output between those
scalers, which is exactly what a :class:`~surrogate_bridge.Surrogate` computes (in its own dtype)
from the three parts: so a Surrogate of the estimator is the estimator, in physical units, with
exact derivatives. sklearn's own ``MLPRegressor`` stands in the same places; its fitted
``coefs_``, ``intercepts_`` and activations are written as the torch layers that compute its
``predict`` (:func:`mlp_module`: the same weights, the same functions to float64 rounding).
Neither sklearn nor skorch is imported here: the fitted objects are read by their attributes
(``module_``, ``coefs_``, ``steps``, ``regressor_``, ``transformer_``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["from_estimator", "mlp_module", "net_module"]


def _is_net(obj) -> bool:
    """A skorch ``NeuralNet`` (regressor, classifier or the base class)."""
    return any(
        c.__name__ == "NeuralNet" and c.__module__.startswith("skorch") for c in type(obj).__mro__
    )


def net_module(net, where: str) -> nn.Module:
    """The fitted torch module of a skorch regressor whose predictions are its output as it is;
    ``TypeError`` naming what stands between them otherwise."""
    name = type(net).__name__
    if any(c.__name__.endswith("Classifier") for c in type(net).__mro__):
        raise TypeError(
            f"{where}: model is a {name}, whose predict is a class label (no derivative). For "
            "its probabilities, pass a module computing them from net.module_ (e.g. "
            "nn.Sequential(net.module_, nn.Softmax(-1)))."
        )
    module = getattr(net, "module_", None)
    if not getattr(net, "initialized_", False) or not isinstance(module, nn.Module):
        raise ValueError(f"{where}: model is a {name} that is not fitted (initialize or fit it).")
    nonlin = net._get_predict_nonlinearity()
    if getattr(nonlin, "__name__", None) != "_identity":
        raise TypeError(
            f"{where}: the {name}'s predictions pass its module's output through "
            f"{getattr(nonlin, '__name__', repr(nonlin))} (predict_nonlinearity); pass a module "
            "that applies it after net.module_, or set predict_nonlinearity=None."
        )
    return module


def _is_sklearn_mlp(obj) -> bool:
    """sklearn's ``MLPRegressor`` or ``MLPClassifier``."""
    return any(
        c.__name__ == "BaseMultilayerPerceptron" and c.__module__.startswith("sklearn")
        for c in type(obj).__mro__
    )


class _Exp(nn.Module):
    """exp, the output activation of a Poisson-loss ``MLPRegressor``."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.exp(h)


# sklearn.neural_network's activations by name, as the torch layers that compute them
_ACTIVATIONS = {"identity": nn.Identity, "logistic": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}


def mlp_module(reg, where: str) -> nn.Module:
    """A fitted sklearn ``MLPRegressor`` as the float64 ``nn.Sequential`` computing its
    ``predict`` (before sklearn drops the axis of a single output): ``Linear`` layers of its
    ``coefs_`` (transposed) and ``intercepts_``, its ``activation`` between them, its
    ``out_activation_`` after. ``TypeError`` for a classifier; ``ValueError`` if not fitted.

    Examples
    --------
    >>> import numpy as np, warnings
    >>> from sklearn.neural_network import MLPRegressor
    >>> X = np.linspace(-1, 1, 40)[:, None]
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")  # (not converged in 20 steps)
    ...     reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=20, random_state=0)
    ...     reg = reg.fit(X, X[:, 0] ** 2)
    >>> m = mlp_module(reg, "example")
    >>> bool(np.allclose(m(torch.tensor(X))[:, 0].detach().numpy(), reg.predict(X)))
    True
    """
    name = type(reg).__name__
    if any(c.__name__ == "ClassifierMixin" for c in type(reg).__mro__):
        raise TypeError(
            f"{where}: model is a {name}, whose predict is a class label (no derivative). For "
            "its probabilities, train an MLPRegressor, or a torch model ending in a softmax."
        )
    coefs, intercepts = getattr(reg, "coefs_", None), getattr(reg, "intercepts_", None)
    if coefs is None or intercepts is None:
        raise ValueError(f"{where}: model is a {name} that is not fitted (fit it).")
    act, out = reg.activation, getattr(reg, "out_activation_", "identity")
    if act not in _ACTIVATIONS or out not in (*_ACTIVATIONS, "exp"):
        raise TypeError(f"{where}: the {name}'s activation {act!r} / {out!r} is not known here.")
    layers: list[nn.Module] = []
    for i, (W, b) in enumerate(zip(coefs, intercepts, strict=True)):
        linear = nn.Linear(W.shape[0], W.shape[1], dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(W.T, dtype=torch.float64))
            linear.bias.copy_(torch.as_tensor(b, dtype=torch.float64))
        layers.append(linear)
        last = i == len(coefs) - 1
        kind = out if last else act
        if kind != "identity":
            layers.append(_Exp() if kind == "exp" else _ACTIVATIONS[kind]())
    return nn.Sequential(*layers)


def from_estimator(model, input_scaler, output_scaler, where: str) -> tuple:
    """``(model, input_scaler, output_scaler)`` with an exported program or a fitted estimator
    holding a torch model taken apart; anything else is returned as it is. A scaler both in the
    estimator and passed is refused: it would be applied twice."""
    if isinstance(model, torch.export.ExportedProgram):  # (it cannot be called itself)
        return model.module(), input_scaler, output_scaler
    name = type(model).__name__
    if name == "TransformedTargetRegressor" and hasattr(model, "regressor_"):
        _not_twice(output_scaler, "output_scaler", name, "transformer scales the targets", where)
        inner, input_scaler, _ = from_estimator(model.regressor_, input_scaler, None, where)
        if inner is model.regressor_:  # (not a torch model inside: no surrogate of it)
            raise TypeError(
                f"{where}: model is a TransformedTargetRegressor around a "
                f"{type(inner).__name__}, not a neural network (a skorch NeuralNetRegressor "
                "or an sklearn MLPRegressor)."
            )
        return inner, input_scaler, model.transformer_
    steps = getattr(model, "steps", None) if name == "Pipeline" else None
    if steps and (_is_net(steps[-1][1]) or _is_sklearn_mlp(steps[-1][1])):
        _not_twice(
            input_scaler, "input_scaler", name, "steps before the net scale the inputs", where
        )
        scaler = model[:-1] if len(steps) > 1 else None
        return _module(steps[-1][1], where), scaler, output_scaler
    if _is_net(model) or _is_sklearn_mlp(model):
        return _module(model, where), input_scaler, output_scaler
    return model, input_scaler, output_scaler


def _module(net, where: str) -> nn.Module:
    return net_module(net, where) if _is_net(net) else mlp_module(net, where)


def _not_twice(given, arg: str, name: str, why: str, where: str) -> None:
    if given is not None:
        raise ValueError(
            f"{where}: model is a {name} whose {why}; {arg}= would scale them twice: leave it out."
        )
