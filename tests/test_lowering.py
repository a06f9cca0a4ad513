"""Lowering exported graphs to the operations a consumer knows (lowering.py)."""

import itertools

import casadi as ca
import pytest
import torch
from torch import nn

from surrogate_bridge import lowering
from surrogate_bridge.adapters.casadi_layout import broadcast

aten = torch.ops.aten


class EinsumNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(3, 4).double(), nn.Linear(4, 1).double()

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.b(torch.einsum("bi,bi->bi", h, h))


def _program():
    return torch.export.export(EinsumNet(), (torch.zeros(1, 3, dtype=torch.float64),))


def _ops(program):
    return {n.target for n in program.graph.nodes if n.op == "call_function"}


PROBES = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def test_only_unknown_operations_are_lowered():
    program = _program()
    low = lowering.lowered(program, lambda op: op is not aten.einsum.default, PROBES)
    assert aten.einsum.default in _ops(program) and aten.einsum.default not in _ops(low)
    assert {aten.linear.default, aten.tanh.default} <= _ops(low)  # known ones stay whole
    x = PROBES[:1]
    assert torch.equal(low.module()(x), EinsumNet()(x))


def test_a_graph_with_nothing_unknown_is_handed_back_as_it_is():
    program = _program()
    assert lowering.lowered(program, lambda op: True, PROBES) is program


def test_a_decomposition_that_changes_the_function_is_not_used(monkeypatch):
    def wrong(equation, operands, path=None):  # twice the true product
        return 2 * operands[0] * operands[1]

    monkeypatch.setattr(lowering, "_decompositions", lambda: {aten.einsum.default: wrong})
    program = _program()
    assert lowering.lowered(program, lambda op: op is not aten.einsum.default, PROBES) is program


def test_same_function_compares_to_rounding():
    program = _program()
    fn = program.module()
    assert lowering.same_function(program, fn, PROBES)
    assert lowering.same_function(program, lambda x: fn(x) * (1 + 1e-15), PROBES)
    assert not lowering.same_function(program, lambda x: fn(x) * (1 + 1e-9), PROBES)


def test_broadcasting_that_torch_refuses_is_refused():
    assert broadcast(ca.DM.ones(1, 3), (2, 3)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"\(3, 1\) matrix does not broadcast to \(1, 3\)"):
        broadcast(ca.DM.ones(3, 1), (1, 3))


def test_a_decomposition_that_fails_leaves_the_graph_as_it_was(monkeypatch):
    def broken(equation, operands, path=None):
        raise RuntimeError("no decomposition today")

    monkeypatch.setattr(lowering, "_decompositions", lambda: {aten.einsum.default: broken})
    program = _program()
    assert lowering.lowered(program, lambda op: op is not aten.einsum.default, PROBES) is program


def test_a_function_that_fails_is_not_the_same_function():
    def fails(x):
        raise RuntimeError("cannot run here")

    assert not lowering.same_function(_program(), fails, PROBES)


@pytest.mark.parametrize(
    ("shapes", "args"),
    [  # nn.Bilinear's call, an outer product with a third factor, a contraction
        ([(3, 4), (2, 4, 5), (3, 5)], ([1, 3], [0], [1, 2], [2, 3])),
        ([(3, 4), (3, 5), (3, 4, 5)], ([2], [1], [], [])),
        ([(3, 4), (4, 5), (3, 4, 5)], ([2], [0], [], [1])),
    ],
)
def test_our_trilinear_rule_is_atens_kernel(shapes, args):
    """aten._trilinear has no decomposition in torch; ours (plain unsqueeze, mul, sum) computes
    what the kernel computes, to rounding, in each of its argument forms."""
    g = torch.Generator().manual_seed(0)
    i1, i2, i3 = (torch.randn(s, dtype=torch.float64, generator=g) for s in shapes)
    want = aten._trilinear(i1, i2, i3, *args)
    got = lowering._trilinear(i1, i2, i3, *args)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("shape", [(3, 6), (2, 6, 5), (2, 6, 2, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_our_group_norm_rule_is_atens_kernel(shape, affine):
    """aten.native_group_norm (nn.GroupNorm) has no decomposition in torch's table; ours gives
    its three outputs (normalized input, means, reciprocal deviations)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, dtype=torch.float64, generator=g) * 2 + 1
    C = shape[1]
    w, b = (torch.randn(C, dtype=torch.float64, generator=g) if affine else None for _ in "wb")
    args = (x, w, b, shape[0], C, x[0, 0].numel(), 3, 1e-5)
    for got, want in zip(lowering._group_norm(*args), aten.native_group_norm(*args), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("bounds", [(), (0.1, 0.3)])
def test_our_rrelu_rule_is_atens_eval_kernel(bounds):
    """torch's decomposition of rrelu draws noise (an empty tensor no consumer takes); in eval
    mode ATen takes the mean slope, as ours does."""
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    torch.testing.assert_close(lowering._rrelu(x, *bounds), aten.rrelu(x, *bounds), rtol=0, atol=0)
    with pytest.raises(ValueError, match="training"):
        lowering._rrelu(x, 0.1, 0.3, True)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.5, float("inf")])
@pytest.mark.parametrize("rows", [5, 40])  # torch.cdist takes a matrix product above 25 rows
def test_our_cdist_rule_is_torchs_cdist(p, rows):
    g = torch.Generator().manual_seed(2)
    x1 = torch.randn(2, rows, 3, dtype=torch.float64, generator=g)
    x2 = torch.randn(7, 3, dtype=torch.float64, generator=g)
    want = torch.cdist(x1, x2, p)
    torch.testing.assert_close(lowering._cdist(x1, x2, p), want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize(
    ("shape", "dim", "correction", "keepdim"),
    [((3, 5), -1, None, True), ((3, 5), 1, 0, False), ((2, 3, 4), (0, 2), 1.5, True),
     ((2, 3, 4), None, 1, False), ((3, 1), -1, 1, True), ((4,), 0, 0, False)],
)  # fmt: skip
def test_our_var_rules_are_atens_kernels(shape, dim, correction, keepdim):
    """aten.var.correction and var_mean.correction (torch.var, Tensor.std, a hand-written
    LayerNorm) have no decomposition in torch's table; ours computes the kernels' values, also
    inf or nan where the count is no more than the correction (one value, unbiased)."""
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 3
    kw = {"correction": correction, "keepdim": keepdim}
    torch.testing.assert_close(
        lowering._var(x, dim, **kw),
        aten.var.correction(x, dim, **kw),
        rtol=1e-13,
        atol=1e-14,
        equal_nan=True,
    )
    for got, want in zip(lowering._var_mean(x, dim, **kw), aten.var_mean.correction(x, dim, **kw),
                         strict=True):  # fmt: skip
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-14, equal_nan=True)


def test_our_hypot_and_prod_rules_are_atens_kernels():
    g = torch.Generator().manual_seed(5)
    a, b = (torch.randn(4, 6, dtype=torch.float64, generator=g) * 10 for _ in "ab")
    torch.testing.assert_close(lowering._hypot(a, b), torch.hypot(a, b), rtol=1e-15, atol=0)
    t = torch.rand(2, 3, 4, dtype=torch.float64, generator=g) + 0.5
    for dim, keepdim in ((0, False), (-1, True), (1, False)):
        want = aten.prod.dim_int(t, dim, keepdim)
        torch.testing.assert_close(lowering._prod(t, dim, keepdim), want, rtol=1e-14, atol=0)
    torch.testing.assert_close(lowering._prod(t), aten.prod.default(t), rtol=1e-14, atol=0)


def test_our_bitwise_rules_are_logical_on_masks_and_atens_kernels_on_integers():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5, 7, dtype=torch.float64, generator=g)
    a, b = x > 0.1, x < 0.8
    i, j = (torch.randint(-9, 9, (5, 7), generator=g) for _ in "ij")
    for op in (aten.bitwise_and.Tensor, aten.bitwise_or.Tensor, aten.bitwise_xor.Tensor):
        rule = lowering._OWN[op]
        assert rule(a, b).dtype == torch.bool and torch.equal(rule(a, b), op(a, b))
        assert torch.equal(rule(i, j), op(i, j))
    rule = lowering._OWN[aten.bitwise_not.default]
    assert torch.equal(rule(a), ~a) and torch.equal(rule(i), ~i)


@pytest.mark.parametrize("shape", [(1, 6, 5), (1, 4, 2, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_our_instance_norm_rule_is_atens_kernel(shape, affine):
    """nn.InstanceNorm folds its input to one sample of N * C channels and calls
    aten._native_batch_norm_legit.no_stats, which torch's table does not decompose."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(shape, dtype=torch.float64, generator=g) * 2 + 1
    w, b = (torch.randn(shape[1], dtype=torch.float64, generator=g) if affine else None
            for _ in "wb")  # fmt: skip
    args = (x, w, b, True, 0.1, 1e-5)
    for got, want in zip(lowering._instance_norm(*args),
                         aten._native_batch_norm_legit.no_stats(*args), strict=True):  # fmt: skip
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-14)


_POOL_SHAPES = [(1, 2, 7, 9), (3, 5, 6), (2, 1, 1, 11)]  # (N, C, H, W), (C, H, W), a 1-D pool


def _pool_cases(kernels, strides, extra):
    """Every combination torch accepts (padding no more than half the kernel)."""
    for shape, k, stride, pad, *rest in itertools.product(_POOL_SHAPES, kernels, strides, [0, 1],
                                                          *extra):  # fmt: skip
        kernel = [min(k, shape[-2]), k]
        if pad <= min(kernel) // 2:
            yield shape, kernel, stride, pad, rest


def test_our_pooling_rules_are_atens_kernels_bit_for_bit():
    """avg_pool2d and max_pool2d_with_indices (what nn.AvgPool1d/2d and MaxPool1d/2d call)
    have no decomposition in torch's table; ours sum or compare the windows in the kernels'
    order, so that they agree to the last bit, over strides, padding, ceil_mode, dilation,
    count_include_pad and a divisor, indices included."""
    g = torch.Generator().manual_seed(7)
    checked = 0
    avg = _pool_cases([1, 2, 3], [[], 1, 2, 3], [[False, True], [True, False], [None, 5]])
    for shape, kernel, stride, pad, (ceil, include, divisor) in avg:
        x = torch.randn(shape, dtype=torch.float64, generator=g)
        try:
            want = aten.avg_pool2d(x, kernel, stride, pad, ceil, include, divisor)
        except RuntimeError:  # (an output of size 0)
            continue
        got = lowering._avg_pool2d(x, kernel, stride, pad, ceil, include, divisor)
        assert got.shape == want.shape and torch.equal(got, want), (shape, kernel, stride, pad)
        checked += 1
    for shape, kernel, stride, pad, (dilation, ceil) in _pool_cases(
        [1, 2, 3], [[], 1, 2], [[1, 2], [False, True]]
    ):
        x = torch.randn(shape, dtype=torch.float64, generator=g)
        try:
            want = aten.max_pool2d_with_indices(x, kernel, stride, pad, dilation, ceil)
        except RuntimeError:
            continue
        got = lowering._max_pool2d_with_indices(x, kernel, stride, pad, dilation, ceil)
        for a, b in zip(got, want, strict=True):
            assert a.shape == b.shape and torch.equal(a, b), (shape, kernel, stride, pad)
        checked += 1
    assert checked > 300


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (3, 4), (5, 2), (7, 9)])
def test_our_adaptive_average_pooling_rule_is_atens_kernel_bit_for_bit(size):
    """Windows of unequal sizes (floor(i n / out) to ceil((i + 1) n / out)), or equal ones side
    by side, each summed in order and divided by its two sizes as ATen divides."""
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    for t in (x, x[0], x[:, :, :1]):
        want = aten._adaptive_avg_pool2d(t, [min(size[0], t.shape[-2]), size[1]])
        got = lowering._adaptive_avg_pool2d(t, [min(size[0], t.shape[-2]), size[1]])
        assert got.shape == want.shape and torch.equal(got, want)
