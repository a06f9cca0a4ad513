"""Per-feature affine normalization ``z = (x - shift) / scale``, from sklearn or fitted here."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .convert import as_array

__all__ = ["FIT_KINDS", "Affine", "column_order"]

FIT_KINDS = ("minmax", "standard")  # what Affine.fit (and so sb.fit's string scalers) knows


def _vector(a, name: str) -> np.ndarray:
    return as_array(a, "Affine", name, (0, 1)).reshape(-1)


def _safe_scale(scale: np.ndarray) -> np.ndarray:
    """Constant features get scale 1, as sklearn's ``_handle_zeros_in_scale`` does."""
    scale = scale.copy()
    scale[scale < 10 * np.finfo(np.float64).eps] = 1.0
    return scale


class Affine:
    """Per-feature affine map ``z = (x - shift) / scale`` and its inverse ``x = z * scale + shift``.

    Parameters
    ----------
    shift, scale : array_like, shape (n_features,)
        float64 after conversion; ``scale`` must be non-zero.
    data_min, data_max : array_like, shape (n_features,), optional
        The training-data range, if known; it defines the surrogate's default domain.

    Examples
    --------
    >>> a = Affine(shift=[1.0, 0.0], scale=[2.0, 4.0])
    >>> a.transform([[3.0, 8.0]]).tolist()
    [[1.0, 2.0]]
    >>> a.inverse_transform([[1.0, 2.0]]).tolist()
    [[3.0, 8.0]]
    """

    def __init__(self, shift, scale, *, data_min=None, data_max=None) -> None:
        self.shift = _vector(shift, "shift")
        self.scale = _vector(scale, "scale")
        if self.shift.shape != self.scale.shape:
            raise ValueError(
                f"Affine: shift has {self.shift.size} features and scale {self.scale.size}; "
                "they must match."
            )
        if np.any(self.scale == 0):
            raise ValueError(
                f"Affine: scale has zero entries at {np.flatnonzero(self.scale == 0)}."
            )
        if (data_min is None) != (data_max is None):
            raise ValueError(
                "Affine: data_min and data_max describe the data range together; pass both or "
                "neither."
            )
        self.data_min = self.data_max = None
        if data_min is not None:
            lo, hi = _vector(data_min, "data_min"), _vector(data_max, "data_max")
            if lo.shape != self.shift.shape or hi.shape != self.shift.shape or np.any(lo > hi):
                raise ValueError(
                    f"Affine: data_min and data_max need {self.n_features} entries each with "
                    f"data_min <= data_max, got data_min={lo.tolist()}, data_max={hi.tolist()}."
                )
            self.data_min, self.data_max = lo, hi

    @property
    def n_features(self) -> int:
        return int(self.shift.size)

    def __repr__(self) -> str:
        return f"Affine(shift={self.shift.tolist()}, scale={self.scale.tolist()})"

    def transform(self, x) -> np.ndarray:
        """Physical -> normalized: ``(x - shift) / scale``."""
        return (np.asarray(x, dtype=np.float64) - self.shift) / self.scale

    def inverse_transform(self, z) -> np.ndarray:
        """Normalized -> physical: ``z * scale + shift``."""
        return np.asarray(z, dtype=np.float64) * self.scale + self.shift

    def to_dict(self) -> dict:
        d = {"shift": self.shift.tolist(), "scale": self.scale.tolist()}
        if self.data_min is not None:
            d["data_min"], d["data_max"] = self.data_min.tolist(), self.data_max.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Affine:
        """The inverse of :meth:`to_dict`: ``shift`` and ``scale``, and the data range if any."""
        missing = [k for k in ("shift", "scale") if k not in d]
        if missing:
            raise ValueError(
                f"Affine.from_dict: the dict has no {' or '.join(map(repr, missing))}; it needs "
                f"'shift' and 'scale' (and optionally 'data_min', 'data_max'), got {sorted(d)}."
            )
        return cls(d["shift"], d["scale"], data_min=d.get("data_min"), data_max=d.get("data_max"))

    def then(self, other: Affine) -> Affine:
        """This map followed by ``other``, as one: (((x - s1) / c1) - s2) / c2 is
        (x - (s1 + s2 c1)) / (c1 c2). The data range is this map's, if it recorded one.

        Examples
        --------
        >>> Affine([1.0], [2.0]).then(Affine([3.0], [4.0])).transform([[15.0]]).tolist()
        [[1.0]]
        """
        return Affine(self.shift + other.shift * self.scale, self.scale * other.scale,
                      data_min=self.data_min, data_max=self.data_max)  # fmt: skip

    @classmethod
    def identity(cls, n_features: int) -> Affine:
        return cls(np.zeros(n_features), np.ones(n_features))

    @classmethod
    def fit(cls, X, kind: str = "minmax") -> Affine:
        """Fit to data ``X`` of shape (N, n_features): ``"minmax"`` maps the data range to [0, 1]
        (and records it as the domain), ``"standard"`` to zero mean and unit variance.

        Examples
        --------
        >>> Affine.fit([[0.0], [4.0]], kind="minmax").scale.tolist()
        [4.0]
        """
        X = as_array(X, "Affine.fit", "X", (1, 2))
        if X.ndim == 1:
            X = X[:, None]
        if X.shape[0] == 0:
            raise ValueError(f"Affine.fit: X must have shape (N, n_features), got {X.shape}.")
        if kind == "minmax":
            lo, hi = X.min(axis=0), X.max(axis=0)
            return cls(lo, _safe_scale(hi - lo), data_min=lo, data_max=hi)
        if kind == "standard":
            return cls(X.mean(axis=0), _safe_scale(X.std(axis=0)))
        raise ValueError(f"Affine.fit: kind={kind!r} is not supported; use one of {FIT_KINDS}.")

    @classmethod
    def from_sklearn(cls, scaler) -> Affine:
        """Read a fitted sklearn ``MinMaxScaler``, ``StandardScaler``, ``MaxAbsScaler`` or
        ``RobustScaler``, a ``Pipeline`` of them (composed into one Affine), or a
        ``ColumnTransformer`` of them that keeps each column in its place, from their fitted
        attributes (sklearn itself is not imported).

        Examples
        --------
        >>> from sklearn.preprocessing import StandardScaler
        >>> a = Affine.from_sklearn(StandardScaler().fit([[1.0], [3.0]]))
        >>> a.shift.tolist(), a.scale.tolist()
        ([2.0], [1.0])
        """
        for klass in type(scaler).__mro__:
            reader = _SKLEARN_READERS.get(klass.__name__)
            if reader is not None:
                break
        else:
            name = type(scaler).__name__
            if type(scaler).__module__.startswith("sklearn"):
                raise TypeError(
                    f"Affine.from_sklearn: {name} is not an affine per-feature scaler "
                    "(z = (x - shift) / scale), so it cannot be baked into the surrogate as one. "
                    "A Surrogate also takes a PowerTransformer, a FunctionTransformer of np.log, "
                    "np.log1p, np.exp, np.expm1, np.log10 or np.log2, and Pipelines of them "
                    "(sb.Scaling), and a PCA, IncrementalPCA or TruncatedSVD, and on the input "
                    "side a "
                    "PolynomialFeatures (layers around the model); for "
                    "anything else, write the transform as torch code inside the model (the "
                    "surrogate then differentiates through it), or scale with one of "
                    f"{sorted(_SKLEARN_READERS)}."
                )
            raise TypeError(
                f"Affine.from_sklearn: {name} is not supported; use one of "
                f"{sorted(_SKLEARN_READERS)}, an Affine, or None."
            )
        if not hasattr(scaler, "n_features_in_"):
            raise TypeError(
                f"Affine.from_sklearn: this {type(scaler).__name__} is not fitted; call "
                ".fit(X) on it first."
            )
        return reader(scaler)


def _read_minmax(s) -> Affine:
    if getattr(s, "clip", False):
        raise ValueError(
            "Affine.from_sklearn: MinMaxScaler(clip=True) clips its input, which makes the "
            "surrogate flat (zero derivative) outside the data range. Pass a copy that does "
            "not clip (s = copy.copy(scaler); s.clip = False: the same fitted range, no refit); "
            "the surrogate's domain still warns of points beyond it. (As an output scaler it "
            "is taken as it is: its inverse_transform, which the surrogate applies, never clips.)"
        )
    # sklearn: z = x * scale_ + min_  =>  shift = -min_ / scale_, scale = 1 / scale_
    return Affine(-s.min_ / s.scale_, 1.0 / s.scale_, data_min=s.data_min_, data_max=s.data_max_)


def _read_standard(s) -> Affine:
    n = s.n_features_in_
    mean = s.mean_ if getattr(s, "with_mean", True) and s.mean_ is not None else np.zeros(n)
    scale = s.scale_ if getattr(s, "with_std", True) and s.scale_ is not None else np.ones(n)
    return Affine(mean, scale)


def _read_maxabs(s) -> Affine:
    return Affine(np.zeros(s.n_features_in_), s.scale_)


def _read_robust(s) -> Affine:
    n = s.n_features_in_
    center = s.center_ if getattr(s, "center_", None) is not None else np.zeros(n)
    scale = s.scale_ if getattr(s, "scale_", None) is not None else np.ones(n)
    return Affine(center, scale)


def _read_pipeline(p) -> Affine:
    """Affine steps in sequence, composed into one (:meth:`Affine.then`)."""
    steps = [est for _, est in p.steps if est not in (None, "passthrough")]
    if not steps:
        raise TypeError("Affine.from_sklearn: the Pipeline has no steps to read.")
    parts = [Affine.from_sklearn(est) for est in steps]
    out = parts[0]
    for a in parts[1:]:
        out = out.then(a)
    return out


def _read_columns(ct) -> Affine:
    """A ColumnTransformer whose parts are affine scalers (or "passthrough") and that keeps
    every column in its place: each column's own part's map. One that reorders its columns is
    a permutation after the per-feature map (:func:`column_order`, which Surrogate and fit
    read); one that drops or repeats columns is refused, saying which."""
    affine, order = _columns(ct)
    if order != list(range(ct.n_features_in_)):
        raise TypeError(
            f"Affine.from_sklearn: the ColumnTransformer puts the columns in the order {order}, "
            f"not each in its place (0..{ct.n_features_in_ - 1}), which no per-feature Affine "
            "does; pass the ColumnTransformer itself to Surrogate or fit, which give the model "
            "its inputs in that order."
        )
    return affine


def column_order(scaler) -> tuple[Affine, list[int]] | None:
    """``(affine, order)`` for a fitted ColumnTransformer of affine parts that lists its columns
    out of place (or a Pipeline of one and affine per-feature scalers after it):
    ``scaler.transform(x) == affine.transform(x)[:, order]``, each column scaled in its place,
    then permuted. None for any other scaler (also one that keeps its columns in place:
    ``Affine.from_sklearn`` reads it).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.compose import ColumnTransformer
    >>> from sklearn.preprocessing import MinMaxScaler, StandardScaler
    >>> X = np.array([[0.0, 1.0, 10.0], [2.0, 3.0, 30.0]])
    >>> ct = ColumnTransformer([("s", StandardScaler(), [2]), ("m", MinMaxScaler(), [0, 1])])
    >>> affine, order = column_order(ct.fit(X))
    >>> order, np.allclose(affine.transform(X)[:, order], ct.transform(X))
    ([2, 0, 1], True)
    """
    if type(scaler).__name__ == "Pipeline":  # one first, then affine per-feature steps
        steps = [e for _, e in scaler.steps if e not in (None, "passthrough")]
        first = column_order(steps[0]) if steps else None
        if first is None:
            return None
        affine, order = first
        inverse = np.argsort(order)  # a later step's feature j is column order[j], in place
        for est in steps[1:]:
            try:
                a = Affine.from_sklearn(est)
            except TypeError:
                raise TypeError(
                    "Affine.from_sklearn: after a ColumnTransformer that lists its columns out "
                    f"of order, the Pipeline's {type(est).__name__} step must be an affine "
                    "per-feature scaler."
                ) from None
            affine = affine.then(Affine(a.shift[inverse], a.scale[inverse]))
        return affine, order
    if type(scaler).__name__ != "ColumnTransformer" or not hasattr(scaler, "transformers_"):
        return None
    affine, order = _columns(scaler)
    return None if order == list(range(scaler.n_features_in_)) else (affine, order)


def _columns(ct) -> tuple[Affine, list[int]]:
    """Each column's own part's map, in place, and the order in which ``ct`` lists them."""
    n = ct.n_features_in_
    names = list(getattr(ct, "feature_names_in_", []))
    shift, scale, lo, hi, order = np.zeros(n), np.ones(n), np.zeros(n), np.zeros(n), []
    ranged = True
    for _, part, cols in ct.transformers_:
        idx = np.arange(n)[cols] if not _named_columns(cols) else [names.index(c) for c in cols]
        idx = np.atleast_1d(np.asarray(idx, dtype=int))
        if len(idx) == 0:
            continue
        if part == "drop":
            raise TypeError(
                f"Affine.from_sklearn: the ColumnTransformer drops columns {idx.tolist()}, so "
                "the model sees fewer features than x has; drop them before scaling instead."
            )
        keep = _passthrough(part)
        _affine_part(part, idx)
        a = Affine(np.zeros(len(idx)), np.ones(len(idx))) if keep else Affine.from_sklearn(part)
        shift[idx], scale[idx] = a.shift, a.scale
        ranged = ranged and a.data_min is not None
        if a.data_min is not None:
            lo[idx], hi[idx] = a.data_min, a.data_max
        order.extend(idx.tolist())
    if sorted(order) != list(range(n)):
        twice = sorted({c for c in order if order.count(c) > 1})
        raise TypeError(
            f"Affine.from_sklearn: the ColumnTransformer scales columns {twice} more than "
            "once, so the model sees more features than x has; scale each column once."
        )
    affine = Affine(shift, scale, **({"data_min": lo, "data_max": hi} if ranged else {}))
    return affine, order


def _affine_part(part, idx) -> None:
    """A log or power step of some columns only is refused, saying where it can go instead."""
    names = [type(e).__name__ for e in (part, *(e for _, e in getattr(part, "steps", ())))]
    nonlinear = [n for n in names if n in ("PowerTransformer", "FunctionTransformer")]
    if nonlinear and not _passthrough(part):
        raise TypeError(
            f"Affine.from_sklearn: the ColumnTransformer applies a {nonlinear[0]} to columns "
            f"{idx.tolist()} only; a log or power step is read for all features at once (a "
            "Pipeline around the ColumnTransformer, whose parts are affine scalers), or write "
            "it as torch code inside the model."
        )


def _passthrough(part) -> bool:
    """ "passthrough", or the identity FunctionTransformer that sklearn fits in its place."""
    if isinstance(part, str):
        return part == "passthrough"
    identity = type(part).__name__ == "FunctionTransformer" and part.func is None
    return identity and part.inverse_func is None


def _named_columns(cols) -> bool:
    return isinstance(cols, str) or (
        isinstance(cols, (list, tuple)) and len(cols) > 0 and isinstance(cols[0], str)
    )


_SKLEARN_READERS: dict[str, Callable[[object], Affine]] = {
    "Pipeline": _read_pipeline,
    "ColumnTransformer": _read_columns,
    "MinMaxScaler": _read_minmax,
    "StandardScaler": _read_standard,
    "MaxAbsScaler": _read_maxabs,
    "RobustScaler": _read_robust,
}
