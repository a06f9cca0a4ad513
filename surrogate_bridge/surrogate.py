"""The ``Surrogate``: a trained torch model as a function of *physical* inputs, with exact
derivatives. A facade: it validates and shapes; ``physical.py`` builds the function,
``points.py`` answers single points (cache, fill policy, route), ``derivatives.py`` batches, and
``domain.py`` applies the extrapolation policy.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

from .arguments import check_arguments, check_device, infer_n_in
from .chunks import Chunks, check_chunk_size
from .convert import (
    F64,
    Points,
    as_points,
    as_vector,
    check_feature_names,
    feature_names,
    finish,
    outside_inference,
    transformed,
    unbatched,
)
from .derivatives import Engine
from .diagnostics import needs_warning, warn_nonsmooth
from .domain import Domain
from .estimators import from_estimator
from .physical import (
    build,
    deep_copy,
    detached_attributes,
    export,
    from_torchscript,
    frozen_copy,
)
from .points import CacheInfo, PointEvaluator
from .projections import around_model
from .scaling import Scaling, as_scaler

__all__ = [
    "Surrogate",
    "Vectorized",
    "require_surrogate",
    "require_vector_field",
]


_HANDING = threading.Lock()  # one copy of the function handed out per build (function)


class Surrogate:
    """A trained torch model as a function of physical inputs, with exact derivatives.

    Parameters
    ----------
    model : torch.nn.Module, callable, torch.export.ExportedProgram or fitted sklearn estimator
        Normalized inputs (N, n_in) -> normalized outputs (N, n_out) or (N,); models written for
        one point, or that mix rows, are run point by point (vmap), as is a torch.export graph
        exported from a one-row example. TorchScript and ``torch.compile``d models are taken too.
        A fitted skorch ``NeuralNetRegressor`` or sklearn ``MLPRegressor`` (read as the torch
        layers it computes), alone, ending a ``Pipeline`` (whose steps before it are then the
        input scaler) or inside a ``TransformedTargetRegressor`` (whose transformer is then the
        output scaler): the surrogate is its ``predict``.
        Used through a private frozen copy: ``model`` itself is never changed.
    input_scaler, output_scaler : Affine, Scaling, fitted sklearn scaler, or None
        ``MinMaxScaler``, ``StandardScaler``, ``MaxAbsScaler``, ``RobustScaler``, a
        ``PowerTransformer``, a ``FunctionTransformer`` of ``np.log``/``log1p``/``exp``/``expm1``
        /``log10``/``log2``, or a ``Pipeline`` of them (an affine one is read as one
        :class:`Affine`, one with a log or power step as a :class:`Scaling`); None: identity.
        An input ``ColumnTransformer`` of affine scalers: one :class:`Affine` of each column in
        its place, and where it lists the columns out of order, the model is given them in that
        order (``input_scaler`` is then the Affine in x's order). A fitted ``PCA``,
        ``IncrementalPCA`` or ``TruncatedSVD``, alone or in a ``Pipeline`` between per-feature
        scalers: a linear layer around the model (inputs: n physical -> k model inputs; outputs:
        k coefficients -> m physical outputs), the per-feature steps on the physical side staying
        the scaler.
    dtype : torch.dtype
        Working dtype (float64 by default: solver-grade derivatives).
    device : str or torch.device, optional
        "cpu" (default) or "cuda"; numpy results come back to the host.
    cache_size : int
        Distinct single points remembered (0 turns the cache off).
    domain : (lb, ub), optional
        The training domain in physical units; defaults to the data range recorded by a
        ``MinMaxScaler`` or ``Affine.fit(X, kind="minmax")``.
    n_in : int, optional
        Input count, when neither a scaler nor a first ``nn.Linear`` layer tells it; else it is
        learned from the first call.
    extrapolation : {"warn", "ignore", "raise"}
        Outside ``domain``: warn once, stay quiet, or raise :class:`ExtrapolationError`.
    prefetch_grad : bool
        A value request at a new point also computes the gradient (solvers ask for it next).
    point_route : {"auto", "torch", "numpy", "casadi"}
        Who answers single numpy points: chosen by timing each after 32 of them ("auto"), eager
        torch, numpy (layer graphs: MLPs, residual nets), or CasADi (float64, CPU).

    Notes
    -----
    numpy in -> numpy out; torch in -> torch out on its device, with the input's autograd graph
    where it requires grad (and grad mode is on). Safe to share between threads.
    Batches run in chunks of ``chunk_size`` rows: beyond the results, memory is one chunk's work
    for any N. ``"auto"`` (the default) is 4096 rows on the CPU, where a chunk's work then stays
    in cache; on a GPU, as many rows as fit 2 GiB of work (or a quarter of the free memory),
    measured on the first chunk of each derivative order.

    Examples
    --------
    >>> import torch, surrogate_bridge as sb
    >>> class Quadratic(torch.nn.Module):
    ...     def forward(self, z):
    ...         return (z ** 2).sum(-1)
    >>> sur = sb.Surrogate(Quadratic(), sb.Affine([0.0, 0.0], [2.0, 2.0]), n_in=2)
    >>> sur([2.0, 4.0])          # (1 + 4)
    5.0
    >>> sur.grad([2.0, 4.0]).tolist()   # d/dx (x/2)^2 = x/2
    [1.0, 2.0]
    >>> sur.hess([2.0, 4.0]).tolist()
    [[0.5, 0.0], [0.0, 0.5]]
    """

    history: dict | None = None  # set by sb.fit: per-epoch losses, best epoch, early stop

    @outside_inference
    def __init__(
        self,
        model: nn.Module | Callable,
        input_scaler=None,
        output_scaler=None,
        *,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
        cache_size: int = 128,
        domain=None,
        n_in: int | None = None,
        extrapolation: str = "warn",
        prefetch_grad: bool = True,
        point_route: str = "auto",
    ) -> None:
        # (an exported program; a skorch net or MLPRegressor, its Pipeline, target transformer)
        model, input_scaler, output_scaler = from_estimator(
            model, input_scaler, output_scaler, "Surrogate"
        )
        check_arguments(model, dtype, cache_size, point_route)
        self.dtype, self.device = dtype, check_device(device, dtype=dtype)
        self._names = feature_names(input_scaler)  # pandas input is checked against them
        model, input_scaler, output_scaler = around_model(  # PCA, a ColumnTransformer's order
            model, input_scaler, output_scaler, "Surrogate", n_in
        )
        self._in_aff = as_scaler(input_scaler, "Surrogate: input_scaler")
        self._out_aff = as_scaler(output_scaler, "Surrogate: output_scaler")
        self._baked = (self._in_aff, self._out_aff)  # what the function applies (_setup)
        self._cache_policy, self._route_policy = (cache_size, bool(prefetch_grad)), point_route
        self._chunk_size, self._chunks = "auto", Chunks(self.device)  # (chunks.py)
        n_in, self._n_in_hint = infer_n_in(n_in, self._in_aff, model)  # (the hint: for errors)
        self._domain = Domain(domain, self._in_aff, n_in, extrapolation)
        self._model = frozen_copy(from_torchscript(model, n_in), dtype, self.device)
        self._n_in: int | None = None
        self._warned_smooth = False
        if n_in is not None:
            self._setup(n_in)

    @outside_inference
    def _setup(self, n_in: int, model=None, nonsmooth: tuple | None = None) -> None:
        """Probe ``model`` (by default the current one) and build the function and its single-point
        evaluator, then swap them in: a failure leaves the surrogate as it was, and a call in
        flight in another thread finishes on the engine it started with."""
        model = self._model if model is None else model
        hint = getattr(self, "_n_in_hint", None)  # (absent from older pickles)
        self._domain.require_features(n_in)
        box = self._domain.box()
        built = build(model, *self._baked, n_in, self.dtype, self.device, hint, box)
        built.fn.reference = self._in_aff  # (from_physical's: probed in its reference's units)
        if nonsmooth is not None:  # new weights, same layers: what was known still holds
            built.nonsmooth = nonsmooth
        engine = Engine(built.fn, n_in, built.n_out, self.dtype, self.device, self._route_policy)
        size, prefetch = self._cache_policy
        prefetch = prefetch and not built.no_first  # no gradient to fill in passing
        engine.points = PointEvaluator(engine.route, n_in, built.n_out, size, prefetch)
        self._model, self._built, self._engine, self._n_in = model, built, engine, n_in

    @classmethod
    def from_physical(
        cls, fn, *, n_in: int, input_scaler=None, output_scaler=None, nonsmooth_ops=None, **kwargs
    ) -> Surrogate:
        """A surrogate of ``fn``, already in physical units (``io.load``'s graph): the scalers are
        for reference only (never applied, also not when new weights rebuild the function);
        ``nonsmooth_ops``, if given, replaces the probe's finding (a module may also declare
        them as its ``nonsmooth_calls``, as a loaded graph does: the probe then counts them)."""
        sur = cls(fn, n_in=n_in, **kwargs)
        sur._in_aff = as_scaler(input_scaler, "Surrogate.from_physical: input_scaler")
        sur._out_aff = as_scaler(output_scaler, "Surrogate.from_physical: output_scaler")
        if isinstance(sur._in_aff, Scaling):  # (its graph applies it: still undefined where it is)
            sur._domain.defined = sur._in_aff.defined()
        sur._built.fn.reference = sur._in_aff  # probes as the original's (probe_points)
        if nonsmooth_ops is not None:
            sur._built.nonsmooth = tuple(nonsmooth_ops)
        return sur

    n_in = property(lambda self: self._n_in, doc="Number of inputs (None until known).")
    n_out = property(lambda self: self._built.n_out if self._n_in else None, doc="Outputs.")
    input_scaler = property(
        lambda self: copy.deepcopy(self._in_aff),
        doc="The input Affine or Scaling, or None: a copy (editing it changes nothing here).",
    )
    output_scaler = property(
        lambda self: copy.deepcopy(self._out_aff),
        doc="The output Affine or Scaling, or None: a copy (editing it changes nothing here).",
    )
    prefetch_grad = property(lambda self: self._cache_policy[1], doc="Values fill gradients.")

    nonsmooth_ops = property(
        lambda self: self._ready("Surrogate.nonsmooth_ops").nonsmooth,
        doc="Names of the piecewise-linear operations the model calls (empty when smooth).",
    )

    @property
    def function(self) -> nn.Module:
        """The physical-units torch module: (N, n_in) -> (N, n_out), (n_in,) -> (n_out,).

        A copy of the surrogate's own, made at the first access and the same object at every
        later one (a new one after :func:`update_weights`): to embed in torch code, where an
        enclosing module's ``.float()``, ``.to(device)``, ``.train()``, ``.apply(init)`` or
        an edit of its weights changes the copy alone, never the surrogate or its solvers.
        Its parameters are frozen; gradients flow to its inputs.

        Examples
        --------
        >>> import torch, surrogate_bridge as sb
        >>> sur = sb.Surrogate(torch.nn.Linear(2, 1), n_in=2)
        >>> outer = torch.nn.Sequential(sur.function, torch.nn.Tanh()).float()
        >>> sur.function is outer[0], sur([0.0, 0.0]) == float(sur.function(torch.zeros(2)))
        (True, True)
        >>> outer[0].rows.model.weight.dtype, sur.grad([0.0, 0.0]).dtype  # the copy alone
        (torch.float32, dtype('float64'))
        """
        built = self._ready("Surrogate.function")
        with _HANDING:
            if getattr(built, "handed", None) is None:
                built.handed = deep_copy(built.fn)
            return built.handed

    def _own_function(self) -> nn.Module:
        """The module the surrogate evaluates (for the package's own readers; never handed out)."""
        return self._ready("Surrogate.function").fn

    point_route = property(
        lambda self: self._ready("Surrogate.point_route") and self._engine.route.name,
        doc='The route answering single numpy points ("torch", "numpy", "casadi", or per kind).',
    )
    point_route_report = property(
        lambda self: self._ready("Surrogate.point_route_report") and self._engine.route.report,
        doc="What the route choice measured: build, probe, check seconds, microseconds per kind.",
    )
    domain = property(lambda self: self._domain.box(), doc="(lb, ub) copies, or None.")
    feature_names = property(
        lambda self: getattr(self, "_names", None),
        doc="The inputs' names (the input scaler's feature_names_in_, or fit's DataFrame "
        "columns), or None: a pandas x must have these columns in this order.",
    )
    vectorized = property(lambda self: Vectorized(self), doc="scipy's x (n, S) -> (S,) form.")
    chunk_size = property(
        lambda self: self.__dict__.get("_chunk_size", self.__dict__.get("chunk_size", "auto")),
        lambda self, rows: setattr(self, "_chunk_size", check_chunk_size(rows)),
        doc='Rows per chunk of a batch: an int, or "auto" (sized by measuring; see Notes).',
    )
    extrapolation = property(
        lambda self: self._domain.policy,
        lambda self, policy: setattr(self._domain, "policy", policy),
        doc='What happens outside the domain: "warn", "ignore" or "raise".',
    )

    def export(self, *, one_point: bool = False, dtype: torch.dtype | None = None):
        """The physical function captured by ``torch.export`` on the CPU for ``io.save`` (dynamic
        batch) and the CasADi translator (``one_point``: one (1, n_in) point, no vmap)."""
        fn = self._ready("Surrogate.export").fn
        dtype = dtype or self.dtype
        return export(fn, self._n_in, one_point=one_point, dtype=dtype, device=self.device)

    def __deepcopy__(self, memo: dict) -> Surrogate:
        # (a tensor that the model's forward keeps on itself, self.last = h, is no graph leaf,
        # which deepcopy refuses: the copy gets it detached)
        for key, value in detached_attributes(self._model).items():
            memo.setdefault(key, value)
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def __repr__(self) -> str:
        return _describe(self)

    def bounds(self):
        """The training domain as ``scipy.optimize.Bounds``.

        Examples
        --------
        >>> import torch, surrogate_bridge as sb
        >>> sb.Surrogate(torch.nn.Linear(1, 1), domain=([0.0], [2.0])).bounds().ub.tolist()
        [2.0]
        """
        return self._domain.bounds()

    def cache_info(self) -> CacheInfo:
        """Hits, misses, maxsize, currsize (like ``functools.lru_cache``) and model passes."""
        return self._ready("Surrogate.cache_info") and self._engine.points.info()

    def cache_clear(self) -> None:
        self._n_in is None or self._engine.points.clear()

    def _ready(self, where: str):  # what probing built; a clear error while n_in is unknown
        if self._n_in is None:
            raise ValueError(
                f"{where}: the number of inputs is not known yet; pass n_in= to Surrogate or "
                "evaluate it once (needed for models without scalers or a Linear layer)."
            )
        return self._built

    def _learn_n_in(self, x) -> None:
        """A model that does not say its input count: learn it from x (a point or points)."""
        if self._n_in is None:
            shape = getattr(x, "shape", np.shape(x))
            if len(shape) in (1, 2) and shape[-1] > 0:
                self._setup(int(shape[-1]))

    def _points_of(self, x, where: str, scalar_only: str | None = None) -> Points:
        if self._n_in is None:
            self._learn_n_in(x)
            self._ready(where)
        if scalar_only and self._built.n_out != 1:
            raise ValueError(
                f"{where} is for scalar surrogates (n_out == 1); this one has n_out = "
                f"{self._built.n_out}. Use {scalar_only} instead."
            )
        if type(x) is not np.ndarray:  # (_names: absent from older pickles)
            check_feature_names(x, getattr(self, "_names", None), where)
        pts = as_points(x, self._n_in, where)
        self._domain.check(pts, where)
        return pts

    def _at_one_point(self, x, where: str, w, length: str, name: str, scalar_only=None):
        """Validated one point and weight/direction vector ``w`` of ``self.<length>`` entries."""
        pts = self._points_of(x, where, scalar_only)
        if not pts.single:
            shape = tuple(pts.data.shape)
            raise ValueError(f"{where}: x must be one point of shape ({self._n_in},), got {shape}.")
        vec = as_vector(w, getattr(self, length), where, name)  # (validated)
        self._before_derivatives(where)
        if transformed(w):  # inside the caller's torch.func transform over w: torch out
            return pts._replace(is_torch=True), vec
        if pts.is_torch and isinstance(w, torch.Tensor):  # torch out: w's graph, where it has one
            return pts, w.reshape(-1)
        return pts, vec

    def _ask(self, x, where: str, order: int, scalar_only=None, drop=None, lowest=None) -> list:
        """``[D^lowest f, ..., D^order f]`` (all orders by default) at validated ``x``, shaped for
        the caller: the output axis dropped for scalar surrogates unless ``drop`` says not."""
        if type(x) is np.ndarray and order <= 2:  # the solvers' path, checked and cached
            e = self._point(x, where, order, scalar_only)
            if e is not None:
                drop = self._built.n_out == 1 if drop is None else drop
                found = (e.y, e.J, e.H)[(order if lowest is None else lowest) : order + 1]
                return [unbatched(t, drop) for t in found]
        pts = self._points_of(x, where, scalar_only)
        if order >= 1:
            self._before_derivatives(where, order)
        drop = self._built.n_out == 1 if drop is None else drop
        rows = self.chunk_size
        if rows == "auto":
            rows = self.__dict__.get("_chunks")
            if rows is None:  # (an older pickle)
                rows = self._chunks = Chunks(self.device)
        found = self._engine.orders(pts, order, rows)
        return [finish(t, pts, drop) for t in found[(order if lowest is None else lowest) :]]

    def _row(self, x: np.ndarray, where: str, order: int, scalar_only: str | None):
        """A private copy of ``x`` where ``x`` is what a solver passes at every iteration (a
        finite float64 array of shape (n_in,) of a surrogate that may answer), after the
        general path's checks in its order (the training domain, then refusals and warnings
        for derivatives of ``order``), with nothing in between. None for anything else, which
        the general path then validates, explains or computes."""
        if (
            x.dtype is not F64
            or x.shape != (self._n_in,)  # (None until a first point says n_in)
            or (scalar_only and self._built.n_out != 1)
            or not math.isfinite(x.dot(x))  # (finite unless an entry is not, or it overflows)
        ):
            return None
        row = x.copy()  # a private copy: the cache key's owner
        self._domain.check_point(row, where)
        if order:
            self._before_derivatives(where, order)
        return row

    def _point(self, x: np.ndarray, where: str, order: int, scalar_only: str | None):
        """The cache's entry at a solver's ``x`` (:meth:`_row`), filled up to ``order``."""
        row = self._row(x, where, order, scalar_only)
        return None if row is None else self._engine.points.get(row, "yJH"[order])

    def _from_solver(self, x, w, length: int) -> bool:
        """Whether a weight or direction vector ``w`` beside a numpy ``x`` is what solvers pass
        (finite float64 of shape (length,)): then the direct path answers numpy."""
        return (
            type(x) is np.ndarray
            and type(w) is np.ndarray
            and w.dtype is F64
            and w.shape == (length,)
            and math.isfinite(w.dot(w))
        )

    def _before_derivatives(self, where: str, order: int = 2) -> None:  # refusals, warnings
        self._built.refuse(where, order)
        if not self._warned_smooth and needs_warning(self._built.nonsmooth, order):
            self._warned_smooth = True
            warn_nonsmooth(self._built.nonsmooth, where)

    # public evaluation ------------------------------------------------------------------------
    def __call__(self, x: ArrayLike) -> float | np.ndarray | torch.Tensor:
        """Value: x (n_in,) -> float if n_out == 1 else (n_out,); x (N, n_in) -> (N,) or (N, n_out).

        Examples
        --------
        >>> import torch, surrogate_bridge as sb
        >>> sb.Surrogate(torch.nn.Linear(2, 1))([[0.0, 0.0], [1.0, 1.0]]).shape
        (2,)
        """
        return self._ask(x, "Surrogate.__call__", 0)[0]

    def grad(self, x: ArrayLike) -> np.ndarray | torch.Tensor:
        """Gradient of a scalar surrogate in physical units: x (n_in,) -> (n_in,); (N, n_in) ->
        (N, n_in). The ``jac`` of ``scipy.optimize.minimize(sur, x0, jac=sur.grad)``.

        Examples
        --------
        >>> import torch, surrogate_bridge as sb
        >>> lin = torch.nn.Linear(2, 1)
        >>> sur = sb.Surrogate(lin, sb.Affine([0.0, 0.0], [2.0, 4.0]))
        >>> bool(abs(sur.grad([1.0, 1.0]) - lin.weight[0].detach().numpy() / [2, 4]).max() < 1e-7)
        True
        """
        return self._ask(x, "Surrogate.grad", 1, scalar_only="Surrogate.jac")[0]

    def jac(self, x: ArrayLike) -> np.ndarray | torch.Tensor:
        """Jacobian dy/dx in physical units: (n_in,) -> (n_out, n_in); (N, n_in) -> (N, n_out,
        n_in). The residual Jacobian of ``scipy.optimize.least_squares(sur, x0, jac=sur.jac)``.

        Examples
        --------
        >>> import torch, surrogate_bridge as sb
        >>> sb.Surrogate(torch.nn.Linear(3, 2)).jac([[0.0, 0.0, 0.0]] * 4).shape
        (4, 2, 3)
        """
        return self._ask(x, "Surrogate.jac", 1, drop=False)[0]

    def value_and_grad(self, x: ArrayLike) -> tuple:
        """``(value, gradient)`` of a scalar surrogate from one forward and backward pass:
        x (n_in,) -> (float, (n_in,)); x (N, n_in) -> ((N,), (N, n_in)); numpy or torch as given.
        """
        only, where = "Surrogate.__call__ and Surrogate.jac", "Surrogate.value_and_grad"
        if type(x) is np.ndarray and (e := self._point(x, where, 1, only)) is not None:
            return float(e.y[0, 0]), e.J[0, 0].copy()  # the solvers' path, direct
        return tuple(self._ask(x, where, 1, scalar_only=only, lowest=0))

    def hess(self, x: ArrayLike) -> np.ndarray | torch.Tensor:
        """Hessian in physical units: (n_in, n_in) if n_out == 1 else (n_out, n_in, n_in); a batch
        adds a leading N. Warns :class:`SmoothnessWarning` (once) for piecewise-linear models.

        Examples
        --------
        >>> import torch, surrogate_bridge as sb
        >>> class Cube(torch.nn.Module):
        ...     def forward(self, z):
        ...         return (z ** 3).sum(-1)
        >>> sb.Surrogate(Cube(), n_in=2).hess([1.0, 2.0]).tolist()
        [[6.0, 0.0], [0.0, 12.0]]
        """
        return self._ask(x, "Surrogate.hess", 2)[0]

    def hessp(self, x: ArrayLike, p: ArrayLike) -> np.ndarray | torch.Tensor:
        """Hessian-vector product of a scalar surrogate at one point: x, p (n_in,) -> (n_in,).
        The ``hessp`` of Newton-CG, trust-ncg, trust-krylov and trust-constr."""
        only, where = "Surrogate.lagrangian_hess", "Surrogate.hessp"
        if (
            self._from_solver(x, p, self._n_in)
            and (row := self._row(x, where, 2, only)) is not None
        ):
            return self._engine.points.hessp(row, p)  # trust-constr: several per point
        pts, pv = self._at_one_point(x, where, p, "n_in", "p", only)
        return self._engine.hessp(pts, pv)

    def lagrangian_hess(self, x: ArrayLike, v: ArrayLike) -> np.ndarray | torch.Tensor:
        """``sum_i v_i * Hessian of output i`` at one point: x (n_in,), v (n_out,) -> (n_in, n_in),
        in one pass (not n_out Hessians). The ``hess(x, v)`` of a scipy ``NonlinearConstraint``."""
        where = "Surrogate.lagrangian_hess"
        if (
            self._from_solver(x, v, self.n_out)
            and (row := self._row(x, where, 2, None)) is not None
        ):
            return self._engine.points.lagrangian(row, v)
        pts, vv = self._at_one_point(x, where, v, "n_out", "v")
        return self._engine.lagrangian(pts, vv)

    def derivatives(self, x: ArrayLike, order: int = 2) -> list:
        """``[f, Df, ..., D^order f]`` at x for any order >= 0; ``D^j f`` has shape
        ``(n_out,) + (n_in,) * j``, the n_out axis dropped when n_out == 1; batches add N.

        Examples
        --------
        >>> import torch, surrogate_bridge as sb
        >>> class Cube(torch.nn.Module):
        ...     def forward(self, z):
        ...         return z ** 3
        >>> f, d1, d2, d3 = sb.Surrogate(Cube(), n_in=1).derivatives([2.0], order=3)
        >>> float(f), d1.tolist(), d2.tolist(), d3.tolist()
        (8.0, [12.0], [[12.0]], [[[6.0]]])
        """
        if isinstance(order, bool) or not isinstance(order, int) or order < 0:
            raise ValueError(f"Surrogate.derivatives: order must be an int >= 0, got {order!r}.")
        return self._ask(x, "Surrogate.derivatives", order, lowest=0)


class Vectorized:
    """scipy's vectorized convention: x of shape (n_in, S) -> (S,) values, or (n_out, S) for
    vector outputs; one batched call. ``differential_evolution(sur.vectorized, bounds,
    vectorized=True)``; picklable, so process workers can take it too.

    Examples
    --------
    >>> import numpy as np, torch, surrogate_bridge as sb
    >>> sur = sb.Surrogate(torch.nn.Linear(2, 1))
    >>> sur.vectorized(np.zeros((2, 5))).shape
    (5,)
    """

    def __init__(self, sur: Surrogate) -> None:
        self.sur = sur

    def __call__(self, x):
        x = np.asarray(x)
        if x.ndim == 1:  # scipy's single-point calls
            return self.sur(x)
        n = self.sur.n_in
        if x.ndim != 2 or (n is not None and x.shape[0] != n):
            raise ValueError(
                f"Surrogate.vectorized: x has shape {x.shape}, expected ({n}, S): scipy's "
                "vectorized convention, one point per column."
            )
        out = self.sur(x.T)
        return out.T if out.ndim == 2 else out


def _describe(sur: Surrogate) -> str:
    """The repr: scalers, domain, dtype, device, the single-point route and the cache size."""
    box = sur.domain
    shown = {
        "n_in": sur.n_in,
        "n_out": sur.n_out,
        "input_scaler": sur.input_scaler,
        "output_scaler": sur.output_scaler,
        "domain": None if box is None else (box[0].tolist(), box[1].tolist()),
        "dtype": sur.dtype,
        "device": str(sur.device),
        "point_route": sur.point_route if sur.n_in else None,
        "cache_size": sur.cache_info().maxsize if sur.n_in else None,
    }
    kept = (f"{k}={v!r}" for k, v in shown.items() if v is not None or k.startswith("n_"))
    return f"Surrogate({', '.join(kept)})"


def require_surrogate(sur, where: str, ready: bool = True, x=None) -> None:
    """The adapters' entry check: a ``Surrogate`` (whose input count is known, if ``ready``;
    a start ``x`` says it, as a first evaluation would)."""
    if not isinstance(sur, Surrogate):
        raise TypeError(
            f"{where}: expected a surrogate_bridge.Surrogate, got {type(sur).__name__}."
        )
    if x is not None:
        sur._learn_n_in(x)
    if ready:
        sur._ready(where)


def require_vector_field(sur, where: str, time_input: bool) -> None:
    """The ODE adapters' entry check: n_out states from n_out (or, with time, n_out + 1) inputs."""
    require_surrogate(sur, where)
    if not isinstance(time_input, bool):
        raise TypeError(f"{where}: time_input must be True or False, got {time_input!r}.")
    if sur.n_out != sur.n_in - time_input:
        hint = (
            "Pass time_input=True if its first input is time."
            if not time_input and sur.n_in == sur.n_out + 1
            else "Use a surrogate that maps the state to its time derivative."
        )
        raise ValueError(
            f"{where}: a vector field needs as many outputs as states"
            f"{' plus time as the first input' if time_input else ''}; the surrogate has "
            f"n_in = {sur.n_in} and n_out = {sur.n_out}. {hint}"
        )
