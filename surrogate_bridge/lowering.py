"""Lowering an exported graph to the operations its consumer knows.

``torch.export`` keeps composite operations whole (``einsum``, ``chunk``, ``pad``, ``glu``,
``softmax``, ...). Each consumer of the graph knows a fixed set of operations: the saved
file's allowed list (``io.py``), the CasADi translator (``adapters/casadi_ops.py``). An
operation outside that set used to end the consumer's work ("no CasADi translation", "a saved
file may not contain"), although torch itself can write it in simpler operations.

:func:`lowered` replaces each operation the consumer does not know, and only those, by torch's
own decomposition of it (``torch.export.default_decompositions()``: the CompositeImplicitAutograd
kernels, which are what eager torch runs for those operations, and the core-ATen
decompositions; for the upsampling operations, such as ``upsample_bilinear2d``, torch's
compiler's forms of them; for an operation torch has none of, such as ``_trilinear``, which
``nn.Bilinear`` calls, ``torch.cdist``, ``nn.GroupNorm``, ``nn.InstanceNorm``, ``torch.var``
(which a hand-written LayerNorm calls), ``torch.hypot``, ``torch.prod``, the pooling layers
(average, max and adaptive average pools) or bitwise operations of boolean masks (as logical
ones), and for ``rrelu``,
whose own decomposition draws noise, one written here in plain operations), round by
round, until the consumer knows every operation or nothing more can be decomposed.
Operations the consumer knows stay whole, so an activation with an exact rule of its own, or
a linear layer, is never broken up. The lowered program must be the same function as the
original to float64 rounding at probe points (``_SAME``, relative to the output's size); where
it is not, the original is handed back and the consumer names the operation it does not know,
as before. :func:`same_function` is that check, also used on the CasADi translation itself.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from .threads import TRACING

__all__ = ["constant", "lowered", "same_function"]

_ROUNDS = 4  # a decomposition may call further composite operations: lower again
_SAME = 1e-12  # relative to the output's size: rounding, not a different function
_TREESPEC = ".*treespec.*"  # torch warns about its own pytree API when copying a graph module


def lowered(program, known: Callable[[object], bool], probes: torch.Tensor):
    """``program`` with every operation that ``known`` rejects replaced by torch's own
    decomposition of it (see the module's docstring); ``program`` itself where nothing was
    lowered, or where the lowered graph is not the same function at ``probes`` (k, n).

    Examples
    --------
    >>> import torch
    >>> class Einsum(torch.nn.Module):
    ...     def forward(self, x):
    ...         return torch.einsum("bi,bi->b", x, x)[:, None]
    >>> program = torch.export.export(Einsum(), (torch.ones(1, 3),))
    >>> low = lowered(program, lambda op: "einsum" not in str(op), torch.randn(3, 3))
    >>> ops = {str(n.target) for n in low.graph.nodes if n.op == "call_function"}
    >>> "aten.einsum.default" in ops, "aten.bmm.default" in ops
    (False, True)
    """
    with TRACING, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TREESPEC, category=FutureWarning)
        current, table = program, None
        for _ in range(_ROUNDS):
            unknown = {t for t in _operations(current) if not known(t)}
            if not unknown:
                break
            if table is None:
                table = _decompositions()
            # (view-like composites such as chunk are decomposed by any run, even with no table)
            try:
                lower = current.run_decompositions({op: table[op] for op in unknown if op in table})
            except Exception:  # torch could not lower this graph: the consumer names the op
                break
            if _operations(lower) == _operations(current):
                break
            current = lower
        if current is program:
            return program
        return current if same_function(program, current.module(), probes) else program


def constant(node, consts: dict):
    """The value of a graph node that does not depend on the input (a causal mask's ``arange``
    and ``tril``, a parametrized weight), computed by torch itself from ``consts`` (values by
    node name: the program's lifted constants, as it holds them, and the nodes found constant
    before, to which this one is added); None for a node that depends on the input, or that
    torch cannot run here."""
    reads: list = []
    torch.fx.node.map_arg((node.args, node.kwargs), reads.append)
    if not all(r.name in consts for r in reads):
        return None
    args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda r: consts[r.name])
    try:
        with torch.no_grad():
            consts[node.name] = node.target(*args, **kwargs)
    except Exception:  # (torch's own error, of any type): the consumer's rule takes the node
        return None
    return consts[node.name]


def same_function(program, other: Callable[[torch.Tensor], torch.Tensor], probes) -> bool:
    """Whether ``other`` computes ``program``'s outputs to float64 rounding (``_SAME``, relative
    to the largest output; non-finite values where both are) at the points ``probes`` (k, n),
    fed as the program was captured: one row at a time, or all rows at once. Where the
    program's outputs are finite at no probe point there is nothing to compare: not shown the
    same."""
    example = _example(program)
    if example is None:
        return False
    X = torch.as_tensor(probes).to(example.dtype)
    batches = X.split(1) if example.shape[0] == 1 else (X,)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_TREESPEC, category=FutureWarning)
            fn = program.module()
            with torch.no_grad():
                a = torch.cat([fn(x).reshape(x.shape[0], -1) for x in batches])
                b = torch.cat([torch.as_tensor(other(x)).reshape(x.shape[0], -1) for x in batches])
    except Exception:  # one of them does not even run on these points: not the same function
        return False
    if a.shape != b.shape:
        return False
    finite = torch.isfinite(a)
    if not finite.any():
        return False
    scale = float(a[finite].abs().max())
    return torch.allclose(a, b.to(a.dtype), rtol=_SAME, atol=_SAME * scale, equal_nan=True)


def _operations(program) -> set:
    return {
        node.target
        for node in program.graph.nodes
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
    }


def _decompositions() -> dict:
    """Decompositions by operation: ours (``_OWN``), then those ``torch.export`` runs by
    default, then, for the upsampling operations it leaves whole (``upsample_bilinear2d``,
    ``upsample_nearest2d``), torch's reference forms of them from its compiler's table (in
    plain indexing and arithmetic; the rest of that table goes down to primitives)."""
    try:  # (a private module of torch's, as stable as its compiler)
        from torch._decomp import decomposition_table
    except ImportError:
        decomposition_table = {}
    table = {
        op: fn
        for op, fn in decomposition_table.items()
        if isinstance(op, torch._ops.OpOverload) and op.__name__.startswith(_UPSAMPLING)
    }
    make = getattr(torch.export, "default_decompositions", None)
    if make is not None:
        default = make()
        table.update(default.materialize() if hasattr(default, "materialize") else default)
    return {**table, **_OWN}


_UPSAMPLING = ("upsample_", "_upsample_")


def _trilinear(i1, i2, i3, expand1, expand2, expand3, sumdim, unroll_dim=1):
    """``aten._trilinear`` (``nn.Bilinear``'s kernel) in plain operations, as ATen defines it:
    each input unsqueezed at its ``expand`` dimensions (in increasing order), the three
    multiplied, and the product summed over ``sumdim``. ``unroll_dim`` only chooses ATen's
    loop order."""
    rank = i1.dim() + len(expand1)
    ins = []
    for t, expand in ((i1, expand1), (i2, expand2), (i3, expand3)):
        for d in sorted(e % rank for e in expand):
            t = t.unsqueeze(d)
        ins.append(t)
    product = ins[0] * ins[1] * ins[2]
    return product.sum([d % rank for d in sumdim]) if len(sumdim) else product


def _cdist(x1, x2, p, compute_mode=None):
    """``aten._cdist_forward`` (``torch.cdist``) as the p-norm of the differences of every pair
    of rows; torch computes p = 2 this way too for up to 25 rows (above, through a matrix
    product: the same function to rounding, which the probe check holds it to)."""
    diff = (x1.unsqueeze(-2) - x2.unsqueeze(-3)).abs()
    if p == float("inf"):
        return diff.amax(-1)
    if p == 2:
        return (diff * diff).sum(-1).sqrt()
    return (diff**p).sum(-1) ** (1.0 / p)


def _group_norm(x, weight, bias, N, C, HxW, group, eps):
    """``aten.native_group_norm`` (``nn.GroupNorm``) as its definition: each of the ``group``
    groups of channels of each sample normalized by its mean and biased variance, then the
    per-channel weight and bias; also the (N, group) means and reciprocal deviations it
    returns."""
    out, mean, rstd = _normalized(x.reshape(N, group, -1), [-1], eps)
    out = _per_channel(out.reshape(x.shape), weight, bias)
    return out, mean.reshape(N, group), rstd.reshape(N, group)


def _normalized(x, dims: list[int], eps: float):
    """``x`` less its mean over ``dims``, times the reciprocal of its biased deviation there;
    also that mean and reciprocal deviation (kept dims)."""
    mean = x.mean(dims, keepdim=True)
    centred = x - mean
    rstd = torch.rsqrt((centred * centred).mean(dims, keepdim=True) + eps)
    return centred * rstd, mean, rstd


def _per_channel(out, weight, bias):
    """``out`` (N, C, ...) times a per-channel weight, plus a per-channel bias (either None)."""
    channel = (1, out.shape[1]) + (1,) * (out.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(channel)
    if bias is not None:
        out = out + bias.reshape(channel)
    return out


def _rrelu(x, lower=1.0 / 8.0, upper=1.0 / 3.0, training=False, generator=None):
    """``aten.rrelu`` in eval mode, as ATen computes it: a leaky ReLU of the mean slope (torch's
    own decomposition draws a noise tensor, which no consumer here takes)."""
    if training:
        raise ValueError("rrelu in training mode draws random slopes")
    return torch.nn.functional.leaky_relu(x, (lower + upper) / 2.0)


def _dims(x, dim) -> list[int]:
    """``dim`` of a reduction as a list of axes of ``x`` (None or empty: every axis)."""
    if x.dim() == 0 or dim is None or (isinstance(dim, (list, tuple)) and not dim):
        return list(range(x.dim()))
    return [d % x.dim() for d in ([dim] if isinstance(dim, int) else dim)]


def _var_mean(x, dim=None, *, correction=None, keepdim=False):
    """``aten.var_mean.correction`` as its definition: the sum of squared deviations from the
    mean over ``dim``, divided by the count less ``correction`` (1 where None; no less than 0,
    so that too few values give inf or nan, as torch's kernel does), and the mean."""
    dims = _dims(x, dim)
    mean = x.mean(dims, keepdim=True)
    centred = x - mean
    total = (centred * centred).sum(dims, keepdim=keepdim)
    correction = 1.0 if correction is None else float(correction)
    divisor = max(0.0, math.prod(x.shape[d] for d in dims) - correction)
    return total / divisor, (mean if keepdim else mean.squeeze(dims))


def _var(x, dim=None, *, correction=None, keepdim=False):
    """``aten.var.correction`` (``torch.var``, ``Tensor.std``'s square): see :func:`_var_mean`."""
    return _var_mean(x, dim, correction=correction, keepdim=keepdim)[0]


def _hypot(a, b):
    """``aten.hypot`` as sqrt(a^2 + b^2): the same to rounding wherever the squares neither
    overflow nor underflow (the probe check holds it to that)."""
    return torch.sqrt(a * a + b * b)


def _prod(x, dim=None, keepdim=False, *, dtype=None):
    """``aten.prod`` (of one axis, or of every value) as a chain of products of slices."""
    if dtype is not None:
        x = x.to(dtype)
    if dim is None:
        x, dim = x.reshape(-1), 0
    parts = x.unbind(dim)
    out = parts[0] if parts else torch.ones_like(x.sum(dim))
    for part in parts[1:]:
        out = out * part
    return out.unsqueeze(dim) if keepdim else out


def _instance_norm(x, weight, bias, training, momentum, eps):
    """``aten._native_batch_norm_legit.no_stats`` (which ``nn.InstanceNorm`` calls on its input
    folded to one sample of N * C channels): each channel normalized by its mean and biased
    variance over every other axis, then the per-channel weight and bias; also the per-channel
    means and reciprocal deviations it returns."""
    out, mean, rstd = _normalized(x, [0, *range(2, x.dim())], eps)
    return _per_channel(out, weight, bias), mean.reshape(-1), rstd.reshape(-1)


def _pair(v) -> list[int]:
    """A pooling argument (one number, or one per axis) as one number per axis of two."""
    v = [v] if isinstance(v, int) else list(v)
    return v * 2 if len(v) == 1 else v


def _pooled_size(size, k, pad, stride, dilation, ceil_mode) -> int:
    """The length of a pooled axis, as ATen's ``pooling_output_shape`` gives it (with
    ``ceil_mode``, a last window that starts in the right padding is dropped)."""
    out = (size + 2 * pad - dilation * (k - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride
    out += 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _windows(x, kernel, stride, padding, dilation, ceil_mode, fill):
    """The pooling windows of ``x``'s last two axes: one strided slice of ``x`` (padded with
    ``fill``) per position in the kernel, row by row, and the pooled sizes."""
    kernel, padding, dilation = _pair(kernel), _pair(padding), _pair(dilation)
    stride = _pair(stride) if stride else kernel
    sizes = x.shape[-2:]
    axes = zip(sizes, kernel, padding, stride, dilation, strict=True)
    outs = [_pooled_size(*a, ceil_mode) for a in axes]
    ends = [  # the padding past the end that the last window reaches
        max(0, (o - 1) * s + d * (k - 1) + 1 - p - n)
        for o, s, d, k, p, n in zip(outs, stride, dilation, kernel, padding, sizes, strict=True)
    ]
    if any(padding) or any(ends):
        pads = (padding[1], ends[1], padding[0], ends[0])
        x = torch.nn.functional.pad(x, pads, value=fill)
    (oh, ow), (sh, sw), (dh, dw) = outs, stride, dilation
    slices = [
        x[..., i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw]
        for i in range(kernel[0])
        for j in range(kernel[1])
    ]
    return slices, (kernel, stride, padding, outs)


def _in_order(parts):
    """The sum of tensors added one after the other, as a pooling kernel's loop adds them."""
    parts = iter(parts)
    total = next(parts)
    for part in parts:
        total = total + part
    return total


def _avg_pool2d(
    x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor=None
):
    """``aten.avg_pool2d`` (``nn.AvgPool1d``/``2d``) as ATen computes it: each window's values
    summed in order, then divided by the window's size (clipped to the padded input), by the
    count of its values inside the input (``count_include_pad=False``), or by ``divisor``."""
    slices, (kernel, stride, padding, outs) = _windows(
        x, kernel_size, stride, padding, 1, ceil_mode, 0.0
    )
    total = _in_order(slices)
    if divisor is None:
        counts = []
        for k, s, p, o, n in zip(kernel, stride, padding, outs, x.shape[-2:], strict=True):
            start = torch.arange(o) * s - p
            end = torch.clamp(start + k, max=n + p)
            counts.append(
                (end - start) if count_include_pad else (end.clamp(max=n) - start.clamp(min=0))
            )
        divisor = (counts[0][:, None] * counts[1][None, :]).to(x.dtype)
    return total / divisor


def _max_pool2d_with_indices(x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    """``aten.max_pool2d_with_indices`` (``nn.MaxPool1d``/``2d``) as its definition: the
    greatest value of each window (padding never wins), and where in the input it lies (the
    first such position, as ATen picks it)."""
    slices, _ = _windows(x, kernel_size, stride, padding, dilation, ceil_mode, -math.inf)
    values = torch.stack(slices, -1)
    h, w = x.shape[-2:]
    at = torch.arange(h * w).reshape(h, w).expand(x.shape)
    places, _ = _windows(at, kernel_size, stride, padding, dilation, ceil_mode, -1)
    index = torch.stack(places, -1).gather(-1, values.argmax(-1, keepdim=True)).squeeze(-1)
    return values.amax(-1), index


def _adaptive_avg_pool2d(x, output_size):
    """``aten._adaptive_avg_pool2d`` (``nn.AdaptiveAvgPool1d``/``2d``) as ATen computes it:
    output cell i of an axis of n sums the input's positions floor(i n / out) to
    ceil((i + 1) n / out) in order and divides by their counts; an average pool where out
    divides n."""
    (h, w), (oh, ow) = x.shape[-2:], _pair(output_size)
    if h % oh == 0 and w % ow == 0:  # equal windows side by side
        kernel = [h // oh, w // ow]
        slices, _ = _windows(x, kernel, kernel, 0, 1, False, 0.0)
        return _in_order(slices) / kernel[0] / kernel[1]
    rows = []
    for i in range(oh):
        a, b = (i * h) // oh, -((-(i + 1) * h) // oh)
        cells = []
        for j in range(ow):
            c, d = (j * w) // ow, -((-(j + 1) * w) // ow)
            total = _in_order(x[..., r, q] for r in range(a, b) for q in range(c, d))
            cells.append(total / (b - a) / (d - c))
        rows.append(torch.stack(cells, -1))
    return torch.stack(rows, -2)


def _on_bools(logical, bitwise):
    """A bitwise operation of boolean masks (``&``, ``|``, ``^`` of comparisons: a KAN's
    B-spline basis) as the logical one, the same values; on integers, left as it is."""

    def lower(a, b):
        return (logical if a.dtype == b.dtype == torch.bool else bitwise)(a, b)

    return lower


def _bitwise_not(a):
    return torch.logical_not(a) if a.dtype == torch.bool else torch.bitwise_not(a)


def _empty(size, *, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    """``aten.empty`` as zeros: a graph that writes every value before reading it (a solver's
    table of states, ``solution[i] = y``) computes the same; and no saved file can read the
    loading process's uninitialized memory."""
    return torch.zeros(size, dtype=dtype, device=device)


# operations torch has no decomposition of (or one that draws random numbers), in plain
# operations, checked like torch's own
_OWN = {
    torch.ops.aten.empty.memory_format: _empty,
    torch.ops.aten.bitwise_and.Tensor: _on_bools(torch.logical_and, torch.bitwise_and),
    torch.ops.aten.bitwise_or.Tensor: _on_bools(torch.logical_or, torch.bitwise_or),
    torch.ops.aten.bitwise_xor.Tensor: _on_bools(torch.ne, torch.bitwise_xor),
    torch.ops.aten.bitwise_not.default: _bitwise_not,
    torch.ops.aten._trilinear.default: _trilinear,
    torch.ops.aten._cdist_forward.default: _cdist,
    torch.ops.aten.native_group_norm.default: _group_norm,
    torch.ops.aten.rrelu.default: _rrelu,
    torch.ops.aten.var.correction: _var,
    torch.ops.aten.var_mean.correction: _var_mean,
    torch.ops.aten.hypot.default: _hypot,
    torch.ops.aten.prod.dim_int: _prod,
    torch.ops.aten.prod.default: _prod,
    torch.ops.aten._native_batch_norm_legit.no_stats: _instance_norm,
    torch.ops.aten.avg_pool2d.default: _avg_pool2d,
    torch.ops.aten.max_pool2d_with_indices.default: _max_pool2d_with_indices,
    torch.ops.aten._adaptive_avg_pool2d.default: _adaptive_avg_pool2d,
}


def _example(program):
    """The example input the program was captured on (its one user input)."""
    example = getattr(program, "example_inputs", None)
    if not example or not example[0] or not isinstance(example[0][0], torch.Tensor):
        return None
    return example[0][0]
