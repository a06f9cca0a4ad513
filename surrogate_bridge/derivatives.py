"""Exact derivatives of a torch function of points, by the fastest route measured for each call.

Batches and single points share one output convention: ``D^j f`` has shape
``(N, m) + (n,) * j`` for N points with n inputs and m outputs.

* Row-wise reverse mode (models whose rows are independent, the usual case): one forward pass over
  the batch, then one backward pass per output component of the previous order over the *row sums*.
  Since row ``i`` of the output depends on row ``i`` of the input only, the gradient of a row sum is
  every row's own gradient at once (against ``vmap(hessian)`` and the per-sample loop in
  ``benchmarks/RESULTS.md``). Models that mix rows are wrapped per row with ``torch.func.vmap``
  (``physical.RowByRow``), so this engine always sees independent rows.

Single points (what solver callbacks ask for) go through :class:`TorchPointRoute` or one of the
other routes (``numpy_route.py``, ``adapters/casadi_route.py``) behind
``points.PointEvaluator``; ``routes.MeasuredRoute`` chooses among them by measuring.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from importlib.util import find_spec

import numpy as np
import torch

from .chunks import CPU_ROWS, Chunks
from .convert import grad_on, in_transform, normal, to_host, to_torch, transformed
from .physical import batch_statistics
from .routes import MeasuredRoute, RouteUnavailable, same_as_torch, torch_reference

__all__ = ["derivatives"]

Fn = Callable[[torch.Tensor], torch.Tensor]


def _as_2d(y: torch.Tensor, n_rows: int) -> torch.Tensor:
    if y.ndim == 1 and y.shape[0] == n_rows:
        return y[:, None]
    if y.ndim != 2 or y.shape[0] != n_rows:
        raise ValueError(
            f"the function returned shape {tuple(y.shape)} for {n_rows} points; expected "
            f"({n_rows},) or ({n_rows}, m)."
        )
    return y


def rowwise(fn: Fn, X: torch.Tensor, order: int, create_graph: bool) -> list[torch.Tensor]:
    """``[f, Df, ..., D^order f]`` at the rows of ``X`` (N, n), assuming independent rows."""
    N, n = X.shape
    with grad_on():
        x = X if X.requires_grad else normal(X).detach().requires_grad_(True)
        Y = _as_2d(fn(x), N)
        m = Y.shape[1]
        out = [Y]
        cur = Y
        for j in range(1, order + 1):
            keep = create_graph or j < order
            cols = []
            for c in range(cur.shape[1]):
                comp = cur[:, c]
                g = None
                if comp.requires_grad:
                    (g,) = torch.autograd.grad(
                        comp.sum(), x, create_graph=keep, retain_graph=True, allow_unused=True
                    )
                cols.append(torch.zeros_like(X) if g is None else g)
            cur = torch.stack(cols, 1).reshape(N, -1)
            out.append(cur.reshape((N, m) + (n,) * j))
    return out if create_graph else [t.detach() for t in out]


def composed(fn: Fn, X: torch.Tensor, order: int) -> list[torch.Tensor]:
    """``[f, Df, ..., D^order f]`` at the rows of ``X`` (N, n) by torch.func alone: for an ``X``
    inside the caller's own ``vmap``/``grad``/``jacrev``/``jacfwd``, where autograd calls on the
    input are not allowed. Reverse mode over the row sums, as :func:`rowwise`, so it composes with
    any outer transform."""
    N = X.shape[0]
    total = lambda Z: _as_2d(fn(Z), N).sum(0)  # noqa: E731  (m,): the row sum
    out = [_as_2d(fn(X), N)]
    for _ in range(order):
        out.append(torch.func.jacrev(total)(X).movedim(-2, 0))  # (m, .., N, n) -> (N, m, .., n)
        total = (lambda g: lambda Z: torch.func.jacrev(g)(Z).sum(-2))(total)
    return out


def batch(fn: Fn, X: torch.Tensor, order: int, *, chunk: int | Chunks):
    """Chunked ``[f, ..., D^order f]`` over a batch (N >= 1 rows), ``chunk`` rows at a time
    (or as many as ``chunk`` sizes for this order, measuring the first where it must).

    Memory stays bounded for any N: beyond the results themselves, which are allocated once and
    filled chunk by chunk, only one chunk's work is alive at a time.
    """

    def work(Xc: torch.Tensor) -> list[torch.Tensor]:
        if order == 0:
            with torch.no_grad():
                return [_as_2d(fn(Xc), Xc.shape[0])]
        return rowwise(fn, Xc, order, create_graph=False)

    N, out, start = X.shape[0], None, 0
    sized = isinstance(chunk, Chunks)
    measure = sized and N > CPU_ROWS and chunk.to_measure(order)  # (the first chunk only)
    rows = CPU_ROWS if measure else chunk.rows(order) if sized else chunk
    while start < N:
        if measure:
            Xc = X[start : start + CPU_ROWS]
            part = chunk.measured(order, work, Xc)
            rows, measure = chunk.rows(order), False
        else:
            Xc = X[start : start + rows]
            part = work(Xc)
        if Xc.shape[0] == N:
            return part
        if out is None:
            out = [p.new_empty((N, *p.shape[1:])) for p in part]
        for whole, p in zip(out, part, strict=True):
            whole[start : start + Xc.shape[0]] = p
        start += Xc.shape[0]
        del part
    return out


class KeptGraph:
    """The autograd graph of one point's gradient, kept for Hessian-vector products with no new
    forward pass: ``mv(p)`` is one backward pass, ``hessian()`` n of them."""

    def __init__(self, leaf: torch.Tensor, g: torch.Tensor) -> None:
        self.leaf, self.g = leaf, g

    def mv(self, p: np.ndarray) -> np.ndarray:
        with grad_on():
            pt = to_torch(p, self.leaf.dtype, self.leaf.device)
            return to_host(_grad_or_zeros(self.g, self.leaf, pt, retain=True))

    def hessian(self) -> np.ndarray:
        n = self.leaf.shape[0]
        eye = np.eye(n)
        return np.stack([self.mv(eye[j]) for j in range(n)])[None, None]  # (1, 1, n, n)


class TorchPointRoute:
    """Single-point value, Jacobian, Hessian and Lagrangian Hessian by plain autograd on the
    frozen model: numpy (n,) in, numpy out with a leading point axis, ``y`` (1, m), ``J``
    (1, m, n), ``H`` (1, m, n, n), as batches. ``fn`` must treat rows independently.

    Value and gradient come from one forward and backward, and the Hessian from one forward over
    ``m * n`` replicated rows and two backward passes (a raw ``torch.autograd.functional.hessian``
    costs more: the ``raw torch`` rows of ``benchmarks/RESULTS.md``).
    """

    name = "torch"

    def __init__(self, fn: Fn, n_in: int, n_out: int, dtype, device) -> None:
        self.fn, self.n, self.m = fn, n_in, n_out
        self.dtype, self.device = dtype, device

    def _x(self, x: np.ndarray) -> torch.Tensor:
        return to_torch(x, self.dtype, self.device)

    def value(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return to_host(self.fn(self._x(x)[None]))

    def value_jac(self, x: np.ndarray, keep_graph: bool = False):
        """``(y, J, graph)``; ``graph`` a :class:`KeptGraph` only for m == 1 with
        ``keep_graph``, for later Hessian-vector products without another forward pass."""
        m, n = self.m, self.n
        with grad_on():
            if m == 1:
                leaf = self._x(x).requires_grad_(True)
                y = self.fn(leaf[None])
                g = _grad_or_zeros(y[0, 0], leaf, create_graph=keep_graph)
                graph = KeptGraph(leaf, g) if keep_graph and g.requires_grad else None
                return to_host(y), to_host(g)[None, None], graph
            X = self._x(x).expand(m, n).clone().requires_grad_(True)
            Y = _as_2d(self.fn(X), m)
            (J,) = torch.autograd.grad(Y.diagonal().sum(), X)  # row i: gradient of output i
            return to_host(Y[:1]), to_host(J)[None], None

    def hessian(self, x: np.ndarray):
        """``(y, J, H)`` from one forward pass over ``m * n`` replicated rows."""
        m, n = self.m, self.n
        with grad_on():
            X = self._x(x).expand(m * n, n).clone().requires_grad_(True)
            Y = _as_2d(self.fn(X), m * n)
            # replica (i, j) differentiates output i ...
            s = Y.view(m, n, m).diagonal(dim1=0, dim2=2).sum()
            (G,) = torch.autograd.grad(s, X, create_graph=True)
            G3 = G.view(m, n, n)
            # ... and then its own gradient's entry j, giving row j of Hessian i
            t = G3.diagonal(dim1=1, dim2=2).sum()
            H = _grad_or_zeros(t, X).view(m, n, n)
        return to_host(Y[:1]), to_host(G3[:, 0, :])[None], to_host(H)[None]

    def lagrangian_hessian(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``sum_i v_i * Hessian of output i`` (n, n): one forward over n rows, not m Hessians."""
        n = self.n
        with grad_on():
            X = self._x(x).expand(n, n).clone().requires_grad_(True)
            s = (_as_2d(self.fn(X), n) @ self._x(v)).sum()
            (G,) = torch.autograd.grad(s, X, create_graph=True)
            return to_host(_grad_or_zeros(G.diagonal().sum(), X))


def _grad_or_zeros(out, inp, grad_out=None, retain=False, create_graph=False) -> torch.Tensor:
    """A gradient that is exactly zero where ``out`` does not depend on ``inp`` (affine models).
    Detached unless ``create_graph``."""
    if not out.requires_grad:
        return torch.zeros_like(inp)
    (g,) = torch.autograd.grad(
        out,
        inp,
        grad_out,
        retain_graph=retain or create_graph,
        create_graph=create_graph,
        allow_unused=True,
    )
    if g is None:
        return torch.zeros_like(inp)
    return g if create_graph else g.detach()


def derivatives(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    order: int,
    create_graph: bool = True,
) -> list[torch.Tensor]:
    """Derivatives ``[f, Df, ..., D^order f]`` of a torch callable at a batch of points.

    Differentiable with respect to the callable's parameters (``create_graph=True``), so the
    results can enter a loss (PINNs, Sobolev training). Neither ``x.grad`` nor any parameter's
    ``requires_grad`` is touched: gradients are taken with ``torch.autograd.grad`` on ``x`` (or on
    a detached alias of it when ``x`` does not require grad), and by ``torch.func.jacrev`` when
    the call runs inside the caller's own torch.func transform (``vmap``, ``grad``, ...).

    Parameters
    ----------
    fn : callable
        Maps a tensor (N, n) to (N,) or (N, m); rows must be independent points, as for any
        per-point derivative: a module whose BatchNorm uses the batch's statistics (training
        mode) is refused, and one whose weights' dtype is not x's is named.
    x : torch.Tensor, shape (N, n)
        Floating-point points, any device.
    order : int
        Highest derivative order k >= 0.
    create_graph : bool
        Keep the graph of every result (for losses); False returns detached tensors.

    Returns
    -------
    list of torch.Tensor
        ``D^j f`` of shape ``(N, m) + (n,) * j`` for j = 0..k, with m = 1 for scalar functions;
        dtype and device of ``fn``'s output.

    Examples
    --------
    >>> import torch
    >>> x = torch.linspace(0, 1, 5, dtype=torch.float64)[:, None]
    >>> f, df, d2f = derivatives(torch.sin, x, order=2)
    >>> bool(torch.allclose(d2f[:, 0, 0, 0], -torch.sin(x[:, 0])))
    True
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"derivatives: x must be a torch.Tensor of shape (N, n), got {type(x)}.")
    if x.ndim != 2:
        raise ValueError(
            f"derivatives: x has shape {tuple(x.shape)}, expected (N, n); use x[None] for one "
            "point, or x[:, None] for N scalar inputs."
        )
    if not x.dtype.is_floating_point:
        raise TypeError(f"derivatives: x has dtype {x.dtype}, expected a floating dtype.")
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise ValueError(f"derivatives: order must be an int >= 0, got {order!r}.")
    if isinstance(fn, torch.nn.Module):
        _check_module(fn, x)
    if in_transform():  # the caller's own vmap/grad/jacrev around this call
        return composed(fn, x, order)
    return rowwise(fn, x, order, create_graph)


def _check_module(fn: torch.nn.Module, x: torch.Tensor) -> None:
    """What makes a module's per-row derivatives wrong or its call fail, named before it runs:
    batch statistics (each row's derivatives would take in every other row's), and weights of
    another dtype than x (torch's own error names neither)."""
    found = batch_statistics(fn)
    if found is not None:
        raise ValueError(
            f"derivatives: fn's {found} normalizes with the batch's statistics (training mode, "
            "or track_running_stats=False), so each row's value depends on every other row and "
            "per-point derivatives are not defined; call fn.eval() first (it then uses its "
            "running statistics)."
        )
    weight = next((p for p in fn.parameters() if p.is_floating_point()), None)
    if weight is not None and weight.dtype != x.dtype:
        raise TypeError(
            f"derivatives: x is {x.dtype} but fn's weights are {weight.dtype}; pass "
            f"x.to({weight.dtype}), or convert fn (fn.to({x.dtype}))."
        )


class Engine:
    """Every derivative request of a surrogate, sent by its route: a numpy single point to the
    cached ``points.PointEvaluator`` (orders up to 2), batches and tensors to :func:`batch`.
    Results carry a leading point axis, ``(N, m) + (n,) * j``; inputs are validated ``Points``."""

    def __init__(self, fn: Fn, n: int, m: int, dtype, device, point_route: str = "auto") -> None:
        self.fn, self.n, self.m = fn, n, m
        self.dtype, self.device = dtype, device
        self.torch_route = TorchPointRoute(fn, n, m, dtype, device)  # the others' reference
        self.route = MeasuredRoute(
            self.torch_route,
            {"numpy": self._numpy_route, "casadi": self._casadi_route},
            point_route,
            check=self._same_as_torch,
        )
        self.points = None  # a points.PointEvaluator over self.route, set by the surrogate

    def _program(self):
        """The one-point float64 ``torch.export`` graph that the other routes are read from,
        captured once (or its failure, once) for all of them."""
        if self.dtype != torch.float64 or self.device.type != "cpu":
            raise RouteUnavailable(
                f"it computes in float64 on the CPU; this surrogate is {self.dtype} on "
                f"{self.device}"
            )
        if "_exported" not in self.__dict__:
            from .physical import export

            try:
                self._exported = export(self.fn, self.n, one_point=True, dtype=torch.float64)
            except Exception as err:
                why = f"{type(err).__name__}: {err}"
                self._exported = RouteUnavailable(f"the model did not export ({why})")
                self._exported.__cause__ = err
        if isinstance(self._exported, RouteUnavailable):
            raise self._exported
        return self._exported

    def _reference(self) -> list:
        """torch's answers at the probe rows, which every other route must reproduce."""
        if "_torch_answers" not in self.__dict__:
            probes = self.fn.probes(self.n).numpy()
            self._torch_answers = torch_reference(self.torch_route, probes)
        return self._torch_answers

    def __getstate__(self) -> dict:  # a copy exports (and asks torch) again where it runs
        return {k: v for k, v in self.__dict__.items() if k not in ("_exported", "_torch_answers")}

    def _numpy_route(self):
        """The numpy route for layer graphs (``numpy_route.py``), built; :meth:`_same_as_torch`
        checks it before it answers."""
        from .lowering import lowered
        from .numpy_route import NumpyPointRoute, knows

        program = self._program()
        try:
            route = NumpyPointRoute(program, self.n, self.m)
        except ValueError as err:  # operations no rule reads: torch's decompositions of them
            low, route = lowered(program, knows, self.fn.probes(self.n)), None
            if low is not program:
                with contextlib.suppress(ValueError):
                    route = NumpyPointRoute(low, self.n, self.m)
            if route is None:  # not a layer graph: other routes answer
                raise RouteUnavailable(f"not a layer graph ({err})") from err
        return route

    def _casadi_route(self):
        """The compiled CasADi route (``adapters/casadi_route.py``), built (checked as the numpy
        route is), reached by name only when casadi is installed: the core never imports casadi
        itself."""
        if find_spec("casadi") is None:
            raise RouteUnavailable(
                "casadi is not installed (pip install 'surrogate-bridge[casadi]')"
            )
        program = self._program()
        from .adapters.casadi_route import CasadiPointRoute

        probes = self.fn.probes(self.n)
        try:
            route = CasadiPointRoute(program, self.n, self.m, probes)
        except Exception as err:  # any translation failure leaves torch answering
            raise RouteUnavailable(
                f"the model did not translate ({type(err).__name__}: {err})"
            ) from err
        return route

    def _same_as_torch(self, route):
        """``route`` once its value, Jacobian and Hessian are torch's at the probe rows."""
        return same_as_torch(route, self._reference())

    def _cached(self, pts) -> bool:
        return pts.single and not pts.is_torch

    def traced(self, data) -> torch.Tensor | None:
        """``data`` in the surrogate's dtype and on its device with its autograd graph, where
        torch code differentiates through the surrogate (a tensor that requires grad, grad mode
        on: the ode adapter's rule); else None, and results are plain values."""
        if isinstance(data, torch.Tensor) and data.requires_grad and torch.is_grad_enabled():
            return data.to(device=self.device, dtype=self.dtype)
        return None

    def orders(self, pts, order: int, chunk: int | Chunks) -> list:
        """``[f, ..., D^order f]`` at the points; differentiable in a traced x (one pass over
        the whole batch, whose graph the caller keeps anyway)."""
        if self._cached(pts) and order <= 2:
            e = self.points.get(pts.data[0], "yJH"[order])
            return [e.y, e.J, e.H][: order + 1]
        if in_transform():  # inside the caller's torch.func transform: keep its wrapper
            X = torch.as_tensor(pts.data).to(device=self.device, dtype=self.dtype)
            if X.shape[0]:
                return composed(self.fn, X, order)
        X = self.traced(pts.data)
        if X is not None and X.shape[0]:
            return rowwise(self.fn, X, order, create_graph=True)
        X = to_torch(pts.data, self.dtype, self.device)
        if X.shape[0] == 0:  # an empty batch: empty results of the right shapes
            return [X.new_zeros((0, self.m) + (self.n,) * j) for j in range(order + 1)]
        return batch(self.fn, X, order, chunk=chunk)

    def hessp(self, pts, p: np.ndarray):
        """Hessian-vector product (n,) of a scalar function at one point."""
        if self._cached(pts):
            return self.points.hessp(pts.data[0], p)
        return self.orders(pts, 2, 1)[2][0, 0] @ self._vector(p)

    def lagrangian(self, pts, v: np.ndarray):
        """``sum_i v_i * Hessian of output i`` (n, n) at one point."""
        if self._cached(pts):
            return self.points.lagrangian(pts.data[0], v)
        H = self.orders(pts, 2, 1)[2][0]
        return torch.einsum("i,ijk->jk", self._vector(v), H)

    def _vector(self, w) -> torch.Tensor:
        """A direction or weight vector, with its graph where torch code differentiates."""
        if transformed(w):
            return w.to(device=self.device, dtype=self.dtype)
        traced = self.traced(w)
        return to_torch(w, self.dtype, self.device) if traced is None else traced
