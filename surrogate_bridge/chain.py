"""A numpy single-point route for layer chains: the hand-written forward and reverse pass that
a user would write for an MLP, read off the surrogate's exported one-point graph.

A *chain* is a graph in which every operation takes the previous operation's output and
constants only (weights, biases, scalers): linear layers, elementwise arithmetic with constants
(the scalers), views, and elementwise activations with known first and second derivatives
(``ACTIVATIONS``). Operations on constants alone are computed once, by torch itself (a weight's
transpose, say). Anything else (a residual connection, a product of two hidden tensors, an
operation without a rule here) raises :class:`ChainUnsupported`, and the other routes answer.

For steps ``h_s = phi_s(h_{s-1})`` with ``h_0 = x`` and ``y = h_L``:

- value and Jacobian: one forward pass and one reverse pass of the adjoints
  ``A_s = dy/dh_s`` (m rows);
- Hessian of output i: ``sum_s T_{s-1}^T diag(A_s[i] * phi_s'') T_{s-1}`` over the activations,
  where ``T_s = dh_s/dx`` is carried forward (n columns); the affine steps have no second
  derivative, so this sum is the whole Hessian;
- Hessian-vector product: a forward tangent and one reverse sweep (no n columns).

Every product is numpy's (BLAS), so a wide net costs what a hand-written numpy evaluation
costs; ``routes.MeasuredRoute`` keeps this route for a kind of request only where it measured
faster than the others and agreed with torch at the probe point.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import erf

__all__ = ["ACTIVATIONS", "ChainPointRoute", "ChainUnsupported", "read_chain"]

aten = torch.ops.aten
_SQRT2, _INV_SQRT2PI = math.sqrt(2.0), 1.0 / math.sqrt(2.0 * math.pi)


class ChainUnsupported(ValueError):
    """The exported graph is not a chain this route computes; the message says where."""


# elementwise activations: (h, *params) -> (value, first derivative, second derivative) ---------
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
    return f, d, np.where(pos, 0.0, neg * input_scale * input_scale * e)


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def _selu(h):
    return _elu(h, _SELU_ALPHA, _SELU_SCALE)


def _hardtanh(h, min_val=-1.0, max_val=1.0):
    inside = (h > min_val) & (h < max_val)
    return np.clip(h, min_val, max_val), inside.astype(np.float64), np.zeros_like(h)


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


def _tanh_first(h):
    t = np.tanh(h)
    return t, 1.0 - t * t


def _sigmoid_first(h):
    s = _logistic(h)
    return s, s * (1.0 - s)


# the cheaper value alone, and value with its first derivative alone, where a rule has them
_VALUES = {_tanh: np.tanh, _sigmoid: _logistic, _sin: np.sin, _cos: np.cos, _exp: np.exp}
_FIRST = {_tanh: _tanh_first, _sigmoid: _sigmoid_first}
ACTIVATIONS = {
    aten.tanh.default: _tanh,
    aten.sigmoid.default: _sigmoid,
    aten.softplus.default: _softplus,
    aten.silu.default: _silu,
    aten.gelu.default: _gelu,
    aten.elu.default: _elu,
    aten.selu.default: _selu,
    aten.hardtanh.default: _hardtanh,
    aten.relu.default: _relu,
    aten.leaky_relu.default: _leaky_relu,
    aten.sin.default: _sin,
    aten.cos.default: _cos,
    aten.exp.default: _exp,
}
_VIEWS = {
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.clone.default,
    aten.alias.default, aten.flatten.using_ints, aten.unsqueeze.default, aten.squeeze.dim,
    aten.squeeze.dims, aten.squeeze.default, aten.contiguous.default, aten.detach.default,
    aten.dropout.default,
}  # fmt: skip


# steps ------------------------------------------------------------------------------------------
class _Linear:
    """h -> W h + b."""

    def __init__(self, W: np.ndarray, b: np.ndarray | None) -> None:
        self.W, self.b = np.ascontiguousarray(W), b

    def __call__(self, h):
        z = self.W @ h
        return z if self.b is None else z + self.b

    def push(self, T, _):  # tangents (k, r) -> (k', r)
        return self.W @ T

    def pull(self, A, _):  # adjoints (m, k') -> (m, k)
        return A @ self.W


class _Scale:
    """Elementwise arithmetic with a constant c: h + c, h - c, c - h, h * c, h / c, computed as
    torch computes it; its derivative is the same for every h (a division stays a division)."""

    def __init__(self, op: str, c) -> None:
        self.op, self.c = op, c

    def __call__(self, h):
        op, c = self.op, self.c
        if op == "add":
            return h + c
        if op == "sub":
            return h - c
        if op == "rsub":
            return c - h
        return h * c if op == "mul" else h / c

    def pull(self, A, _):
        op = self.op
        if op in ("add", "sub"):
            return A
        if op == "rsub":
            return -A
        return A * self.c if op == "mul" else A / self.c

    def push(self, T, _):
        c = self.c if np.ndim(self.c) == 0 else self.c[:, None]
        op = self.op
        if op in ("add", "sub"):
            return T
        if op == "rsub":
            return -T
        return T * c if op == "mul" else T / c


class _Activation:
    """h -> sigma(h) elementwise, with sigma' and sigma'' (the only second derivatives)."""

    def __init__(self, fn, params: tuple, kwparams: dict) -> None:
        self.fn, self.params, self.kwparams = fn, params, kwparams
        plain = not params and not kwparams
        self.value = _VALUES.get(fn) if plain else None
        self._first = _FIRST.get(fn) if plain else None

    def __call__(self, h):
        if self.value is not None:
            return self.value(h)
        return self.fn(h, *self.params, **self.kwparams)[0]

    def first(self, h):
        """(sigma, sigma')."""
        if self._first is not None:
            return self._first(h)
        return self.fn(h, *self.params, **self.kwparams)[:2]

    def derivatives(self, h):
        """(sigma, sigma', sigma'')."""
        return self.fn(h, *self.params, **self.kwparams)

    def push(self, T, d):
        return d[:, None] * T

    def pull(self, A, d):
        return A * d


# reading the graph ------------------------------------------------------------------------------
def read_chain(program, n: int, m: int) -> list:
    """The steps of a one-point ``torch.export`` program of n inputs and m outputs, if it is a
    chain (see the module's docstring); else :class:`ChainUnsupported` naming the operation."""
    state = {**program.state_dict, **program.constants}
    sig = program.graph_signature
    lifted = {
        **sig.inputs_to_parameters,
        **sig.inputs_to_buffers,
        **sig.inputs_to_lifted_tensor_constants,
    }
    consts: dict[str, object] = {}
    cur, k, steps = None, n, []
    for node in program.graph.nodes:
        if node.op == "placeholder":
            if node.name in lifted:
                consts[node.name] = state[lifted[node.name]].detach().to(torch.float64)
            elif cur is None:
                cur = node.name
            else:
                raise ChainUnsupported("more than one input")
        elif node.op == "call_function":
            inputs = [a.name for a in node.all_input_nodes]
            if all(name in consts for name in inputs):  # constants only: torch computes it once

                def value(a):
                    return consts[a.name] if isinstance(a, torch.fx.Node) else a

                args = torch.fx.node.map_aggregate(node.args, value)
                kwargs = torch.fx.node.map_aggregate(node.kwargs, value)
                consts[node.name] = node.target(*args, **kwargs)
                continue
            if inputs.count(cur) != 1 or any(a != cur and a not in consts for a in inputs):
                raise ChainUnsupported(f"{node.target} at {node.name} takes more than one hidden "
                                       "tensor (not a chain)")  # fmt: skip
            step, k = _step(node, cur, consts, k)
            if step is not None:
                steps.append(step)
            cur = node.name
        elif node.op == "output":
            outs = node.args[0]
            if len(outs) != 1 or not isinstance(outs[0], torch.fx.Node) or outs[0].name != cur:
                raise ChainUnsupported("the output is not the chain's last tensor")
    if k != m:
        raise ChainUnsupported(f"the chain ends with {k} values, the surrogate has {m} outputs")
    return steps


def _numel(node) -> int | None:
    val = node.meta.get("val")
    return int(val.numel()) if isinstance(val, torch.Tensor) else None


def _const(consts, a, k: int, where: str):
    """A constant operand as numpy: a float, or a (k,) vector broadcast along the chain's one."""
    t = consts[a.name] if isinstance(a, torch.fx.Node) else a
    if not isinstance(t, torch.Tensor):
        return float(t)
    if t.numel() == 1:
        return float(t.reshape(()).item())
    if t.numel() != k or (t.ndim > 1 and math.prod(t.shape[:-1]) != 1):
        raise ChainUnsupported(f"{where}: a constant of shape {tuple(t.shape)} on {k} values")
    return t.to(torch.float64).reshape(k).numpy().copy()


def _step(node, cur: str, consts, k: int):
    """(step or None for a view, the length after it)."""
    target, args, kw = node.target, node.args, node.kwargs
    where = f"{target} at {node.name}"
    out = _numel(node)

    def mine(a):
        return isinstance(a, torch.fx.Node) and a.name == cur

    if target in _VIEWS:
        if target is aten.dropout.default and (args[2] if len(args) > 2 else kw.get("train")):
            raise ChainUnsupported(f"{where}: dropout in training mode")
        if out != k:
            raise ChainUnsupported(f"{where}: changes the number of values")
        return None, k
    if target in ACTIVATIONS:
        if not mine(args[0]) or out != k:
            raise ChainUnsupported(f"{where}: not elementwise on the chain")
        params = tuple(a if isinstance(a, str) else float(a) for a in args[1:])
        kwparams = {key: a if isinstance(a, str) else float(a) for key, a in kw.items()}
        return _Activation(ACTIVATIONS[target], params, kwparams), k
    if target in (aten.linear.default, aten.addmm.default, aten.mm.default, aten.matmul.default):
        if target is aten.addmm.default:
            b, h, Wt = args[0], args[1], args[2]
            if kw.get("beta", 1) != 1 or kw.get("alpha", 1) != 1:
                raise ChainUnsupported(f"{where}: scaled addmm")
        elif target is aten.linear.default:
            h, Wt, b = args[0], None, args[2] if len(args) > 2 else None
        else:
            h, Wt, b = args[0], args[1], None
        if not mine(h):
            raise ChainUnsupported(f"{where}: the hidden tensor is not the left operand")
        shape = tuple(getattr(h.meta.get("val"), "shape", ()))
        if not shape or shape[-1] != k:  # a row: (2, 3) rows of 6 values are not one vector
            raise ChainUnsupported(f"{where}: a product over a hidden tensor of shape {shape}")
        W = consts[args[1].name] if Wt is None else consts[Wt.name].T
        if W.ndim != 2 or W.shape[1] != k or out != W.shape[0]:
            raise ChainUnsupported(f"{where}: weight of shape {tuple(W.shape)} on {k} values")
        bias = None if b is None else _const(consts, b, W.shape[0], where)
        if np.ndim(bias) == 0 and bias is not None:
            bias = np.full(W.shape[0], bias)
        return _Linear(W.to(torch.float64).numpy().copy(), bias), W.shape[0]
    ops = {aten.add.Tensor: "add", aten.add.Scalar: "add", aten.sub.Tensor: "sub",
           aten.sub.Scalar: "sub", aten.mul.Tensor: "mul", aten.mul.Scalar: "mul",
           aten.div.Tensor: "div", aten.div.Scalar: "div", aten.neg.default: "neg",
           aten.rsub.Scalar: "rsub"}  # fmt: skip
    op = ops.get(target)
    if op is None or out != k:
        raise ChainUnsupported(f"{where}: no numpy rule for this operation")
    if op == "neg":
        return _Scale("mul", -1.0), k
    if kw.get("alpha", 1) != 1 or kw.get("rounding_mode") is not None or len(args) > 2:
        raise ChainUnsupported(f"{where}: alpha or rounding mode")
    first = mine(args[0])
    c = _const(consts, args[1] if first else args[0], k, where)
    if op == "rsub":
        op = "sub" if not first else "rsub"
    elif not first:
        if op == "sub":
            op = "rsub"
        elif op == "div":
            raise ChainUnsupported(f"{where}: a constant divided by the hidden tensor")
    return _Scale(op, c), k


# the route ----------------------------------------------------------------------------------------
class _Kept:
    """One point's forward tape and adjoints (scalar output), for Hessian-vector products and
    the Hessian without another forward pass."""

    def __init__(self, route: ChainPointRoute, tape, adjoints) -> None:
        self.route, self.tape, self.adjoints = route, tape, adjoints

    def _second_order(self):
        """The tape with every activation's sigma'' (a value+gradient pass leaves them out)."""
        steps = self.route.steps
        self.tape = [
            (d, step.derivatives(pre)[2], pre) if pre is not None and dd is None else (d, dd, pre)
            for step, (d, dd, pre) in zip(steps, self.tape, strict=True)
        ]
        return self.tape

    def mv(self, p: np.ndarray) -> np.ndarray:
        """H p: the tangent of p carried forward, then one reverse sweep."""
        steps, tape = self.route.steps, self._second_order()
        t, u = np.asarray(p, dtype=np.float64), {}
        for s, (step, (d, dd, pre)) in enumerate(zip(steps, tape, strict=True)):
            if pre is not None:
                u[s] = self.adjoints[s][0] * dd * t
            t = step.push(t[:, None], d)[:, 0]
        r = None
        for s in range(len(steps) - 1, -1, -1):
            if r is not None:
                r = steps[s].pull(r[None], tape[s][0])[0]
            if s in u:
                r = u[s] if r is None else r + u[s]
        return np.zeros(self.route.n) if r is None else r

    def hessian(self) -> np.ndarray:
        return self.route._second(self._second_order(), self.adjoints, 1)[None]


class ChainPointRoute:
    """Single points through numpy: (n,) in, outputs with a leading point axis, as
    ``derivatives.TorchPointRoute``. Holds no state between calls (safe between threads)."""

    name = "numpy"

    def __init__(self, program, n: int, m: int) -> None:
        self.steps, self.n, self.m = read_chain(program, n, m), n, m
        self._eye = np.eye(m)

    def _forward(self, x, second: bool):
        """Value and the tape: per activation (sigma', sigma'' or None, its input)."""
        h, tape = np.asarray(x, dtype=np.float64), []
        for step in self.steps:
            if isinstance(step, _Activation):
                pre = h
                if second:
                    h, d, dd = step.derivatives(h)
                else:
                    (h, d), dd = step.first(h), None
                tape.append((d, dd, pre))
            else:
                tape.append((None, None, None))
                h = step(h)
        return h, tape

    def _reverse(self, tape, seed: np.ndarray):
        """Adjoints of every step's output (the last is ``seed``, (r, m)) and the input's."""
        A, adjoints = seed, [None] * len(self.steps)
        for s in range(len(self.steps) - 1, -1, -1):
            adjoints[s] = A
            A = self.steps[s].pull(A, tape[s][0])
        return A, adjoints

    def _second(self, tape, adjoints, r: int) -> np.ndarray:
        """``sum_s T^T diag(A_s[i] sigma_s'') T`` for each of the r rows of the adjoints."""
        H = np.zeros((r, self.n, self.n))
        T = np.eye(self.n)
        for step, (d, dd, pre), A in zip(self.steps, tape, adjoints, strict=True):
            if pre is not None:
                W = A * dd  # (r, k)
                for i in range(r):  # T^T diag(w) T as one BLAS product per row
                    H[i] += (T.T * W[i]) @ T
            T = step.push(T, d)
        return H

    def value(self, x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, dtype=np.float64)
        for step in self.steps:
            h = step(h)
        return h[None].copy()

    def value_jac(self, x: np.ndarray, keep_graph: bool = False):
        y, tape = self._forward(x, False)
        J, adjoints = self._reverse(tape, self._eye)
        kept = _Kept(self, tape, adjoints) if keep_graph and self.m == 1 else None
        return y[None].copy(), J[None], kept

    def hessian(self, x: np.ndarray):
        y, tape = self._forward(x, True)
        J, adjoints = self._reverse(tape, self._eye)
        return y[None].copy(), J[None], self._second(tape, adjoints, self.m)[None]

    def lagrangian_hessian(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        _, tape = self._forward(x, True)
        seed = np.asarray(v, dtype=np.float64).reshape(1, self.m)
        return self._second(tape, self._reverse(tape, seed)[1], 1)[0]
