"""Value and derivative-informed (Sobolev) fitting that returns a ready ``Surrogate``.

Gradient targets are mapped into normalized units consistently with the scalers,
``dz_y/dz_x = dy/dx * x_scale / y_scale``, so the loss sees well-scaled numbers, and the model's
own normalized-input derivatives come from ``torch.autograd.grad(..., create_graph=True)`` (never
``jacobian(...)`` then ``requires_grad_()``, which cuts the graph and trains nothing).
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import torch
from torch import nn

from .derivatives import rowwise
from .normalization import Affine, as_affine
from .surrogate import Surrogate

__all__ = ["fit"]

_SCALER_KINDS = ("minmax", "standard")


def _array(a, name: str, ndim: tuple[int, ...]) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"fit: {name} has dtype {arr.dtype}, expected real numbers.")
    arr = arr.astype(np.float64)
    if arr.ndim not in ndim:
        raise ValueError(
            f"fit: {name} has shape {arr.shape}; expected {' or '.join(map(str, ndim))} dimensions."
        )
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[:3].tolist()
        raise ValueError(f"fit: {name} has non-finite entries (NaN or Inf) at {bad}.")
    return arr


def _scaler(spec, data: np.ndarray | None, role: str) -> Affine | None:
    if isinstance(spec, str):
        if spec not in _SCALER_KINDS:
            raise ValueError(
                f"fit: {role}={spec!r} is not valid; use one of {_SCALER_KINDS}, "
                "an Affine, a fitted sklearn scaler, or None."
            )
        return Affine.fit(data, kind=spec)
    return as_affine(spec, f"fit: {role}")


def _progress(total: int, enabled: bool):
    """tqdm when installed, else a plain line every 10% on stderr; nothing when disabled."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _PlainBar(total)
    return tqdm(total=total, desc="fit", leave=False)


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
    patience: int = 200,
    anchor=None,
    seed: int | None = None,
    progress: bool = True,
    **surrogate_kwargs,
):
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
    input_scaler, output_scaler : "minmax", "standard", Affine, fitted sklearn scaler, or None
        String kinds are fitted to ``X`` and ``y``. With gradients only and a string output
        kind, the output scale is the gradients' magnitude times the input ranges (the RMS over
        samples of ``|dy_k/dx * x_scale|``), and the shift is set by ``anchor``.
    epochs, lr, batch_size : int, float, int or None
        Adam epochs and learning rate; ``batch_size=None`` trains on the full batch.
    weights : (float, float)
        Weights of the value and gradient mean-squared errors (in normalized units).
    validation : float
        Fraction of samples held out to monitor; 0 monitors the training loss.
    patience : int
        Stop after this many epochs without a 1e-4 relative improvement of the monitored loss;
        the best weights are restored.
    anchor : (x, value), optional
        Gradients fix a function only up to a constant: the output shift is set afterwards so
        that the surrogate equals ``value`` at ``x`` exactly. With values ``y`` the constant
        comes from them and no anchor is needed; with gradients only the default is the value 0
        at ``X[0]``.
    seed : int, optional
        Seeds the split, the shuffling and torch's generator, for reproducible runs (the
        model's initial weights are the caller's).
    progress : bool
        A progress bar (tqdm when installed, else a plain line every 10% on stderr).
    **surrogate_kwargs
        Passed to ``Surrogate`` (dtype, device, domain, ...).

    Returns
    -------
    Surrogate
        With ``history``: a dict of per-epoch ``"train"`` and ``"validation"`` losses,
        ``"best_epoch"`` and ``"stopped_early"``.

    Examples
    --------
    >>> import numpy as np, torch, surrogate_bridge as sb
    >>> X = np.linspace(-1, 1, 40)[:, None]
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    >>> sur = sb.fit(net, X, dydx=2 * X, anchor=([0.0], [0.0]), epochs=500, progress=False, seed=0)
    >>> abs(sur([0.0])) < 1e-12, abs(sur([0.5]) - 0.25) < 0.05   # x^2, learned from 2x alone
    (True, True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fit: model must be a torch.nn.Module, got {type(model).__name__}.")
    X = _array(X, "X", (2,))
    N, n = X.shape
    if y is None and dydx is None:
        raise ValueError("fit: pass values y, gradients dydx, or both.")
    Y = None if y is None else _array(y, "y", (1, 2))
    if Y is not None:
        Y = Y[:, None] if Y.ndim == 1 else Y
        if len(Y) != N:
            raise ValueError(f"fit: X has {N} samples but y has {len(Y)}.")
    G = None if dydx is None else _array(dydx, "dydx", (2, 3))
    if G is not None:
        G = G[:, None, :] if G.ndim == 2 else G
        if G.shape[0] != N or G.shape[2] != n or (Y is not None and G.shape[1] != Y.shape[1]):
            m_exp = "m" if Y is None else Y.shape[1]
            raise ValueError(
                f"fit: dydx has shape {tuple(np.asarray(dydx).shape)}; expected ({N}, {m_exp}, "
                f"{n}) (or ({N}, {n}) for one output) to match X {X.shape}"
                + ("" if Y is None else f" and y {Y.shape}")
                + "."
            )
    m = Y.shape[1] if Y is not None else G.shape[1]
    if not 0 <= validation < 1:
        raise ValueError(f"fit: validation must be in [0, 1), got {validation!r}.")

    in_aff = _scaler(input_scaler, X, "input_scaler")
    x_scale = np.ones(n) if in_aff is None else in_aff.scale
    if Y is not None or not isinstance(output_scaler, str):
        out_aff = _scaler(output_scaler, Y, "output_scaler")
    else:  # gradients only: scale from gradient magnitude times input ranges; shift by anchor
        mag = np.sqrt(np.mean(np.sum((G * x_scale) ** 2, axis=2), axis=0))
        out_aff = Affine(np.zeros(m), np.where(mag > 0, mag, 1.0))
    y_shift = np.zeros(m) if out_aff is None else out_aff.shift
    y_scale = np.ones(m) if out_aff is None else out_aff.scale

    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float64
    device = param.device if param is not None else torch.device("cpu")

    def tens(a):
        return None if a is None else torch.as_tensor(a, dtype=dtype, device=device)

    Z = tens(X if in_aff is None else in_aff.transform(X))
    T = tens(None if Y is None else (Y - y_shift) / y_scale)
    GT = tens(None if G is None else G * x_scale[None, None, :] / y_scale[None, :, None])

    rng = np.random.default_rng(seed)
    gen = torch.Generator(device="cpu")
    if seed is not None:
        torch.manual_seed(seed)
        gen.manual_seed(seed)
    perm = rng.permutation(N)
    n_val = round(validation * N) if N > 1 else 0
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    w_v, w_g = weights

    def loss_on(idx, create_graph: bool) -> torch.Tensor:
        idx_t = torch.as_tensor(idx, device=device)
        need = 1 if GT is not None and w_g else 0
        if need:
            out, jac = rowwise(model, Z[idx_t], 1, create_graph=create_graph)
        else:
            out, jac = rowwise(model, Z[idx_t], 0, create_graph=create_graph)[0], None
        loss = torch.zeros((), dtype=dtype, device=device)
        if T is not None and w_v:
            loss = loss + w_v * ((out - T[idx_t]) ** 2).mean()
        if jac is not None:
            loss = loss + w_g * ((jac - GT[idx_t]) ** 2).mean()
        return loss

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    bs = len(tr_idx) if batch_size is None else int(batch_size)
    history: dict = {"train": [], "validation": [], "best_epoch": 0, "stopped_early": False}
    best, best_state, stale = np.inf, copy.deepcopy(model.state_dict()), 0
    bar = _progress(epochs, progress)
    was_training = model.training
    model.train()
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
        if n_val:
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
        if stale >= patience:
            history["stopped_early"] = True
            break
    if bar is not None:
        bar.close()
    model.load_state_dict(best_state)
    model.train(was_training)
    for p in model.parameters():
        p.grad = None

    sur = Surrogate(model, in_aff, out_aff, **surrogate_kwargs)
    if Y is None or anchor is not None:
        sur = Surrogate(
            model,
            in_aff,
            _anchored(sur, out_aff or Affine.identity(m), X, anchor),
            **surrogate_kwargs,
        )
    sur.history = history
    return sur


def _anchored(sur: Surrogate, out_aff: Affine, X: np.ndarray, anchor) -> Affine:
    """Shift the output so that f(x_a) == value_a (gradients fix f up to a constant), computed
    by the surrogate itself so that it holds in the surrogate's dtype."""
    if anchor is None:
        x_a, v_a = X[0], np.zeros(out_aff.n_features)
    else:
        x_a, v_a = (np.asarray(a, dtype=np.float64).reshape(-1) for a in anchor)
    now = np.atleast_1d(sur(torch.as_tensor(x_a, dtype=sur.dtype)).cpu().numpy())
    return Affine(out_aff.shift + (v_a - now), out_aff.scale)
