"""Tensors of several rows on the numpy route (``numpy_tensors.py``): vectorized ensembles
(``baddbmm``, ``einsum``, ``vmap`` over ``functional_call``), convolutions with zero, constant and
circular padding, recurrent cells run over the features, per-token networks and norms, group
and instance norms, outer products, products of two hidden matrices, multi-head attention and a
transformer layer: the same numbers as the torch route to 1e-12 relative, Jacobians against
central differences of the model itself; an ensemble's batched product kept as its blocks, a map
that only looks blocked read whole; what the route cannot compute refused by name."""

import io
import itertools

import numpy as np
import pytest
import torch
from problems import ATTENTION, StackedEnsemble, assert_routes_agree, close, mlp, twins
from scipy.linalg import block_diag
from torch import nn

import surrogate_bridge as sb
from surrogate_bridge.numpy_ops import Linear
from surrogate_bridge.numpy_route import read_graph
from surrogate_bridge.numpy_tensors import BlockLinear


class BatchedEnsemble(nn.Module):
    """Members' weights stacked (members, in, out), as model-based RL's ensemble layers hold
    them: the input broadcast to every member, ``baddbmm`` per layer, the members' mean."""

    def __init__(self, members=4, width=6, n_in=2, n_out=2):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        sizes = [n_in, width, width, n_out]
        self.W = nn.ParameterList(
            nn.Parameter(torch.randn(members, a, b, generator=g, dtype=torch.float64) / a**0.5)
            for a, b in itertools.pairwise(sizes)
        )
        self.b = nn.ParameterList(
            nn.Parameter(0.1 * torch.randn(members, 1, b, generator=g, dtype=torch.float64))
            for b in sizes[1:]
        )

    def forward(self, x):
        h = x.expand(self.W[0].shape[0], *x.shape)
        for i, (W, b) in enumerate(zip(self.W, self.b, strict=True)):
            h = torch.baddbmm(b, h, W)
            h = torch.tanh(h) if i < len(self.W) - 1 else h
        return h.mean(0)


class EinsumEnsemble(nn.Module):
    def __init__(self, members=3, width=5):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.W1 = nn.Parameter(torch.randn(members, width, 2, generator=g, dtype=torch.float64))
        self.b1 = nn.Parameter(torch.randn(members, width, generator=g, dtype=torch.float64))
        self.W2 = nn.Parameter(torch.randn(members, 1, width, generator=g, dtype=torch.float64))

    def forward(self, x):
        h = nn.functional.softplus(torch.einsum("khi,bi->bkh", self.W1, x) + self.b1)
        return torch.einsum("koh,bkh->bo", self.W2, h) / self.W1.shape[0]


class Conv1d(nn.Module):
    """The inputs lifted to a profile of 12 values, two convolutions (zero and constant
    padding), average pooling, a linear read-out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.lift, self.out = nn.Linear(2, 12), nn.Linear(3 * 7, 1)
        self.c1, self.c2 = nn.Conv1d(1, 3, 5, padding=2), nn.Conv1d(3, 3, 3)
        self.pool = nn.AvgPool1d(2)

    def forward(self, x):
        h = nn.functional.silu(self.c1(torch.tanh(self.lift(x)).unsqueeze(1)))
        h = torch.tanh(self.c2(nn.functional.pad(h, (1, 1), value=0.25)))
        return self.out(self.pool(nn.functional.pad(h, (1, 1))).flatten(1))


class Conv2dCircular(nn.Module):
    """A 4x4 periodic field from the inputs, a circular convolution, two outputs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.lift, self.out = nn.Linear(2, 16), nn.Linear(2 * 16, 2)
        self.conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular")

    def forward(self, x):
        h = torch.tanh(self.lift(x)).reshape(-1, 1, 4, 4)
        return self.out(nn.functional.softplus(self.conv(h)).flatten(1))


class RecurrentOverFeatures(nn.Module):
    """A GRU or an LSTM read over the input features as a sequence (torch's lowering of the
    cell: gates on several rows, the steps' states)."""

    def __init__(self, cell):
        super().__init__()
        torch.manual_seed(4)
        self.rnn, self.out = cell(1, 4, batch_first=True), nn.Linear(4, 1)

    def forward(self, x):
        y, _ = self.rnn(x.unsqueeze(-1))
        return self.out(y[:, -1])


class DeepSets(nn.Module):
    """Each feature through one small network, summed: a per-token MLP."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.phi = nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 6), nn.GELU())
        self.rho = nn.Linear(6, 1)

    def forward(self, x):
        return self.rho(self.phi(x.unsqueeze(-1)).sum(1))


class Outer(nn.Module):
    def forward(self, z):
        return (z[:, :, None] * torch.tanh(z)[:, None, :]).sum((-2, -1))[:, None]


class Rows(nn.Module):
    """Six values reshaped to two rows of three before a layer: a layer per row, not one over
    all six."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.a, self.b = nn.Linear(2, 6).double(), nn.Linear(3, 4).double()
        self.c = nn.Linear(8, 1).double()

    def forward(self, z):
        h = torch.tanh(self.a(z)).reshape(-1, 2, 3)
        return self.c(torch.tanh(self.b(h)).reshape(-1, 8))


class MatrixProduct(nn.Module):
    """Two rows of three times their transpose: a product of two hidden matrices."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.a = nn.Linear(2, 6).double()

    def forward(self, z):
        h = torch.tanh(self.a(z)).reshape(-1, 2, 3)
        return (h @ h.transpose(-1, -2)).sum((-2, -1))[:, None]


class TokenNorm(nn.Module):
    """A LayerNorm of each feature's token: a normalization per row of several."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(8)
        self.embed, self.norm = nn.Linear(1, 4).double(), nn.LayerNorm(4).double()
        self.out = nn.Linear(4, 1).double()

    def forward(self, z):
        return self.out(torch.tanh(self.norm(self.embed(z[..., None]))).mean(1))


class GroupNormed(nn.Module):
    """A GroupNorm (two groups of four) or an InstanceNorm over three channels of four: torch
    decomposes both into statistics of several rows."""

    def __init__(self, instance=False):
        super().__init__()
        torch.manual_seed(9)
        self.a, self.out = nn.Linear(2, 12 if instance else 8), nn.Linear(12 if instance else 8, 1)
        self.norm = nn.InstanceNorm1d(3, affine=True) if instance else nn.GroupNorm(2, 8)
        self.instance = instance

    def forward(self, x):
        h = self.a(x)
        h = self.norm(h.reshape(-1, 3, 4)).flatten(1) if self.instance else self.norm(h)
        return self.out(torch.tanh(h))


class RunningAcrossMembers(BatchedEnsemble):
    """A sum running across the members ((members, 1, width) in and out, as a batched
    product's): its map shares the leading axes of a block-diagonal one but is not one."""

    def forward(self, x):
        h = torch.tanh(torch.baddbmm(self.b[0], x.expand(4, *x.shape), self.W[0]))
        return torch.cumsum(h, 0)[-1].sum(-1, keepdim=True)


MODELS = {
    "baddbmm-ensemble": BatchedEnsemble,
    "einsum-ensemble": EinsumEnsemble,
    "vmap-ensemble": lambda: StackedEnsemble([mlp([2, 5, 5, 1], seed=s) for s in range(3)]),
    "conv1d": Conv1d,
    "conv2d-circular": Conv2dCircular,
    "gru": lambda: RecurrentOverFeatures(nn.GRU),
    "lstm": lambda: RecurrentOverFeatures(nn.LSTM),
    "deep-sets": DeepSets,
    "outer-product": Outer,
    "rows": Rows,
    "running-across-members": RunningAcrossMembers,
    "matrix-product": MatrixProduct,
    "token-norm": TokenNorm,
    "group-norm": GroupNormed,
    "instance-norm": lambda: GroupNormed(instance=True),
    "multi-head-attention": ATTENTION["multi-head"],
    "encoder-layer": ATTENTION["encoder-layer"],
}


def central(f, x, h=1e-6):
    return np.stack(
        [
            (np.atleast_1d(f(x + h * e)) - np.atleast_1d(f(x - h * e))) / (2 * h)
            for e in np.eye(len(x))
        ],
        axis=-1,
    )


def model_values(model, z):
    with torch.no_grad():
        return model(torch.as_tensor(z, dtype=torch.float64)[None]).numpy()[0]


@pytest.mark.parametrize("name", list(MODELS))
def test_several_rows_agree_with_torch_and_central_differences(name):
    model = MODELS[name]().double()
    n = 3 if name == "multi-head-attention" else 2  # (its read-out takes three tokens)
    num, ref = twins(model, None, None, n_in=n)
    assert num.point_route == "numpy"
    X = np.random.default_rng(7).normal(size=(3, n))
    assert_routes_agree(num, ref, X, rel=1e-12)
    x = X[0]
    assert close(num(x), model_values(model, x), 1e-13)
    assert close(num.jac(x), central(lambda z: model_values(model, z), x), 1e-7)


def _ops(model):
    sur = sb.Surrogate(model, n_in=2)
    nodes, _ = read_graph(sur.export(one_point=True), 2, sur.n_out)
    return [op for op, _ in nodes[1:]]


def test_an_ensembles_batched_product_is_kept_as_its_blocks():
    blocks = [op for op in _ops(BatchedEnsemble()) if isinstance(op, BlockLinear)]
    assert [op.W.shape for op in blocks] == [(4, 6, 2), (4, 6, 6), (4, 2, 6)]
    assert np.array_equal(blocks[1].W, BatchedEnsemble().W[1].detach().numpy().transpose(0, 2, 1))


def test_a_map_across_the_blocks_is_read_whole():
    ops = _ops(RunningAcrossMembers())
    assert [op.W.shape for op in ops if isinstance(op, BlockLinear)] == [(4, 6, 2)]
    assert any(isinstance(op, Linear) and op.W.shape == (24, 24) for op in ops)


def test_block_linear_equals_its_dense_matrix():
    rng = np.random.default_rng(8)
    W, c = rng.normal(size=(3, 4, 5)), rng.normal(size=12)
    blocks, dense = BlockLinear(W, c), Linear(block_diag(*W), c)
    h, T, A = rng.normal(size=15), rng.normal(size=(15, 2)), rng.normal(size=(2, 12))
    assert np.allclose(blocks(h), dense(h), rtol=1e-14, atol=1e-14)
    assert np.allclose(blocks.push([T], None), dense.push([T], None), rtol=1e-14, atol=1e-14)
    assert np.allclose(blocks.pull(A, None)[0], dense.pull(A, None)[0], rtol=1e-14, atol=1e-14)


def test_circular_padding_translates_to_casadi_and_saves():
    """Decomposed, a circular pad writes slices into a tensor (``slice_scatter``): the symbolic
    CasADi translation reads it at torch's positions, and a saved file may hold it."""
    ca = pytest.importorskip("casadi")
    model = Conv2dCircular().double()
    sur = sb.Surrogate(model, n_in=2)
    x = np.array([0.3, -0.8])
    f = sb.casadi_function(sur, mode="symbolic")
    z = ca.MX.sym("z", 2)
    J = ca.Function("J", [z], [ca.jacobian(f(z), z)])
    assert close(np.array(f(x)).ravel(), sur(x), 1e-13)
    assert close(np.array(J(x)), sur.jac(x), 1e-12)
    buf = io.BytesIO()
    sb.save(sur, buf)
    buf.seek(0)
    loaded = sb.load(buf)
    assert close(loaded.jac(x), sur.jac(x), 1e-13)
    assert close(loaded.hess(x), sur.hess(x), 1e-12)
