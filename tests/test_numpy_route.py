"""The numpy single-point route for layer graphs (``numpy_route.py``): the same numbers as the
torch route (autograd) to 1e-12 relative over random widths, activations and scalers, and on
residual connections, concatenations and slices; the closed-form Hessian of a one-layer net;
graphs that are not layer graphs are refused by name, and "auto" then measures the others."""

import itertools
import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from problems import (
    SCALER_KINDS,
    Hand,
    assert_routes_agree,
    close,
    fitted_scalers,
    mlp,
    random_graphs,
    twins,
)
from torch import nn

import surrogate_bridge as sb
from surrogate_bridge.elementwise import ACTIVATIONS

ACTS = {
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "softplus-beta": lambda: nn.Softplus(beta=2.0, threshold=1.5),
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "gelu-tanh": lambda: nn.GELU(approximate="tanh"),
    "elu": lambda: nn.ELU(alpha=0.7),
    "selu": nn.SELU,
    "mish": nn.Mish,
    "logsigmoid": nn.LogSigmoid,
    "sin": None,  # a PINN's sine layer, below
}


class Sine(nn.Module):
    def forward(self, z):
        return torch.sin(z)


@st.composite
def mlps(draw):
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    widths = draw(st.lists(st.integers(1, 12), min_size=1, max_size=3))
    act = ACTS[draw(st.sampled_from(sorted(ACTS)))] or Sine
    seed = draw(st.integers(0, 1000))
    scalers, data_x = fitted_scalers(draw(st.sampled_from(SCALER_KINDS)), n_in, n_out, seed)
    return mlp([n_in, *widths, n_out], act, seed=seed), scalers, data_x[:3]


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(mlps())
def test_property_numpy_route_equals_the_torch_route(case):
    """Drawn points may saturate a unit (tanh 1 - 1e-6, say). Both routes then take its
    derivative as 1 - tanh^2 from tanh values that numpy's and torch's math libraries round
    differently in the last bit, so the derivatives agree to eps / (1 - tanh^2) there, not to
    eps: 1e-9 here; the fixed points of the other tests hold 1e-12."""
    net, (ins, outs), X = case
    num, ref = twins(net, ins, outs)
    assert num.point_route == "numpy"
    assert_routes_agree(num, ref, X, rel=1e-9)


@pytest.mark.parametrize("act", ["relu", "leaky", "hardtanh"])
def test_piecewise_linear_chains_agree_and_still_warn(act):
    layer = {"relu": nn.ReLU, "leaky": lambda: nn.LeakyReLU(0.1), "hardtanh": nn.Hardtanh}[act]
    net = mlp([3, 9, 7, 2], layer, seed=4)
    num, ref = twins(net, sb.Affine([0.5, -1, 2], [2, 3, 0.5]), None)
    X = np.random.default_rng(0).normal(size=(3, 3)) * 2
    with pytest.warns(sb.SmoothnessWarning):
        num.hess(X[0])
    with pytest.warns(sb.SmoothnessWarning):
        ref.hess(X[0])
    assert_routes_agree(num, ref, X)


def test_one_layer_hessian_in_closed_form():
    """y = w2 . tanh(W1 (x - s)/c + b1) + b2: H = A^T diag(w2 * tanh'') A with A = W1 / c."""
    net = mlp([3, 5, 1], nn.Tanh, seed=7)
    W1, b1, w2 = (p.detach().numpy() for p in list(net.parameters())[:3])
    s, c = np.array([1.0, -2.0, 0.5]), np.array([2.0, 0.5, 4.0])
    sur = sb.Surrogate(net, sb.Affine(s, c), point_route="numpy", extrapolation="ignore")
    x = np.array([0.3, -1.1, 2.0])
    A = W1 / c
    t = np.tanh(A @ x - A @ s + b1)
    H = A.T @ np.diag(w2[0] * -2 * t * (1 - t**2)) @ A
    np.testing.assert_allclose(sur.hess(x), H, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sur.grad(x), (w2[0] * (1 - t**2)) @ A, rtol=1e-12, atol=1e-14)


class Residual(nn.Module):
    """Two residual blocks with a skip over both, a concatenation of features and a split of
    the input by slices: every operation linear in the hidden tensors, or elementwise."""

    def __init__(self, n_out=1):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3).double(), nn.Linear(3, 3).double()
        self.c = nn.Linear(1, 2).double()
        self.d = nn.Linear(6, n_out).double()

    def forward(self, z):
        h = z + torch.tanh(self.a(z))
        h = h - nn.functional.silu(self.b(h)) + z
        side = torch.sin(self.c(z[:, 1:2]))
        features = torch.cat([h, side, h[:, :2] + z[:, ::2]], dim=-1)  # 7 values
        return self.d(features[:, 1:7])


@pytest.mark.parametrize("n_out", [1, 2])
def test_residual_connections_concatenations_and_slices(n_out):
    num, ref = twins(Residual(n_out), sb.Affine([0.5, -1, 2], [2, 3, 0.5]), None)
    assert num.point_route == "numpy"
    assert_routes_agree(num, ref, np.random.default_rng(2).normal(size=(3, 3)))


class CausalAttention(nn.Module):
    """Causal scaled dot-product attention over the features as tokens: torch's math
    decomposition guards rows that are masked whole with masks of several rows."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.qkv, self.out = nn.Linear(1, 6).double(), nn.Linear(2, 1).double()

    def forward(self, z):
        q, k, v = self.qkv(z[..., None]).chunk(3, -1)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(torch.tanh(y).mean(1))


class RunningProduct(nn.Module):
    def forward(self, z):
        return torch.cumprod(torch.tanh(z), -1)[:, -1:]


class VectorProduct(nn.Module):
    """A row times a constant vector (``h @ v``, as neuromancer's spectral map computes): one
    value, a linear layer of one row (the route once read the vector through ``.T``, which
    torch deprecates for one axis: a warning, an error under this suite's filters)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.a = nn.Linear(2, 5).double()
        self.register_buffer("v", torch.linspace(-1, 1, 5, dtype=torch.float64))

    def forward(self, z):
        return (torch.tanh(self.a(z)) @ self.v)[..., None]


def test_a_row_times_a_constant_vector():
    model = VectorProduct()
    num, ref = (sb.Surrogate(model, n_in=2, point_route=r) for r in ("numpy", "torch"))
    assert_routes_agree(num, ref, np.random.default_rng(4).normal(size=(4, 2)), rel=1e-12)


@pytest.mark.parametrize(
    "model",
    [RunningProduct(), CausalAttention()],
    ids=["cumprod", "causal-attention"],
)
def test_graphs_that_are_not_layer_graphs_are_refused_and_auto_measures_the_others(model):
    with pytest.raises(ValueError, match="not a layer graph"):
        sb.Surrogate(model, n_in=2, point_route="numpy")
    sur = sb.Surrogate(model, n_in=2)
    sur._engine.route.measure(np.array([0.3, 0.4]))
    assert "numpy route unavailable: not a layer graph" in sur.point_route_report["note"]
    assert "numpy" not in str(sur.point_route)
    ref = sb.Surrogate(model, n_in=2, point_route="torch")
    x = np.array([0.7, -0.2])
    assert close(sur.hess(x), ref.hess(x)) and close(sur.grad(x), ref.grad(x))


@pytest.mark.parametrize("act", ["mish", "logsigmoid", "softplus-beta"])
def test_smooth_rules_agree_far_into_their_tails(act):
    """Points whose pre-activations reach +-60: overflow guards and thresholds, not only the
    probe points' range."""
    net = mlp([2, 8, 8, 1], ACTS[act], seed=3)
    num, ref = twins(net, sb.Affine([0.0, 0.0], [0.02, 0.02]), None)
    assert num.point_route == "numpy"
    X = np.random.default_rng(5).normal(size=(4, 2))
    assert_routes_agree(num, ref, X, rel=1e-10)


def test_float32_surrogates_are_refused_by_name():
    with pytest.raises(ValueError, match="float64 on the CPU"):
        sb.Surrogate(mlp([2, 4, 1], seed=0), dtype=torch.float32, point_route="numpy")


def test_every_rule_is_exercised_by_a_test():
    """The rules here are the ones the tests above compare with torch."""
    names = {str(op).split(".")[1] for op in ACTIVATIONS}
    assert names == {"tanh", "sigmoid", "special_expit", "relu6", "softplus", "silu", "gelu",
                     "elu", "selu", "relu",
                     "leaky_relu", "hardtanh", "sin", "cos", "exp", "mish",
                     "log_sigmoid", "pow", "square", "log", "sqrt",
                     "reciprocal", "rsqrt", "abs", "hardswish", "softshrink", "threshold",
                     "rrelu", "clamp", "clamp_min", "clamp_max", "clip", *MATHS, "hardshrink",
                     "sign"}  # fmt: skip


# each function of torch's math library with its own rule, on a range where it is defined
MATHS = {
    "sinh": torch.sinh, "cosh": torch.cosh, "tan": lambda h: torch.tan(0.5 * torch.tanh(h)),
    "asin": lambda h: torch.asin(0.9 * torch.tanh(h)),
    "acos": lambda h: torch.acos(0.9 * torch.tanh(h)), "atan": torch.atan, "asinh": torch.asinh,
    "acosh": lambda h: torch.acosh(h * h + 1.2),
    "atanh": lambda h: torch.atanh(0.9 * torch.tanh(h)), "expm1": torch.expm1,
    "exp2": torch.exp2, "log1p": lambda h: torch.log1p(h * h), "erf": torch.erf,
    "erfc": torch.erfc, "log2": lambda h: torch.log2(h * h + 0.1),
    "log10": lambda h: torch.log10(h * h + 0.1),
    "logit": lambda h: torch.logit(0.8 * torch.sigmoid(h) + 0.1),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(MATHS))
def test_math_library_functions_agree_with_autograd(name):
    """A PINN's or a physics model's sinh, atan, erf, log1p ...: value, Jacobian, Hessians and
    Hessian-vector products as autograd of torch's own functions gives them."""
    net = Hand(MATHS[name], n_in=3, width=8, n_out=2, seed=2)
    num, ref = twins(net, SCALER3, sb.Affine([1.0, -1.0], [2.0, 0.5]))
    assert num.point_route == "numpy"
    assert_routes_agree(num, ref, np.random.default_rng(3).normal(size=(3, 3)))


class CosExp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 6).double(), nn.Linear(6, 1).double()

    def forward(self, z):
        return self.b(torch.exp(-torch.cos(self.a(z))))


def test_cos_exp_and_negation():
    num, ref = twins(CosExp(), sb.Affine([1.0, 2.0], [3.0, 4.0]), sb.Affine([5.0], [6.0]))
    assert_routes_agree(num, ref, np.random.default_rng(1).normal(size=(3, 2)))


def test_copies_rebuild_the_route():
    net = mlp([2, 8, 1], nn.Tanh, seed=0)
    sur = sb.Surrogate(net, point_route="numpy")
    x = np.array([0.2, -0.4])
    H = sur.hess(x)
    c = pickle.loads(pickle.dumps(sur))
    assert c.point_route == "numpy" and close(c.hess(x), H)


def test_one_export_serves_every_route(monkeypatch):
    from surrogate_bridge import physical

    calls, real = [], physical.export
    monkeypatch.setattr(physical, "export", lambda *a, **k: calls.append(1) or real(*a, **k))
    sur = sb.Surrogate(mlp([2, 8, 1], nn.Tanh, seed=0))
    sur._engine.route.measure(np.array([0.1, 0.2]))
    assert len(calls) == 1 and "us" in sur.point_route_report
    c = pickle.loads(pickle.dumps(sur))  # the capture is not carried: a copy exports again
    c._engine.route.measure(np.array([0.1, 0.2]))
    assert len(calls) == 2


def test_new_weights_reach_the_numpy_route():
    old, new = mlp([3, 8, 1], nn.SiLU, seed=0), mlp([3, 8, 1], nn.SiLU, seed=1)
    sur = sb.Surrogate(old, point_route="numpy")
    ref = sb.Surrogate(new, point_route="torch")
    x = np.array([0.3, -0.2, 0.5])
    assert not close(sur.hess(x), ref.hess(x))
    sb.update_weights(sur, new)
    assert sur.point_route == "numpy"
    assert close(sur.hess(x), ref.hess(x)) and close(sur.grad(x), ref.grad(x))


class WideResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(20, 20).double(), nn.Linear(20, 1).double()

    def forward(self, z):
        h = z + nn.functional.softplus(self.a(z))
        return self.b(torch.cat([h[:, :10] - torch.tanh(h[:, 10:]), z[:, 5:15]], dim=-1))


def normed(sizes, norm, act=nn.Tanh, seed=0):
    """An MLP with a normalization layer before each activation, its weights moved off their
    initial ones (1 and 0) so that every term of the rule counts."""
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [NORMS[norm](b), act()]
    net = nn.Sequential(*layers).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


SCALER3 = sb.Affine([0.5, -1, 2], [2, 3, 0.5])
NORMS = {
    "layer": nn.LayerNorm,
    "layer-eps": lambda k: nn.LayerNorm(k, eps=1e-3),
    "layer-plain": lambda k: nn.LayerNorm(k, elementwise_affine=False),
    "layer-no-bias": lambda k: nn.LayerNorm(k, bias=False),
    "rms": nn.RMSNorm,
    "rms-eps-plain": lambda k: nn.RMSNorm(k, eps=1e-4, elementwise_affine=False),
}


class FunctionalNorm(nn.Module):
    """F.layer_norm with its own eps in a residual block, F.rms_norm with a weight."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 6).double(), nn.Linear(6, 2).double()
        self.w = nn.Parameter(torch.linspace(0.5, 2.0, 6, dtype=torch.float64))

    def forward(self, z):
        h = self.a(z)
        h = h + torch.tanh(nn.functional.layer_norm(h, (6,), eps=0.1))
        return self.b(nn.functional.silu(nn.functional.rms_norm(h, (6,), self.w)))


@pytest.mark.parametrize("n_out", [1, 2])
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_layer_and_rms_norms_agree_with_autograd(norm, n_out):
    """LayerNorm and RMSNorm layers: the route's closed-form Jacobian and Hessian of a
    normalization (numpy_ops.Norm) against autograd of the user's model."""
    num, ref = twins(normed([3, 8, 6, n_out], norm, nn.SiLU, seed=1), SCALER3, None)
    assert num.point_route == "numpy"
    assert_routes_agree(num, ref, np.random.default_rng(2).normal(size=(3, 3)))


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(
    st.lists(st.integers(3, 12), min_size=1, max_size=2),
    st.sampled_from(sorted(NORMS)),
    st.sampled_from(["tanh", "softplus", "silu", "gelu"]),
    st.integers(1, 2),
    st.integers(0, 1000),
)
def test_property_normalized_nets_agree_with_autograd(widths, norm, act, n_out, seed):
    """Random widths (three values or more: a norm of one or two values is a constant up to
    eps, whose derivatives are rounding), norms, activations and weights."""
    net = normed([3, *widths, n_out], norm, ACTS[act], seed=seed)
    num, ref = twins(net, SCALER3, None)
    assert num.point_route == "numpy"
    X = np.random.default_rng(seed).normal(size=(2, 3))
    assert_routes_agree(num, ref, X, rel=1e-9)


def test_functional_norms_in_a_residual_block():
    num, ref = twins(FunctionalNorm(), SCALER3, sb.Affine([1.0, -1.0], [2.0, 0.5]))
    assert num.point_route == "numpy"
    assert_routes_agree(num, ref, np.random.default_rng(3).normal(size=(3, 3)))


@pytest.mark.parametrize("affine", [True, False])
def test_eval_mode_batch_norms_agree_with_autograd(affine):
    """BatchNorm1d with running statistics is a per-feature affine map in eval mode."""
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(8, affine=affine)
    net = nn.Sequential(nn.Linear(3, 8), bn, nn.Tanh(), nn.Linear(8, 2)).double()
    net.train()
    net(torch.randn(64, 3, dtype=torch.float64) * 3 + 1)  # running statistics away from 0, 1
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 2.0), bn.bias.uniform_(-1.0, 1.0)
    num, ref = twins(net.eval(), SCALER3, None)
    assert num.point_route == "numpy"
    assert_routes_agree(num, ref, np.random.default_rng(4).normal(size=(3, 3)))


class Algebra(nn.Module):
    """Products and quotients of hidden rows, powers, log, sqrt, reciprocal, sums and means:
    gates, a hand-written swish, rational and polynomial features."""

    def __init__(self, n_in=4, scalar=False):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(n_in, 8).double(), nn.Linear(n_in, 8).double()
        self.scalar = scalar

    def forward(self, z):
        h, g = self.a(z), self.b(z)
        terms = [
            (h * torch.sigmoid(g)).sum(-1),  # a gate
            (h * torch.sigmoid(h)).mean(-1),  # swish by hand
            (h / (1 + g**2)).sum(-1),
            (h.pow(3) * h).sum(dim=-1) + (h * h).mean(-1),
            torch.square(g).sum(-1) + torch.log(1 + g * g).mean(-1),
            torch.sqrt(2 + torch.sin(h)).sum(-1) + (1 / (2 + torch.cos(g))).sum(-1),
            ((g * g + 1) ** -0.5).sum(0).sum(-1) + ((h * h + 1) ** 0.75).sum(-1),
            torch.reciprocal(h * h + 1).sum(-1) - (g ** 1.0 + h ** 0.0).mean(-1),
            torch.rsqrt(g * g + 0.5).mean(-1),
        ]  # fmt: skip
        y = torch.stack(terms, -1)
        return y.sum(-1, keepdim=True) if self.scalar else y


class DeepONet(nn.Module):
    """A branch net of the parameters and a trunk net of the coordinates, joined by a dot
    product: the sum of an elementwise product of two hidden rows."""

    def __init__(self, n_param=17, n_coord=3, width=12):
        super().__init__()
        torch.manual_seed(1)
        self.n_param = n_param
        self.branch = mlp([n_param, width, width], nn.Tanh, seed=1)
        self.trunk = mlp([n_coord, width, width], nn.Tanh, seed=2)

    def forward(self, z):
        b, t = self.branch(z[:, : self.n_param]), torch.tanh(self.trunk(z[:, self.n_param :]))
        return (b * t).sum(-1, keepdim=True)


class Selections(nn.Module):
    """Inputs picked by a list, hidden values by a buffer (repeated positions) and by
    index_select, a negative position."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(2, 4).double()
        self.register_buffer("idx", torch.tensor([3, 0, 0, 1]))

    def forward(self, z):
        h = torch.tanh(self.a(z[:, [0, 2]]))
        g = h[:, self.idx] * torch.index_select(h, 1, self.idx) + h[..., [1, -2, 3, 3]]
        return torch.cat([g.sum(-1, keepdim=True), h[:, [2]]], -1)


def test_constant_index_selections_agree_with_autograd():
    num, ref = twins(Selections(), SCALER3, None)
    assert num.point_route == "numpy"
    assert_routes_agree(num, ref, np.random.default_rng(6).normal(size=(3, 3)))


BRANCHES = {
    "leaky-by-hand": lambda h: torch.where(h > 0, h, 0.1 * h),
    "elu-by-hand": lambda h: torch.where(h > 0, h, torch.expm1(h)),
    "relu-as-mask": lambda h: h * (h > 0),
    "mask-first": lambda h: (h < 0.2) * torch.tanh(h),
    "constant-branch": lambda h: torch.where(h <= 0.1, 2.0, h**3),
    "constant-vector": lambda h: torch.where(h >= 0, torch.linspace(-1, 1, 6).double(), h * h),
    "two-rows-compared": lambda h: torch.where(torch.sin(h) > torch.cos(h), h * h, torch.tanh(h)),
    "row-and-value": lambda h: torch.where(h > h.mean(-1, keepdim=True), torch.exp(h), h),
}


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
@pytest.mark.parametrize("n_out", [1, 2])
@pytest.mark.parametrize("name", sorted(BRANCHES))
def test_branch_selections_agree_with_autograd(name, n_out):
    """torch.where on a comparison of the row (a hand-written leaky ReLU or ELU), and a row
    times a mask: each branch's derivatives where it is taken, none through the mask."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 6), Elementwise(BRANCHES[name]), nn.Linear(6, n_out))
    num, ref = twins(net.double(), SCALER3, None)
    assert num.point_route == "numpy"
    assert_routes_agree(num, ref, np.random.default_rng(4).normal(size=(4, 3)) * 2)


def test_a_mask_used_otherwise_is_refused():
    """A mask summed (a count of active units) or negated is no selection this route knows."""
    for f in (lambda h: h + (h > 0).sum(-1, keepdim=True), lambda h: torch.where(~(h > 0), h, 0)):
        with pytest.raises(ValueError, match="not a layer graph"):
            sb.Surrogate(nn.Sequential(nn.Linear(2, 4), Elementwise(f)).double(),
                         point_route="numpy")  # fmt: skip


class Weighted(nn.Module):
    """A single value broadcast along a row in products, quotients and sums: a scalar gate, a
    softmax by hand, a share of a row's sum, a shift by one hidden value."""

    def __init__(self, n_in=3, scalar=False):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.g = nn.Linear(n_in, 5).double(), nn.Linear(n_in, 1).double()
        self.scalar = scalar

    def forward(self, z):
        h, g = torch.tanh(self.a(z)), torch.sigmoid(self.g(z))
        p = torch.exp(h)
        w = p / p.sum(-1, keepdim=True)
        y = torch.cat(
            [(g * h).sum(-1, keepdim=True), (h / (1 + g)).mean(-1, keepdim=True),
             (w * h).sum(-1, keepdim=True), g * g, h[:, :1] / h.sum(-1, keepdim=True),
             torch.tanh(g - h + h[:, 2:3]).sum(-1, keepdim=True)],
            -1,
        )  # fmt: skip
        return y.sum(-1, keepdim=True) if self.scalar else y


def test_a_single_value_broadcast_in_products_quotients_and_sums():
    num, ref = twins(Weighted(), SCALER3, None)
    assert num.point_route == "numpy"
    assert_routes_agree(num, ref, np.random.default_rng(7).normal(size=(3, 3)))


def test_products_quotients_powers_and_sums_agree_with_autograd():
    num, ref = twins(Algebra(), sb.Affine([0.5, -1, 2, 0], [2, 3, 0.5, 1]), None)
    assert num.point_route == "numpy" and ref.n_out == 9
    assert_routes_agree(num, ref, np.random.default_rng(5).normal(size=(3, 4)))


class Elementwise(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, h):
        return self.f(h)


class Clamp(nn.Module):
    def __init__(self, lo=None, hi=None):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, h):
        return torch.clamp(h, self.lo, self.hi)


LAYERS = {
    "softmax": lambda: nn.Softmax(-1),
    "log-softmax": lambda: nn.LogSoftmax(1),
    "softmin": lambda: nn.Softmin(-1),
    "glu": nn.GLU,
    "softsign": nn.Softsign,
    "alpha-dropout": lambda: nn.AlphaDropout(0.1),
    "prelu": nn.PReLU,
    "prelu-per-value": lambda: nn.PReLU(8),
    "rrelu": nn.RReLU,
    "hardswish": nn.Hardswish,
    "softshrink": lambda: nn.Softshrink(0.3),
    "threshold": lambda: nn.Threshold(0.1, 0.5),
    "clamp": lambda: Clamp(-0.5, 0.5),
    "clamp-min": lambda: Clamp(lo=0.1),
    "clamp-max": lambda: Clamp(hi=0.2),
    "hardshrink": lambda: nn.Hardshrink(0.3),
    "sign": lambda: Elementwise(torch.sign),
    "clip": lambda: Elementwise(lambda h: torch.clip(h, -0.5, 0.4)),
}


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
@pytest.mark.parametrize("n_out", [1, 2])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_standard_layers_agree_with_autograd(name, n_out):
    """torch.nn's remaining layers of one row: softmax-like and GLU in closed form, the
    piecewise ones (their Hessian is zero, and warned of) as elementwise rules."""
    torch.manual_seed(0)
    layer = LAYERS[name]()
    net = nn.Sequential(nn.Linear(3, 8), layer, nn.Linear(4 if name == "glu" else 8, n_out))
    if name.startswith("prelu"):
        with torch.no_grad():
            layer.weight.uniform_(0.1, 0.5)
    num, ref = twins(net.double(), SCALER3, None)
    assert num.point_route == "numpy"
    assert_routes_agree(num, ref, np.random.default_rng(8).normal(size=(3, 3)) * 2)


class Heads(nn.Module):
    """A softmax, a log-softmax and a GLU head side by side (their Hessians through the
    kept tape)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b = nn.Linear(20, 12).double(), nn.Linear(30, 1).double()

    def forward(self, z):
        h = self.a(z)
        parts = [torch.softmax(h, -1), torch.log_softmax(h, -1), nn.functional.glu(h, -1)]
        return self.b(torch.cat(parts, -1))


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
@pytest.mark.parametrize(
    "name",
    ["rms", "functional-norms", "softmax", "glu", "rrelu", "softshrink", "hardshrink", "logsumexp"],
)
def test_a_loaded_surrogate_keeps_the_numpy_route(name, tmp_path):
    """A saved file holds the graph lowered to plain operations (rms_norm to rsqrt and a mean,
    rrelu to leaky_relu, softshrink and hardshrink to a where on |h|): the numpy route reads
    that graph as well."""
    if name in LAYERS:
        torch.manual_seed(0)
        width = 4 if name == "glu" else 8
        model = nn.Sequential(nn.Linear(3, 8), LAYERS[name](), nn.Linear(width, 1)).double()
    elif name == "logsumexp":  # kept whole (its lowering would take a row's maximum)
        model = LogSumExpHeads()
    else:
        model = normed([3, 8, 1], "rms") if name == "rms" else FunctionalNorm()
    sur = sb.Surrogate(model, SCALER3)
    sb.save(sur, tmp_path / "s.sbz")
    back = sb.load(tmp_path / "s.sbz")
    x = np.array([0.3, -0.4, 1.2])
    back._engine.route.measure(x)
    report = back.point_route_report
    assert "unavailable" not in report.get("note", "") and "disagree" not in report
    assert all("numpy" in report["us"][kind] for kind in report["us"])
    assert close(back.hess(x), sur.hess(x), 1e-12) and close(back.jac(x), sur.jac(x), 1e-12)


class NormOverTwoAxes(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.norm = nn.Linear(2, 8).double(), nn.LayerNorm((2, 4)).double()

    def forward(self, z):
        return torch.tanh(self.norm(self.a(z).reshape(-1, 2, 4))).sum((-2, -1))[:, None]


def test_a_norm_over_more_than_the_row_is_refused():
    with pytest.raises(ValueError, match="not a layer graph"):
        sb.Surrogate(NormOverTwoAxes(), point_route="numpy")


def test_auto_measures_the_numpy_route_on_a_layer_norm_net():
    """Auto now builds, checks and times the numpy route for such nets (which route wins is
    the benchmark's to say, not a test's)."""
    sur = sb.Surrogate(normed([4, 32, 32, 1], "layer"))
    sur._engine.route.measure(np.linspace(-1.0, 1.0, 4))
    report = sur.point_route_report
    assert "unavailable" not in report.get("note", "") and "disagree" not in report
    assert all("numpy" in report["us"][kind] for kind in report["us"])


@pytest.mark.parametrize(
    "model",
    [mlp([20, 24, 1], nn.Softplus, seed=2), WideResidual(), normed([20, 24, 1], "layer"),
     normed([20, 24, 1], "rms", nn.Softplus), Algebra(20, scalar=True), DeepONet(),
     Weighted(20, scalar=True), Heads()],
    ids=["mlp", "residual", "layer-norm", "rms-norm", "algebra", "deeponet", "broadcast",
         "heads"],
)  # fmt: skip
def test_hessian_vector_products_from_the_kept_tape(model):
    """Past 16 inputs a Hessian-vector product comes from the point's kept tape (a forward
    tangent and one reverse sweep), not from a dense Hessian."""
    num, ref = twins(model, None, sb.Affine([1.0], [3.0]), n_in=20)
    X = np.random.default_rng(3).normal(size=(2, 20))
    P = np.random.default_rng(4).normal(size=(3, 20))
    for x in X:
        num.grad(x)  # keeps the tape
        passes = num.cache_info().passes
        for p in P:
            assert close(num.hessp(x, p), ref.hessp(x, p))
        assert num.cache_info().passes == passes  # no new forward pass
        num.cache_clear()
        assert close(num.hessp(x, P[0]), ref.hess(x) @ P[0])  # no tape kept: computes one
    assert_routes_agree(num, ref, X[:1])


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(random_graphs())
def test_property_random_layer_graphs_agree_with_autograd(case):
    """Random compositions of the route's operations (functions, products, quotients, masks
    and selections, norms, softmax, gathers, a broadcast single value), each step reading any
    earlier row: value, Jacobian, Hessians and Hessian-vector products as autograd gives them."""
    net, n_in = case
    num, ref = twins(net, None, None, n_in=n_in)
    assert num.point_route == "numpy"
    assert_routes_agree(num, ref, np.random.default_rng(0).normal(size=(2, n_in)), rel=1e-9)


class LogSumExpHeads(nn.Module):
    """A log-sum-exp head (a smooth convex max of affine pieces, the form of convex
    surrogates), one without keepdim, and a physics term that picks single values out of the
    input by ``z[:, i]`` and by ``unbind``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.a, self.b = nn.Linear(3, 12).double(), nn.Linear(3, 5).double()

    def forward(self, z):
        u, v, w = z.unbind(-1)
        physics = torch.tanh(z[:, 0]) * z[..., 2] + u * v * w
        soft = torch.logsumexp(self.b(z), dim=-1)
        return torch.cat([torch.logsumexp(self.a(z), -1, keepdim=True),
                          torch.stack([physics, soft], -1)], -1)  # fmt: skip


@pytest.mark.parametrize("scale", [1.0, 40.0], ids=["moderate", "large"])
def test_log_sum_exp_and_single_value_selections_agree_with_autograd(scale):
    """log-sum-exp's gradient is a softmax and its Hessian diag(p) - p p^T; at a large scale
    the maximum subtracted first keeps exp from overflowing, as in torch."""
    num, ref = twins(LogSumExpHeads(), None, None, n_in=3)
    assert num.point_route == "numpy"
    assert_routes_agree(num, ref, np.random.default_rng(6).normal(size=(3, 3)) * scale)


class PerValueClamps(nn.Module):
    """Physical bounds per value: torch.clamp with tensor bounds, both or one side, on the
    input itself (where a point can sit exactly on a bound) and on a hidden layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.a, self.b = nn.Linear(3, 3).double(), nn.Linear(12, 2).double()
        self.register_buffer("lo", torch.tensor([-0.5, 0.0, 0.2], dtype=torch.float64))
        self.register_buffer("hi", torch.tensor([0.5, 0.4, 1.0], dtype=torch.float64))

    def forward(self, z):
        h = torch.tanh(self.a(z))
        parts = [z.clamp(self.lo, self.hi), h.clamp(self.lo, self.hi), h.clamp(min=self.lo),
                 torch.clamp(h, max=self.hi)]  # fmt: skip
        return self.b(torch.tanh(torch.cat(parts, -1)))


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
def test_per_value_clamp_bounds_agree_with_autograd_also_on_a_bound():
    """Tensor bounds (aten.clamp.Tensor) read as per-value constants; at points on a lower or
    an upper bound, torch's slope (1 on the closed interval) is kept."""
    num, ref = twins(PerValueClamps(), None, None, n_in=3)
    assert num.point_route == "numpy"
    X = np.random.default_rng(9).normal(size=(3, 3))
    ties = np.array([[-0.5, 0.1, 1.0], [0.5, 0.0, 0.2]])
    assert_routes_agree(num, ref, np.vstack([X, ties]))


def test_unbind_along_an_axis_of_one_is_the_same_row():
    """``h[:, None, :].unbind(1)[0]`` is h itself: a view, with the row's own size."""
    f = lambda x: torch.tanh(x[:, None, :].unbind(1)[0] * 1.5).sum(-1, keepdim=True)  # noqa: E731
    num, ref = twins(f, None, None, n_in=3)
    assert num.point_route == "numpy"
    assert_routes_agree(num, ref, np.random.default_rng(2).normal(size=(2, 3)))


class Ensemble(nn.Module):
    """A deep ensemble of three tanh MLPs: their outputs stacked on a new axis (first, middle
    or last) and averaged or summed over it, as ensemble surrogates are written."""

    def __init__(self, how: str):
        super().__init__()
        torch.manual_seed(6)
        self.how = how
        self.members = nn.ModuleList(
            nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)) for _ in range(3)
        ).double()

    def forward(self, z):
        ys = [m(z) for m in self.members]
        if self.how == "mean(0)":
            return torch.stack(ys).mean(0)
        if self.how == "sum(1)":
            return torch.stack(ys, 1).sum(1)
        return torch.stack(ys, -1).mean(-1)  # "mean(-1)"


@pytest.mark.parametrize("how", ["mean(0)", "sum(1)", "mean(-1)"])
def test_a_deep_ensembles_mean_agrees_with_autograd(how):
    """Members' rows stacked and reduced over the stacking axis: the sum or mean of the rows
    (the stacked tensor of several rows is never formed)."""
    num, ref = twins(Ensemble(how), SCALER3, None)
    assert num.point_route == "numpy"
    assert_routes_agree(num, ref, np.random.default_rng(3).normal(size=(3, 3)))


def test_a_stack_read_otherwise_is_refused():
    """Stacked rows read by anything but a reduction over the stacking axis (here a spread
    over the members, and a sum over the features alone) leave the route."""
    for f in (lambda h: torch.stack([h, torch.tanh(h)]).std(0),
              lambda h: torch.stack([h, torch.tanh(h)]).sum(-1).T):  # fmt: skip
        with pytest.raises(ValueError, match="not a layer graph"):
            sb.Surrogate(f, n_in=3, point_route="numpy")


class Decades(nn.Module):
    """A quantity trained in decades, 10 ** net(z), and a decay 0.5 ** h (aten.pow.Scalar)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.a, self.b = nn.Linear(3, 6).double(), nn.Linear(6, 2).double()

    def forward(self, z):
        return 10 ** self.b(0.5 ** torch.tanh(self.a(z)))


def test_a_constant_to_a_hidden_power_agrees_with_autograd():
    """10 ** h and 0.5 ** h: the value times ln(base) as slope, as torch takes it."""
    num, ref = twins(Decades(), SCALER3, None)
    assert num.point_route == "numpy"
    assert_routes_agree(num, ref, np.random.default_rng(4).normal(size=(3, 3)))


class Rearranged(nn.Module):
    """A SwiGLU block (``h.chunk(2, -1)``), the parts of split and split_with_sizes, a monotone
    head's running sum of positive increments, a flip and a roll of the row, and constants
    shaped like a hidden row (zeros_like in a torch.where, ones_like, full_like, new_full)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(9)
        self.a, self.b = nn.Linear(3, 8).double(), nn.Linear(12, 2).double()

    def forward(self, z):
        h = self.a(z)
        g, u = h.chunk(2, -1)
        p, q = h.split([3, 5], -1)
        r, s = torch.split(h, 4, dim=-1)
        swiglu = nn.functional.silu(g) * u + r.flip(-1) * torch.roll(s, 1, -1)
        rising = torch.cumsum(nn.functional.softplus(q), -1) / torch.full_like(q, 4.0)
        cubic = torch.where(p > 0, p**3, torch.zeros_like(p)) + torch.ones_like(p)
        return self.b(torch.cat([swiglu, rising, cubic * p.new_full((3,), 0.5)], -1))


class Spreads(nn.Module):
    """Hand-written normalizations: a variance and standard deviations (corrections 0, 1 and
    2, with and without keepdim) and Euclidean norms (``torch.linalg.vector_norm``,
    ``h.norm``, ``F.normalize``)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(10)
        self.a, self.b = nn.Linear(3, 6).double(), nn.Linear(6, 2).double()

    def forward(self, z):
        h = torch.tanh(self.a(z))
        c = h - h.mean(-1, keepdim=True)
        m = c / torch.sqrt(h.var(-1, keepdim=True, unbiased=False) + 1e-5)
        m = m * h.std(-1)[:, None] + h.var(-1, correction=2, keepdim=True)
        n = nn.functional.normalize(h + 0.3, dim=-1) * torch.linalg.vector_norm(h, dim=-1)[:, None]
        return self.b(m + h / h.norm(dim=-1, keepdim=True) + n * h.std(-1, True, keepdim=True))


class Extremes(nn.Module):
    """maximum and minimum of two rows, of a row and a single value and of a row and a constant
    per value; amax, amin and max(dim) of a row; and the max of the row over every axis, which
    couples a batch's rows (each point then runs alone in torch)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(11)
        self.a, self.b = nn.Linear(3, 6).double(), nn.Linear(6, 2).double()
        self.register_buffer("floor", torch.linspace(-0.5, 0.5, 6, dtype=torch.float64))

    def forward(self, z):
        h = self.a(z)
        t = torch.tanh(h)
        u = torch.maximum(h, t**2) + torch.minimum(t, self.floor)
        v = torch.minimum(u, u.amax(-1, keepdim=True) - 0.5) - u.amin(-1, keepdim=True)
        return self.b(v * u.max(-1, keepdim=True).values + t / (1.0 + h.abs().max()))


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
@pytest.mark.parametrize("model", [Rearranged, Spreads, Extremes])
def test_parts_running_sums_spreads_and_extremes_agree_with_autograd(model):
    """Forms a hand-written surrogate uses besides layers: value, Jacobian, Hessians,
    Hessian-vector products and Lagrangian Hessians as autograd gives them."""
    num, ref = twins(model(), SCALER3, sb.Affine([1.0, -1.0], [2.0, 0.5]))
    assert num.point_route == "numpy"
    assert_routes_agree(num, ref, np.random.default_rng(5).normal(size=(3, 3)))


class Picks(nn.Module):
    """Values picked along the row: sorted either way, the top 3, the 2nd least, the median,
    the running maximum and minimum, mixed with a smooth activation."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(12)
        self.a, self.b = nn.Linear(3, 6).double(), nn.Linear(16, 2).double()

    def forward(self, z):
        h = self.a(z)
        t = torch.tanh(h)
        parts = [
            torch.sort(h, -1).values * t,
            torch.sort(t, descending=True).values[:, :2],
            torch.topk(h * h, 3).values,
            torch.kthvalue(t, 2, -1, keepdim=True).values,
            h.median(-1, keepdim=True).values ** 2,
            torch.cummax(h, -1).values[:, 3:] * torch.cummin(t, -1).values[:, 3:],
        ]
        return self.b(torch.cat(parts, -1))


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
def test_sorts_top_k_medians_and_running_extremes_agree_with_autograd():
    """Each value picked carries the derivatives of the input it holds: a gather at positions
    found from the values, with zero curvature of its own (the activations around it give the
    Hessian)."""
    num, ref = twins(Picks(), SCALER3, sb.Affine([1.0, -1.0], [2.0, 0.5]))
    assert num.point_route == "numpy"
    assert_routes_agree(num, ref, np.random.default_rng(6).normal(size=(4, 3)))

    def ranks(z):  # the positions themselves: integers found from x
        return (z * torch.sort(z, -1).indices.to(z.dtype)).sum(-1, keepdim=True)

    with pytest.raises(ValueError, match="the positions it picks"):
        sb.Surrogate(ranks, n_in=2, point_route="numpy")


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
def test_ties_share_or_take_the_derivative_as_torch_does():
    """At a tie, maximum and amax share the derivative evenly, max(dim) gives it to the first
    position, as torch's; minimum against a constant it meets shares it too; a sort, top-k and
    k-th value take the stable order's, cummax and cummin the later position's."""
    forms = [
        lambda z: torch.maximum(z, z.flip(-1)).sum(-1, keepdim=True),
        lambda z: torch.cat([z, z], -1).amax(-1, keepdim=True),
        lambda z: torch.cat([z, z], -1).max(-1, keepdim=True).values,
        lambda z: torch.minimum(z, torch.tensor([0.5, 0.25], dtype=z.dtype)).sum(-1)[:, None],
        # picks: the stable order, the later of equal running maxima (cummax's positions)
        lambda z: torch.sort(z, -1).values @ torch.tensor([[1.0], [3.0]], dtype=z.dtype),
        lambda z: torch.sort(z, -1, True).values @ torch.tensor([[1.0], [3.0]], dtype=z.dtype),
        lambda z: torch.topk(z, 1).values,
        lambda z: torch.kthvalue(z, 1, -1, keepdim=True).values,
        lambda z: torch.cummax(z, -1).values[:, 1:],
        lambda z: torch.cummin(z, -1).values[:, 1:],
    ]
    for f in forms:
        num, ref = twins(f, None, None, n_in=2)
        assert num.point_route == "numpy"
        for x in ([0.3, 0.3], [0.5, 0.25], [0.5, 0.1]):
            np.testing.assert_array_equal(num.jac(np.array(x)), ref.jac(np.array(x)))


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
def test_a_logit_with_eps_is_flat_outside_its_bounds_as_torchs():
    """torch.logit(p, eps): the clamp of p to [eps, 1 - eps] inside, so a zero slope (and
    curvature) where p is outside; points on both pieces."""

    def squashed(h):
        return 0.9 * torch.sigmoid(3.0 * h) + 0.05

    net = Hand(lambda h: torch.logit(squashed(h), eps=0.2), n_in=3, width=8, seed=4)
    num, ref = twins(net, SCALER3, None)
    assert num.point_route == "numpy"
    X = np.random.default_rng(6).normal(size=(4, 3))
    h = squashed(net.a(torch.as_tensor(SCALER3.transform(X))))
    assert ((h < 0.2) | (h > 0.8)).any() and ((h > 0.2) & (h < 0.8)).any()  # both pieces met
    assert_routes_agree(num, ref, X)


def test_spreads_and_norms_at_zero_as_torchs():
    """At a zero spread (equal values) a standard deviation's gradient and Hessian are zero;
    at a zero row a norm's gradient is zero and its Hessian NaN (no curvature is defined
    there): the numpy route answers what torch answers, NaN included."""
    for f in (lambda z: torch.linalg.vector_norm(z, dim=-1, keepdim=True),
              lambda z: z.std(-1, keepdim=True), lambda z: z.var(-1, keepdim=True)):  # fmt: skip
        num, ref = twins(f, None, None, n_in=2)
        assert num.point_route == "numpy"
        for x in (np.zeros(2), np.array([0.3, 0.3])):
            for name in ("grad", "hess"):
                got, want = getattr(num, name)(x), getattr(ref, name)(x)
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)  # NaN as NaN


_C6 = torch.linspace(0.5, 1.5, 6, dtype=torch.float64)
# functions of two rows: of two hidden rows, of a row and a constant (either side), of a row and
# a single value that broadcasts along it
TWO_ROWS = {
    "atan2": lambda h: (torch.atan2(h, torch.tanh(h) + 1.5) + torch.atan2(h, _C6)
                        + torch.atan2(_C6, h) + torch.atan2(h, h.sum(-1, keepdim=True) + 3)),
    "hypot": lambda h: torch.hypot(h, torch.ones_like(h)) + torch.hypot(torch.sin(h), h),
    "pow": lambda h: (torch.pow(torch.sigmoid(h) + 0.5, torch.tanh(h)) + torch.pow(_C6, h)
                      + torch.pow(torch.sigmoid(h) + 0.5, _C6)
                      + torch.pow(torch.sigmoid(h) + 0.5, torch.tanh(h).sum(-1, keepdim=True))),
    "xlogy": lambda h: (torch.special.xlogy(h, torch.sigmoid(h)) + torch.xlogy(_C6, h * h)
                        + torch.xlogy(torch.sigmoid(h), torch.sigmoid(h))),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(TWO_ROWS))
def test_functions_of_two_rows_agree_with_autograd(name):
    """atan2, hypot, pow and xlogy of two rows (``numpy_ops.Binary``): the cross second
    derivatives included, as autograd of torch's own functions gives them."""
    net = Hand(TWO_ROWS[name], n_in=3, width=6, n_out=2, seed=3)
    num, ref = twins(net, SCALER3, sb.Affine([1.0, -1.0], [2.0, 0.5]))
    assert num.point_route == "numpy"
    assert_routes_agree(num, ref, np.random.default_rng(7).normal(size=(3, 3)))


class Decomposed(nn.Module):
    """Operations no rule of the route reads, which reach it as torch's own decompositions of
    them: lerp (its weight on either side of 1/2, a choice on a constant mask), addcmul,
    addcdiv and the product of a row; and a torch.where on a constant mask."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(12)
        self.a, self.b = nn.Linear(3, 6).double(), nn.Linear(6, 2).double()
        self.register_buffer("even", torch.arange(6) % 2 == 0)

    def forward(self, z):
        h = self.a(z)
        t = torch.tanh(h)
        u = torch.lerp(h, t, 0.3) + torch.lerp(t, h, 0.8) + torch.addcmul(h, h, t, value=0.5)
        u = u + torch.addcdiv(t, h, 1.0 + t * t, value=2.0)
        return self.b(u * t.prod(-1, keepdim=True) + torch.where(self.even, u, t))


def test_operations_without_a_rule_reach_the_route_decomposed():
    num, ref = twins(Decomposed(), SCALER3, sb.Affine([1.0, -1.0], [2.0, 0.5]))
    assert num.point_route == "numpy"
    assert_routes_agree(num, ref, np.random.default_rng(8).normal(size=(3, 3)))
