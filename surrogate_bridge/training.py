"""Value and derivative-informed (Sobolev) fitting that returns a ready ``Surrogate``.

Gradient targets are mapped into normalized units consistently with the scalers,
``dz_y/dz_x = dy/dx * x_scale / y_scale``, so the loss sees well-scaled numbers, and the model's
own normalized-input derivatives come from ``torch.autograd.grad(..., create_graph=True)`` (never
``jacobian(...)`` then ``requires_grad_()``, which cuts the graph and trains nothing).
"""

from __future__ import annotations

import copy
import itertools
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .convert import as_array, check_feature_names, feature_names, outside_inference
from .derivatives import rowwise
from .normalization import FIT_KINDS, Affine
from .physical import batch_statistics, frozen_copy
from .projections import around_model
from .scaling import Scaling, as_scaler
from .surrogate import Surrogate

__all__ = ["fit", "mlp"]

_ACTIVATIONS = {
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "relu": nn.ReLU,
}


def mlp(sizes, activation: str = "tanh", *, seed: int | None = None, dtype=torch.float64):
    """A plain multilayer perceptron ``Linear, act, ..., Linear`` with layer ``sizes``.

    Parameters
    ----------
    sizes : sequence of int
        Widths from input to output, e.g. ``(2, 64, 64, 1)``.
    activation : str
        One of "tanh", "softplus", "silu", "gelu", "sigmoid", "elu", "relu".
    seed : int, optional
        Seeds torch's generator before the weights are drawn.
    dtype : torch.dtype

    Examples
    --------
    >>> net = mlp((2, 16, 1), "softplus", seed=0)
    >>> len(net), net[1]
    (3, Softplus(beta=1.0, threshold=20.0))
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"mlp: activation={activation!r} is not one of {sorted(_ACTIVATIONS)}.")
    sizes = [int(k) for k in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"mlp: sizes needs two or more positive widths, got {sizes}.")
    if seed is not None:
        torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), _ACTIVATIONS[activation]()]
    return nn.Sequential(*layers[:-1]).to(dtype)


def _scaler(spec, data: np.ndarray | None, role: str) -> Affine | Scaling | None:
    if isinstance(spec, str):
        if spec not in FIT_KINDS:
            raise ValueError(
                f"fit: {role}={spec!r} is not valid; use one of {FIT_KINDS}, "
                "an Affine, a fitted sklearn scaler, or None."
            )
        return Affine.fit(data, kind=spec)
    return as_scaler(spec, f"fit: {role}")


def _scaler_fitted(spec, data, role: str):
    """As sklearn's own meta-estimators do: a clone of ``spec`` fitted to ``data`` (an array,
    or the caller's DataFrame, whose columns a ColumnTransformer may name)."""
    if data is None:
        raise ValueError(
            f"fit: {role} is an unfitted {type(spec).__name__}, and there are no values y to "
            "fit it to; pass it fitted, an Affine, or a string kind."
        )
    from sklearn.base import clone

    try:
        return clone(spec).fit(data)
    except (ValueError, TypeError, KeyError, IndexError) as err:  # sklearn's own, named
        said = f"{type(err).__name__}: {err}"
        raise ValueError(f"fit: {role} could not be fitted to the data ({said:.300}).") from err


def _is_frame(obj) -> bool:
    """A 2-D pandas DataFrame (a Series is read as an array: one column, no names to use)."""
    return type(obj).__module__.startswith("pandas") and getattr(obj, "ndim", 0) == 2


def _unfitted_sklearn(obj) -> bool:
    """Whether ``obj`` is a sklearn estimator not yet fitted (never the user's object to fit)."""
    if not type(obj).__module__.startswith("sklearn.") or not hasattr(obj, "fit"):
        return False
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(obj)
    except NotFittedError:
        return True
    # a stateless one (FunctionTransformer) counts as fitted, but has read no feature count yet
    return not hasattr(obj, "n_features_in_")


def _slope(scaler, data: np.ndarray | None, N: int, k: int) -> np.ndarray:
    """d(normalized)/d(physical) of each of N samples' k features: 1 / scale for an Affine."""
    if scaler is None:
        return np.ones((N, k))
    if isinstance(scaler, Affine):
        return np.broadcast_to(1.0 / scaler.scale, (N, k))
    return scaler.slope(data)


def _progress(total: int, enabled: bool | None):
    """tqdm when installed, else a plain line every 10% on stderr; nothing when disabled. By
    default (None) shown only when stderr is a terminal, as tqdm's ``disable=None`` does."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _PlainBar(total)
    return tqdm(total=total, desc="fit", leave=False, mininterval=0.5)


class _PlainBar:
    """The progress line used when tqdm is not installed."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.every = total, 0, max(1, total // 10)
        self.postfix = ""

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.n % self.every == 0 or self.n == self.total:
            print(f"fit: epoch {self.n}/{self.total} {self.postfix}", file=sys.stderr)

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s

    def close(self) -> None:
        pass


@dataclass
class _Data:
    """Training data in normalized units, with the scalers that normalized it."""

    Z: torch.Tensor  # (N, n) inputs
    T: torch.Tensor | None  # (N, m) values
    GT: torch.Tensor | None  # (N, m, n) gradients
    model: nn.Module  # the model trained: the caller's, or it inside our layers (projections.py)
    in_aff: Affine | Scaling | None
    out_aff: Affine | Scaling | None
    m: int


def _positive(value, name: str, kind=int) -> None:
    ok = kind is float or not isinstance(value, bool)
    if not (ok and isinstance(value, (int, float) if kind is float else int) and value > 0):
        raise ValueError(f"fit: {name} must be a positive {kind.__name__}, got {value!r}.")


def _check_options(epochs, lr, batch_size, weights, validation, patience) -> None:
    _positive(epochs, "epochs")
    if patience is not None:  # (None: every epoch runs)
        _positive(patience, "patience")
    _positive(lr, "lr", float)
    if batch_size is not None:
        _positive(batch_size, "batch_size")
    w = as_array(weights, "fit", "weights", (1,))
    if w.shape != (2,) or np.any(w < 0) or not w.any():
        raise ValueError(
            f"fit: weights must be two non-negative numbers (value, gradient), not both zero; "
            f"got {weights!r}."
        )
    if not (isinstance(validation, (int, float)) and 0 <= validation < 1):
        raise ValueError(f"fit: validation must be in [0, 1), got {validation!r}.")


def _prepare(model, X, y, dydx, input_scaler, output_scaler) -> _Data:
    """Validate the data against each other and the model; normalize it."""
    check_feature_names(X, feature_names(input_scaler), "fit", "X")  # as the scaler saw them
    frames = (X if _is_frame(X) else None, y if _is_frame(y) else None)  # columns by name
    X = as_array(X, "fit", "X", (1, 2))
    if X.ndim == 1:  # N samples of one feature, or one sample of N features: not guessed
        raise ValueError(
            f"fit: X must be 2-D (samples, features), got shape {X.shape}; for one feature "
            "pass X[:, None], for one sample X[None]."
        )
    N, n = X.shape
    if y is None and dydx is None:
        raise ValueError("fit: pass values y, gradients dydx, or both.")
    Y = None if y is None else as_array(y, "fit", "y", (1, 2))
    if Y is not None:
        Y = Y[:, None] if Y.ndim == 1 else Y
        if len(Y) != N:
            raise ValueError(f"fit: X has {N} samples but y has {len(Y)}.")
    G = None if dydx is None else as_array(dydx, "fit", "dydx", (2, 3))
    if G is not None:
        G = G[:, None, :] if G.ndim == 2 else G
        if G.shape[0] != N or G.shape[2] != n or (Y is not None and G.shape[1] != Y.shape[1]):
            m_exp = "m" if Y is None else Y.shape[1]
            raise ValueError(
                f"fit: dydx has shape {np.shape(dydx)}; expected ({N}, {m_exp}, {n}) (or "
                f"({N}, {n}) for one output) to match X {X.shape}"
                + ("" if Y is None else f" and y {Y.shape}")
                + "."
            )
    m = Y.shape[1] if Y is not None else G.shape[1]
    if _unfitted_sklearn(input_scaler):
        input_scaler = _scaler_fitted(
            input_scaler, X if frames[0] is None else frames[0], "input_scaler"
        )
    if _unfitted_sklearn(output_scaler):
        output_scaler = _scaler_fitted(
            output_scaler, Y if frames[1] is None else frames[1], "output_scaler"
        )
    # what mixes features (a PCA, a ColumnTransformer's column order) becomes layers around the
    # model, which is trained through them, in place: on X as the scaler hands it over
    model, input_scaler, output_scaler = around_model(model, input_scaler, output_scaler, "fit", n)
    _check_model(model, X, m)

    in_aff = _scaler(input_scaler, X, "input_scaler")
    x_slope = _slope(in_aff, X, N, n)  # dz/dx, per sample and feature
    if Y is not None or not isinstance(output_scaler, str):
        out_aff = _scaler(output_scaler, Y, "output_scaler")
    else:  # gradients only: scale from gradient magnitude times input ranges; shift by anchor
        mag = np.sqrt(np.mean(np.sum((G / x_slope[:, None, :]) ** 2, axis=2), axis=0))
        out_aff = Affine(np.zeros(m), np.where(mag > 0, mag, 1.0))
    if isinstance(out_aff, Scaling) and Y is None:
        raise ValueError(
            "fit: a nonlinear output_scaler (a log or power step) needs the values y: the "
            "gradients' normalized form depends on them. Pass y, or an affine output_scaler."
        )
    dtype, device = _dtype_device(model)

    def tens(a):
        return None if a is None else torch.as_tensor(a, dtype=dtype, device=device)

    if G is not None:  # the chain rule, per sample: dz_y/dz_x = y'(z) G / x'(z)
        y_slope = _slope(out_aff, Y, N, m)
        G = G * y_slope[:, :, None] / x_slope[:, None, :]
    return _Data(
        Z=tens(X if in_aff is None else in_aff.transform(X)),
        T=tens(None if Y is None else Y if out_aff is None else out_aff.transform(Y)),
        GT=tens(G),
        model=model,
        in_aff=in_aff,
        out_aff=out_aff,
        m=m,
    )


def _dtype_device(model) -> tuple[torch.dtype, torch.device]:
    param = next(model.parameters(), None)
    return (torch.float64, torch.device("cpu")) if param is None else (param.dtype, param.device)


def _check_model(model, X: np.ndarray, m: int) -> None:
    """One call on two rows: the model must take X's width and return m outputs per row."""
    dtype, device = _dtype_device(model)
    rows = torch.as_tensor(X[:2], dtype=dtype, device=device)
    try:
        with torch.no_grad():
            out = model(rows)
    except Exception as err:  # the model's own error, of any type, named with the shapes
        raise ValueError(
            f"fit: the model failed on X's first rows, shape {tuple(rows.shape)} ("
            f"{type(err).__name__}: {err}); its input layer must take {X.shape[1]} features."
        ) from err
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape not in {(len(rows), m)} | ({(len(rows),)} if m == 1 else set()):
        raise ValueError(
            f"fit: the model returns {shape} for {len(rows)} rows, but the targets have {m} "
            f"output(s) per sample; expected ({len(rows)}, {m})."
        )


def _train(
    data: _Data, tr_idx, val_idx, *, epochs, lr, batch_size, weights, patience, gen, progress
) -> dict:
    """Adam on the value and gradient mean-squared errors; restores the best weights."""
    model = data.model
    w_v, w_g = weights
    need = 1 if data.GT is not None and w_g else 0

    def loss_on(idx, create_graph: bool) -> torch.Tensor:
        idx_t = torch.as_tensor(idx, device=data.Z.device)
        ds = rowwise(model, data.Z[idx_t], need, create_graph=create_graph)
        loss = torch.zeros((), dtype=data.Z.dtype, device=data.Z.device)
        if data.T is not None and w_v:
            loss = loss + w_v * ((ds[0] - data.T[idx_t]) ** 2).mean()
        if need:
            loss = loss + w_g * ((ds[1] - data.GT[idx_t]) ** 2).mean()
        return loss

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    bs = len(tr_idx) if batch_size is None else batch_size
    history: dict = {"train": [], "validation": [], "best_epoch": 0, "stopped_early": False}
    best, best_state, stale = np.inf, copy.deepcopy(model.state_dict()), 0
    bar = _progress(epochs, progress)
    for epoch in range(epochs):
        order = tr_idx[torch.randperm(len(tr_idx), generator=gen).numpy()]
        total = 0.0
        for start in range(0, len(order), bs):
            batch = order[start : start + bs]
            opt.zero_grad()
            loss = loss_on(batch, create_graph=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
        history["train"].append(total / max(len(order), 1))
        monitored = history["train"][-1]
        if len(val_idx):
            monitored = float(loss_on(val_idx, create_graph=False).detach())
            history["validation"].append(monitored)
        if monitored < best * (1 - 1e-4):
            best, best_state, stale = monitored, copy.deepcopy(model.state_dict()), 0
            history["best_epoch"] = epoch
        else:
            stale += 1
        if bar is not None:
            bar.set_postfix_str(f"loss {history['train'][-1]:.3e}")
            bar.update(1)
        if patience is not None and stale >= patience:
            history["stopped_early"] = True
            break
    if bar is not None:
        bar.close()
    model.load_state_dict(best_state)
    return history


def _anchored(data: _Data, x_a, v_a, dtype: torch.dtype) -> Affine:
    """The output scaler shifted so that the surrogate equals ``v_a`` at ``x_a`` (gradients fix
    f only up to a constant), computed in the surrogate's dtype from a frozen copy."""
    out = data.out_aff or Affine.identity(data.m)
    z_a = x_a if data.in_aff is None else data.in_aff.transform(x_a)
    probe = frozen_copy(data.model, dtype, torch.device("cpu"))
    with torch.no_grad():
        y = probe(torch.as_tensor(z_a, dtype=dtype)[None]).reshape(-1).double().numpy()
    return Affine(v_a - y * out.scale, out.scale)


@outside_inference
def fit(
    model: nn.Module,
    X,
    y=None,
    dydx=None,
    *,
    input_scaler="minmax",
    output_scaler="standard",
    epochs: int = 2000,
    lr: float = 1e-2,
    batch_size: int | None = None,
    weights: tuple[float, float] = (1.0, 1.0),
    validation: float = 0.1,
    patience: int | None = 200,
    anchor=None,
    seed: int | None = None,
    progress: bool | None = None,
    **surrogate_kwargs,
) -> Surrogate:
    """Train ``model`` in place on values and/or gradients; return a ``Surrogate``.

    The model learns in normalized units; the returned Surrogate (its own frozen copy, in
    float64 by default) has the scalers baked in, so it is evaluated in physical units.

    Parameters
    ----------
    model : torch.nn.Module
        Maps (B, n) normalized inputs to (B, m) or (B,). Trained in place with Adam, in its own
        dtype and on its own device.
    X : array_like, shape (N, n)
        Inputs in physical units.
    y : array_like, shape (N, m) or (N,), optional
        Values.
    dydx : array_like, shape (N, m, n), or (N, n) for m == 1, optional
        Gradients (Jacobians) in physical units. At least one of ``y`` and ``dydx`` is needed.
    input_scaler, output_scaler : "minmax", "standard", Affine, Scaling, sklearn scaler, or None
        String kinds are fitted to ``X`` and ``y``, and so is a copy of an unfitted sklearn
        scaler (as sklearn's ``TransformedTargetRegressor`` does; yours is left as it is). With
        gradients only and a string output kind, the output scale is the gradients' magnitude
        times the input ranges (the RMS over samples of ``|dy_k/dx * x_scale|``), and the shift
        is set by ``anchor``. A scaler with a log or power step (``PowerTransformer``,
        ``FunctionTransformer(np.log)``, a :class:`Scaling`) is applied to the gradients by the
        chain rule at each sample; as an output scaler it needs the values ``y``.
    epochs, lr, batch_size : int, float, int or None
        Adam epochs and learning rate; ``batch_size=None`` trains on the full batch.
    weights : (float, float)
        Weights of the value and gradient mean-squared errors (in normalized units).
    validation : float
        Fraction of samples held out to monitor; 0 monitors the training loss.
    patience : int or None
        Stop after this many epochs without a 1e-4 relative improvement of the monitored loss
        (None: never stop early); the best weights are restored.
    anchor : (x, value), optional
        Gradients fix a function only up to a constant: the output shift is set afterwards so
        that the surrogate equals ``value`` at ``x`` exactly. With values ``y`` the constant
        comes from them and no anchor is needed; with gradients only the default is the value 0
        at ``X[0]``.
    seed : int, optional
        Seeds the split, the shuffling and torch's generator, for reproducible runs (the
        model's initial weights are the caller's).
    progress : bool, optional
        A progress bar (tqdm when installed, else a plain line every 10% on stderr); by default
        only when stderr is a terminal.
    **surrogate_kwargs
        Passed to ``Surrogate`` (dtype, device, extrapolation, ...). ``domain`` defaults to the
        box of ``X`` (each feature's minimum and maximum): where the model was trained, so
        ``sur.bounds()`` is known and points outside are warned of, whatever the scalers.

    Returns
    -------
    Surrogate
        With ``history``: a dict of per-epoch ``"train"`` and ``"validation"`` losses,
        ``"best_epoch"`` and ``"stopped_early"``.

    Examples
    --------
    >>> import numpy as np, surrogate_bridge as sb
    >>> X = np.linspace(-1, 1, 40)[:, None]
    >>> net = sb.mlp((1, 16, 1), seed=0)
    >>> sur = sb.fit(net, X, dydx=2 * X, anchor=([0.0], [0.0]), epochs=500, progress=False, seed=0)
    >>> abs(sur([0.0])) < 1e-12, abs(sur([0.5]) - 0.25) < 0.05   # x^2, learned from 2x alone
    (True, True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fit: model must be a torch.nn.Module, got {type(model).__name__}.")
    _check_options(epochs, lr, batch_size, weights, validation, patience)
    data = _prepare(model, X, y, dydx, input_scaler, output_scaler)
    if anchor is not None and isinstance(data.out_aff, Scaling):
        raise ValueError(
            "fit: anchor shifts an affine output scaler, and this one has a log or power step; "
            "the values y already fix the constant, so leave anchor out."
        )
    N = data.Z.shape[0]

    rng = np.random.default_rng(seed)
    gen = torch.Generator(device="cpu")
    if seed is not None:
        torch.manual_seed(seed)
        gen.manual_seed(seed)
    perm = rng.permutation(N)
    n_val = round(validation * N) if N > 1 else 0
    was_training = model.training
    model.train()
    found = batch_statistics(model) if data.GT is not None and weights[1] else None
    if found is not None:
        model.train(was_training)
        raise ValueError(
            f"fit: the model's {found} normalizes with the batch's statistics in training, so "
            "a sample's derivative takes in every other sample and dydx cannot be fitted per "
            "sample; use a per-sample normalization (nn.LayerNorm), or fit values only."
        )
    try:
        history = _train(
            data,
            perm[n_val:],
            perm[:n_val],
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            weights=tuple(weights),
            patience=patience,
            gen=gen,
            progress=progress,
        )
    finally:
        model.train(was_training)
        for p in model.parameters():
            p.grad = None

    out_aff = data.out_aff
    Xp = as_array(X, "fit", "X", (2,))
    if y is None or anchor is not None:
        x_a, v_a = (
            (Xp[0], np.zeros(data.m))
            if anchor is None
            else (as_array(a, "fit", "anchor", (0, 1)).reshape(-1) for a in anchor)
        )
        dtype = surrogate_kwargs.get("dtype", torch.float64)
        out_aff = _anchored(data, x_a, v_a, dtype)
    if "domain" not in surrogate_kwargs:  # where it was trained: extrapolation is warned of
        surrogate_kwargs["domain"] = (Xp.min(axis=0), Xp.max(axis=0))
    sur = Surrogate(data.model, data.in_aff, out_aff, **surrogate_kwargs)
    sur._names = feature_names(input_scaler) or feature_names(X)
    sur.history = history
    return sur
