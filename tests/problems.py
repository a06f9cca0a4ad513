"""Test problems that know their exact answers, and small training helpers."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import torch
from hypothesis import strategies as st

# (imported here, not at a strategy's first draw: the first import of sklearn touches the
# random module, which hypothesis forbids inside a strategy)
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from torch import nn

import surrogate_bridge as sb

# the seed problem: a real user's Lyapunov matrix
P_SEED = np.array([[20.1892, -26.6218], [-26.6218, 38.0375]])


class Quadratic(nn.Module):
    """z^T P z (+ c) on normalized inputs: exact first and second derivatives known."""

    def __init__(self, P, c: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("P", torch.as_tensor(np.asarray(P, dtype=np.float64)))
        self.c = c

    def forward(self, z):
        return ((z @ self.P) * z).sum(-1, keepdim=True) + self.c


class Linear(nn.Module):
    """z @ A^T + b: a parameter-free affine map (buffers only)."""

    def __init__(self, A, b) -> None:
        super().__init__()
        self.register_buffer("A", torch.as_tensor(np.asarray(A, dtype=np.float64)))
        self.register_buffer("b", torch.as_tensor(np.asarray(b, dtype=np.float64)))

    def forward(self, z):
        return z @ self.A.T + self.b


class SinSum(nn.Module):
    """Separable sum_j sin(z_j) and its outputs [sum sin, sum z^2]."""

    def forward(self, z):
        return torch.stack([torch.sin(z).sum(-1), (z**2).sum(-1)], -1)


def mlp(sizes, act=nn.Tanh, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers).to(dtype)


def fit_full_batch(net, Z, T, adam_steps=300, lbfgs_steps=300, lr=1e-2):
    """Fit ``net`` on normalized data (Z, T) in float64: Adam, then L-BFGS to polish."""
    Z = torch.as_tensor(Z, dtype=torch.float64)
    T = torch.as_tensor(T, dtype=torch.float64)
    net = net.double()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(adam_steps):
        opt.zero_grad()
        loss = ((net(Z) - T) ** 2).mean()
        loss.backward()
        opt.step()
    lb = torch.optim.LBFGS(
        net.parameters(),
        max_iter=lbfgs_steps,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
    )

    def closure():
        lb.zero_grad()
        loss = ((net(Z) - T) ** 2).mean()
        loss.backward()
        return loss

    lb.step(closure)
    return net


IN_SCALER = dict(shift=[0.7, -1.3], scale=[2.5, 0.4])
OUT_SCALER = dict(shift=[5.0], scale=[30.0])


class ScaledQuadratic(nn.Module):
    """In normalized units, the model whose physical function is exactly x^T P x behind the
    given input/output scalers: model(z) = ((z*c + s)^T P (z*c + s) - ys) / yc."""

    def __init__(self, P, in_shift, in_scale, out_shift, out_scale) -> None:
        super().__init__()
        for name, v in dict(P=P, s=in_shift, c=in_scale, ys=out_shift, yc=out_scale).items():
            self.register_buffer(name, torch.as_tensor(np.asarray(v, dtype=np.float64)))

    def forward(self, z):
        x = z * self.c + self.s
        return (((x @ self.P) * x).sum(-1, keepdim=True) - self.ys) / self.yc


def scaled_quadratic_surrogate(P, **kw):
    """sb.Surrogate of exactly x^T P x, behind non-trivial scalers (any dimension)."""
    import surrogate_bridge as sb

    n = len(P)
    rng = np.random.default_rng(n)
    s, c = rng.normal(size=n), rng.uniform(0.3, 3.0, n)
    model = ScaledQuadratic(P, s, c, [5.0], [30.0])
    return sb.Surrogate(model, sb.Affine(s, c), sb.Affine([5.0], [30.0]), **kw)


def random_spd(n, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return Q @ np.diag(rng.uniform(0.5, 20.0, n)) @ Q.T


# models of every shape the surrogate must handle ------------------------------------------------
class FlatOutput(nn.Module):
    """(N, n) -> (N,): sum z^2, Hessian 2 I."""

    def forward(self, z):
        return (z**2).sum(-1)


class Unbatched(nn.Module):
    """Written for one point (n,) -> scalar: z0^2 + 3 sin(z1)."""

    def forward(self, z):
        return z[0] ** 2 + 3 * torch.sin(z[1])

    @staticmethod
    def hessian(x):
        return np.diag([2.0, -3 * np.sin(x[1])])


class MixesRows(nn.Module):
    """Uses batch statistics (a row's output depends on the others): evaluated point by point."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(2, 1).double()

    def forward(self, z):
        return self.lin(z) + (z - z.mean(0)).sum(-1, keepdim=True)


A_DYN = np.array([[-0.5, 2.0], [-2.0, -0.3]])
FIELD_SCALERS = dict(s=[1.0, -2.0], c=[3.0, 0.5], ys=[0.1, 0.2], yc=[4.0, 5.0])


class LinearField(nn.Module):
    """Normalized model of dx/dt = A x behind input scaler (s, c) and output scaler (ys, yc)."""

    def __init__(self, A=A_DYN, s=(0.0,), c=(1.0,), ys=(0.0,), yc=(1.0,)):
        super().__init__()
        for name, v in dict(A=A, s=s, c=c, ys=ys, yc=yc).items():
            self.register_buffer(name, torch.as_tensor(np.asarray(v, dtype=np.float64)))

    def forward(self, z):
        return (((z * self.c + self.s) @ self.A.T) - self.ys) / self.yc


def linear_field_surrogate(**kw):
    """sb.Surrogate of exactly dx/dt = A_DYN x behind non-trivial scalers."""
    import surrogate_bridge as sb

    f = FIELD_SCALERS
    model = LinearField(A_DYN, f["s"], f["c"], f["ys"], f["yc"])
    return sb.Surrogate(model, sb.Affine(f["s"], f["c"]), sb.Affine(f["ys"], f["yc"]), **kw)


class DecayInTime(nn.Module):
    """dx/dt = -(1 + t) x with inputs (t, x): x(t) = x0 exp(-(t + t^2 / 2))."""

    def forward(self, z):
        return -(1 + z[:, :1]) * z[:, 1:]


def counting(model):
    """The model plus a list that records every forward call's batch size (survives the
    surrogate's deep copy: hooks are shared by reference)."""
    calls = []
    model.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    return model, calls


SCALER_KINDS = ("none", "minmax", "standard", "affine")


def fitted_scalers(kind: str, n_in: int, n_out: int, seed: int):
    """(input scaler, output scaler) of one kind, fitted on random data of uneven scales, and
    the data's inputs (points at which to compare)."""
    import surrogate_bridge as sb

    rng = np.random.default_rng(seed)
    data_x = rng.normal(size=(20, n_in)) * rng.uniform(0.1, 10, n_in) + rng.normal(size=n_in)
    data_y = rng.normal(size=(20, n_out)) * rng.uniform(0.1, 10, n_out)
    if kind == "none":
        return (None, None), data_x
    if kind == "minmax":
        return (MinMaxScaler().fit(data_x), MinMaxScaler().fit(data_y)), data_x
    if kind == "standard":
        return (StandardScaler().fit(data_x), StandardScaler().fit(data_y)), data_x
    return (sb.Affine.fit(data_x, "standard"), sb.Affine.fit(data_y, "minmax")), data_x


# composite operations that torch.export keeps whole: the CasADi translator and saved files
# take them lowered to torch's own decompositions, or through a rule of their own
_CENTERS = torch.linspace(-1, 1, 32).reshape(4, 8)  # (centers, features)
_CHANNEL, _ROW = torch.tensor([[0.5], [-2.0]]), torch.linspace(-1, 1, 4)  # (2, 1), (4,)
_BILINEAR = torch.linspace(-1, 1, 32).reshape(2, 4, 4).sin()  # (out, in1, in2)
_PICKS, _ORDER = torch.tensor([[[3, 0, 0, 2], [1, 1, 3, 0]]]), torch.tensor([1, 0])
COMPOSITES = {
    "chunk": lambda h: torch.cat(h.chunk(2, -1)[::-1], -1),
    "split": lambda h: torch.cat(h.split([3, 5], -1)[::-1], -1),
    "flip": lambda h: h.flip(-1),
    "einsum": lambda h: torch.einsum("bi,bi->bi", h, torch.tanh(h)),
    "normalize": lambda h: nn.functional.normalize(h, dim=-1),
    "where": lambda h: torch.where(h > 0, h, 0.1 * h**3),
    "softmax": lambda h: nn.functional.softmax(h, -1),
    "log_softmax": lambda h: nn.functional.log_softmax(h, -1),
    "cumsum": lambda h: torch.cumsum(h, -1),
    "pad": lambda h: nn.functional.pad(h, (1, 2))[:, 3:] + nn.functional.pad(h, (2, 1))[:, :-3],
    "atan_sinh": lambda h: torch.atan(h) + torch.sinh(h / 3),
    "logsumexp": lambda h: h + torch.logsumexp(h, -1, keepdim=True),
    "amax": lambda h: h * h.amax(-1, keepdim=True),
    "reciprocal": lambda h: torch.reciprocal(h * h + 1),
    "glu": lambda h: nn.functional.glu(h, -1).repeat(1, 2),
    "index_select": lambda h: h.index_select(-1, torch.tensor([7, 0, 1, 2, 3, 4, 5, 6])),
    "lerp": lambda h: torch.lerp(h, torch.tanh(h), 0.3),
    "transposes": lambda h: h.t().t().permute(0, 1).transpose(-1, 1),
    # rank 3: the translator holds such a tensor as a flat row and reads it at positions
    "rbf": lambda h: torch.exp(-((h[:, None, :] - _CENTERS[None]) ** 2).sum(-1) / 8).repeat(1, 2),
    "permute3": lambda h: (h.reshape(-1, 2, 4).permute(0, 2, 1) * h.reshape(-1, 4, 2)).flatten(1),
    "per_channel": lambda h: (h.reshape(-1, 2, 4) * _CHANNEL + _ROW).reshape(-1, 8),
    "rearrange3": lambda h: torch.cat(
        [h.reshape(-1, 2, 4)[:, :, 1:3].flip(2), h.reshape(-1, 2, 4)[:, 1:, :2].expand(-1, 2, 2)], 2
    ).flatten(1),
    "bilinear": lambda h: nn.functional.bilinear(  # aten._trilinear: lowered by our rule
        h[:, :4], torch.tanh(h[:, 4:]), _BILINEAR.to(h.dtype)
    ).repeat(1, 4),
    # along one axis of a rank-3 tensor: the rank-2 rule on the matrix of its lines
    "softmax3": lambda h: nn.functional.softmax(h.reshape(-1, 2, 4), 1).reshape(-1, 8),
    "layer_norm3": lambda h: nn.functional.layer_norm(h.reshape(-1, 2, 4), (4,)).flatten(1),
    "amax_cumsum3": lambda h: (
        h * h.reshape(-1, 2, 4).amax(1).repeat(1, 2)
        + torch.cumsum(h.reshape(-1, 2, 4), 1).flatten(1)
    ),
    "amax_two_axes3": lambda h: (
        h * h.reshape(-1, 2, 4).amax((1, 2))[:, None]
        + torch.tanh(h).reshape(-1, 2, 2, 2).amin((1, 3)).repeat(1, 4)
    ),
    "matmul3": lambda h: (h.reshape(-1, 2, 4) @ _BILINEAR[0].to(h.dtype)).flatten(1),
    "bmm": lambda h: (
        torch.bmm(h.reshape(-1, 2, 4), torch.tanh(h).reshape(-1, 4, 2)).repeat(1, 1, 2).flatten(1)
    ),
    "unbind": lambda h: torch.stack(h.unbind(1)[::-1], 1) * torch.tanh(h).unbind(-1)[3][:, None],
    "chunk_unbind3": lambda h: torch.cat(
        [*h.reshape(-1, 2, 4).chunk(2, -1)[::-1], *torch.tanh(h).reshape(-1, 2, 2, 2).unbind(3)], 2
    ).flatten(1)[:, :8],
    # constants made in the forward (no rule of their own: torch computes them once)
    "triangular": lambda h: (
        h @ torch.tril(torch.ones(8, 8, dtype=h.dtype)) + torch.arange(8, dtype=h.dtype) / 8
    ),
    # torch has no decomposition of these: lowered by rules of ours (lowering.py)
    "layer_norm_by_hand": lambda h: (
        (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, keepdim=True, unbiased=False) + 1e-5)
        + h.std(-1, keepdim=True)
    ),
    "var_mean": lambda h: (
        h * torch.var_mean(h, -1, keepdim=True)[0] + torch.var_mean(h, -1)[1][:, None]
    ),
    "hypot": lambda h: torch.hypot(h, torch.tanh(h) + 0.5),
    "xlogy": lambda h: (  # an entropy's p log p, and x log y with x exactly 0 on a piece
        torch.special.xlogy(torch.sigmoid(h), torch.sigmoid(h))
        + torch.xlogy(torch.relu(h), 2.0 + torch.tanh(h))
    ),
    "base_power": lambda h: 10 ** (h / 4) + 0.5**h,  # aten.pow.Scalar: a quantity in decades
    "prod3": lambda h: h * torch.prod(torch.tanh(h).reshape(-1, 2, 4), -1).repeat(1, 4),
    "instance_norm": lambda h: nn.functional.instance_norm(
        h.reshape(-1, 2, 4), weight=_CHANNEL[:, 0].to(h.dtype), bias=_CHANNEL[:, 0].to(h.dtype) / 3
    ).reshape(-1, 8),
    # reads at positions the model holds: the translator reads them where torch's own
    # operation, applied to the positions, says (any rank)
    "gather3": lambda h: (
        torch.gather(h.reshape(-1, 2, 4), 2, _PICKS.expand(h.shape[0], -1, -1)).flatten(1)
        + h[:, [7, 0, 3, 3, 1, 2, -2, 5]]
        + h.reshape(-1, 2, 4)[:, [1, 0]][..., [3, 2, 1, 0]].flatten(1)
        * torch.take_along_dim(h.reshape(-1, 2, 4), _PICKS, 2).index_select(1, _ORDER).flatten(1)
    ),
    "interpolate": lambda h: (  # linear, bilinear, nearest: reads at positions, times weights
        nn.functional.interpolate(h.reshape(-1, 2, 4), size=6, mode="linear").flatten(1)[:, :8]
        + nn.functional.interpolate(h.reshape(-1, 1, 2, 4), (3, 5), mode="bilinear")[
            ..., 1:
        ].flatten(1)[:, 2:10]
        * nn.functional.interpolate(h.reshape(-1, 2, 1, 4), scale_factor=(2, 1)).flatten(1)[:, 4:12]
    ),
    "cosine_similarity": lambda h: h * nn.functional.cosine_similarity(h, torch.tanh(h))[:, None],
    # steps: exact values, and the derivatives torch gives (1 for a remainder's dividend)
    "steps": lambda h: (
        h * torch.floor(h)
        + torch.ceil(h / 2)
        + torch.trunc(h) * torch.frac(h)
        + torch.fmod(h, 0.7)
        + torch.remainder(h, -0.6)
        + torch.remainder(h, torch.tanh(h) + 1.5)
    ),
    # pooling: no decomposition in torch; lowered by rules of ours, bit for bit
    "pool1d": lambda h: (
        torch.cat(
            [
                nn.functional.avg_pool1d(h[:, None], 3, 2, 1, count_include_pad=False),
                nn.functional.max_pool1d(torch.tanh(h)[:, None], 2),
            ],
            -1,
        ).flatten(1)
        * nn.functional.adaptive_avg_pool1d(h[:, None], 3).flatten(1).sum(-1, keepdim=True)
    ),
    "pool2d": lambda h: torch.cat(
        [
            nn.functional.avg_pool2d(h.reshape(-1, 1, 2, 4), (1, 2)).flatten(1),
            nn.functional.max_pool2d(h.reshape(-1, 1, 2, 4), 2, 1, 1, ceil_mode=True).flatten(1),
            nn.functional.adaptive_avg_pool2d(h.reshape(-1, 2, 4), (1, 3)).flatten(1),
        ],
        1,
    )[:, 5:13],
    # a deep ensemble's mean and spread: members stacked on a new leading axis, reduced over it
    "ensemble": lambda h: (
        torch.stack([torch.tanh(h), torch.sin(h), h * h / 4]).mean(0)
        + torch.stack([torch.tanh(h), h / 3]).std(0)
        + torch.stack([h, h.flip(-1)], 1).sum((1, 2))[:, None]
    ),
    "select_stack3": lambda h: (
        torch.stack([h.reshape(-1, 2, 4)[:, 1], torch.tanh(h.reshape(-1, 2, 4)).select(1, 0)], 2)
        .transpose(1, 2)
        .reshape(-1, 8)
    ),
}

# selections and running operations: the values a sort, a top-k, a median or a running maximum
# picks (their derivatives are those of the inputs picked), running products, and the few
# elementwise operations whose decompositions need them; saved files and CasADi hold them
_MIX = torch.linspace(-1, 1, 64).reshape(8, 8).cos()
SELECTIONS = {
    "sort": lambda h: (
        torch.sort(h, -1).values
        + torch.sort(h.reshape(-1, 2, 4), 1, descending=True).values.flatten(1)
    ),
    "topk": lambda h: torch.cat(
        [
            torch.topk(h, 3).values,
            torch.topk(h.reshape(-1, 2, 4), 2, 2, largest=False).values.flatten(1),
            h[:, :1],
        ],
        1,
    ),
    "kthvalue_median": lambda h: (
        h * torch.kthvalue(h, 3, -1, keepdim=True).values
        + h.median(-1, keepdim=True).values
        + h.reshape(-1, 2, 4).median(1).values.repeat(1, 2)
    ),
    "max_min_dim": lambda h: (
        h * h.max(-1, keepdim=True).values + h.reshape(-1, 2, 4).min(1).values.repeat(1, 2)
    ),
    # of every value (so of one point's: the surrogate calls such a model point by point)
    "max_median_all": lambda h: h * h.max() + h.min() * h.median(),
    "cumprod": lambda h: (
        torch.cumprod(torch.sigmoid(h), -1)
        + torch.cumprod(torch.tanh(h).reshape(-1, 2, 4), 1).flatten(1)
    ),
    "cummax_cummin": lambda h: (
        torch.cummax(h, -1).values + torch.cummin(h.reshape(-1, 2, 4), 1).values.flatten(1)
    ),
    "logcumsumexp": lambda h: (
        torch.logcumsumexp(h, -1) + torch.logcumsumexp(h.reshape(-1, 2, 4), 2).flatten(1)
    ),
    "copysign": lambda h: torch.copysign(torch.tanh(h), h.flip(-1)),
    "nan_to_num": lambda h: torch.nan_to_num(torch.log(h * h)),
    "unfold": lambda h: h.unfold(-1, 4, 4).flatten(1) * h.unfold(-1, 2, 2).flip(-1).flatten(1),
    # a 1-D linear map (an unbatched forward's nn.Linear, lowered): one point's row
    "addmv": lambda h: torch.addmv(h[0], _MIX.to(h.dtype), torch.tanh(h[0]))[None] + 0 * h,
}


class Composite(nn.Module):
    """x (N, 4) -> a linear layer, one composite operation (or selection), a linear layer ->
    (N, 2)."""

    def __init__(self, name: str, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)
        self.op = COMPOSITES[name] if name in COMPOSITES else SELECTIONS[name]

    def forward(self, x):
        return self.b(self.op(self.a(x)))


class CdistRBF(nn.Module):
    """x (N, n_in) -> a linear layer -> Gaussians of torch.cdist distances to k centers -> a
    linear read-out (N, n_out). torch has no second derivative of cdist: the surrogate runs
    torch's own arithmetic for it (rewrites.py), and the translation and the saved file lower
    it to plain operations (lowering.py)."""

    def __init__(self, n_in: int = 2, k: int = 5, n_out: int = 1, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.out = nn.Linear(n_in, n_in), nn.Linear(k, n_out)
        self.centers = nn.Parameter(torch.randn(k, n_in))
        self.double()

    def distances(self, h):
        return torch.cdist(h, self.centers)

    def forward(self, x):
        return self.out(torch.exp(-(self.distances(self.a(x)) ** 2)))


class KernelCdistRBF(CdistRBF):
    """:class:`CdistRBF` calling torch's distance kernel itself, ``aten._cdist_forward``, which
    no rewrite replaces: a model whose Hessian torch cannot take (the translation can)."""

    def distances(self, h):
        return torch.ops.aten._cdist_forward(h, self.centers, 2.0, None)


class Hamiltonian(nn.Module):
    """A Hamiltonian network as its authors write it: the field J grad H, differentiated inside
    the forward by torch.autograd.grad on an input it marks as requiring grad."""

    def __init__(self, seed: int = 0, act=nn.Tanh, sizes=(2, 16, 1)) -> None:
        super().__init__()
        self.H = mlp(list(sizes), act, seed=seed)

    def forward(self, x):
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.requires_grad_(True)
            dH = torch.autograd.grad(self.H(x).sum(), x, create_graph=True)[0]
        return torch.stack([dH[:, 1], -dH[:, 0]], -1)


class FuncGradHamiltonian(Hamiltonian):
    """The same field, J grad H, with the gradient taken by ``torch.func.grad`` under
    ``torch.func.vmap`` inside the forward."""

    def forward(self, x):
        dH = torch.func.vmap(torch.func.grad(lambda r: self.H(r[None])[0, 0]))(x)
        return torch.stack([dH[:, 1], -dH[:, 0]], -1)


class MassMatrix(nn.Module):
    """A manipulator's accelerations M(q)^-1 tau (as DeLaN learns them): x = (q1, q2, tau1,
    tau2), M = L L^T + 0.1 I with L lower triangular from a net of q, solved by
    ``torch.linalg.solve``."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.net = mlp([2, 12, 3], nn.Tanh, seed=seed)

    def forward(self, x):
        q, tau = x[:, :2], x[:, 2:]
        l0, l1, l2 = self.net(q).unbind(-1)
        row0 = torch.stack([torch.exp(l0), torch.zeros_like(l0)], -1)
        L = torch.stack([row0, torch.stack([l1, torch.exp(l2)], -1)], -2)
        M = L @ L.transpose(-1, -2) + 0.1 * torch.eye(2, dtype=x.dtype)
        return torch.linalg.solve(M, tau)


class Inverse(nn.Module):
    """The sum of a 2 x 2 inverse's entries, by ``torch.linalg.inv``."""

    def forward(self, z):
        m = z[:, :4].reshape(-1, 2, 2) + 3 * torch.eye(2, dtype=z.dtype)
        return torch.linalg.inv(m).flatten(1).sum(1, keepdim=True)


class Lagrangian(nn.Module):
    """A Lagrangian network of one degree of freedom: x = (q, qd) -> (qd, qdd), with qdd from
    the gradient and Hessian of a learned L(q, qd) (``torch.func`` inside the forward) and a
    linear solve."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.L = mlp([2, 12, 1], nn.Softplus, seed=seed)

    def _one(self, z):
        def lagrangian(p):
            return self.L(p[None])[0, 0]

        g, H = torch.func.grad(lagrangian)(z), torch.func.hessian(lagrangian)(z)
        qdd = torch.linalg.solve(H[1:, 1:], g[:1] - H[1:, :1] @ z[1:])
        return torch.cat([z[1:], qdd])

    def forward(self, x):
        return torch.func.vmap(self._one)(x)


class StackedEnsemble(nn.Module):
    """PyTorch's model-ensembling recipe: members' weights stacked by
    ``torch.func.stack_module_state``, one data-free base on the ``meta`` device, and the mean
    of ``vmap(functional_call)`` over the members."""

    def __init__(self, members) -> None:
        super().__init__()
        params, _ = torch.func.stack_module_state(members)
        self.names = list(params)
        self.stacked = nn.ParameterList([nn.Parameter(params[k]) for k in self.names])
        self.base = copy.deepcopy(members[0]).to("meta")

    def forward(self, z):
        weights = dict(zip(self.names, self.stacked, strict=True))

        def member(w, x):
            return torch.func.functional_call(self.base, w, (x,))

        return torch.func.vmap(member, in_dims=(0, None))(weights, z).mean(0)


class Attention(nn.Module):
    """Each input feature a token: embedding, one multi-head self-attention (``need_weights=
    False``: torch's fused kernel, which has no second derivative on the CPU), a linear
    read-out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.out = nn.Linear(1, 4), nn.Linear(12, 1)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        t = self.embed(x[..., None])
        y, _ = self.attn(t, t, t, need_weights=False)
        return self.out(torch.tanh(y).flatten(1))


class Encoder(nn.Module):
    """Each input feature a token through an ``nn.TransformerEncoderLayer`` (GELU, no dropout),
    mean-pooled to two outputs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.embed, self.out = nn.Linear(1, 8), nn.Linear(8, 2)
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, 0.0, "gelu", batch_first=True)

    def forward(self, x):
        return self.out(self.layer(self.embed(x[..., None])).mean(1))


class Scaled(nn.Module):
    """``F.scaled_dot_product_attention`` called in a forward: causal, or with an additive
    mask and its own scale."""

    def __init__(self, causal: bool):
        super().__init__()
        torch.manual_seed(2)
        self.qkv, self.out, self.causal = nn.Linear(1, 12), nn.Linear(4, 1), causal
        self.register_buffer("mask", torch.linspace(-1, 1, 9).reshape(3, 3))

    def forward(self, x):
        q, k, v = self.qkv(x[..., None]).reshape(-1, 3, 2, 6).transpose(1, 2).chunk(3, -1)
        if self.causal:
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = nn.functional.scaled_dot_product_attention(q, k, v, self.mask, scale=0.7)
        return self.out(torch.tanh(y.transpose(1, 2).flatten(2)).mean(1))


ATTENTION = {
    "multi-head": Attention,
    "encoder-layer": Encoder,
    "causal": lambda: Scaled(True),
    "mask-and-scale": lambda: Scaled(False),
}


class KAN(nn.Module):
    """Two Kolmogorov-Arnold layers as efficient-kan writes them: SiLU base plus cubic
    B-splines whose basis starts from a mask ``(x >= g_i) & (x < g_{i+1})`` (a bitwise and of
    two comparisons) and Cox-de Boor's recursion."""

    def __init__(self, sizes=(2, 4, 1), grid_size=5, order=3):
        super().__init__()
        torch.manual_seed(4)
        h = 2.0 / grid_size
        grid = torch.arange(-order, grid_size + order + 1, dtype=torch.float64) * h - 1.0
        self.register_buffer("grid", grid)
        self.order = order
        self.base = nn.ModuleList(nn.Linear(a, b).double() for a, b in itertools.pairwise(sizes))
        self.spline = nn.ParameterList(
            nn.Parameter(0.3 * torch.randn(b, a * (grid_size + order), dtype=torch.float64))
            for a, b in itertools.pairwise(sizes)
        )

    def basis(self, x):
        g, x = self.grid, x.unsqueeze(-1)
        b = ((x >= g[:-1]) & (x < g[1:])).to(x.dtype)
        for k in range(1, self.order + 1):
            left = (x - g[: -(k + 1)]) / (g[k:-1] - g[: -(k + 1)]) * b[..., :-1]
            b = left + (g[k + 1 :] - x) / (g[k + 1 :] - g[1:-k]) * b[..., 1:]
        return b.flatten(-2)

    def forward(self, x):
        for base, spline in zip(self.base, self.spline, strict=True):
            x = base(nn.functional.silu(x)) + self.basis(x) @ spline.T
        return x


class SoftExponential(nn.Module):
    """neuromancer's soft exponential activation (the default of its ``blocks.MLP``): a Python
    ``if`` on its learnable parameter picks one of three formulas."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(alpha, dtype=torch.float64))

    def forward(self, x):
        a = self.alpha
        if a == 0.0:
            return x
        if a < 0.0:
            return -torch.log(1 - a * (x + a)) / a
        return (torch.exp(a * x) - 1) / a + a


class ReadsWeights(nn.Module):
    """A forward that computes with Python numbers read from its weights (``.item()``,
    ``float``) and keeps one tensor on itself (``self.last``, assigned at every call)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.a, self.b = nn.Linear(2, 6).double(), nn.Linear(6, 1).double()
        self.gain = nn.Parameter(torch.tensor(1.7, dtype=torch.float64))
        self.register_buffer("shift", torch.tensor([0.25], dtype=torch.float64))

    def forward(self, z):
        h = torch.tanh(self.a(z) * self.gain.item())
        self.last = h
        return self.b(h) + float(self.shift)


class Hand(nn.Module):
    """A hidden layer through a hand-written function of torch calls:
    ``Linear(n_in, width) -> f -> Linear(width, n_out)`` in float64."""

    def __init__(self, f, n_in=2, width=6, n_out=1, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.f = f
        self.a, self.b = nn.Linear(n_in, width).double(), nn.Linear(width, n_out).double()

    def forward(self, z):
        return self.b(self.f(self.a(z)))


# random layer graphs: each step makes a new row of `width` values from earlier rows
_GRAPH_UNARY = [torch.tanh, torch.sin, torch.sigmoid, nn.functional.softplus, nn.functional.silu,
          nn.functional.gelu, torch.atan, torch.asinh, torch.erf, torch.square]  # fmt: skip
_GRAPH_BINARY = {
    "product": lambda a, b: a * b,
    "quotient": lambda a, b: a / (1.0 + b * b),
    "sum": lambda a, b: a + b,
    "difference": lambda a, b: a - b,
    "where": lambda a, b: torch.where(a > b, a, torch.tanh(b)),
    "mask": lambda a, b: a * (b > 0),
    "gate": lambda a, b: a * b.sum(-1, keepdim=True),
    "larger": torch.maximum,
}
_GRAPH_ROWWISE = ["layer_norm", "softmax", "linear", "reverse", "clamped", "running",
                  "standardized", "unit", "rolled"]  # fmt: skip
_GRAPH_ROW_FUNCTIONS = {
    "running": lambda a: torch.cumsum(a, -1),
    "standardized": lambda a: (a - a.mean(-1, keepdim=True)) / (a.std(-1, keepdim=True) + 0.5),
    "unit": lambda a: nn.functional.normalize(a, dim=-1),
    "rolled": lambda a: torch.roll(a, 1, -1),
}


class RandomGraph(nn.Module):
    """Steps ``(kind, which, i, j)``: a function, a binary operation or a row-wise operation
    of rows i (and j) of the earlier ones, each appended; the last row goes to a linear head."""

    def __init__(self, n_in, width, steps, n_out, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.steps, self.width = steps, width
        self.first = nn.Linear(n_in, width)
        self.linears = nn.ModuleList(nn.Linear(width, width) for _ in steps)
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, n_out)
        self.register_buffer("flip", torch.arange(width - 1, -1, -1))

    def forward(self, z):
        rows = [self.first(z)]
        for s, (kind, which, i, j) in enumerate(self.steps):
            a, b = rows[i % len(rows)], rows[j % len(rows)]
            if kind == "unary":
                rows.append(_GRAPH_UNARY[which % len(_GRAPH_UNARY)](a))
            elif kind == "binary":
                rows.append(_GRAPH_BINARY[sorted(_GRAPH_BINARY)[which % len(_GRAPH_BINARY)]](a, b))
            else:
                op = _GRAPH_ROWWISE[which % len(_GRAPH_ROWWISE)]
                rows.append(
                    _GRAPH_ROW_FUNCTIONS[op](a) if op in _GRAPH_ROW_FUNCTIONS else
                    self.norm(a) if op == "layer_norm" else torch.softmax(a, -1)
                    if op == "softmax" else self.linears[s](a) if op == "linear" else
                    a[:, self.flip] if op == "reverse" else torch.where(a > 0.3, 0.3, a)
                )  # fmt: skip
        return self.head(rows[-1])


@st.composite
def random_graphs(draw):
    """(a RandomGraph in float64, its n_in)."""
    steps = draw(st.lists(st.tuples(st.sampled_from(["unary", "binary", "row"]),
                                    st.integers(0, 20), st.integers(0, 20), st.integers(0, 20)),
                          min_size=1, max_size=6))  # fmt: skip
    n_in, width, n_out = draw(st.integers(1, 3)), draw(st.integers(2, 6)), draw(st.integers(1, 2))
    return RandomGraph(n_in, width, steps, n_out, draw(st.integers(0, 100))).double(), n_in


# comparing a route with the torch route ---------------------------------------------------
def close(a, b, rel=1e-12):
    a, b = np.asarray(a), np.asarray(b)
    return np.abs(a - b).max(initial=0) <= rel * max(np.abs(b).max(initial=0), 1e-300)


def twins(net, ins, outs, n_in=None):
    """The same model on the numpy route and on the torch route."""
    kw = dict(extrapolation="ignore", n_in=n_in)
    return (sb.Surrogate(net, ins, outs, point_route="numpy", **kw),
            sb.Surrogate(net, ins, outs, point_route="torch", **kw))  # fmt: skip


def assert_routes_agree(num, ref, X, rel=1e-12):
    for x in X:
        for name in ("__call__", "jac", "hess"):
            assert close(getattr(num, name)(x), getattr(ref, name)(x), rel), name
        if ref.n_out == 1:
            p = np.linspace(-1, 1, ref.n_in)
            num.cache_clear()  # hessp on a fresh point after a gradient: the kept tape
            num.grad(x)
            assert close(num.hessp(x, p), ref.hessp(x, p), rel)
            num.cache_clear()
            assert close(num.hessp(x, p), ref.hessp(x, p), rel)  # no tape kept: from scratch
        v = np.arange(1.0, ref.n_out + 1)
        num.cache_clear()
        assert close(num.lagrangian_hess(x, v), ref.lagrangian_hess(x, v), rel)
