"""Elementwise functions for the numpy route (activations; powers, logarithms and roots; the
trigonometric and hyperbolic functions and their inverses; erf; logit): each rule maps a vector
``h`` (and the call's parameters) to the function's value, first and second derivative, computed as
torch computes the value (the same formula; only the math library's last bit may differ).

``ACTIVATIONS`` maps the aten operation to its rule. ``VALUES`` and ``FIRST`` hold cheaper
forms (the value alone; value and first derivative) where a rule has them, for the value and
value+gradient passes. An activation without a rule here leaves the numpy route unavailable for
that model (the other routes answer). ``aten.celu`` has no rule on purpose: torch's own
derivative of it takes 1 / alpha in single precision, and the routes must agree with torch;
an ``nn.CELU`` layer reaches this route as the ``elu`` call it makes (``rewrites.py``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import erf, erfc

__all__ = ["ACTIVATIONS", "BINARY", "FIRST", "VALUES"]

aten = torch.ops.aten
_SQRT2, _INV_SQRT2PI = math.sqrt(2.0), 1.0 / math.sqrt(2.0 * math.pi)
_TWO_OVER_SQRTPI, _LN2, _LN10 = 2.0 / math.sqrt(math.pi), math.log(2.0), math.log(10.0)


def _tanh(h):
    t = np.tanh(h)
    d = 1.0 - t * t
    return t, d, -2.0 * t * d


def _logistic(z):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def _sigmoid(h):
    s = _logistic(h)
    d = s * (1.0 - s)
    return s, d, d * (1.0 - 2.0 * s)


def _softplus(h, beta=1.0, threshold=20.0):
    z = h * beta
    linear = z > threshold
    with np.errstate(over="ignore"):
        f = np.where(linear, h, np.log1p(np.exp(np.minimum(z, threshold))) / beta)
    s = _logistic(z)
    return f, np.where(linear, 1.0, s), np.where(linear, 0.0, beta * s * (1.0 - s))


def _silu(h):
    s = _logistic(h)
    return h * s, s * (1.0 + h * (1.0 - s)), s * (1.0 - s) * (2.0 + h * (1.0 - 2.0 * s))


def _mish(h):
    """h tanh(softplus(h)); its derivatives as torch's own composite backward gives them."""
    with np.errstate(over="ignore"):
        t = np.tanh(np.log1p(np.exp(h)))
    s = _logistic(h)
    sech2 = 1.0 - t * t
    return h * t, t + h * s * sech2, sech2 * s * (2.0 + h * (1.0 - s) - 2.0 * h * s * t)


def _log_sigmoid(h):
    """log sigmoid(h) = min(h, 0) - log1p(exp(-|h|)), as torch computes it."""
    s = _logistic(h)
    return np.minimum(h, 0.0) - np.log1p(np.exp(-np.abs(h))), 1.0 - s, -s * (1.0 - s)


def _gelu(h, approximate="none"):
    if approximate == "tanh":
        k, c = math.sqrt(2.0 / math.pi), 0.044715
        u = k * (h + c * h**3)
        du, ddu = k * (1.0 + 3.0 * c * h * h), 6.0 * k * c * h
        t = np.tanh(u)
        sech2 = 1.0 - t * t
        f = 0.5 * h * (1.0 + t)
        d = 0.5 * (1.0 + t) + 0.5 * h * sech2 * du
        return f, d, sech2 * du + 0.5 * h * sech2 * (ddu - 2.0 * t * du * du)
    cdf = 0.5 * (1.0 + erf(h / _SQRT2))
    pdf = _INV_SQRT2PI * np.exp(-0.5 * h * h)
    return h * cdf, cdf + h * pdf, pdf * (2.0 - h * h)


def _elu(h, alpha=1.0, scale=1.0, input_scale=1.0):
    pos = h > 0
    e = np.exp(np.minimum(h, 0.0) * input_scale)
    neg = scale * alpha
    f = np.where(pos, h * scale, (e - 1.0) * neg)
    d = np.where(pos, scale, neg * input_scale * e)
    # torch: at 0 the negative side's first derivative, and the positive side's second (0)
    return f, d, np.where(h >= 0, 0.0, neg * input_scale * input_scale * e)


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def _selu(h):
    return _elu(h, _SELU_ALPHA, _SELU_SCALE)


def _hardtanh(h, min_val=-1.0, max_val=1.0):
    inside = (h > min_val) & (h < max_val)
    return np.clip(h, min_val, max_val), inside.astype(np.float64), np.zeros_like(h)


def _relu6(h):
    """F.relu6 (nn.ReLU6 reaches the graph as hardtanh): hardtanh on [0, 6], as torch forms it."""
    return _hardtanh(h, 0.0, 6.0)


def _clamp(h, lo=None, hi=None):
    """torch.clamp: its derivative is 1 on the closed interval [lo, hi] (hardtanh's, on the
    open one)."""
    f, inside = h, np.ones(h.shape, dtype=bool)
    if lo is not None:
        f, inside = np.maximum(f, lo), inside & (h >= lo)
    if hi is not None:
        f, inside = np.minimum(f, hi), inside & (h <= hi)
    return f + 0.0, inside.astype(np.float64), np.zeros_like(h)


def _relu(h):
    pos = h > 0
    return np.where(pos, h, 0.0), pos.astype(np.float64), np.zeros_like(h)


def _leaky_relu(h, negative_slope=0.01):
    pos = h > 0
    return np.where(pos, h, h * negative_slope), np.where(pos, 1.0, negative_slope), 0.0 * h


def _sin(h):
    s = np.sin(h)
    return s, np.cos(h), -s


def _cos(h):
    c = np.cos(h)
    return c, -np.sin(h), -c


def _exp(h):
    e = np.exp(h)
    return e, e, e


def _abs(h):
    return np.abs(h), np.sign(h), np.zeros_like(h)


def _hardswish(h):
    """h relu6(h + 3) / 6, with torch's derivative: 0 up to -3, h / 3 + 1/2 strictly inside
    (-3, 3), then 1 (the outer pieces' slopes at the ties, as torch's kernel gives them)."""
    f = h * np.minimum(np.maximum(h + 3.0, 0.0), 6.0) / 6.0
    d = np.where(h <= -3.0, 0.0, np.where(h < 3.0, h / 3.0 + 0.5, 1.0))
    return f, d, np.where((h > -3.0) & (h < 3.0), 1.0 / 3.0, 0.0)


def _softshrink(h, lambd=0.5):
    out = (h > lambd) | (h < -lambd)
    f = np.where(h > lambd, h - lambd, np.where(h < -lambd, h + lambd, 0.0))
    return f, out.astype(np.float64), np.zeros_like(h)


def _threshold(h, threshold, value):
    above = h > threshold
    return np.where(above, h, value), above.astype(np.float64), np.zeros_like(h)


def _rrelu(h, lower=1.0 / 8.0, upper=1.0 / 3.0, training=False):
    """rrelu in eval mode: a leaky ReLU of the mean slope (training mode is refused)."""
    return _leaky_relu(h, (lower + upper) / 2.0)


def _square(h):
    return h * h, 2.0 * h, np.full_like(h, 2.0)


def _log(h):
    with np.errstate(divide="ignore", invalid="ignore"):
        r = 1.0 / h
        return np.log(h), r, -r * r


def _sqrt(h):
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(h)
        d = 0.5 / s
        return s, d, -d / (2.0 * h)


def _rsqrt(h):
    with np.errstate(divide="ignore", invalid="ignore"):
        r = 1.0 / np.sqrt(h)
        d = -0.5 * r / h
        return r, d, -1.5 * d / h


def _reciprocal(h):
    with np.errstate(divide="ignore"):
        r = 1.0 / h
        return r, -r * r, 2.0 * r * r * r


# torch's pow kernel forms these exponents' values by their own formulas
_SPECIAL_POWERS = {2.0: _square, 0.5: _sqrt, -0.5: _rsqrt, -1.0: _reciprocal}


def _pow(h, p):
    """h ** p for a constant p; the special exponents by their own rules."""
    if p in _SPECIAL_POWERS:
        return _SPECIAL_POWERS[p](h)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if p == 3.0:
            hh = h * h
            return hh * h, 3.0 * hh, 6.0 * h
        if p in (0.0, 1.0):  # no h ** -1 of 0 times 0 at h = 0
            return (h + 0.0 if p else np.ones_like(h)), np.full_like(h, p), np.zeros_like(h)
        return np.power(h, p), p * np.power(h, p - 1.0), p * (p - 1.0) * np.power(h, p - 2.0)


def _base_power(h, base):
    """base ** h for a constant base > 0 (``10 ** h``: torch's pow(Scalar, Tensor)); torch's
    derivative is the value times ln(base)."""
    with np.errstate(over="ignore"):
        v = np.power(base, h)
    ln = math.log(base)
    return v, v * ln, v * ln * ln


def _logit(h, eps=None):
    """log(z / (1 - z)), z = h or h clamped to [eps, 1 - eps] (then flat outside it), as
    torch's logit; its slope is 1 / (h (1 - h)) inside, torch's formula."""
    z = h if eps is None else np.clip(h, eps, 1.0 - eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = 1.0 / (h * (1.0 - h))
        d, dd = r, (2.0 * h - 1.0) * r * r
        if eps is not None:
            outside = (h < eps) | (h > 1.0 - eps)
            d, dd = np.where(outside, 0.0, d), np.where(outside, 0.0, dd)
        return np.log(z / (1.0 - z)), d, dd


def _sinh(h):
    s = np.sinh(h)
    return s, np.cosh(h), s


def _cosh(h):
    c = np.cosh(h)
    return c, np.sinh(h), c


def _tan(h):
    t = np.tan(h)
    d = 1.0 + t * t
    return t, d, 2.0 * t * d


def _inverse_sine(sign):
    """asin (sign 1) and acos (sign -1): +-(1 - h^2)^(-1/2), as torch's derivative is formed."""

    def rule(h):
        with np.errstate(divide="ignore", invalid="ignore"):
            r = 1.0 / np.sqrt(1.0 - h * h)
            return (np.arcsin(h) if sign > 0 else np.arccos(h)), sign * r, sign * h * r * r * r

    return rule


def _atan(h):
    d = 1.0 / (h * h + 1.0)
    return np.arctan(h), d, -2.0 * h * d * d


def _asinh(h):
    r = 1.0 / np.sqrt(h * h + 1.0)
    return np.arcsinh(h), r, -h * r * r * r


def _acosh(h):
    with np.errstate(divide="ignore", invalid="ignore"):
        r = 1.0 / np.sqrt(h * h - 1.0)
        return np.arccosh(h), r, -h * r * r * r


def _atanh(h):
    with np.errstate(divide="ignore", invalid="ignore"):
        d = 1.0 / (1.0 - h * h)
        return np.arctanh(h), d, 2.0 * h * d * d


def _expm1(h):
    e = np.expm1(h)
    return e, e + 1.0, e + 1.0


def _exp2(h):
    e = np.exp2(h)
    return e, e * _LN2, e * _LN2 * _LN2


def _log1p(h):
    with np.errstate(divide="ignore", invalid="ignore"):
        r = 1.0 / (h + 1.0)
        return np.log1p(h), r, -r * r


def _log_base(log, ln_base):
    """log2 and log10: 1 / (h ln b), as torch's derivative is formed."""

    def rule(h):
        with np.errstate(divide="ignore", invalid="ignore"):
            d = 1.0 / (h * ln_base)
            return log(h), d, -d / h

    return rule


def _erf(h):
    d = _TWO_OVER_SQRTPI * np.exp(-(h * h))
    return erf(h), d, -2.0 * h * d


def _erfc(h):
    d = -_TWO_OVER_SQRTPI * np.exp(-(h * h))
    return erfc(h), d, -2.0 * h * d


def _hardshrink(h, lambd=0.5):
    out = (h > lambd) | (h < -lambd)
    return np.where(out, h, 0.0), out.astype(np.float64), np.zeros_like(h)


def _sign(h):
    return np.sign(h), np.zeros_like(h), np.zeros_like(h)


def _tanh_first(h):
    t = np.tanh(h)
    return t, 1.0 - t * t


def _sigmoid_first(h):
    s = _logistic(h)
    return s, s * (1.0 - s)


# the cheaper value alone, and value with its first derivative alone, where a rule has them
VALUES = {_tanh: np.tanh, _sigmoid: _logistic, _sin: np.sin, _cos: np.cos, _exp: np.exp}
FIRST = {_tanh: _tanh_first, _sigmoid: _sigmoid_first}
ACTIVATIONS = {
    aten.tanh.default: _tanh,
    aten.sigmoid.default: _sigmoid,
    aten.special_expit.default: _sigmoid,
    aten.softplus.default: _softplus,
    aten.silu.default: _silu,
    aten.mish.default: _mish,
    aten.log_sigmoid.default: _log_sigmoid,
    aten.gelu.default: _gelu,
    aten.elu.default: _elu,
    aten.selu.default: _selu,
    aten.hardtanh.default: _hardtanh,
    aten.relu6.default: _relu6,
    aten.relu.default: _relu,
    aten.leaky_relu.default: _leaky_relu,
    aten.sin.default: _sin,
    aten.cos.default: _cos,
    aten.exp.default: _exp,
    aten.abs.default: _abs,
    aten.clamp.default: _clamp,
    aten.clip.default: _clamp,
    aten.clamp_min.default: _clamp,
    aten.clamp_max.default: lambda h, hi: _clamp(h, None, hi),
    aten.hardswish.default: _hardswish,
    aten.softshrink.default: _softshrink,
    aten.threshold.default: _threshold,
    aten.rrelu.default: _rrelu,
    aten.pow.Tensor_Scalar: _pow,
    aten.square.default: _square,
    aten.log.default: _log,
    aten.sqrt.default: _sqrt,
    aten.reciprocal.default: _reciprocal,
    aten.rsqrt.default: _rsqrt,
    aten.sinh.default: _sinh,
    aten.cosh.default: _cosh,
    aten.tan.default: _tan,
    aten.asin.default: _inverse_sine(1),
    aten.acos.default: _inverse_sine(-1),
    aten.atan.default: _atan,
    aten.asinh.default: _asinh,
    aten.acosh.default: _acosh,
    aten.atanh.default: _atanh,
    aten.expm1.default: _expm1,
    aten.exp2.default: _exp2,
    aten.log1p.default: _log1p,
    aten.log2.default: _log_base(np.log2, _LN2),
    aten.log10.default: _log_base(np.log10, _LN10),
    aten.erf.default: _erf,
    aten.erfc.default: _erfc,
    aten.logit.default: _logit,
    aten.hardshrink.default: _hardshrink,
    aten.sign.default: _sign,
}


# functions of two rows: (value, (f_a, f_b), (f_aa, f_ab, f_bb)), as torch's derivatives take them
def _atan2(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        r = 1.0 / (a * a + b * b)
        rr = r * r
        return np.arctan2(a, b), (b * r, -a * r), (-2.0 * a * b * rr, (a * a - b * b) * rr,
                                                   2.0 * a * b * rr)  # fmt: skip


def _hypot(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.hypot(a, b)
        r = 1.0 / f
        r3 = r * r * r
        return f, (a * r, b * r), (b * b * r3, -a * b * r3, a * a * r3)


def _pow_tensor(a, b):
    """a ** b for two rows; torch's slopes: zero in a where b is 0, zero in b where a is 0 and
    b >= 0."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        f, below = np.power(a, b), np.power(a, b - 1.0)
        ln = np.log(a)
        in_b = ~((a == 0.0) & (b >= 0.0))
        fa = np.where(b == 0.0, 0.0, b * below)
        fb = np.where(in_b, f * ln, 0.0)
        faa = np.where(b == 0.0, 0.0, b * (b - 1.0) * np.power(a, b - 2.0))
        fab = below * (1.0 + b * ln)
        return f, (fa, fb), (faa, fab, np.where(in_b, f * ln * ln, 0.0))


def _xlogy(a, b):
    """a log(b), zero where a is 0 (torch's xlogy)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ln, r = np.log(b), 1.0 / b
        zero = a == 0.0
        f = np.where(zero, 0.0, a * ln)
        return f, (np.where(zero, 0.0, ln), a * r), (np.zeros_like(a), r, -a * r * r)


BINARY = {
    aten.atan2.default: _atan2,
    aten.hypot.default: _hypot,
    aten.pow.Tensor_Tensor: _pow_tensor,
    aten.xlogy.Tensor: _xlogy,
    aten.special_xlogy.default: _xlogy,
}
