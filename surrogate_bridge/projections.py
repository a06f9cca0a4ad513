"""Scalers that mix features (PCA, a ColumnTransformer's column order), held as layers around
the model.

A per-feature scaler is baked into the physical function (:class:`.normalization.Affine`,
:class:`.scaling.Scaling`). A fitted ``PCA``, ``IncrementalPCA`` or ``TruncatedSVD`` maps all
features at once: ``z = (u - mean) @ components.T`` (whitened: divided by the components'
standard deviations), and back ``u = z @ components + mean``. Input side, it reduces n
physical inputs to the k the model takes; output side, the model predicts k coefficients and
the physical outputs are their combination (a reduced-order model of a field). The map is one
``nn.Linear`` layer, with the per-feature steps of a ``Pipeline`` on the model's side of it
folded in; the steps on the physical side stay the surrogate's scaler, so the training
domain of a MinMax step is kept. Every route reads the layer as it reads the model's own.

A fitted ``PolynomialFeatures`` (input side only: it has no inverse) is a layer of the same
kind, :class:`Polynomial`: each monomial a product of one-hot ``nn.Linear`` selections of the
inputs, multiplied in sklearn's order, so its values are sklearn's bit for bit and every route
reads it as linear layers and products.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .normalization import Affine, column_order
from .physical import from_torchscript

__all__ = [
    "AroundModel",
    "Polynomial",
    "Projected",
    "Reordered",
    "around_model",
    "split_projection",
    "unwrap",
]

_PROJECTIONS = ("PCA", "IncrementalPCA", "TruncatedSVD")
_FEATURE_MAPS = ("PolynomialFeatures",)  # input side only


class Polynomial(nn.Module):
    """sklearn's ``PolynomialFeatures`` of exponents ``powers`` (k, n), then ``(p - shift) /
    scale`` (the Pipeline's per-feature steps after it, if any).

    Monomial j of degree d is ``x[i_d] * x[i_(d-1)] * ... * x[i_1]`` for its sorted indices
    ``i_1 <= ... <= i_d``, multiplied left to right as sklearn's transform does (each degree's
    terms are the previous degree's times the lowest index), so the values are sklearn's bit
    for bit. Factor s of every monomial is one ``nn.Linear`` with one-hot rows (the input
    selected exactly: the other products are zeros) and bias 1 where a monomial has fewer than
    s + 1 factors (the constant column has none).
    """

    def __init__(self, powers: np.ndarray, shift=None, scale=None) -> None:
        super().__init__()
        powers = np.asarray(powers, dtype=np.int64)
        k, n = powers.shape
        combos = [np.repeat(np.arange(n), row)[::-1] for row in powers]  # highest index first
        self.in_features, self.out_features = n, k
        self.factors = nn.ModuleList()
        for s in range(max(1, int(powers.sum(1).max()))):
            weight, bias = np.zeros((k, n)), np.zeros(k)
            for j, c in enumerate(combos):
                if s < len(c):
                    weight[j, c[s]] = 1.0
                else:
                    bias[j] = 1.0
            self.factors.append(_linear(weight, bias))
        self.scaled = shift is not None
        if self.scaled:
            self.register_buffer("shift", torch.tensor(shift, dtype=torch.float64))
            self.register_buffer("scale", torch.tensor(scale, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.factors[0](x)
        for factor in self.factors[1:]:
            p = p * factor(x)
        return (p - self.shift) / self.scale if self.scaled else p


class AroundModel(nn.Module):
    """Layers of ours around the caller's ``model`` (its weights are ``self.model``'s)."""

    model: nn.Module


class Reordered(AroundModel):
    """The model of inputs in a ColumnTransformer's column order: ``model(z[..., order])``,
    where ``z`` is normalized with each column in its place (``normalization.column_order``)."""

    def __init__(self, model, order) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("order", torch.as_tensor(order, dtype=torch.long))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z[..., self.order])


class Projected(AroundModel):
    """``after(model(before(z)))``: a projection into the model's inputs and one from its
    outputs, either possibly None."""

    def __init__(self, model, before: nn.Linear | None, after: nn.Linear | None) -> None:
        super().__init__()
        self.before = before  # (registered first: n_in is read from the first Linear layer)
        self.model = model
        self.after = after

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.model(z if self.before is None else self.before(z))
        if self.after is None:
            return y
        if y.ndim < z.ndim:  # one coefficient, returned without its axis
            y = y.unsqueeze(-1)
        if y.shape[-1] != self.after.in_features:
            raise ValueError(
                f"the model returns {y.shape[-1]} outputs, but the output scaler's projection "
                f"takes {self.after.in_features} components"
            )
        return self.after(y)


def around_model(model, input_scaler, output_scaler, where: str, n_in: int | None = None):
    """``(model, input_scaler, output_scaler)`` with what mixes features taken out of the
    scalers and put around the model: a ColumnTransformer's column order (:class:`Reordered`),
    a projection (:class:`Projected`). The scalers left are per-feature ones."""
    input_scaler, before = split_projection(input_scaler, f"{where}: input_scaler", "input")
    if before is not None:  # (a column order before the projection is in its weights)
        model = Projected(from_torchscript(model, before.out_features), before, None)
    else:
        reordered = column_order(input_scaler)
        if reordered is not None:  # a ColumnTransformer listing its columns out of place
            input_scaler, order = reordered
            model = Reordered(from_torchscript(model, len(order)), order)
    output_scaler, after = split_projection(output_scaler, f"{where}: output_scaler", "output")
    if after is not None:
        k = n_in if n_in is not None else getattr(input_scaler, "n_features_in_", None)
        k = k if k is not None else getattr(input_scaler, "n_features", None)  # (an Affine)
        model = Projected(from_torchscript(model, k), None, after)
    return model, input_scaler, output_scaler


def unwrap(model):
    """The caller's model inside our layers (whose weights ``update_weights`` replaces)."""
    while isinstance(model, AroundModel):
        model = model.model
    return model


def split_projection(scaler, role: str, side: str):
    """``(scaler, layer)``: for a fitted PCA-like ``scaler`` or a ``Pipeline`` with one, the
    steps on the physical side of it (a scaler for ``as_scaler``, or None) and an ``nn.Linear``
    (float64) of the projection with the model-side steps folded in: physical-side units ->
    model inputs for ``side="input"``, model outputs -> physical-side units for "output".
    Anything else is returned as it is, with no layer. ``role`` names the argument in errors.
    """
    steps = _steps(scaler)
    mixing = _PROJECTIONS + _FEATURE_MAPS
    at = [i for i, (_, est) in enumerate(steps) if type(est).__name__ in mixing]
    if not at:
        return scaler, None
    if len(at) > 1:
        names = ", ".join(type(steps[i][1]).__name__ for i in at)
        raise TypeError(f"{role}: a Pipeline with {len(at)} steps that mix features ({names}); "
                        "use one.")  # fmt: skip
    i = at[0]
    proj = steps[i][1]
    polynomial = type(proj).__name__ in _FEATURE_MAPS
    if polynomial and side == "output":
        raise TypeError(
            f"{role}: PolynomialFeatures has no inverse, so it cannot map the model's outputs "
            "back to physical units; use it on the input side, or compute the features inside "
            "the model."
        )
    if not hasattr(proj, "n_output_features_" if polynomial else "components_"):
        raise TypeError(f"{role}: this {type(proj).__name__} is not fitted; call .fit first.")
    physical = [est for _, est in steps[:i]]
    k = proj.n_output_features_ if polynomial else proj.components_.shape[0]
    if k == 0:
        raise TypeError(f"{role}: this {type(proj).__name__} makes no features from its inputs.")
    model_side = Affine.identity(k)
    for _, est in steps[i + 1 :]:  # per-feature scalers of the coefficients
        try:
            model_side = model_side.then(Affine.from_sklearn(est))
        except TypeError as err:
            raise TypeError(
                f"{role}: after its {type(proj).__name__}, the Pipeline's "
                f"{type(est).__name__} step must be an affine per-feature scaler ({err})"
            ) from None
    shift, scale = model_side.shift, model_side.scale
    physical = _pipeline(physical)
    if polynomial:
        powers = np.asarray(proj.powers_)
        reordered = column_order(physical)
        if reordered is not None:  # a ColumnTransformer's order before it: powers' columns
            physical, order = reordered
            powers = powers[:, np.argsort(order)]
        scaled = len(steps) > i + 1
        return physical, Polynomial(powers, shift if scaled else None, scale if scaled else None)
    W, b = _forward(proj)  # z = u @ W.T + b, then the model-side steps
    if side == "input":
        reordered = column_order(physical)
        if reordered is not None:  # a ColumnTransformer's order before it: W's columns
            physical, order = reordered
            W = W[:, np.argsort(order)]  # u[:, order] @ W.T == u @ W[:, argsort(order)].T
        layer = _linear(W / scale[:, None], (b - shift) / scale)
    else:  # u = (z * scale + shift) @ V + mean, V the inverse's matrix
        V, mean = _inverse(proj)
        layer = _linear((V * scale[:, None]).T, shift @ V + mean)
    return physical, layer


def _steps(scaler) -> list:
    if type(scaler).__name__ in _PROJECTIONS + _FEATURE_MAPS:
        return [("projection", scaler)]
    if type(scaler).__name__ == "Pipeline":
        return [(n, e) for n, e in scaler.steps if e not in (None, "passthrough")]
    return []


def _components(proj) -> tuple[np.ndarray, np.ndarray]:
    """(components (k, n), mean (n,)): TruncatedSVD centres nothing."""
    C = np.asarray(proj.components_, dtype=np.float64)
    return C, np.asarray(getattr(proj, "mean_", np.zeros(C.shape[1])), dtype=np.float64)


def _forward(proj) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's transform as ``u @ W.T + b``."""
    C, mean = _components(proj)
    s = _whitening(proj, C.shape[0])
    return C / s[:, None], -(mean @ C.T) / s


def _inverse(proj) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's inverse_transform as ``z @ V + mean``."""
    C, mean = _components(proj)
    if getattr(proj, "whiten", False):
        return np.sqrt(np.asarray(proj.explained_variance_, dtype=np.float64))[:, None] * C, mean
    return C, mean


def _whitening(proj, k: int) -> np.ndarray:
    if not getattr(proj, "whiten", False):
        return np.ones(k)
    s = np.sqrt(np.asarray(proj.explained_variance_, dtype=np.float64))
    return np.maximum(s, np.finfo(np.float64).eps)  # as sklearn clips them


def _linear(weight: np.ndarray, bias: np.ndarray) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0]).to(torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight))
        layer.bias.copy_(torch.as_tensor(bias))
    layer.requires_grad_(False)
    return layer


def _pipeline(steps: list):
    """The physical-side steps as one scaler: None, the step, or a Pipeline of them."""
    if not steps:
        return None
    if len(steps) == 1:
        return steps[0]
    from sklearn.pipeline import make_pipeline

    return make_pipeline(*steps)
