"""Rewrites of a user's layers in the surrogate's private copy of the model.

A layer is rewritten only where torch's own derivative of it is wrong or missing, and only into
a form whose values are bit for bit the layer's own (attention and distances, below: the same
to float64 rounding; ``tests/test_rewrites.py`` checks both on dense grids); the user's model
object is never touched.

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

Two rewrites are the same function to float64 rounding, not bit for bit, and are made only
where probing finds that torch cannot take second derivatives of the model without them:
attention and distances.
Torch's CPU kernel for ``F.scaled_dot_product_attention`` (which ``nn.MultiheadAttention`` and
the ``nn.Transformer`` layers call) has no second derivative, so every Hessian of an attention
surrogate was refused. Such a model is run with ``kernels=True``: each
``F.scaled_dot_product_attention`` call becomes torch's own reference form of it
(``aten._scaled_dot_product_attention_math``: softmax(q k^T * scale + mask) v, in plain
products), and each ``F.multi_head_attention_forward`` call is made with ``need_weights=True``,
torch's path through the same plain products. The kernel and these forms differ only in the
order of their sums (``tests/test_rewrites.py`` holds them to a few units of the last place on
dense samples).

Distances, likewise: ``torch.cdist`` (the usual way to write a radial basis function layer) and
``torch.pdist`` (the distances between a point's particles, in a potential's features) have no
second derivative in torch. Where probing finds that a model calling them has none, each
``pdist(x, p)`` call becomes the p-norm of the differences of the rows that ``triu_indices``
pairs, and each ``cdist`` call torch's own arithmetic for the same path: for p = 2 where torch's
kernel multiplies matrices (more than 25 rows in either operand, or
``compute_mode="use_mm_for_euclid_dist"``), the very products, sums and clamp of
``aten._euclidean_dist``, with a square root whose derivative is zero at a zero distance, as
torch's is; otherwise the p-norm of the differences,
``torch.linalg.vector_norm(x1[..., :, None, :] - x2[..., None, :, :], p, -1)``. The values are
torch's to a few units of the last place. (A point at a center: the distance's derivative is
zero there, as torch's, and its second derivative through the root NaN, as for any norm in
torch; the CasADi translation simplifies the squared root away and gives the Hessian.)
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["KERNEL_FUNCTIONS", "REWRITTEN_FUNCTIONS", "ExactFunctions", "exact_layers"]


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


# distances, where torch's kernel has no second derivative (see the module's docstring) -------
_CDIST_MODES = {
    "use_mm_for_euclid_dist_if_necessary": 0, "use_mm_for_euclid_dist": 1,
    "donot_use_mm_for_euclid_dist": 2,
}  # fmt: skip


def _euclidean_dist(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """``aten._euclidean_dist``'s own arithmetic; at a zero distance, slope zero (torch's)."""
    n1, n2 = x1.pow(2).sum(-1, keepdim=True), x2.pow(2).sum(-1, keepdim=True)
    a = torch.cat([x1.mul(-2), n1, torch.ones_like(n1)], -1)
    b = torch.cat([x2, torch.ones_like(n2), n2], -1)
    r = a.matmul(b.mT).clamp_min(0)
    positive = r > 0
    return torch.where(positive, torch.where(positive, r, 1.0).sqrt(), 0.0)


def _cdist(x1, x2, p=2.0, compute_mode="use_mm_for_euclid_dist_if_necessary"):
    mode = _CDIST_MODES.get(compute_mode)
    if mode is None:
        raise ValueError(f"{compute_mode} is not a valid value for compute_mode")
    if p == 2 and (mode == 1 or (mode == 0 and (x1.shape[-2] > 25 or x2.shape[-2] > 25))):
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
        if math.prod(batch) != 1:  # (torch's kernel expands both: a batched product, as here)
            x1, x2 = x1.expand(*batch, *x1.shape[-2:]), x2.expand(*batch, *x2.shape[-2:])
        return _euclidean_dist(x1, x2)
    return torch.linalg.vector_norm(x1.unsqueeze(-2) - x2.unsqueeze(-3), ord=p, dim=-1)


def _pdist(x, p=2.0):
    i, j = torch.triu_indices(x.shape[0], x.shape[0], 1, device=x.device)
    return torch.linalg.vector_norm(x[i] - x[j], ord=p, dim=-1)


_KERNELS = {
    nn.functional.scaled_dot_product_attention: _attention,
    nn.functional.multi_head_attention_forward: _multi_head,
    torch.cdist: _cdist,
    torch.pdist: _pdist,  # (nn.functional.pdist is the same function)
}
_WITH_KERNELS = {**_FUNCTIONS, **_KERNELS}
# the kernels' names, as probing records them
KERNEL_FUNCTIONS = frozenset({"scaled_dot_product_attention", "multi_head_attention_forward",
                              "cdist", "pdist"})  # fmt: skip


class _ExactMode(TorchFunctionMode):
    def __init__(self, table: dict) -> None:
        super().__init__()
        self.table = table

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return self.table.get(func, func)(*args, **(kwargs or {}))


class ExactFunctions(nn.Module):
    """``model`` run with its calls of ``F.celu``, ``torch.celu`` and ``F.hardsigmoid``
    replaced by the forms above (the layers' rewrites, as functions); with ``kernels``, also
    its attention and ``torch.cdist`` calls (twice differentiable, the same to rounding).

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

    def __init__(self, model: nn.Module, kernels: bool = False) -> None:
        super().__init__()
        self.model, self.kernels = model, kernels

    def forward(self, *args, **kwargs):
        # (older pickles: no flag, or the same flag named for attention alone)
        kernels = getattr(self, "kernels", getattr(self, "attention", False))
        with _ExactMode(_WITH_KERNELS if kernels else _FUNCTIONS):
            return self.model(*args, **kwargs)
