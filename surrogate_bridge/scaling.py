"""Nonlinear per-feature scalings: a log or power transform before (or after) an affine scaler.

Targets that span decades are trained in log units, and skewed ones through sklearn's
``PowerTransformer``; a :class:`Scaling` is such a chain of per-feature steps, each an
:class:`~surrogate_bridge.normalization.Affine` or a :class:`Warp` (``log``, ``log1p``, ``exp``,
``expm1``, ``log10``, ``log2``, Box-Cox or Yeo-Johnson with fitted lambdas). Every warp is smooth
and increasing where it is defined, so the surrogate stays differentiable and a data range maps to
a data range.

The formulas are scipy's (``expm1(lambda * log1p(x)) / lambda`` for Yeo-Johnson, as
``scipy.stats.yeojohnson`` computes it), so a surrogate agrees with sklearn's ``transform`` and
``inverse_transform`` to float64 rounding. They are written once for numpy and torch alike
(``_warp``, ``_unwarp``: both namespaces spell these functions the same), and the torch ones are
plain aten operations, so every route (numpy, CasADi, a saved file) reads them from the graph.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .normalization import Affine

__all__ = ["WARPS", "Scaling", "ScalingMap", "Warp", "as_scaler", "scaler_from_dict"]

_EPS = np.finfo(np.float64).eps  # scipy's test for lambda == 0 (or 2)
# kind -> the inverse kind (parameterless warps), for reading FunctionTransformer(func=np.log)
_PAIRS = {"log": "exp", "exp": "log", "log1p": "expm1", "expm1": "log1p"}
# logarithms to a base b, undone by b ** z (what engineers write for decades: np.log10)
_BASES = {"log10": 10.0, "log2": 2.0}
_PLAIN = (*_PAIRS, *_BASES)  # the warps without lambdas
WARPS = (*_PLAIN, "box-cox", "yeo-johnson")
# numpy's own inverse of each plain warp, where it has one (an inverse_func taken as it is)
_NP_INVERSE = {**{k: getattr(np, v) for k, v in _PAIRS.items()}, "log2": np.exp2}


def _ns(x):
    return torch if isinstance(x, torch.Tensor) else np


def _blend(general, special, mask):
    """``special(v)`` where the constant 0/1 ``mask`` is 1, else ``general(v)``: exact for both,
    and plain arithmetic in the graph (no select on a constant). ``general`` sees 0 on the
    special features, so its stand-in lambda of 1 there stays finite. ``mask`` None: none is."""

    def pick(v):
        return (
            general(v) if mask is None else special(v) * mask + general(v * (1 - mask)) * (1 - mask)
        )

    return pick


def _warp(x, kind: str, c: dict):
    """z = warp(x), per feature, with the constants ``c`` of :meth:`Warp.constants`."""
    xp = _ns(x)
    if kind in _PLAIN:
        return getattr(xp, kind)(x)
    lam, m0 = c["lam"], c["m0"]
    if kind == "box-cox":  # scipy: expm1(lambda log x) / lambda; log x at lambda 0
        return _blend(lambda v: xp.expm1(lam * v) / lam, lambda v: v, m0)(xp.log(x))
    # yeo-johnson: each side on its own clipped input, so the side not taken stays finite
    up, down = xp.log1p(x.clip(min=0)), xp.log1p(-x.clip(max=0))
    pos = _blend(lambda v: xp.expm1(lam * v) / lam, lambda v: v, m0)(up)
    lam2 = c["lam2"]
    neg = _blend(lambda v: -xp.expm1(lam2 * v) / lam2, lambda v: -v, c["m2"])(down)
    return xp.where(x >= 0, pos, neg)


def _unwarp(z, kind: str, c: dict):
    """x = warp^-1(z), per feature: the inverse of :func:`_warp`."""
    xp = _ns(z)
    if kind in _PAIRS:
        return getattr(xp, _PAIRS[kind])(z)
    if kind in _BASES:  # (np.power and aten's pow.Scalar: the base a constant)
        return _BASES[kind] ** z
    lam, m0 = c["lam"], c["m0"]
    if kind == "box-cox":  # (1 + lambda z)^(1 / lambda); exp z at lambda 0
        return _blend(lambda v: xp.exp(xp.log1p(lam * v) / lam), xp.exp, m0)(z)
    up, down = z.clip(min=0), -z.clip(max=0)
    pos = _blend(lambda v: xp.expm1(xp.log1p(lam * v) / lam), xp.expm1, m0)(up)
    lam2 = c["lam2"]
    neg = _blend(lambda v: -xp.expm1(xp.log1p(lam2 * v) / lam2), lambda v: -xp.expm1(v),
                 c["m2"])(down)  # fmt: skip
    return xp.where(z >= 0, pos, neg)


def _slope(x: np.ndarray, kind: str, lam: np.ndarray | None) -> np.ndarray:
    """dz/dx of the warp at x, per feature (numpy; for training on gradients)."""
    if kind in ("log", "log1p"):
        return 1.0 / (x if kind == "log" else 1.0 + x)
    if kind in _BASES:
        return 1.0 / (x * np.log(_BASES[kind]))
    if kind in ("exp", "expm1"):
        return np.exp(x)
    if kind == "box-cox":
        return np.exp((lam - 1.0) * np.log(x))
    return np.where(
        x >= 0, (1.0 + x.clip(min=0)) ** (lam - 1.0), (1.0 - x.clip(max=0)) ** (1.0 - lam)
    )


class Warp:
    """A smooth increasing per-feature function ``z = warp(x)`` and its inverse.

    Parameters
    ----------
    kind : {"log", "log1p", "exp", "expm1", "log10", "log2", "box-cox", "yeo-johnson"}
        ``log10`` and ``log2`` are undone by ``10 ** z`` and ``2 ** z``.
        Box-Cox and Yeo-Johnson as ``sklearn.preprocessing.PowerTransformer`` computes them
        (without its standardization, which is an :class:`Affine` step).
    n_features : int, optional
        Needed for the kinds without lambdas.
    lambdas : array_like, shape (n_features,), optional
        Box-Cox and Yeo-Johnson: one lambda per feature.

    Examples
    --------
    >>> w = Warp("yeo-johnson", lambdas=[0.5])
    >>> w.transform([[3.0]]).round(12).tolist()
    [[2.0]]
    >>> w.inverse_transform([[2.0]]).round(12).tolist()
    [[3.0]]
    """

    def __init__(self, kind: str, *, n_features: int | None = None, lambdas=None) -> None:
        if kind not in WARPS:
            raise ValueError(f"Warp: kind={kind!r} is not supported; use one of {list(WARPS)}.")
        self.kind, self.lambdas = kind, None
        if kind in _PLAIN:
            if lambdas is not None:
                raise ValueError(f"Warp: kind={kind!r} takes no lambdas.")
            if not isinstance(n_features, int) or isinstance(n_features, bool) or n_features < 1:
                raise ValueError(
                    f"Warp: kind={kind!r} needs n_features, a positive int, got {n_features!r}."
                )
            self._n = n_features
            return
        if lambdas is None:
            raise ValueError(f"Warp: kind={kind!r} needs lambdas, one per feature.")
        lam = np.array(lambdas, dtype=np.float64).reshape(-1)  # our own copy
        if lam.size == 0 or not np.all(np.isfinite(lam)):
            raise ValueError(f"Warp: lambdas must be finite, one per feature, got {lam.tolist()}.")
        if n_features is not None and n_features != lam.size:
            raise ValueError(f"Warp: n_features={n_features} but {lam.size} lambdas.")
        self.lambdas, self._n = lam, int(lam.size)

    @property
    def n_features(self) -> int:
        return self._n

    def __repr__(self) -> str:
        if self.lambdas is None:
            return f"Warp({self.kind!r}, n_features={self._n})"
        return f"Warp({self.kind!r}, lambdas={self.lambdas.tolist()})"

    def constants(self) -> dict:
        """What :func:`_warp` takes: ``lam`` (and ``lam2 = 2 - lambda``, the exponent of
        Yeo-Johnson's negative side) with each special value, 0, replaced by 1, and 0/1 masks
        ``m0``, ``m2`` of the features where it was 0 (``None`` where none is)."""
        if self.lambdas is None:
            return {}

        def split(lam):
            hit = np.abs(lam) < _EPS  # scipy's test
            return np.where(hit, 1.0, lam), (hit.astype(np.float64) if hit.any() else None)

        lam, m0 = split(self.lambdas)
        if self.kind == "box-cox":
            return {"lam": lam, "m0": m0}
        lam2, m2 = split(2.0 - self.lambdas)
        return {"lam": lam, "m0": m0, "lam2": lam2, "m2": m2}

    def transform(self, x) -> np.ndarray:
        """Physical -> warped, per feature (numpy, float64)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return _warp(np.asarray(x, dtype=np.float64), self.kind, self.constants())

    def inverse_transform(self, z) -> np.ndarray:
        """Warped -> physical, per feature (numpy, float64)."""
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            return _unwarp(np.asarray(z, dtype=np.float64), self.kind, self.constants())

    def slope(self, x) -> np.ndarray:
        """``d warp / dx`` at x, per feature (numpy, float64)."""
        return _slope(np.asarray(x, dtype=np.float64), self.kind, self.lambdas)

    def image(self) -> tuple[np.ndarray, np.ndarray]:
        """Per feature, the open interval of the warp's values (where its inverse is defined)."""
        n, inf = self._n, np.inf
        if self.kind in ("log", "log1p", *_BASES):
            return np.full(n, -inf), np.full(n, inf)
        if self.kind in ("exp", "expm1"):
            return np.full(n, 0.0 if self.kind == "exp" else -1.0), np.full(n, inf)
        lam = self.lambdas
        with np.errstate(divide="ignore"):
            if self.kind == "box-cox":
                return (
                    np.where(lam > _EPS, -1.0 / lam, -inf),
                    np.where(lam < -_EPS, -1.0 / lam, inf),
                )
            return (np.where(lam > 2 + _EPS, 1.0 / (2.0 - lam), -inf),
                    np.where(lam < -_EPS, -1.0 / lam, inf))  # fmt: skip

    def defined(self) -> tuple[float, float]:
        """The open interval of inputs where the warp is defined (the same for every feature)."""
        if self.kind in ("log", "box-cox", *_BASES):
            return 0.0, np.inf
        return (-1.0, np.inf) if self.kind == "log1p" else (-np.inf, np.inf)

    def to_dict(self) -> dict:
        if self.lambdas is None:
            return {"warp": self.kind, "n_features": self._n}
        return {"warp": self.kind, "lambdas": self.lambdas.tolist()}


class Scaling:
    """A chain of per-feature steps, ``z = step_k(... step_1(x))``: :class:`Affine` maps and
    :class:`Warp` functions, in the order a sklearn ``Pipeline`` applies them.

    ``Scaling.from_sklearn`` reads a fitted ``PowerTransformer``, a ``FunctionTransformer`` of
    ``np.log``, ``np.log1p``, ``np.exp``, ``np.expm1``, ``np.log10`` or ``np.log2``, or a
    ``Pipeline`` mixing them with affine scalers; a :class:`~surrogate_bridge.Surrogate` takes
    any of these (or the Scaling) as its ``input_scaler`` or ``output_scaler``. The data range, if
    a MinMaxScaler step recorded one, is mapped back to physical units: it is the surrogate's
    default domain.

    Examples
    --------
    >>> s = Scaling([Warp("log", n_features=1), Affine([0.0], [2.0])])
    >>> s.transform([[np.e ** 4]]).round(12).tolist()
    [[2.0]]
    >>> s.inverse_transform([[2.0]]).round(9).tolist() == [[round(np.e ** 4, 9)]]
    True
    """

    def __init__(self, steps) -> None:
        steps = tuple(steps)
        bad = [s for s in steps if not isinstance(s, (Affine, Warp))]
        if not steps or bad:
            raise TypeError(
                "Scaling: steps must be a non-empty sequence of Affine and Warp objects, got "
                f"{[type(s).__name__ for s in steps]}."
            )
        sizes = [s.n_features for s in steps]
        if len(set(sizes)) > 1:
            raise ValueError(f"Scaling: the steps have different feature counts {sizes}.")
        self.steps = steps

    @property
    def n_features(self) -> int:
        return self.steps[0].n_features

    def __repr__(self) -> str:
        return f"Scaling({list(self.steps)!r})"

    def transform(self, x) -> np.ndarray:
        """Physical -> normalized: every step in order (numpy, float64)."""
        z = np.asarray(x, dtype=np.float64)
        for s in self.steps:
            z = s.transform(z)
        return z

    def inverse_transform(self, z) -> np.ndarray:
        """Normalized -> physical: every step's inverse, last first (numpy, float64)."""
        x = np.asarray(z, dtype=np.float64)
        for s in reversed(self.steps):
            x = s.inverse_transform(x)
        return x

    def slope(self, x) -> np.ndarray:
        """``dz/dx`` at x, per feature: the product of the steps' slopes (numpy, float64)."""
        x = np.asarray(x, dtype=np.float64)
        out = np.ones_like(x)
        for s in self.steps:
            out = out * (1.0 / s.scale if isinstance(s, Affine) else s.slope(x))
            x = s.transform(x)
        return out

    def physical(self, z: np.ndarray) -> np.ndarray:
        """Normalized points -> physical ones, each value first moved inside the open range each
        inverse is defined on (for probing the model; never for answers)."""
        x = np.asarray(z, dtype=np.float64)
        for s in reversed(self.steps):
            if isinstance(s, Warp):
                lo, hi = s.image()
                end = np.where(np.isfinite(lo), lo, np.where(np.isfinite(hi), hi, 0.0))
                room = 1e-3 * np.maximum(1.0, np.abs(end))
                x = np.clip(x, lo + room, hi - room)
            x = s.inverse_transform(x)
        return x

    @property
    def data_min(self) -> np.ndarray | None:
        return self._range(0)

    @property
    def data_max(self) -> np.ndarray | None:
        return self._range(1)

    def _range(self, side: int):
        """The first recorded data range, mapped back through the steps before it (all
        increasing, so the ends stay ends)."""
        for k, s in enumerate(self.steps):
            if isinstance(s, Affine) and s.data_min is not None:
                v = (s.data_min, s.data_max)[side]
                return Scaling(self.steps[:k]).inverse_transform(v) if k else v.copy()
        return None

    def defined(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per feature, the open interval of physical inputs where every step is defined (a log
        needs x > 0), or None where that is every real number."""
        n = self.n_features
        lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
        for k, s in enumerate(self.steps):
            if not isinstance(s, Warp) or s.defined() == (-np.inf, np.inf):
                continue
            ends = np.stack([np.full(n, v) for v in s.defined()])
            with np.errstate(all="ignore"):  # (the ends of earlier warps' ranges: +-inf)
                back = Scaling(self.steps[:k]).inverse_transform(ends) if k else ends
            # (an affine may flip the ends; an end outside an earlier warp's range, NaN, bounds
            # nothing: exp(x) > -1 holds everywhere)
            back = np.where(np.isnan(back), np.array([[-np.inf], [np.inf]]), back)
            lo, hi = np.maximum(lo, back.min(axis=0)), np.minimum(hi, back.max(axis=0))
        return None if np.isneginf(lo).all() and np.isposinf(hi).all() else (lo, hi)

    def to_dict(self) -> dict:
        return {"steps": [s.to_dict() if isinstance(s, Warp) else {"affine": s.to_dict()}
                          for s in self.steps]}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> Scaling:
        """The inverse of :meth:`to_dict` (a saved file's metadata: only numbers are read)."""
        steps = d.get("steps")
        if not isinstance(steps, list):
            raise ValueError("Scaling.from_dict: 'steps' must be a list.")
        out = []
        for s in steps:
            if not isinstance(s, dict):
                raise ValueError(f"Scaling.from_dict: a step is a {type(s).__name__}, not a dict.")
            if "affine" in s:
                if not isinstance(s["affine"], dict):
                    raise ValueError("Scaling.from_dict: an affine step is not a dict.")
                out.append(Affine.from_dict(s["affine"]))
            elif s.get("warp") in WARPS:
                out.append(
                    Warp(s["warp"], n_features=s.get("n_features"), lambdas=s.get("lambdas"))
                )
            else:
                raise ValueError(f"Scaling.from_dict: unknown step {sorted(s)}.")
        return cls(out)

    @classmethod
    def from_sklearn(cls, obj) -> Scaling:
        """Read a fitted ``PowerTransformer``, ``FunctionTransformer`` (of np.log, np.log1p,
        np.exp, np.expm1, np.log10 or np.log2) or ``Pipeline`` of them and affine scalers
        (sklearn is not imported).

        Examples
        --------
        >>> from sklearn.preprocessing import PowerTransformer
        >>> X = np.random.default_rng(0).lognormal(size=(50, 1))
        >>> pt = PowerTransformer().fit(X)
        >>> bool(np.allclose(Scaling.from_sklearn(pt).transform(X), pt.transform(X), atol=1e-12))
        True
        """
        return cls(_read_steps(obj))


def _read_steps(obj) -> list:
    name = type(obj).__name__
    if name == "Pipeline":
        steps = []
        for _, est in obj.steps:
            if est not in (None, "passthrough"):
                steps.extend(_read_steps(est))
        if not steps:
            raise TypeError("Scaling.from_sklearn: the Pipeline has no steps to read.")
        return _merged(steps)
    reader = _READERS.get(name)
    if reader is None:
        return [Affine.from_sklearn(obj)]  # (its error lists the affine scalers)
    if not hasattr(obj, "n_features_in_"):
        raise TypeError(
            f"Scaling.from_sklearn: this {name} is not fitted; call .fit(X) on it first."
        )
    return reader(obj)


def _merged(steps: list) -> list:
    """Adjacent affine steps composed into one (as ``Affine.from_sklearn`` reads a Pipeline)."""
    out = []
    for s in steps:
        if out and isinstance(s, Affine) and isinstance(out[-1], Affine):
            out[-1] = out[-1].then(s)
        else:
            out.append(s)
    return out


def _read_power(pt) -> list:
    steps = [Warp(pt.method, lambdas=pt.lambdas_)]
    if pt.standardize:
        steps.append(Affine.from_sklearn(pt._scaler))
    return steps


def _read_function(ft) -> list:
    if ft.func is None and ft.inverse_func is None:  # the identity (sklearn's "passthrough")
        n = int(ft.n_features_in_)
        return [Affine(np.zeros(n), np.ones(n))]  # composed exactly with its neighbours
    kind = next((k for k in _PLAIN if ft.func is getattr(np, k)), None)
    if kind is None or ft.kw_args or ft.inv_kw_args:
        func = getattr(ft.func, "__name__", repr(ft.func))
        raise TypeError(
            f"Scaling.from_sklearn: FunctionTransformer(func={func}) is not one of the warps "
            f"read here ({', '.join('np.' + k for k in _PLAIN)}, without kw_args); write the "
            "transform as torch code inside the model instead."
        )
    inverse = ft.inverse_func
    if inverse is not None and inverse is not _NP_INVERSE.get(kind):
        _check_inverse(kind, inverse)
    return [Warp(kind, n_features=int(ft.n_features_in_))]


def _check_inverse(kind: str, inverse: Callable) -> None:
    """An inverse_func given as a lambda is accepted where it inverts func on a grid: the
    surrogate applies np.<kind>'s exact inverse, so any other inverse_func would disagree."""
    t = np.linspace(0.1, 3.0, 7)[:, None]
    undo = f"np.{_PAIRS[kind]}" if kind in _PAIRS else f"{_BASES[kind]:g} ** z"
    try:
        with np.errstate(all="ignore"):
            back = np.asarray(inverse(getattr(np, kind)(t)), dtype=np.float64)
    except Exception as err:  # the user's function, whatever it raises
        back, why = None, f"it raised {type(err).__name__}: {err}"
    if back is None or back.shape != t.shape or not np.allclose(back, t, rtol=1e-12, atol=0):
        why = why if back is None else "it does not give x back"
        raise TypeError(
            f"Scaling.from_sklearn: FunctionTransformer(func=np.{kind}) has an inverse_func that "
            f"is not {undo} ({why}); the surrogate would unscale with {undo}."
        )


_READERS: dict[str, Callable[[object], list]] = {
    "PowerTransformer": _read_power,
    "FunctionTransformer": _read_function,
}


def as_scaler(scaler, role: str) -> Affine | Scaling | None:
    """Accept ``None``, an ``Affine``, a ``Scaling`` or a fitted sklearn scaler for ``role`` (an
    argument name): affine ones become an ``Affine``, those with a log or power step a
    ``Scaling``; ours are copied, so that the caller's later edits never reach a surrogate."""
    if scaler is None:
        return None
    if isinstance(scaler, (Affine, Scaling, Warp)):  # a copy: the caller's edits stay theirs
        scaler = copy.deepcopy(scaler)
        return Scaling([scaler]) if isinstance(scaler, Warp) else scaler
    if isinstance(scaler, type):
        made = "Affine.fit(data) or Affine(shift, scale)" if scaler is Affine else None
        raise TypeError(
            f"{role} is the class {scaler.__name__}, not a fitted instance of it; pass "
            f"{made or scaler.__name__ + '().fit(data)'}."
        )
    if role.endswith("output_scaler"):
        scaler = _unclipped(scaler)
    try:
        return Affine.from_sklearn(scaler)
    except TypeError as err:
        affine_error = err
    try:
        read = Scaling.from_sklearn(scaler)
    except TypeError as err:
        names = {
            type(scaler).__name__,
            *(type(e).__name__ for _, e in getattr(scaler, "steps", ())),
        }
        why = err if names & set(_READERS) else affine_error
        raise TypeError(f"{role}: {why}") from None
    steps = read.steps
    return steps[0] if len(steps) == 1 and isinstance(steps[0], Affine) else read  # (identities)


def _unclipped(scaler):
    """``scaler`` with its MinMaxScaler steps read as not clipping: ``clip=True`` acts in
    ``transform`` only, and an output scaler is applied by its ``inverse_transform`` (a copy:
    the caller's scaler stays as it is)."""

    def minmax(s) -> list:
        parts = [s, *(step for _, step in getattr(s, "steps", ()))]
        return [p for p in parts if type(p).__name__ == "MinMaxScaler"]

    if not any(getattr(p, "clip", False) is True for p in minmax(scaler)):
        return scaler
    scaler = copy.deepcopy(scaler)
    for p in minmax(scaler):
        p.clip = False
    return scaler


def scaler_from_dict(d: dict) -> Affine | Scaling:
    """An ``Affine`` or ``Scaling`` from its ``to_dict`` (a saved file's metadata)."""
    return Scaling.from_dict(d) if "steps" in d else Affine.from_dict(d)


class ScalingMap(nn.Module):
    """The torch form of a :class:`Scaling`: ``forward`` is its transform, ``inverse`` its
    inverse, as plain aten operations on constants held as buffers."""

    def __init__(self, scaling: Scaling) -> None:
        super().__init__()
        self.scaling = scaling  # (the numpy form, for probes)
        self.plan = []  # (kind, {name in _warp: buffer name or None})
        for i, s in enumerate(scaling.steps):
            consts = (
                {"shift": s.shift, "scale": s.scale} if isinstance(s, Affine) else s.constants()
            )
            names = {}
            for key, val in consts.items():
                names[key] = None if val is None else f"s{i}_{key}"
                if val is not None:
                    self.register_buffer(names[key], torch.tensor(np.asarray(val, np.float64)))
            self.plan.append(("affine" if isinstance(s, Affine) else s.kind, names))

    def _step(self, x: torch.Tensor, kind: str, names: dict, inverse: bool) -> torch.Tensor:
        c = {k: None if n is None else getattr(self, n) for k, n in names.items()}
        if kind == "affine":
            return x * c["scale"] + c["shift"] if inverse else (x - c["shift"]) / c["scale"]
        return (_unwarp if inverse else _warp)(x, kind, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for kind, names in self.plan:
            x = self._step(x, kind, names, inverse=False)
        return x

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for kind, names in reversed(self.plan):
            z = self._step(z, kind, names, inverse=True)
        return z
