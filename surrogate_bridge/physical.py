"""The physical-units function: one pure torch module built from the user's model and scalers.

    f_phys(x) = output_scaler.inverse( model( input_scaler(x) ) )

built once from a private, frozen, eval-mode copy of the user's model in the chosen dtype and
device; the user's model object is never touched.

**Row handling is decided once, by probing.** The model is called on a 3-row probe batch. If that
fails or returns the wrong shape, the model is taken as written for one unbatched point and
wrapped in :class:`Pointwise` (``torch.func.vmap``). If it succeeds, the cross-row Jacobian blocks
and one-row-at-a-time values are compared with the batched call: a model that mixes rows (batch
statistics) is wrapped in :class:`RowByRow`. A forward that branches on its input's values (a
Python ``if`` on a tensor), which ``vmap`` cannot trace, is called point by point instead
(:class:`PointwiseLoop`, :class:`RowByRowLoop`). After this every row is independent, which
every fast derivative route relies on (``derivatives.py``).

**Export** (:func:`export`) captures the function with ``torch.export`` for ``io.save`` (a dynamic
batch) and for the CasADi translator (one point, no ``vmap`` in the graph): each row wrapper says
how it is called on one point.
"""

from __future__ import annotations

import contextlib
import copy
import re
import warnings

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from .computed import plain_computed_weights
from .convert import grad_on, outside_inference, to_host, transformed
from .diagnostics import (
    NONSMOOTH,
    called_functions,
    cannot_differentiate,
    no_derivative,
    torch_cannot,
)
from .lowering import same_function
from .normalization import Affine
from .rewrites import KERNEL_FUNCTIONS, REWRITTEN_FUNCTIONS, ExactFunctions, exact_layers
from .scaling import Scaling, ScalingMap
from .threads import TRACING
from .through_autograd import through_autograd
from .weight_reads import captured, recorded

__all__ = [
    "VIEWS",
    "ExportError",
    "PhysicalFunction",
    "build",
    "constants_of",
    "deep_copy",
    "detached_attributes",
    "export",
    "from_torchscript",
]

_PROBE_ROWS = 3
_CUT_CHECKED = 64  # outputs checked one by one for a cut graph
# deep-copying a torch.export graph module makes torch warn about its own pytree API
_TREESPEC = ".*treespec.*"
_ASSIGNED = "The tensor attributes? .* (was|were) assigned during export"
Scaler = Affine | Scaling | None


# row handling ------------------------------------------------------------------------------------
class Batched(nn.Module):
    """A model that takes (N, n) and keeps rows independent: called as it is."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z)

    def one_point(self) -> nn.Module:
        return self


class Pointwise(Batched):
    """A model written for one unbatched point (n,): vectorized with ``torch.func.vmap``."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.func.vmap(self.model)(z)

    def one_point(self) -> nn.Module:
        return _OnePoint(self.model)


class RowByRow(Batched):
    """A model that takes (N, n) but mixes rows (batch statistics): each point alone, as a
    batch of one, through ``torch.func.vmap``."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.func.vmap(lambda r: one_tensor(self.model(r[None]))[0])(z)

    def one_point(self) -> nn.Module:
        return Batched(self.model)  # a batch of one is exactly one point


class PointwiseLoop(Pointwise):
    """A model written for one unbatched point whose forward branches on its values (a Python
    ``if`` on a tensor, ``.item()``), which ``vmap`` cannot trace: called point by point."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        rows = [one_tensor(self.model(r)).reshape(-1) for r in z]
        return torch.stack(rows).reshape(z.shape[0], -1)


class RowByRowLoop(RowByRow):
    """A model that mixes rows and branches on its values: each point alone, one call each."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([one_tensor(self.model(z[i : i + 1])) for i in range(z.shape[0])])


# torch.func.vmap's refusal of a forward that branches on a tensor's values
_BRANCHES = re.compile(r"vmap: It looks like you're (attempting to use a Tensor in some "
                       r"data-dependent control flow|calling \.item\(\))")  # fmt: skip


def _branches(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and bool(_BRANCHES.search(str(err)))


class _OnePoint(Batched):
    """The single point of a (1, n) input, given to a model written for (n,): no vmap."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z[0]).reshape(1, -1)


def one_tensor(y):
    """``y``, the model's output, if it is one tensor; a ``TypeError`` naming what it is else
    (a tuple indexed by a row wrapper would pass its first element off as the output)."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(
            f"the model returned a {type(y).__name__}, expected one tensor of shape "
            "(N, n_out) or (N,)"
        )
    return y


# the function ------------------------------------------------------------------------------------
class PhysicalFunction(nn.Module):
    """``x (N, n_in) -> y (N, n_out)`` in physical units; ``(n_in,) -> (n_out,)`` for one point.

    ``rows`` is one of the row wrappers above, holding the frozen model; an affine scaler is two
    buffers, a nonlinear one (:class:`~.scaling.Scaling`) its :class:`~.scaling.ScalingMap`.
    """

    def __init__(self, rows: Batched, in_aff: Scaler, out_aff: Scaler) -> None:
        super().__init__()
        self.rows = rows
        self.has_in, self.has_out = in_aff is not None, out_aff is not None
        self.reference, self.box = in_aff, None  # where the probes are drawn (probe_points)
        for prefix, aff in (("in", in_aff), ("out", out_aff)):
            # an Affine as two buffers (the graph every route knows); a Scaling as its module
            affine = isinstance(aff, Affine)
            shift, scale = (aff.shift, aff.scale) if affine else (np.zeros(1), np.ones(1))
            self.register_buffer(f"{prefix}_shift", torch.tensor(shift))  # copies: ours alone
            self.register_buffer(f"{prefix}_scale", torch.tensor(scale))
            setattr(self, f"{prefix}_map", ScalingMap(aff) if isinstance(aff, Scaling) else None)

    @property
    def model(self):
        """The private frozen copy of the user's model (normalized units)."""
        return self.rows.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 1:
            return self.forward(x[None])[0]
        y = one_tensor(self.rows(self.normalize(x)))
        if y.ndim == 1:
            y = y[:, None]
        if self.out_map is not None:
            return self.out_map.inverse(y)
        return y * self.out_scale + self.out_shift if self.has_out else y

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Physical inputs (N, n_in) -> the model's own."""
        if self.in_map is not None:
            return self.in_map(x)
        return (x - self.in_shift) / self.in_scale if self.has_in else x

    def probes(self, n_in: int, rows: int = _PROBE_ROWS) -> torch.Tensor:
        """Fixed pseudo-random physical points (rows, n_in), float64, for probing the model and
        checking rewrites of its graph: see :func:`probe_points`. A function that applies no
        input scaler (a loaded graph; a model of physical inputs) is probed through its
        ``reference`` scaler, else in its ``box`` (the training domain) where either is known."""
        if hasattr(self, "reference"):
            return probe_points(n_in, rows, self.reference, self.box)
        # an older pickle: through the scaler it applies, as then
        if self.in_map is not None:
            return probe_points(n_in, rows, self.in_map.scaling, None)
        shift, scale = (getattr(self, f"in_{k}", None) for k in ("shift", "scale"))
        aff = None if not self.has_in else Affine(to_host(shift), to_host(scale))
        return probe_points(n_in, rows, aff, None)

    def _with_rows(self, rows: nn.Module) -> PhysicalFunction:
        twin = copy.copy(self)  # shares buffers and the model; only the row wrapper differs
        twin._modules = {**self._modules, "rows": rows}
        return twin


def probe_points(n_in: int, rows: int, scaler: Scaler, box) -> torch.Tensor:
    """Fixed pseudo-random physical points (rows, n_in), float64, where a model is checked:
    standard normal in the model's own units through ``scaler`` (an ``Affine``, or a
    ``Scaling`` moved inside where each inverse step is defined); without one, uniform in
    ``box`` = (lb, ub), the training domain; with neither, standard normal. The same seed
    every time, so that a surrogate and its saved copy are checked at the same points."""
    gen = torch.Generator().manual_seed(0)
    Z = torch.randn(rows, n_in, generator=gen, dtype=torch.float64)
    if isinstance(scaler, Scaling):
        return torch.as_tensor(scaler.physical(Z.numpy()))
    if isinstance(scaler, Affine):
        return Z * torch.as_tensor(scaler.scale) + torch.as_tensor(scaler.shift)
    if box is not None:
        lb, ub = (torch.as_tensor(np.asarray(b, dtype=np.float64)) for b in box)
        return lb + (ub - lb) * torch.rand(rows, n_in, generator=gen, dtype=torch.float64)
    return Z


@outside_inference
def deep_copy(module: nn.Module) -> nn.Module:
    """``copy.deepcopy`` without torch's note on its own pytree API (a converted TorchScript
    model holds tree specs), which reaches users and is an error under ``-W error``. Tensors
    computed from others and kept as plain attributes (the old ``nn.utils.weight_norm``'s
    weight, a pruned weight, what a forward keeps on its module such as ``self.last = h``;
    left by a torch.func transform over the model: wrapped) cannot be deep-copied: the copy
    gets them detached (the hooks and forwards that compute them do so again at every call)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TREESPEC, category=FutureWarning)
        return copy.deepcopy(module, detached_attributes(module))


def detached_attributes(module) -> dict:
    """A ``copy.deepcopy`` memo that gives ``module``'s tensors kept as plain attributes, where
    deepcopy refuses them (not graph leaves, or wrapped by a torch.func transform), detached."""
    return {
        id(v): v.detach().clone()
        for mod in (module.modules() if isinstance(module, nn.Module) else ())
        for v in vars(mod).values()
        if isinstance(v, torch.Tensor) and (not v.is_leaf or transformed(v))
    }


def frozen_copy(model, dtype: torch.dtype, device: torch.device):
    """A private eval-mode copy in ``dtype`` on ``device`` whose parameters need no grad. Of a
    ``torch.compile``d model, the module it compiles (the same function; compiled graphs cannot
    be differentiated twice, and the routes here are measured for speed anyway). Its callers
    (Surrogate, update_weights, fit) run outside the caller's torch.inference_mode()."""
    if type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
        model = model._orig_mod
    if not isinstance(model, nn.Module):
        return model  # a plain callable: nothing to copy or freeze
    try:
        m = deep_copy(model)
    except Exception as err:  # a lock, a file handle, a generator: anything uncopyable
        raise TypeError(
            f"Surrogate: the model could not be copied ({type(err).__name__}: {err}). The "
            "surrogate works on a private copy so that your model is never changed; keep "
            "objects such as locks, files or open connections out of the model (e.g. as "
            "attributes of a wrapper class), or pass a plain function of z instead."
        ) from err
    m = plain_computed_weights(exact_layers(m))  # (CELU: rewrites.py; pruning: computed.py)
    m = moved(m, dtype, device).eval()
    for p in m.parameters():
        if p.is_leaf:  # a TorchScript copy's parameters are not leaves: they stay as they are
            p.requires_grad_(False)
            p.grad = None
    for b in m.buffers():  # a converted TorchScript model's weights: constants, as parameters are
        if b.is_leaf and b.requires_grad:
            b.requires_grad_(False)
    return m


def moved(module: nn.Module, dtype: torch.dtype, device: torch.device | str) -> nn.Module:
    """``module.to(device, dtype)``, except that tensors on the ``meta`` device stay there:
    the data-free base module of a ``torch.func`` ensemble (its weights are passed in by
    ``functional_call``) has nothing to move, and ``Module.to`` refuses it."""

    def convert(t: torch.Tensor) -> torch.Tensor:
        floating = t.is_floating_point()
        if t.is_meta:
            return t.to(dtype=dtype) if floating else t
        return t.to(device=device, dtype=dtype if floating else None)

    return module._apply(convert)


def graph_input(model) -> tuple[int | None, int] | None:
    """``(rows, n_in)`` of the one input a ``torch.export`` graph module (``program.module()``)
    was exported for: ``rows`` None for a dynamic batch (or a graph of one unbatched point);
    None for any other model, or a graph whose input shape is not recorded."""
    if not isinstance(model, torch.fx.GraphModule):
        return None
    inputs = [n for n in model.graph.nodes if n.op == "placeholder"]
    val = inputs[0].meta.get("val") if len(inputs) == 1 else None
    shape = getattr(val, "shape", None)
    if shape is None or len(shape) not in (1, 2) or not isinstance(shape[-1], int):
        return None
    rows = shape[0] if len(shape) == 2 and isinstance(shape[0], int) else None
    return rows, int(shape[-1])


def from_torchscript(model, n_in: int | None):
    """A TorchScript module (``torch.jit.script``, ``trace`` or ``load``) as an ordinary torch
    module, so that every route works on it: its graph is converted by torch's TorchScript
    converter into an ``ExportedProgram`` whose ``module()`` is a plain ``nn.Module`` (the
    same operations and weights). Where conversion fails, the script module itself is run (a
    private copy; autograd through TorchScript gives exact derivatives), and ``export`` (save,
    symbolic CasADi) says why it cannot capture it. Anything else is returned as it is."""
    if not isinstance(model, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        return model
    if n_in is None:
        raise ValueError(
            "Surrogate: a TorchScript model does not say its input count here; pass n_in= (or "
            "an input_scaler)."
        )
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    example = torch.zeros(_PROBE_ROWS, n_in, dtype=dtype)
    try:
        from torch._export.converter import TS2EPConverter

        with TRACING, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the converter's notes about its own internals
            converted = TS2EPConverter(model, (example,)).convert().module()
    except Exception as err:  # the converter raises many types: keep the reason for export
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return _Scripted(model, f"{type(err).__name__}: {first}")
    return _Converted(converted)


class _Converted(nn.Module):
    """A converted TorchScript graph. Its aten calls hide the functions' names from the probe,
    so it declares the non-smooth ones, as a loaded graph does (an attribute of this holder: a
    graph module's copy keeps only its graph)."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.converted = graph
        ops = {getattr(n.target, "_opname", "") for n in graph.graph.nodes}
        self.nonsmooth_calls = tuple(sorted(ops & NONSMOOTH))

    def forward(self, z):
        return self.converted(z)


class _Scripted(nn.Module):
    """A TorchScript module that torch's converter could not turn into a graph: run as it is
    (a private copy, with its parameters kept out of autograd's leaf set by the copy)."""

    def __init__(self, script, reason: str) -> None:
        super().__init__()
        self.script, self.reason = copy.deepcopy(script), reason

    def forward(self, z):
        return self.script(z)

    def _apply(self, fn, recurse=True):
        with warnings.catch_warnings():  # .to() reads .grad of the copy's non-leaf parameters
            warnings.filterwarnings("ignore", message=".*non-leaf Tensor.*", category=UserWarning)
            return super()._apply(fn, recurse)


class Built:
    """What probing found: the function, its output count, its piecewise-linear ops, and why
    torch cannot take its second derivatives (None where it can)."""

    def __init__(self, fn: PhysicalFunction, n_out: int, nonsmooth: tuple[str, ...],
                 no_first: str | None, no_second: str | None) -> None:  # fmt: skip
        self.fn, self.n_out, self.nonsmooth = fn, n_out, nonsmooth
        self.no_first, self.no_second = no_first, no_second

    def __getstate__(self) -> dict:  # the copy handed out (Surrogate.function) is not saved
        return {k: v for k, v in self.__dict__.items() if k != "handed"}

    def refuse(self, where: str, order: int) -> None:
        """Raise where derivatives of ``order`` would be wrong: a cut graph (``ValueError``),
        or derivatives torch cannot take (``NotImplementedError``)."""
        if why := getattr(self, "no_first", None):  # (absent from older pickles)
            raise (NotImplementedError if torch_cannot(why) else ValueError)(f"{where}: {why}")
        if order >= 2 and (why := getattr(self, "no_second", None)):
            raise NotImplementedError(f"{where}: {why}")


def _first_derivatives(fn, X: torch.Tensor, flat: bool = False) -> str | None:
    """Why torch's gradient of ``fn`` would be wrong at the probe rows ``X``, or None: an
    output changes from row to row, but torch's graph does not connect it to x (a forward under
    torch.no_grad, a .detach(), a detour through numpy), so its derivatives would read as exact
    zeros. Each output is checked alone, up to ``_CUT_CHECKED`` of them; beyond that, a random
    positive mix of them (which cannot cancel). Where the model calls a function flat on whole
    pieces (``flat``: a step such as sign or floor; a clamp or hardtanh saturated at either
    bound; a where), an output connected to x whose gradient is zero at every probe row is that
    function's true derivative, not a cut; the SmoothnessWarning says so where it is asked
    for."""
    watch = _CutWatcher()
    try:
        with grad_on():
            x = X.detach().clone().requires_grad_(True)
            with watch:
                Y = fn(x)
            varies = torch.isfinite(Y).all(0) & (Y != Y[:1]).any(0)
            cut = [int(j) for j in varies.nonzero().flatten()]
            if Y.requires_grad and len(cut) > _CUT_CHECKED:
                w = torch.rand(Y.shape[1], generator=torch.Generator().manual_seed(0)) + 0.5
                cut = [] if _depends((Y @ w.to(Y)).sum(), x, flat) else cut
            elif Y.requires_grad:
                cut = [j for j in cut if not _depends(Y[:, j].sum(), x, flat)]
    except RuntimeError as err:  # no derivative in torch, named; another failure is left to
        return no_derivative(err)  # the request that meets it
    if not cut:
        return _partly_cut(fn, x, Y, watch.cuts) if watch.cuts and Y.requires_grad else None
    which = "the model's outputs" if len(cut) == Y.shape[1] else f"the model's outputs {cut}"
    return (
        f"{which} change with x, but torch's graph does not connect them to x (a forward "
        "under torch.no_grad(), a .detach(), or a detour through numpy), so their derivatives "
        "would read as zero. Keep the forward in differentiable torch operations."
    )


class _CutWatcher(TorchFunctionMode):
    """Notes where a forward run on an x that requires grad cuts a value computed from x out of
    torch's graph: a ``.detach()``, ``.data``, a Python number taken from it (``.item()``,
    ``float()``: a cut where the number is computed with, a branch where it is compared), or an
    operation under ``torch.no_grad()`` on it (the frozen copy's weights need no grad, so
    whatever requires grad depends on x)."""

    def __init__(self) -> None:
        super().__init__()
        self.cuts: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        tracked = any(t.requires_grad for t in tree_leaves((args, kwargs))
                      if isinstance(t, torch.Tensor))  # fmt: skip
        if tracked and name in ("detach", "detach_"):
            self.cuts.add(".detach()")
        elif tracked and name in ("item", "tolist", "__float__", "__int__"):
            self.cuts.add(f".{name}()" if name[0] != "_" else name.strip("_") + "()")
        elif tracked and name == "__get__" and getattr(func, "__self__", None) is _DATA:
            self.cuts.add(".data")
        elif tracked and not torch.is_grad_enabled():
            self.cuts.add("torch.no_grad()")
        return func(*args, **kwargs)


_DATA = torch.Tensor.data


def _partly_cut(fn, x: torch.Tensor, Y: torch.Tensor, cuts: set[str]) -> str | None:
    """Why torch's derivatives of ``fn`` are not the derivatives of its values, where its forward
    cut part of them from the graph (``cuts``): autograd's directional derivative of a random mix
    of the outputs against central differences at the probe rows ``x``; None where they agree
    (a cut that does not reach the outputs' derivatives)."""
    gen = torch.Generator().manual_seed(0)
    w = (torch.rand(Y.shape[1], generator=gen) + 0.5).to(Y)
    d = (torch.rand(x.shape, generator=gen) - 0.5).to(x)
    (g,) = torch.autograd.grad((Y * w).sum(), x, allow_unused=True)
    auto = torch.zeros(x.shape[0]).to(x) if g is None else (g * d).sum(-1)
    eps = torch.finfo(x.dtype).eps
    h = eps ** (1 / 3) * (1.0 + x.detach().abs().amax(-1, keepdim=True))
    with torch.no_grad():
        up, down = fn(x.detach() + h * d) @ w, fn(x.detach() - h * d) @ w
    central = (up - down) / (2 * h[:, 0])
    tol = (1e-3 if x.dtype == torch.float64 else 5e-2) * (auto.abs() + central.abs())
    tol = tol + 1e3 * eps * ((Y.detach() @ w).abs() + 1.0) / h[:, 0]
    bad = (auto - central).abs() > tol
    if not bool(bad.any()):
        return None
    i = int(bad.nonzero()[0, 0])
    return (
        f"the model's forward cuts values computed from x out of torch's graph "
        f"({', '.join(sorted(cuts))}), so torch's derivatives leave them out and are not the "
        f"derivatives of its values (along a direction at a probe point: autograd "
        f"{float(auto[i]):.6g}, central differences {float(central[i]):.6g}). Keep the forward "
        "in differentiable torch operations."
    )


def _depends(y: torch.Tensor, x: torch.Tensor, connected: bool = False) -> bool:
    """Whether the scalar ``y`` has a nonzero gradient with respect to ``x`` (or, with
    ``connected``, any gradient: torch's graph reaches ``x``)."""
    if not y.requires_grad:
        return False
    (g,) = torch.autograd.grad(y, x, allow_unused=True, retain_graph=True)
    return g is not None and (connected or bool(g.any()))


def _second_derivatives(fn, x: torch.Tensor) -> str | None:
    """Why torch cannot take second derivatives of ``fn`` at the probe point ``x`` (1, n), or
    None. An operation without a second derivative raises when differentiated twice. A custom
    autograd Function marked once-differentiable does not (its gradient's graph ends in an
    error node that a derivative with respect to x never reaches, so that derivative would read
    as an exact zero): the first backward starts from ones that require grad, so that torch
    puts that error node in, and the gradient's graph is searched for it."""
    try:
        with grad_on():
            x = x.detach().clone().requires_grad_(True)
            y = fn(x).sum()
            if not y.requires_grad:
                return None
            seed = torch.ones_like(y).requires_grad_(True)
            (g,) = torch.autograd.grad(y, x, seed, create_graph=True, allow_unused=True)
            if g is None or not g.requires_grad:
                return None
            torch.autograd.grad(g.sum(), x, allow_unused=True, retain_graph=True)
    except RuntimeError as err:  # another failure is left to the request that meets it
        return no_derivative(err)
    todo, seen = [g.grad_fn], set()
    while todo and len(seen) < 100_000:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if type(node).__name__ in ("Error", "DelayedError"):
            return cannot_differentiate(
                "the model calls a custom autograd Function marked @once_differentiable"
            )
        todo.extend(n for n, _ in node.next_functions)
    return None


def build(
    model, in_aff: Scaler, out_aff: Scaler, n_in: int, dtype, device,
    n_in_hint: str | None = None, box=None,
) -> Built:  # fmt: skip
    """Probe ``model`` (already a frozen copy) once: how to call it, n_out, row independence,
    smoothness, at :func:`probe_points` (in ``box``, the training domain, where ``in_aff`` is
    None). Raises ``ValueError`` naming what failed (and, for a failure of shapes, with
    ``n_in_hint``: where n_in came from); leaves nothing behind on failure."""
    X = probe_points(n_in, _PROBE_ROWS, in_aff, box).to(dtype).to(device)
    rows, n_out, err, axes = None, None, None, None
    # (RowByRow last: a model that takes a batch of exactly one, as a torch.export graph
    # exported from a one-row example is, each point as its own batch of one)
    wrappers = [Batched, Pointwise, RowByRow]
    for wrapper in wrappers:
        probe = moved(PhysicalFunction(wrapper(model), in_aff, None), dtype, device)
        try:
            with torch.no_grad():
                Y = probe(X)
        except Exception as e:  # the model's own error, of any type, is reported
            loop = {Pointwise: PointwiseLoop, RowByRow: RowByRowLoop}.get(wrapper)
            if loop is not None and _branches(e):  # a branch on values: point by point
                wrappers.insert(wrappers.index(wrapper) + 1, loop)
                err = None  # (the batch's failure was the branch's; the loop's is what to say)
                continue
            err = err or f"{type(e).__name__}: {e}"
            continue
        if isinstance(Y, torch.Tensor) and Y.ndim == 2 and Y.shape[0] == X.shape[0]:
            rows, n_out = wrapper(model), int(Y.shape[1])
            break
        got = f"shape {tuple(Y.shape)}" if isinstance(Y, torch.Tensor) else type(Y).__name__
        err = err or f"it returned {got} for {X.shape[0]} points"
        if isinstance(Y, torch.Tensor) and Y.ndim > 2 and Y.shape[0] == X.shape[0]:
            axes = tuple(Y.shape[1:])  # a field per point: outputs on more than one axis
    if rows is None:
        hint = "Check n_in and the scalers' feature counts against the model's input layer."
        if n_in_hint is not None:  # where n_in came from, if the input layer disagrees
            hint += f" {n_in_hint}"
        if "dtype" in str(err) or "Float and Double" in str(err):
            hint = (
                f"The Surrogate runs a copy of the model in {dtype}: a cast inside its forward "
                "(x.float(), say) breaks that; remove it, or pass the dtype it casts to."
            )
            if not isinstance(model, nn.Module):
                hint = (
                    f"The Surrogate computes in {dtype}, and cannot copy or convert a model "
                    "called inside a plain function: pass a module (an nn.Module whose forward "
                    f"calls it), or convert the model yourself (model.to({dtype}))."
                )
        elif re.search(r"missing \d+ required positional argument", str(err)):
            hint = (
                "The Surrogate calls the model with one tensor of shape (N, n_in). For a model "
                "of several inputs, pass a module that splits one, e.g. an nn.Module holding "
                "the model whose forward(z) returns self.model(z[:, :2], z[:, 2:]), and n_in= "
                "(a module, not a lambda: the Surrogate then copies and converts it)."
            )
        elif axes is not None and str(err).startswith("it returned shape"):
            hint = (
                f"A surrogate's outputs are one vector per point, and this model gives each point "
                f"an array of shape {axes}: pass nn.Sequential(model, nn.Flatten(1)) (outputs "
                f"in row-major order; reshape results to (..., {', '.join(map(str, axes))}))."
            )
        elif static := _static_batch(model, n_in):
            hint = static
        elif "the model returned a" in str(err):
            hint = "Pass a function of z returning the one output tensor, and n_in="
            hint += " (lambda z: model(z)[0] for a tuple, lambda z: model(z)[key] for a dict)."

        raise ValueError(
            f"Surrogate: the model failed on a probe batch of shape ({_PROBE_ROWS}, {n_in}) "
            f"and on one point of shape ({n_in},): {err}. {hint}"
        )
    if out_aff is not None and out_aff.n_features != n_out:
        raise ValueError(
            f"Surrogate: output_scaler has {out_aff.n_features} features but the model "
            f"returns {n_out} outputs."
        )
    fn = moved(PhysicalFunction(rows, in_aff, out_aff), dtype, device)
    fn.box = box
    # a loaded graph's aten calls hide the functions' names: it declares the non-smooth ones
    # (the model's calls alone: a scaling's own where and clamp are smooth by construction)
    with torch.no_grad():
        Z = fn.normalize(X)
    called = called_functions(fn.rows, Z) | set(getattr(model, "nonsmooth_calls", ()))
    if called & REWRITTEN_FUNCTIONS:  # F.celu, F.hardsigmoid in the forward: rewrites.py
        fn = fn._with_rows(type(rows)(ExactFunctions(model)))
    if type(rows) is Batched and not _rows_independent(fn, X, fn.rows.model):
        fn = fn._with_rows(RowByRow(fn.rows.model))  # batch statistics or the like: each alone
        try:
            with torch.no_grad():
                fn(X)
        except Exception as e:  # (any other failure is the model's own, reported when asked)
            if _branches(e):  # a branch on values: each point alone, one call each
                fn = fn._with_rows(RowByRowLoop(fn.rows.model))
    no_second = _second_derivatives(fn, X[:1])
    if no_second and called & KERNEL_FUNCTIONS:  # attention, cdist, pdist: rewrites.py
        exact = fn._with_rows(type(fn.rows)(ExactFunctions(model, kernels=True)))
        if _second_derivatives(exact, X[:1]) is None:
            fn, no_second = exact, None
    nonsmooth = tuple(sorted(called & NONSMOOTH))
    no_first = _first_derivatives(fn, X, flat=bool(called & NONSMOOTH))
    return Built(fn, n_out, nonsmooth, no_first, no_second)


def _by_batch(m: nn.Module) -> bool:
    """Whether ``m`` is a batch norm normalizing with the batch's own statistics (in training
    mode, or without running statistics)."""
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)


def batch_statistics(module: nn.Module) -> str | None:
    """The first layer of ``module`` normalizing with the batch's own statistics, as
    "BatchNorm1d '1'", or None."""
    return next(
        (f"{type(m).__name__} {name or '(the module)'!r}" for name, m in module.named_modules()
         if _by_batch(m)),
        None,
    )  # fmt: skip


def _static_batch(model, n_in: int) -> str | None:
    """What to do about a torch.export graph for batches of a fixed size other than one."""
    rows = (graph_input(model) or (None,))[0]
    if rows in (None, 1):
        return None
    return (
        f"The model is a torch.export graph for batches of exactly {rows} rows; export it with "
        "a dynamic batch (dynamic_shapes=({0: torch.export.Dim('batch')},)) or from a one-row "
        f"example (torch.zeros(1, {n_in})): a one-row graph is called one point at a time."
    )


def _refuse_alone(err: Exception, X: torch.Tensor, model) -> None:
    """Solvers ask for one point at a time: a model that works on a batch but not on one row
    (batch statistics of a single row, a squeeze of the batch axis) is refused, naming why."""
    batch_stats = [  # (the model is the eval-mode copy: only layers without running statistics)
        f"layer {name!r} ({type(m).__name__})" if name else type(m).__name__
        for name, m in model.named_modules()
        if _by_batch(m)
    ]
    why = (
        f"{', '.join(batch_stats)} normalizes with the statistics of each batch (built with "
        "track_running_stats=False: even in eval mode), so its output at a point depends on "
        "the other points. A surrogate must be a function of each point: keep running "
        "statistics (track_running_stats=True, then train) or normalize per point (LayerNorm)."
        if batch_stats
        else _static_batch(model, X.shape[1])
        or "Solvers evaluate one point at a time: look in the forward for a squeeze() of the "
        "batch axis or a statistic over the batch."
    )
    raise ValueError(
        f"Surrogate: the model works on a batch of {X.shape[0]} points but fails on one point"
        f" alone (shape {tuple(X[:1].shape)}): {type(err).__name__}: {err}. {why}"
    ) from err


def _rows_independent(fn: PhysicalFunction, X: torch.Tensor, model) -> bool:
    """True if row i of fn(X) depends on row i of X alone (checked at random probe points):
    cross-row Jacobian blocks vanish and one-row evaluation equals batched evaluation. A model
    that fails on one row alone is refused (:func:`_refuse_alone`)."""
    with torch.no_grad():
        Y = fn(X)
        try:
            # (copies, not views: a forward that calls requires_grad_ on its input, as a
            # Hamiltonian network's does before its autograd.grad, fails on a no-grad view)
            alone = torch.cat([fn(X[i : i + 1].clone()) for i in range(X.shape[0])])
        except Exception as e:  # the model's own error, of any type, is reported
            _refuse_alone(e, X, model)
    if not torch.allclose(Y, alone, rtol=1e-5, atol=1e-8):
        return False
    try:
        J = torch.autograd.functional.jacobian(fn, X)  # (N, m, N, n)
    except RuntimeError:  # no derivative (floor_divide, say): refused when one is asked for
        return True  # the values agreed
    off = J.clone()
    for i in range(X.shape[0]):
        off[i, :, i, :] = 0
    return bool(off.abs().max() <= 1e-10 * max(float(J.abs().max()), 1.0))


# export ------------------------------------------------------------------------------------------
aten = torch.ops.aten
# operations of an exported graph that relabel a tensor's values without changing them (the
# row-major order stays): the graph readers (numpy route, CasADi, ...) pass them through
VIEWS = frozenset({
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.unsqueeze.default,
    aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.flatten.using_ints,
    aten.clone.default, aten.alias.default, aten.detach.default, aten.contiguous.default,
    aten.dropout.default,
})  # fmt: skip


def constants_of(program, float64: bool = True) -> dict[str, torch.Tensor]:
    """The float64 values (with ``float64=False``: the values as the program holds them) of an
    exported program's lifted placeholders (parameters, buffers, constants), by placeholder
    name; the one placeholder not here is the input."""
    state = {**program.state_dict, **program.constants}
    sig = program.graph_signature
    lifted = {
        **sig.inputs_to_parameters,
        **sig.inputs_to_buffers,
        **sig.inputs_to_lifted_tensor_constants,
    }

    def wide(t: torch.Tensor) -> torch.Tensor:  # (a complex weight stays complex)
        return t.to(torch.complex128 if t.is_complex() else torch.float64) if float64 else t

    return {name: wide(state[key].detach()) for name, key in lifted.items()}


def _calls_vmap(program) -> bool:
    """Whether the captured graph holds ``torch.func.vmap``'s own calls (kept whole by
    ``torch.export``: no consumer of the graph reads them)."""
    return any(
        getattr(n.target, "__module__", "").startswith("torch._functorch")
        for n in program.graph.nodes
        if n.op == "call_function"
    )


def _drop_error_checks(program) -> None:
    """``torch.linalg.solve`` and ``inv`` record a check of their info (singular or not), an
    operation with an effect: every later lowering of the graph threads a token through it
    (``with_effects``, which no consumer of the graph reads, so that a saved file or the CasADi
    translation of such a model failed). The checks go; a singular system then gives
    non-finite values where torch raises."""
    checks = [n for n in program.graph.nodes if n.target is aten._linalg_check_errors.default]
    for node in checks:
        program.graph.erase_node(node)
    if checks:
        program.graph_module.recompile()


class ExportError(ValueError):
    """``torch.export`` could not capture the physical function; the message says why."""


def export(
    fn: PhysicalFunction,
    n_in: int,
    *,
    one_point: bool,
    dtype: torch.dtype,
    device: torch.device | str | None = None,
) -> torch.export.ExportedProgram:
    """Capture ``fn`` on the CPU in ``dtype`` with ``torch.export``.

    ``one_point=True``: on a (1, n_in) input with each row wrapper's one-point form (no vmap in
    the graph; the CasADi translator's input). Else a dynamic batch dimension (``io.save``).
    ``device``: where ``fn`` computes. A function that keeps tensors of its own there, which no
    copy can move (a closure's), fails to capture on the CPU; it is then captured on
    ``device`` and the program moved to the CPU.
    """
    if isinstance(fn.model, _Scripted):
        raise ExportError(
            "the TorchScript model could not be converted to a torch graph "
            f"({fn.model.reason}); save and symbolic CasADi need one. Callback mode and every "
            "derivative work; or pass the original nn.Module (before torch.jit.script/trace)."
        )
    if isinstance(fn.rows, (PointwiseLoop, RowByRowLoop)):  # (torch.export would fail noisily)
        raise ExportError(
            "the model's forward branches on its input's values (a Python if on a tensor, or "
            ".item()), so no one graph computes it; save and symbolic CasADi need one. Callback "
            "mode and every derivative work; or write the branch with torch.where."
        )
    module = fn._with_rows(fn.rows.one_point()) if one_point else fn
    elsewhere = device is not None and torch.device(device).type != "cpu"
    try:
        with TRACING, warnings.catch_warnings():  # nn.RNN/GRU/LSTM rebuild their weight list
            # on every call, which torch.export notes; they are captured with the graph all
            # the same
            warnings.filterwarnings("ignore", message=_ASSIGNED, category=UserWarning)
            try:
                program = _capture(fn, module, n_in, one_point, dtype, "cpu")
            except Exception:
                if not elsewhere:
                    raise
                from torch.export.passes import move_to_device_pass

                program = _capture(fn, module, n_in, one_point, dtype, device)
                program = move_to_device_pass(program, "cpu")
            _drop_error_checks(program)
            if _calls_vmap(program):  # the model's own torch.func.vmap (an ensemble over
                # stacked weights): its batching rules written out as aten operations, which
                # is what eager vmap computes
                warnings.filterwarnings("ignore", message=_TREESPEC, category=FutureWarning)
                program = program.run_decompositions({})
            return program
    except Exception as err:  # torch.export raises many types: say what failed and why
        first = str(err).splitlines()[0] if str(err) else ""
        raise ExportError(
            f"torch.export could not capture the model ({type(err).__name__}: {first}). Models "
            "with data-dependent Python control flow cannot be captured as a graph."
        ) from err


def _capture(fn, module, n_in: int, one_point: bool, dtype, device):
    """``torch.export`` of a copy of ``module`` on ``device``."""
    module = moved(deep_copy(module), dtype, device)
    example = torch.zeros(1 if one_point else 2, n_in, dtype=dtype, device=device)
    dynamic = None if one_point else ({0: torch.export.Dim("batch")},)
    program, probes = None, fn.probes(n_in).to(dtype=dtype, device=device)
    if reads := recorded(module, example):  # a Python if on a weight: decided
        with contextlib.suppress(Exception):  # (else as torch.export alone would)
            program = captured(module, example, dynamic, reads)
            # (and only where it computes the forward's values at the probe points)
            if not same_function(program, module, probes):
                program = None
    if program is None:
        try:
            program = torch.export.export(module, (example,), dynamic_shapes=dynamic)
        except Exception:  # a forward that differentiates inside: traced through autograd
            # (one point: the trace's shapes are fixed)
            traced = one_point and through_autograd(module, example, probes)
            if not traced:
                raise
            program = traced
    return program
