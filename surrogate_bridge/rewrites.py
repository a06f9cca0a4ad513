"""Rewrites of a user's layers in the surrogate's private copy of the model.

A layer is rewritten only where torch's own derivative of it is wrong or missing, and only into
a form whose values are bit for bit the layer's own (attention, below: the same to float64
rounding; ``tests/test_rewrites.py`` checks both on dense grids); the user's model object is
never touched.

- ``nn.CELU(alpha)``: torch computes the value in float64 (``elu`` with input scale 1 / alpha),
  but its derivative with 1 / alpha in single precision, so every derivative is off by about
  1e-8 relative when 1 / alpha is not a float32 number (alpha = 0.7: 3.5e-8). It becomes
  ``aten.elu(x, alpha, 1, 1 / alpha)``, the very call that ``nn.CELU`` makes, whose derivative
  torch takes in float64.
- ``nn.Hardsigmoid``: torch has no second derivative of it, and its derivative takes 1 / 6 in
  single precision (0.1666666716, off by 3e-8 relative). It becomes
  ``hardtanh(x + 3, 0, 6) / 6``, the expression torch's kernel evaluates, whose second
  derivative is zero, as for every piecewise-linear activation (the smoothness warning says so,
  naming hardtanh).

Only layers of exactly these types are rewritten (a subclass may change ``forward``). The same
functions called inside a ``forward`` (``F.celu``, ``torch.celu``, ``F.hardsigmoid``, in place
or not) have the same faults: probing records the torch functions a forward calls
(``physical.build``), and a model that calls one of these is run inside :class:`ExactFunctions`,
a torch function mode that hands each such call to the same forms, only in that forward (modes
are per thread; nothing global changes, and other models pay nothing).

One rewrite is the same function to float64 rounding, not bit for bit, and is made only where
probing finds that torch cannot take second derivatives of the model without it: attention.
Torch's CPU kernel for ``F.scaled_dot_product_attention`` (which ``nn.MultiheadAttention`` and
the ``nn.Transformer`` layers call) has no second derivative, so every Hessian of an attention
surrogate was refused. Such a model is run with ``attention=True``: each
``F.scaled_dot_product_attention`` call becomes torch's own reference form of it
(``aten._scaled_dot_product_attention_math``: softmax(q k^T * scale + mask) v, in plain
products), and each ``F.multi_head_attention_forward`` call is made with ``need_weights=True``,
torch's path through the same plain products. The kernel and these forms differ only in the
order of their sums (``tests/test_rewrites.py`` holds them to a few units of the last place on
dense samples).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["ATTENTION_FUNCTIONS", "REWRITTEN_FUNCTIONS", "ExactFunctions", "exact_layers"]


# the exact forms, for the layers and for the same functions called in a forward -------------
def _celu(x: torch.Tensor, alpha: float = 1.0, inplace: bool = False) -> torch.Tensor:
    y = torch.ops.aten.elu(x.clone() if inplace else x, alpha, 1.0, 1.0 / alpha)
    return x.copy_(y) if inplace else y


def _celu_(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    return _celu(x, alpha, inplace=True)


def _hardsigmoid(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    y = nn.functional.hardtanh(x + 3.0, 0.0, 6.0) / 6.0  # (x itself is not kept for backward)
    return x.copy_(y) if inplace else y


class ExactCELU(nn.Module):
    """``nn.CELU(alpha)`` with its derivative in float64."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _celu(x, self.alpha)


class TwiceDifferentiableHardsigmoid(nn.Module):
    """``nn.Hardsigmoid`` with a second derivative (zero)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _hardsigmoid(x)


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


# functions called in a forward ---------------------------------------------------------------
_FUNCTIONS = {
    nn.functional.celu: _celu, torch.celu: _celu, torch.celu_: _celu_,
    nn.functional.hardsigmoid: _hardsigmoid,
}  # fmt: skip
# their names, as probing records them (``diagnostics.called_functions``)
REWRITTEN_FUNCTIONS = frozenset({"celu", "celu_", "hardsigmoid"})


# attention, where torch's kernel has no second derivative (see the module's docstring) -------
def _attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False):  # fmt: skip
    extra = {"enable_gqa": True} if enable_gqa else {}  # (an argument since torch 2.5)
    return torch.ops.aten._scaled_dot_product_attention_math(
        query, key, value, attn_mask, dropout_p, is_causal, None, scale=scale, **extra
    )[0]


_MULTI_HEAD = inspect.signature(nn.functional.multi_head_attention_forward)


def _multi_head(*args, **kwargs):
    call = _MULTI_HEAD.bind(*args, **kwargs)
    call.apply_defaults()
    wanted = call.arguments["need_weights"]
    call.arguments["need_weights"] = True  # torch's path through plain products
    out, weights = nn.functional.multi_head_attention_forward(*call.args, **call.kwargs)
    return out, (weights if wanted else None)


_ATTENTION = {
    nn.functional.scaled_dot_product_attention: _attention,
    nn.functional.multi_head_attention_forward: _multi_head,
}
_WITH_ATTENTION = {**_FUNCTIONS, **_ATTENTION}
ATTENTION_FUNCTIONS = frozenset({"scaled_dot_product_attention", "multi_head_attention_forward"})


class _ExactMode(TorchFunctionMode):
    def __init__(self, table: dict) -> None:
        super().__init__()
        self.table = table

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return self.table.get(func, func)(*args, **(kwargs or {}))


class ExactFunctions(nn.Module):
    """``model`` run with its calls of ``F.celu``, ``torch.celu`` and ``F.hardsigmoid``
    replaced by the forms above (the layers' rewrites, as functions); with ``attention``, also
    its attention calls (twice differentiable, the same to rounding).

    Examples
    --------
    >>> import torch
    >>> class Net(torch.nn.Module):
    ...     def forward(self, x):
    ...         return torch.nn.functional.hardsigmoid(x)
    >>> x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    >>> (g,) = torch.autograd.grad(ExactFunctions(Net())(x).sum(), x)
    >>> g.item() == 1 / 6  # torch's own: 0.1666666716337204, 1 / 6 in single precision
    True
    """

    def __init__(self, model: nn.Module, attention: bool = False) -> None:
        super().__init__()
        self.model, self.attention = model, attention

    def forward(self, *args, **kwargs):
        attention = getattr(self, "attention", False)  # (absent from older pickles)
        with _ExactMode(_WITH_ATTENTION if attention else _FUNCTIONS):
            return self.model(*args, **kwargs)
