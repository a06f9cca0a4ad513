"""Rewrites of a user's layers in the surrogate's private copy of the model.

A layer is rewritten only where torch's own derivative of it is wrong or missing, and only into
a form whose values are bit for bit the layer's own (``tests/test_rewrites.py`` checks this on
dense grids); the user's model object is never touched.

- ``nn.CELU(alpha)``: torch computes the value in float64 (``elu`` with input scale 1 / alpha),
  but its derivative with 1 / alpha in single precision, so every derivative is off by about
  1e-8 relative when 1 / alpha is not a float32 number (alpha = 0.7: 3.5e-8). It becomes
  ``aten.elu(x, alpha, 1, 1 / alpha)``, the very call that ``nn.CELU`` makes, whose derivative
  torch takes in float64.
- ``nn.Hardsigmoid``: torch has no second derivative of it. It becomes
  ``hardtanh(x + 3, 0, 6) / 6``, the expression torch's kernel evaluates, whose second
  derivative is zero, as for every piecewise-linear activation (the smoothness warning says so,
  naming hardtanh).

Only layers of exactly these types are rewritten (a subclass may change ``forward``); the same
functions called inside a ``forward`` (``F.celu``, ``F.hardsigmoid``) are not layers and stay as
they are: probing names a missing second derivative (``physical.py``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["exact_layers"]


class ExactCELU(nn.Module):
    """``nn.CELU(alpha)`` with its derivative in float64."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.elu(x, self.alpha, 1.0, 1.0 / self.alpha)


class TwiceDifferentiableHardsigmoid(nn.Module):
    """``nn.Hardsigmoid`` with a second derivative (zero)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.hardtanh(x + 3.0, 0.0, 6.0) / 6.0


def _replacement(layer: nn.Module) -> nn.Module | None:
    if type(layer) is nn.CELU:
        return ExactCELU(layer.alpha)
    if type(layer) is nn.Hardsigmoid:
        return TwiceDifferentiableHardsigmoid()
    return None


def exact_layers(model: nn.Module) -> nn.Module:
    """``model`` (the surrogate's own copy) with each layer above replaced in place; returned.

    Examples
    --------
    >>> from torch import nn
    >>> copy = exact_layers(nn.Sequential(nn.Linear(2, 3), nn.CELU(0.7)))
    >>> type(copy[1]).__name__
    'ExactCELU'
    """
    if isinstance(model, torch.jit.ScriptModule):
        return model  # a compiled graph: its layers are not Python modules
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = _replacement(child)
            if new is not None:
                setattr(parent, name, new)
    return model
