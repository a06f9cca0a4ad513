"""The ``Surrogate``: one differentiable torch function of *physical* inputs, and its derivatives.

    f_phys(x) = output_scaler.inverse( model( input_scaler(x) ) )

built once from a private, frozen, eval-mode copy of the user's model in the chosen dtype and
device. The user's model object is never touched.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

from .cache import CacheInfo, Entry, PointCache
from .convert import Points, as_points, as_vector, finish, to_host, to_torch
from .derivatives import PointEngine
from .derivatives import batch as batch_derivatives
from .diagnostics import (
    EXTRAPOLATION_POLICIES,
    ExtrapolationError,
    ExtrapolationWarning,
    SmoothnessWarning,
    check_domain,
    piecewise_linear_ops,
)
from .normalization import Affine, as_affine

__all__ = ["PhysicalFunction", "Surrogate", "require_surrogate"]

_DENSE_HESSP_MAX = 16  # up to this many inputs, hessp builds and caches the dense Hessian
_PROBE_ROWS = 3


class PhysicalFunction(nn.Module):
    """``x (N, n_in) -> y (N, n_out)`` in physical units; ``(n_in,) -> (n_out,)`` for one point.

    ``rows`` says how the model is called: ``"batched"`` (it takes (N, n) and keeps rows
    independent), ``"vmap"`` (written for one unbatched point (n,)), or ``"vmap_rows"`` (it takes
    (N, n) but mixes rows, e.g. batch statistics; each point is then evaluated alone as a batch
    of one). After this wrapper every row is independent, which the derivative engine relies on.
    ``"one"`` calls the model on the single point of a (1, n) input with no vmap: how graphs of
    one point are captured for export (CasADi's symbolic mode).
    """

    def __init__(self, model, in_aff: Affine | None, out_aff: Affine | None, rows: str) -> None:
        super().__init__()
        self.model = model
        self.rows = rows
        self.has_in, self.has_out = in_aff is not None, out_aff is not None
        for prefix, aff in (("in", in_aff), ("out", out_aff)):
            shift, scale = (np.zeros(1), np.ones(1)) if aff is None else (aff.shift, aff.scale)
            self.register_buffer(f"{prefix}_shift", torch.as_tensor(shift))
            self.register_buffer(f"{prefix}_scale", torch.as_tensor(scale))

    def _model(self, z: torch.Tensor) -> torch.Tensor:
        if self.rows == "one":
            return self.model(z[0]).reshape(1, -1)
        if self.rows == "vmap":
            return torch.func.vmap(self.model)(z)
        if self.rows == "vmap_rows":
            return torch.func.vmap(lambda r: self.model(r[None])[0])(z)
        return self.model(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 1:
            return self.forward(x[None])[0]
        z = (x - self.in_shift) / self.in_scale if self.has_in else x
        y = self._model(z)
        if y.ndim == 1:
            y = y[:, None]
        return y * self.out_scale + self.out_shift if self.has_out else y


def _frozen_copy(model, dtype, device):
    """A private eval-mode copy in ``dtype`` on ``device`` whose parameters need no grad."""
    if not isinstance(model, nn.Module):
        return model  # a plain callable: nothing to copy or freeze
    with warnings.catch_warnings():
        # deep-copying a torch.export graph module makes torch warn about its own pytree API
        warnings.filterwarnings("ignore", message=".*treespec.*", category=FutureWarning)
        m = copy.deepcopy(model)
    m = m.to(device=device, dtype=dtype).eval()
    for p in m.parameters():
        p.requires_grad_(False)
        p.grad = None
    return m


def _fold_scalers(fn: PhysicalFunction) -> None:
    """Fold the input scaler into a leading ``nn.Linear`` and the output scaler into a trailing
    one of a Sequential model (our private copy): the same function, minus four tensor ops per
    pass (~25 us a single-point call here, forward and backward alike).

    ``W ((x - s) / c) + b = (W / c) x + (b - (W / c) s)`` and ``(W z + b) * C + S``.
    """
    seq = fn.model
    if fn.rows != "batched" or not isinstance(seq, nn.Sequential) or len(seq) == 0:
        return
    with torch.no_grad():
        first, last = seq[0], seq[-1]
        if fn.has_in and isinstance(first, nn.Linear):
            w = first.weight / fn.in_scale
            b = -(w @ fn.in_shift) + (first.bias if first.bias is not None else 0.0)
            first.weight.copy_(w)
            if first.bias is None:
                first.bias = nn.Parameter(b, requires_grad=False)
            else:
                first.bias.copy_(b)
            fn.has_in = False
        if fn.has_out and isinstance(last, nn.Linear) and last.out_features == fn.out_scale.numel():
            last.weight.mul_(fn.out_scale[:, None])
            b = fn.out_shift + (last.bias * fn.out_scale if last.bias is not None else 0.0)
            if last.bias is None:
                last.bias = nn.Parameter(b, requires_grad=False)
            else:
                last.bias.copy_(b)
            fn.has_out = False


def _normalized_device(device) -> torch.device:
    """ "cuda" -> "cuda:k" (the current device), so comparisons with tensors' devices hold."""
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _first_linear_in(model) -> int | None:
    if isinstance(model, nn.Module):
        for mod in model.modules():
            if isinstance(mod, nn.Linear):
                return mod.in_features
    return None


class Surrogate:
    """A trained torch model as a function of physical inputs, with exact derivatives.

    Parameters
    ----------
    model : torch.nn.Module or callable
        Maps normalized inputs (N, n_in) to normalized outputs (N, n_out) or (N,). Models written
        for one unbatched point, and models that mix rows, are evaluated point by point through
        ``torch.func.vmap``. A private frozen copy is used; ``model`` itself is never changed.
    input_scaler, output_scaler : Affine, fitted sklearn scaler, or None
        ``MinMaxScaler``, ``StandardScaler``, ``MaxAbsScaler``, ``RobustScaler`` or an
        :class:`Affine`; None is the identity.
    dtype : torch.dtype
        Working dtype (float64 by default: solver-grade derivatives).
    device : str or torch.device, optional
        Where the model runs ("cpu" by default, "cuda" for a GPU); numpy results come back to host.
    cache_size : int
        Distinct single points remembered (0 turns the cache off).
    domain : (lb, ub), optional
        The training domain in physical units; defaults to the data range recorded by a
        ``MinMaxScaler`` or ``Affine.fit(X, kind="minmax")``.
    n_in : int, optional
        Input count, when neither a scaler nor a first ``nn.Linear`` layer tells it.
    extrapolation : {"warn", "ignore", "raise"}
        What to do when evaluated outside ``domain``: warn once, stay quiet, or raise
        :class:`ExtrapolationError`.
    prefetch_grad : bool
        A value request at a new point also computes the gradient in the same forward and
        backward pass (scalar surrogates), since solvers ask for it next.

    Notes
    -----
    numpy in -> numpy out (float64 by default); torch in -> torch out on the surrogate's device.
    Single numpy points go through the cache; batches and torch tensors do not.

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
    ) -> None:
        if not callable(model):
            raise TypeError(
                "Surrogate: model must be a torch.nn.Module or callable, got "
                f"{type(model).__name__}."
            )
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"Surrogate: dtype must be a floating torch.dtype, got {dtype!r}.")
        self.dtype = dtype
        self.device = _normalized_device(device)
        self._in_aff = as_affine(input_scaler, "Surrogate: input_scaler")
        self._out_aff = as_affine(output_scaler, "Surrogate: output_scaler")
        self.extrapolation = extrapolation
        self.prefetch_grad = bool(prefetch_grad)
        self.chunk_size = 16384  # rows per batched pass: bounds memory for any N
        self._cache = PointCache(cache_size)
        self._model = _frozen_copy(model, dtype, self.device)
        self._n_in = self._infer_n_in(n_in, model)
        self._n_out: int | None = None
        self._domain = self._read_domain(domain)
        self._warned_smooth = self._warned_extrap = False
        self._second_order = False  # set once a Hessian is asked (vector outputs fill all orders)
        if self._n_in is not None:
            self._setup(self._n_in)

    # construction -----------------------------------------------------------------------------
    def _infer_n_in(self, n_in, model) -> int | None:
        from_scaler = None if self._in_aff is None else self._in_aff.n_features
        if n_in is not None:
            if isinstance(n_in, bool) or not isinstance(n_in, int) or n_in < 1:
                raise ValueError(f"Surrogate: n_in must be a positive int, got {n_in!r}.")
            if from_scaler is not None and from_scaler != n_in:
                raise ValueError(
                    f"Surrogate: n_in={n_in} but input_scaler has {from_scaler} features."
                )
            return n_in
        return from_scaler if from_scaler is not None else _first_linear_in(model)

    def _read_domain(self, domain):
        if domain is None:
            aff = self._in_aff
            if aff is not None and aff.data_min is not None:
                return aff.data_min.copy(), aff.data_max.copy()
            return None
        try:
            lb, ub = (np.asarray(b, dtype=np.float64).reshape(-1) for b in domain)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"Surrogate: domain must be a pair (lb, ub) of arrays, got {domain!r}."
            ) from err
        if lb.shape != ub.shape or np.any(lb > ub):
            raise ValueError(
                f"Surrogate: domain needs lb <= ub of equal length, got lb={lb}, ub={ub}."
            )
        if self._n_in is not None and lb.size != self._n_in:
            raise ValueError(
                f"Surrogate: domain has {lb.size} features, the surrogate takes {self._n_in}."
            )
        return lb, ub

    def _setup(self, n_in: int) -> None:
        """Probe the model once: how to call it, n_out, row independence, smoothness."""
        self._n_in = n_in
        gen = torch.Generator().manual_seed(0)
        Z = torch.randn(_PROBE_ROWS, n_in, generator=gen, dtype=torch.float64)
        aff = self._in_aff
        X = Z if aff is None else Z * torch.as_tensor(aff.scale) + torch.as_tensor(aff.shift)
        X = X.to(self.dtype).to(self.device)
        rows, n_out, err = self._probe_rows(X)
        if rows is None:
            raise ValueError(
                f"Surrogate: the model failed on a probe batch of shape ({_PROBE_ROWS}, {n_in}) "
                f"and on one point of shape ({n_in},): {err}. Check n_in and the scalers' "
                "feature counts against the model's input layer."
            )
        fn = PhysicalFunction(self._model, self._in_aff, self._out_aff, rows)
        fn = fn.to(device=self.device, dtype=self.dtype)
        if self._out_aff is not None and self._out_aff.n_features != n_out:
            raise ValueError(
                f"Surrogate: output_scaler has {self._out_aff.n_features} features but the model "
                f"returns {n_out} outputs."
            )
        if rows == "batched" and not _rows_independent(fn, X):
            fn.rows = "vmap_rows"  # batch statistics or the like: evaluate each point alone
        _fold_scalers(fn)
        if self._domain is not None and self._domain[0].size != n_in:
            raise ValueError(
                f"Surrogate: domain has {self._domain[0].size} features, the surrogate "
                f"takes {n_in}."
            )
        self._fn, self._n_out = fn, n_out
        self._engine = PointEngine(fn, n_in, n_out)
        self._nonsmooth = piecewise_linear_ops(fn, X)

    def _probe_rows(self, X: torch.Tensor):
        in_aff = self._in_aff
        err = None
        for rows in ("batched", "vmap"):
            fn = PhysicalFunction(self._model, in_aff, None, rows).to(self.device, self.dtype)
            try:
                with torch.no_grad():
                    Y = fn(X)
            except (RuntimeError, ValueError, TypeError, IndexError) as e:  # the model's own error
                err = err or f"{type(e).__name__}: {e}"
                continue
            if Y.ndim == 2 and Y.shape[0] == X.shape[0]:
                return rows, Y.shape[1], None
            err = err or f"it returned shape {tuple(Y.shape)} for {X.shape[0]} points"
        return None, None, err

    # properties -------------------------------------------------------------------------------
    @property
    def n_in(self) -> int | None:
        """Number of inputs (None until known for a parameter-free model without ``n_in=``)."""
        return self._n_in

    @property
    def n_out(self) -> int | None:
        """Number of outputs, from one probe call."""
        return self._n_out

    @property
    def function(self) -> PhysicalFunction:
        """The physical-units torch module: (N, n_in) -> (N, n_out), or (n_in,) -> (n_out,)."""
        self._require_setup("Surrogate.function")
        return self._fn

    @property
    def domain(self) -> tuple[np.ndarray, np.ndarray] | None:
        return None if self._domain is None else (self._domain[0].copy(), self._domain[1].copy())

    @property
    def extrapolation(self) -> str:
        return self._extrapolation

    @extrapolation.setter
    def extrapolation(self, policy: str) -> None:
        if policy not in EXTRAPOLATION_POLICIES:
            raise ValueError(
                f"Surrogate: extrapolation={policy!r} is not valid; use one of "
                f"{EXTRAPOLATION_POLICIES}."
            )
        self._extrapolation = policy

    def __repr__(self) -> str:
        return (
            f"Surrogate(n_in={self._n_in}, n_out={self._n_out}, dtype={self.dtype}, "
            f"device={self.device})"
        )

    def bounds(self):
        """The training domain as ``scipy.optimize.Bounds``.

        From ``domain=``, or the data range recorded by a ``MinMaxScaler`` or
        ``Affine.fit(X, kind="minmax")``.

        Examples
        --------
        >>> import torch, surrogate_bridge as sb
        >>> sur = sb.Surrogate(torch.nn.Linear(1, 1), domain=([0.0], [2.0]))
        >>> sur.bounds().ub.tolist()
        [2.0]
        """
        from scipy.optimize import Bounds

        if self._domain is None:
            raise ValueError(
                "Surrogate.bounds: no training domain is known. Pass domain=(lb, ub) to "
                "Surrogate, or use a MinMaxScaler / Affine.fit(X, kind='minmax') input scaler, "
                "which records the data range."
            )
        return Bounds(self._domain[0].copy(), self._domain[1].copy())

    def cache_info(self) -> CacheInfo:
        """Hits, misses, maxsize, currsize (like ``functools.lru_cache``) and model passes."""
        return self._cache.info()

    def cache_clear(self) -> None:
        self._cache.clear()

    # input handling ---------------------------------------------------------------------------
    def _require_setup(self, where: str) -> None:
        if self._n_in is None:
            raise ValueError(
                f"{where}: the number of inputs is not known yet; pass n_in= to Surrogate "
                "(needed for models without scalers or a Linear layer)."
            )

    def _points(self, x, where: str) -> Points:
        if self._n_in is None:  # parameter-free model without n_in: learn it from x
            shape = getattr(x, "shape", np.shape(x))
            if len(shape) in (1, 2):
                self._setup(int(shape[-1]))
            self._require_setup(where)
        pts = as_points(x, self._n_in, where)
        if self._domain is not None and self._extrapolation != "ignore":
            self._check_domain(pts, where)
        return pts

    def _check_domain(self, pts: Points, where: str) -> None:
        lb, ub = self._domain
        data = pts.data
        if isinstance(data, torch.Tensor):
            lo, hi = (torch.as_tensor(b, dtype=data.dtype, device=data.device) for b in (lb, ub))
            tol = 1e-9 * torch.clamp(hi - lo, min=1.0)
            if not bool(((data < lo - tol) | (data > hi + tol)).any()):
                return
            data = to_host(data).astype(np.float64)
        msg = check_domain(data, lb, ub)
        if msg is None:
            return
        if self._extrapolation == "raise":
            raise ExtrapolationError(f"{where}: {msg}")
        if not self._warned_extrap:
            self._warned_extrap = True
            warnings.warn(
                f"{where}: {msg} (warned once per surrogate; extrapolation='raise' or 'ignore' "
                "changes this)",
                ExtrapolationWarning,
                stacklevel=3,
            )

    def _need_scalar(self, where: str, instead: str) -> None:
        if self._n_out != 1:
            raise ValueError(
                f"{where} is for scalar surrogates (n_out == 1); this one has n_out = "
                f"{self._n_out}. Use {instead} instead."
            )

    def _warn_smooth(self, where: str) -> None:
        if self._nonsmooth and not self._warned_smooth:
            self._warned_smooth = True
            warnings.warn(
                f"{where}: the model uses piecewise-linear operations ({', '.join(self._nonsmooth)}"
                "); its second and higher derivatives are zero almost everywhere, whatever the "
                "true function's curvature. Use a smooth activation (tanh, softplus, SiLU, GELU) "
                "for curvature information.",
                SmoothnessWarning,
                stacklevel=3,
            )

    # single points ----------------------------------------------------------------------------
    def _entry(self, pts: Points) -> tuple[Entry, tuple | None]:
        x = to_torch(pts.data[0], self.dtype, self.device)
        if pts.is_torch or self._cache.maxsize == 0:
            return Entry(x=x), None
        key = self._cache.key(pts.data[0])
        return self._cache.entry(key, lambda: Entry(x=x)), key

    def _fill_value(self, e: Entry, key) -> None:
        if e.y is not None:
            self._cache.count(hit=True)
        elif self._second_order and self._n_out > 1:
            self._fill_hess(e, key)  # constraints: value, Jacobian, Hessian in one pass
        elif self._n_out == 1 and self.prefetch_grad:
            self._fill_jac(e, key)
        else:
            e.y = self._engine.value(e.x)
            self._cache.count(hit=False, passes=1)

    def _fill_jac(self, e: Entry, key) -> None:
        if e.J is not None:
            self._cache.count(hit=True)
            return
        if self._second_order and self._n_out > 1:
            self._fill_hess(e, key)
            return
        # the most recent cached point keeps its graph (measured: no cost within noise), so a
        # later Hessian or hessp there needs no second forward pass, whatever the request order
        keep = self._n_out == 1 and key is not None
        e.y, e.J, graph = self._engine.value_jac(e.x, keep_graph=keep)
        self._cache.count(hit=False, passes=1)
        if graph is not None:
            self._keep_graph(e, key, graph)

    def _keep_graph(self, e: Entry, key, graph) -> None:
        if key is None:
            e.graph = graph
        else:
            self._cache.keep_graph(key, e, graph)

    def _fill_hess(self, e: Entry, key) -> None:
        self._second_order = True
        if e.H is not None:
            self._cache.count(hit=True)
        elif e.graph is not None:  # Hessian rows as HVPs on the kept graph: no new forward pass
            eye = torch.eye(self._n_in, dtype=self.dtype, device=self.device)
            e.H = torch.stack([self._engine.hvp(e.graph, eye[j]) for j in range(self._n_in)])[None]
            self._cache.count(hit=False)
        else:
            e.y, e.J, e.H = self._engine.hessian(e.x)
            self._cache.count(hit=False, passes=1)

    def _single(self, pts: Points, need: str):
        e, key = self._entry(pts)
        {"y": self._fill_value, "J": self._fill_jac, "H": self._fill_hess}[need](e, key)
        return e

    @staticmethod
    def _out(t: torch.Tensor, pts: Points, drop: bool):
        """Shape a single-point result; numpy results are copies: callers cannot edit the cache."""
        t = t[0] if drop else t
        if pts.is_torch:
            return t.clone()
        out = to_host(t).copy()
        return float(out) if out.ndim == 0 else out

    # batches ----------------------------------------------------------------------------------
    def _batch(self, pts: Points, order: int) -> list[torch.Tensor]:
        X = to_torch(pts.data, self.dtype, self.device)
        return batch_derivatives(self._fn, X, order, chunk=self.chunk_size)

    # public evaluation ------------------------------------------------------------------------
    def __call__(self, x: ArrayLike) -> float | np.ndarray | torch.Tensor:
        """Value: x (n_in,) -> float if n_out == 1 else (n_out,); x (N, n_in) -> (N,) or (N, n_out).

        Examples
        --------
        >>> import torch, surrogate_bridge as sb
        >>> sur = sb.Surrogate(torch.nn.Linear(2, 1))
        >>> sur([[0.0, 0.0], [1.0, 1.0]]).shape
        (2,)
        """
        pts = self._points(x, "Surrogate.__call__")
        drop = self._n_out == 1
        if pts.single:
            return self._out(self._single(pts, "y").y, pts, drop)
        return finish(self._batch(pts, 0)[0], pts, drop=drop)

    def grad(self, x: ArrayLike) -> np.ndarray | torch.Tensor:
        """Gradient of a scalar surrogate, in physical units.

        Parameters
        ----------
        x : array_like or torch.Tensor, shape (n_in,) or (N, n_in)

        Returns
        -------
        numpy.ndarray or torch.Tensor, shape (n_in,) or (N, n_in)
            numpy (float64 by default) for numpy input; a tensor in the surrogate's dtype on
            its device for tensor input. ``scipy.optimize.minimize(sur, x0, jac=sur.grad)``.

        Examples
        --------
        >>> import torch, surrogate_bridge as sb
        >>> lin = torch.nn.Linear(2, 1)
        >>> sur = sb.Surrogate(lin, sb.Affine([0.0, 0.0], [2.0, 4.0]))
        >>> bool(abs(sur.grad([1.0, 1.0]) - lin.weight[0].detach().numpy() / [2, 4]).max() < 1e-7)
        True
        """
        pts = self._points(x, "Surrogate.grad")
        self._need_scalar("Surrogate.grad", "Surrogate.jac")
        if pts.single:
            return self._out(self._single(pts, "J").J, pts, drop=True)
        return finish(self._batch(pts, 1)[1], pts, drop=True)

    def jac(self, x: ArrayLike) -> np.ndarray | torch.Tensor:
        """Jacobian dy/dx in physical units: (n_in,) -> (n_out, n_in); (N, n_in) -> (N, n_out,
        n_in).

        numpy in -> numpy out (float64 by default); tensor in -> tensor on the surrogate's device.
        The residual Jacobian of ``scipy.optimize.least_squares(sur, x0, jac=sur.jac)``.

        Examples
        --------
        >>> import torch, surrogate_bridge as sb
        >>> sb.Surrogate(torch.nn.Linear(3, 2)).jac([[0.0, 0.0, 0.0]] * 4).shape
        (4, 2, 3)
        """
        pts = self._points(x, "Surrogate.jac")
        if pts.single:
            return self._out(self._single(pts, "J").J, pts, drop=False)
        return finish(self._batch(pts, 1)[1], pts)

    def value_and_grad(self, x: ArrayLike) -> tuple:
        """``(value, gradient)`` of a scalar surrogate from one forward and backward pass.

        x (n_in,) -> (float, (n_in,)); x (N, n_in) -> ((N,), (N, n_in)); numpy or torch as given.
        """
        pts = self._points(x, "Surrogate.value_and_grad")
        self._need_scalar("Surrogate.value_and_grad", "Surrogate.__call__ and Surrogate.jac")
        if pts.single:
            e = self._single(pts, "J")
            return self._out(e.y, pts, drop=True), self._out(e.J, pts, drop=True)
        f, df = self._batch(pts, 1)
        return finish(f, pts, drop=True), finish(df, pts, drop=True)

    def hess(self, x: ArrayLike) -> np.ndarray | torch.Tensor:
        """Hessian in physical units: (n_in, n_in) if n_out == 1 else (n_out, n_in, n_in); a batch
        x (N, n_in) adds a leading N. numpy in -> numpy out; tensor in -> tensor on the device.

        Warns :class:`SmoothnessWarning` (once) for piecewise-linear models.

        Examples
        --------
        >>> import torch, surrogate_bridge as sb
        >>> class Cube(torch.nn.Module):
        ...     def forward(self, z):
        ...         return (z ** 3).sum(-1)
        >>> sb.Surrogate(Cube(), n_in=2).hess([1.0, 2.0]).tolist()
        [[6.0, 0.0], [0.0, 12.0]]
        """
        pts = self._points(x, "Surrogate.hess")
        self._warn_smooth("Surrogate.hess")
        drop = self._n_out == 1
        if pts.single:
            return self._out(self._single(pts, "H").H, pts, drop=drop)
        return finish(self._batch(pts, 2)[2], pts, drop=drop)

    def hessp(self, x: ArrayLike, p: ArrayLike) -> np.ndarray | torch.Tensor:
        """Hessian-vector product of a scalar surrogate at one point: x, p (n_in,) -> (n_in,).

        Served by the cached dense Hessian for up to 16 inputs (then a matrix-vector product,
        ~1 us), else by one backward pass over the graph kept at ``x``. The ``hessp`` of
        Newton-CG, trust-ncg, trust-krylov and trust-constr.
        """
        pts = self._points(x, "Surrogate.hessp")
        self._need_scalar("Surrogate.hessp", "Surrogate.lagrangian_hess")
        if not pts.single:
            raise ValueError(
                f"Surrogate.hessp: x must be one point of shape ({self._n_in},), got "
                f"{tuple(pts.data.shape)}; use Surrogate.hess for batches."
            )
        pv = to_torch(as_vector(p, self._n_in, "Surrogate.hessp", "p"), self.dtype, self.device)
        self._warn_smooth("Surrogate.hessp")
        e, key = self._entry(pts)
        if e.H is None and self._n_in <= _DENSE_HESSP_MAX:
            self._fill_hess(e, key)
        elif e.H is not None:
            self._cache.count(hit=True)
        if e.H is not None:
            return self._out(e.H[0] @ pv, pts, drop=False)
        self._second_order = True
        if e.graph is None:
            e.y, e.J, graph = self._engine.value_jac(e.x, keep_graph=True)
            self._cache.count(hit=False, passes=1)
            self._keep_graph(e, key, graph)
        else:
            self._cache.count(hit=False)
        return self._out(self._engine.hvp(e.graph, pv), pts, drop=False)

    def lagrangian_hess(self, x: ArrayLike, v: ArrayLike) -> np.ndarray | torch.Tensor:
        """``sum_i v_i * Hessian of output i`` at one point: x (n_in,), v (n_out,) -> (n_in, n_in).

        One pass (a Hessian of ``v . f``), not n_out Hessians; a Hessian already cached at ``x``
        serves it with no model pass. The ``hess(x, v)`` of a scipy ``NonlinearConstraint``.
        """
        pts = self._points(x, "Surrogate.lagrangian_hess")
        if not pts.single:
            raise ValueError(
                f"Surrogate.lagrangian_hess: x must be one point of shape ({self._n_in},), got "
                f"{tuple(pts.data.shape)}."
            )
        vv = as_vector(v, self._n_out, "Surrogate.lagrangian_hess", "v")
        vt = to_torch(vv, self.dtype, self.device)
        self._warn_smooth("Surrogate.lagrangian_hess")
        self._second_order = True
        e, _ = self._entry(pts)
        if e.H is not None:
            self._cache.count(hit=True)
            L = torch.einsum("i,ijk->jk", vt, e.H)
        else:
            self._cache.count(hit=False, passes=1)
            L = self._engine.lagrangian_hessian(e.x, vt)
        return self._out(L, pts, drop=False)

    def derivatives(self, x: ArrayLike, order: int = 2) -> list:
        """``[f, Df, ..., D^order f]`` at x for any order >= 0.

        ``D^j f`` has shape ``(n_out,) + (n_in,) * j``, the n_out axis dropped when n_out == 1
        (as ``grad``/``hess``); batches add a leading N.

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
        pts = self._points(x, "Surrogate.derivatives")
        if isinstance(order, bool) or not isinstance(order, int) or order < 0:
            raise ValueError(f"Surrogate.derivatives: order must be an int >= 0, got {order!r}.")
        if order >= 2:
            self._warn_smooth("Surrogate.derivatives")
        drop = self._n_out == 1
        if pts.single and order <= 2:
            e = self._single(pts, "yJH"[order])  # each fill also sets the lower orders
            return [self._out(t, pts, drop=drop) for t in (e.y, e.J, e.H)[: order + 1]]
        return [finish(t, pts, drop=drop) for t in self._batch(pts, order)]


def _rows_independent(fn: PhysicalFunction, X: torch.Tensor) -> bool:
    """True if row i of fn(X) depends on row i of X alone (checked at random probe points):
    cross-row Jacobian blocks vanish and one-row evaluation equals batched evaluation."""
    with torch.no_grad():
        Y = fn(X)
        alone = torch.cat([fn(X[i : i + 1]) for i in range(X.shape[0])])
    if not torch.allclose(Y, alone, rtol=1e-5, atol=1e-8):
        return False
    J = torch.autograd.functional.jacobian(fn, X)  # (N, m, N, n)
    N = X.shape[0]
    off = J.clone()
    for i in range(N):
        off[i, :, i, :] = 0
    return bool(off.abs().max() <= 1e-10 * max(float(J.abs().max()), 1.0))


def require_surrogate(sur, where: str) -> None:
    """The adapters' entry check: a ``Surrogate`` whose input count is known."""
    if not isinstance(sur, Surrogate):
        raise TypeError(
            f"{where}: expected a surrogate_bridge.Surrogate, got {type(sur).__name__}."
        )
    sur._require_setup(where)
