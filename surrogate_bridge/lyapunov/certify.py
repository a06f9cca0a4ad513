"""A certificate: the Lyapunov conditions *proven* on a region, box by box.

Interval forward-mode bounds (``intervals.py``) of V, grad V and f over a box give bounds of
both margins there; a box whose lower bounds are positive is proven, one that lies inside the
excluded ball or (with ``level``) wholly above the level set needs nothing, and any other box is
split in two along its widest side (branch and bound) until it is proven or smaller than
``min_width``. Every box is proven exactly when the conditions hold everywhere in the region,
up to float64 rounding (the bounds are not rounded outward). Small smooth nets in low dimension:
the number of boxes grows like (width / min_width)^n.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..convert import with_grad
from ..intervals import IntervalProgram, box_r2, interval_mul
from ..physical import ExportError
from ..surrogate import Surrogate
from .conditions import Conditions, count, settings

__all__ = ["Certificate", "certify"]

_CHUNK = 8192  # boxes bounded per pass


@dataclass
class Certificate:
    """What :func:`certify` proved. ``proven``: every box of the region was proven (the
    conditions hold on the whole region, up to float64 rounding). ``unresolved`` (k, 2, n):
    boxes (lower and upper corners) that reached ``min_width`` unproven, or were left when
    ``max_boxes`` ran out; a counterexample, if any, lies in one of them."""

    proven: bool
    level: float | None
    boxes: int
    unresolved: np.ndarray
    seconds: float

    def __repr__(self) -> str:
        return (
            f"Certificate(proven={self.proven}, level={self.level}, {self.boxes} boxes, "
            f"{len(self.unresolved)} unresolved, {self.seconds:.3g} s)"
        )


@with_grad
def certify(
    V: Surrogate,
    f,
    bounds,
    *,
    level: float | None = None,
    equilibrium=None,
    exclude_radius: float | None = None,
    decay: float = 0.0,
    min_width: float | None = None,
    max_boxes: int = 2_000_000,
) -> Certificate:
    """Prove ``V(x) > V(x*)`` and ``grad V(x) . f(x) < -decay |x - x*|^2`` on the box (and, with
    ``level``, its part where ``V <= level``), outside the ball of radius ``exclude_radius``.

    Sound up to float64 rounding, unlike :func:`falsify`: ``proven=True`` means that interval
    bounds of the exact derivatives hold the conditions on every box. V and f must be
    surrogates (or torch callables) whose graphs use operations with interval rules: linear
    layers and matrix products (``x @ P @ x``, ``A @ x.T``, einsum); every continuous
    elementwise function the numpy route knows (smooth activations, ReLU-type kinks, whose
    derivative bounds hold both one-sided slopes, so that a ReLU V is proven in Clarke's
    generalized sense; logs, powers, the math library); sums, means, products, quotients,
    views, transposes, indexing, concatenation, running sums, comparisons and ``where`` (so
    log and power input scalers too); maximum and amax; vector norms, softmax, layer norm, and
    whatever torch decomposes into these. The box must lie where V's input scaler is defined.

    Parameters
    ----------
    V, f, bounds, level, equilibrium, exclude_radius, decay
        As in :func:`falsify`.
    min_width : float, optional
        Boxes are split no finer than this; by default ``exclude_radius / 256``.
    max_boxes : int
        Boxes bounded in all before giving up (``proven=False``).

    Returns
    -------
    Certificate

    Examples
    --------
    >>> import torch, surrogate_bridge as sb
    >>> class Bowl(torch.nn.Module):
    ...     def forward(self, x):
    ...         return (x ** 2).sum(-1)
    >>> V = sb.Surrogate(Bowl(), n_in=2)
    >>> sb.lyapunov.certify(V, lambda x: -x + x ** 3, [(-2, 2), (-2, 2)], level=0.9).proven
    True
    >>> sb.lyapunov.certify(V, lambda x: -x + x ** 3, [(-2, 2), (-2, 2)], level=1.1).proven
    False
    """
    where = "lyapunov.certify"
    start = time.perf_counter()
    cond = Conditions(V, f, equilibrium, decay, where)
    lb, ub, radius = settings(V, bounds, exclude_radius, where)
    count(max_boxes, "max_boxes", where)
    min_width = radius / 256 if min_width is None else float(min_width)
    if not min_width > 0:
        raise ValueError(f"{where}: min_width must be > 0 (or an exclude_radius > 0).")
    probes = torch.as_tensor(lb + (ub - lb) * np.random.default_rng(0).uniform(size=(4, len(lb))))
    try:
        pv = IntervalProgram(V.export(one_point=True, dtype=torch.float64), probes)
        pf = IntervalProgram(cond.field.export(one_point=True, dtype=torch.float64), probes)
    except (ExportError, ValueError) as err:
        raise ValueError(
            f"{where}: cannot bound the model ({err}); falsify still applies."
        ) from err
    eq = torch.as_tensor(cond.eq)
    queue = [(torch.as_tensor(lb)[None], torch.as_tensor(ub)[None])]
    boxes, unresolved = 0, []
    while queue and boxes < max_boxes:
        lo, hi = (torch.cat(t) for t in zip(*queue, strict=True))
        queue = []
        for i in range(0, len(lo), _CHUNK):
            a, b = lo[i : i + _CHUNK], hi[i : i + _CHUNK]
            boxes += len(a)
            todo = ~_settled(pv, pf, a, b, eq, cond.v_eq, radius, level, cond.decay)
            a, b = a[todo], b[todo]
            width = b - a
            small = width.max(1).values <= min_width
            unresolved.append(torch.stack([a[small], b[small]], 1))
            a, b, width = a[~small], b[~small], width[~small]
            if len(a):
                queue.append(_split(a, b, width))
    for a, b in queue:  # not examined: max_boxes ran out
        unresolved.append(torch.stack([a, b], 1))
    boxes_left = torch.cat(unresolved) if unresolved else torch.zeros(0, 2, cond.n)
    return Certificate(
        proven=len(boxes_left) == 0,
        level=None if level is None else float(level),
        boxes=boxes,
        unresolved=boxes_left.numpy(),
        seconds=time.perf_counter() - start,
    )


def _settled(pv, pf, lo, hi, eq, v_eq, radius, level, decay) -> torch.Tensor:
    """Boxes needing no split: inside the ball, above the level, or both conditions proven."""
    far = box_r2(lo, hi, eq)
    v = pv(lo, hi)
    fx = pf(lo, hi)
    glo, ghi = v.dlo[:, 0, :], v.dhi[:, 0, :]
    vdot_hi = interval_mul(glo, ghi, fx.lo, fx.hi)[1].sum(-1)
    done = far <= radius**2
    if level is not None:
        done |= v.lo[:, 0] > level
    positive = v.lo[:, 0] - v_eq > 0
    decreasing = vdot_hi + decay * far < 0
    return done | (positive & decreasing)


def _split(lo, hi, width):
    """Each box halved along its widest side."""
    k = width.argmax(1)
    mid = (lo.gather(1, k[:, None]) + hi.gather(1, k[:, None])) / 2
    hi_left, lo_right = hi.clone(), lo.clone()
    hi_left.scatter_(1, k[:, None], mid)
    lo_right.scatter_(1, k[:, None], mid)
    return torch.cat([lo, lo_right]), torch.cat([hi_left, hi])
