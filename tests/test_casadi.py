"""CasADi adapter against real CasADi and IPOPT (and gcc for generated code)."""

import itertools
import math
import shutil
import subprocess
import warnings

import casadi as ca
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from problems import (
    COMPOSITES,
    KAN,
    P_SEED,
    SELECTIONS,
    Composite,
    KernelCdistRBF,
    fit_full_batch,
    mlp,
    random_graphs,
    scaled_quadratic_surrogate,
)
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from torch import nn

import surrogate_bridge as sb

TOL = {"deriv": 1e-10, "ipopt": 1e-6, "codegen": 1e-12}
MODES = ["symbolic", "callback"]
IPOPT_QUIET = {"ipopt.print_level": 0, "print_time": False, "ipopt.sb": "yes"}
A_VEC = np.array([1.0, 2.0])


class AffineConstraint(nn.Module):
    def forward(self, z):
        return z @ torch.as_tensor(A_VEC)


class Features(nn.Module):
    """Slicing, indexing, cat, reductions, pow/sqrt/exp/log/sin/cos, broadcasting."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3).double()

    def forward(self, z):
        a = z[:, :2]
        b = z[:, [2, 0]]
        c = torch.cat([torch.sin(a), torch.cos(b) ** 2, z[:, 1:2].exp()], dim=1)
        d = self.lin(c[:, :4]) + torch.log(1 + z.pow(2)).mean(-1, keepdim=True)
        e = torch.sqrt(1 + (d * d).sum(dim=1, keepdim=True)) + z.sum(-1).unsqueeze(-1) / 3
        return torch.cat([d.view(-1, 3), e], dim=-1)


CASE_NAMES = ["tanh-mlp", "softplus", "silu-gelu-elu", "features"]


@pytest.fixture(scope="module")
def cases():
    """Built when first used, not at import: a collection-only run builds nothing."""
    torch.manual_seed(0)
    return {
        "tanh-mlp": sb.Surrogate(
            mlp([2, 16, 16, 3], nn.Tanh), sb.Affine([1, 2], [3, 4]), sb.Affine([0, 1, 2], [2, 3, 4])
        ),
        "softplus": sb.Surrogate(
            mlp([3, 8, 1], nn.Softplus),
            StandardScaler().fit(np.random.default_rng(0).normal(size=(20, 3))),
        ),
        "silu-gelu-elu": sb.Surrogate(
            nn.Sequential(
                nn.Linear(2, 6),
                nn.SiLU(),
                nn.Linear(6, 6),
                nn.GELU(),
                nn.Linear(6, 6),
                nn.ELU(),
                nn.Linear(6, 6),
                nn.Sigmoid(),
                nn.Linear(6, 2),
            ).double()
        ),
        "features": sb.Surrogate(Features(), n_in=3),
    }


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASE_NAMES)
def test_values_jacobian_hessian_match_surrogate(case, mode, cases):
    sur = cases[case]
    F = sb.casadi_function(sur, mode=mode)
    n, m = sur.n_in, sur.n_out
    x = ca.MX.sym("x", n)
    J = ca.Function("J", [x], [ca.jacobian(F(x), x)])
    H = ca.Function("H", [x], [ca.vertcat(*[ca.hessian(F(x)[i], x)[0] for i in range(m)])])
    for pt in np.random.default_rng(1).uniform(-1, 1, (3, n)):
        np.testing.assert_allclose(
            np.array(F(pt)).ravel(), np.atleast_1d(sur(pt)), rtol=TOL["deriv"], atol=TOL["deriv"]
        )
        np.testing.assert_allclose(np.array(J(pt)), sur.jac(pt), atol=TOL["deriv"])
        # CasADi stacks Hessians of outputs as rows; sur.hess is (m, n, n)
        np.testing.assert_allclose(
            np.array(H(pt)).reshape(m, n, n), sur.hess(pt).reshape(m, n, n), atol=TOL["deriv"]
        )


def test_function_io_names_shapes_and_errors(cases):
    F = sb.casadi_function(cases["tanh-mlp"], name="net", mode="symbolic")
    assert (F.name(), F.name_in(0), F.name_out(0)) == ("net", "x", "y")
    assert F.size_in(0) == (2, 1) and F.size_out(0) == (3, 1)
    with pytest.raises(ValueError, match=r"net: x has shape \(3, 1\), expected \(2, 1\)"):
        F(ca.DM.zeros(3, 1))
    C = sb.casadi_function(cases["tanh-mlp"], mode="callback")
    with pytest.raises(ValueError, match=r"expected \(2, 1\)"):
        C(np.zeros(5))
    with pytest.raises(ValueError, match="mode='fast' is not valid"):
        sb.casadi_function(cases["tanh-mlp"], mode="fast")


@pytest.mark.parametrize("mode", ["symbolic", "callback"])
def test_numeric_calls_refuse_non_finite_points_in_every_form(cases, mode):
    """The one-point float64 call (checked by a fast path) and every other form refuse NaN and
    Inf by position, as the surrogate does; finite points give the surrogate's values."""
    sur = cases["tanh-mlp"]
    F = sb.casadi_function(sur, mode=mode)
    x = np.array([0.3, -0.2])
    np.testing.assert_allclose(np.asarray(F(x)).ravel(), sur(x), rtol=1e-14)
    cases_ = [(np.array([np.nan, 0.0]), r"\(0,\)"), (np.array([0.0, np.inf]), r"\(1,\)"),
              (np.array([[-np.inf], [0.0]]), r"\(0, 0\)")]  # fmt: skip
    for bad, where in cases_:
        with pytest.raises(ValueError, match=f"x has non-finite entries .* at {where}"):
            F(bad)
        for form in (ca.DM(bad), bad.astype(np.float32)):
            with pytest.raises(ValueError, match="x has non-finite entries"):
                F(form)


def seed_problem(mode):
    obj = sb.casadi_function(scaled_quadratic_surrogate(P_SEED), mode=mode)
    con = sb.casadi_function(sb.Surrogate(AffineConstraint(), n_in=2), mode=mode)
    x = ca.MX.sym("x", 2)
    S = ca.nlpsol(
        "S",
        "ipopt",
        {"x": x, "f": obj(x), "g": con(x)},
        {**IPOPT_QUIET, "ipopt.hessian_approximation": "exact"},
    )
    r = S(x0=[2.0, 2.0], lbg=1.0, ubg=np.inf)
    return np.array(r["x"]).ravel(), S.stats()


def test_ipopt_seed_problem_same_iterations_both_modes():
    Pa = np.linalg.solve(P_SEED, A_VEC)
    x_star = Pa / (A_VEC @ Pa)
    (xs, ss), (xc, sc) = seed_problem("symbolic"), seed_problem("callback")
    for x, stats in ((xs, ss), (xc, sc)):
        assert stats["return_status"] == "Solve_Succeeded"  # at IPOPT's default tol 1e-8
        np.testing.assert_allclose(x, x_star, atol=TOL["ipopt"])
    # exact second derivatives in the callback too: no information lost, same path
    assert ss["iter_count"] == sc["iter_count"]


@pytest.fixture(scope="module")
def trained():
    g = np.linspace(-3, 3, 21)
    X = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    y = np.einsum("ni,ij,nj->n", X, P_SEED, X)[:, None]
    xs, ys = MinMaxScaler().fit(X), MinMaxScaler().fit(y)
    net = fit_full_batch(
        mlp([2, 16, 16, 1], nn.Softplus),
        xs.transform(X),
        ys.transform(y),
        adam_steps=300,
        lbfgs_steps=200,
    )
    return sb.Surrogate(net, xs, ys)


@pytest.mark.parametrize("mode", MODES)
def test_ipopt_trained_objective_with_bounds(trained, mode):
    F = sb.casadi_function(trained, mode=mode)
    b = trained.bounds()
    x = ca.MX.sym("x", 2)
    S = ca.nlpsol("S", "ipopt", {"x": x, "f": F(x)}, IPOPT_QUIET)
    r = S(x0=[2.5, -2.5], lbx=b.lb, ubx=b.ub)
    assert S.stats()["return_status"] == "Solve_Succeeded"
    xo = np.array(r["x"]).ravel()
    assert np.linalg.norm(trained.grad(xo)) < 1e-6 and np.linalg.norm(xo) < 0.3


@pytest.mark.parametrize("mode", MODES)
def test_points_side_by_side_are_evaluated_one_by_one_as_casadi_does(cases, mode):
    """CasADi evaluates a function at k copies of its input's shape side by side (F(X[:, :-1])
    over a horizon): numbers and symbols alike, as for its own functions."""
    sur = cases["tanh-mlp"]  # 2 -> 3
    F = sb.casadi_function(sur, mode=mode)
    X = np.random.default_rng(4).uniform(-1, 1, (2, 5))
    np.testing.assert_allclose(np.array(F(ca.DM(X))), sur(X.T).T, rtol=1e-13, atol=1e-15)
    Xs = ca.MX.sym("X", 2, 5)
    J = np.array(ca.Function("J", [Xs], [ca.jacobian(F(Xs), Xs)])(X))  # vec(Y) by vec(X)
    Js = sur.jac(X.T)
    for k in range(5):
        np.testing.assert_allclose(J[3 * k : 3 * k + 3, 2 * k : 2 * k + 2], Js[k], atol=1e-13)
    assert np.abs(J).sum() == pytest.approx(np.abs(Js).sum())
    with pytest.raises(ValueError, match=r"shape \(3, 5\), expected \(2, 1\).*\(2, k\)"):
        F(ca.DM.ones(3, 5))


def test_map_is_one_batched_call(cases):
    sur = cases["softplus"]
    calls = []
    own = sur._own_function()  # the module it evaluates (sur.function hands out a copy)
    hook = own.register_forward_pre_hook(lambda m, inp: calls.append(inp[0].shape[0]))
    try:
        M = sb.casadi_function(sur, mode="callback").map(7)
        X = np.random.default_rng(2).normal(size=(3, 7))
        ref = sur(X.T)
        calls.clear()
        out = M(X)
    finally:
        hook.remove()  # the surrogate is shared by the module's other tests
    assert calls == [7]  # one torch call for 7 points
    np.testing.assert_allclose(np.array(out).ravel(), ref, rtol=1e-13)
    Xs = ca.MX.sym("X", 3, 7)
    J = np.array(ca.Function("J", [Xs], [ca.jacobian(M(Xs), Xs)])(X))
    H = np.array(ca.Function("H", [Xs], [ca.hessian(ca.sum2(M(Xs)), Xs)[0]])(X))
    Js, Hs = sur.jac(X.T), sur.hess(X.T)
    for k in range(7):
        np.testing.assert_allclose(J[k, 3 * k : 3 * k + 3], Js[k, 0], atol=TOL["deriv"])
        np.testing.assert_allclose(
            H[3 * k : 3 * k + 3, 3 * k : 3 * k + 3], Hs[k], atol=TOL["deriv"]
        )
    assert np.abs(H).sum() == pytest.approx(np.abs(Hs).sum())  # nothing off the diagonal blocks
    S = sb.casadi_function(sur, mode="symbolic").map(7)  # CasADi's own map for native functions
    np.testing.assert_allclose(np.array(S(X)).ravel(), sur(X.T), rtol=1e-13)


def compiled(folder, *functions):
    """The functions' generated C, compiled by gcc into one shared library, loaded back."""
    gen = ca.CodeGenerator("surr_gen.c")
    for f in functions:
        gen.add(f)
    gen.generate(str(folder) + "/")
    so = folder / "surr_gen.so"
    subprocess.run(
        ["gcc", "-fPIC", "-shared", "-O2", str(folder / "surr_gen.c"), "-o", str(so), "-lm"],
        check=True,
    )
    return [ca.external(f.name(), str(so)) for f in functions]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_generated_c_code_compiles_and_agrees(tmp_path, cases):
    sur = cases["tanh-mlp"]
    F = sb.casadi_function(sur, name="surr", mode="symbolic")
    x = ca.MX.sym("x", 2)
    J = ca.Function("surr_jac", [x], [ca.jacobian(F(x), x)])
    f_ext, j_ext = compiled(tmp_path, F, J)
    for pt in np.random.default_rng(3).uniform(-2, 2, (5, 2)):
        np.testing.assert_allclose(np.array(f_ext(pt)).ravel(), sur(pt), atol=TOL["codegen"])
        np.testing.assert_allclose(np.array(j_ext(pt)), sur.jac(pt), atol=TOL["codegen"])


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
@pytest.mark.parametrize("name", ["sort", "cumprod"])
def test_generated_c_code_of_sorting_networks_and_running_products_agrees(tmp_path, name):
    """A sorting network's picks (if_else) and a running product in generated C (an embedded
    MPC's form): values and Hessians equal torch's."""
    sur = sb.Surrogate(Composite(name), sb.Affine([0.5, -1, 2, 0], [2, 0.5, 1, 3]))
    F = sb.casadi_function(sur, name="surr", mode="symbolic")
    x = ca.MX.sym("x", 4)
    H = ca.Function("surr_hess", [x], [ca.hessian(F(x)[0], x)[0]])
    f_ext, h_ext = compiled(tmp_path, F, H)
    for pt in np.random.default_rng(3).normal(size=(4, 4)) * [2, 0.5, 1, 3] + [0.5, -1, 2, 0]:
        np.testing.assert_allclose(np.array(f_ext(pt)).ravel(), sur(pt), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.array(h_ext(pt)), sur.hess(pt)[0], rtol=1e-9, atol=1e-11)


class LogGamma(nn.Module):  # no CasADi rule, and torch has no decomposition of it
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3).double()

    def forward(self, z):
        return torch.lgamma(1 + self.lin(z).exp())


def assert_composite_translates_exactly(name: str, k: int) -> None:
    """Value, Jacobian and each output's Hessian of ``Composite(name)``'s translation equal the
    torch surrogate's (autograd) at k points."""
    sur = sb.Surrogate(Composite(name), sb.Affine([0.5, -1, 2, 0], [2, 0.5, 1, 3]))
    F = sb.casadi_function(sur, mode="symbolic")
    x = ca.MX.sym("x", 4)
    y = F(x)
    H = ca.Function("H", [x], [ca.hessian(y[i], x)[0] for i in range(2)])
    J = ca.Function("J", [x], [ca.jacobian(y, x)])
    for pt in np.random.default_rng(1).normal(size=(k, 4)) * [2, 0.5, 1, 3] + [0.5, -1, 2, 0]:
        np.testing.assert_allclose(np.array(F(pt)).ravel(), sur(pt), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.array(J(pt)), sur.jac(pt), rtol=1e-10, atol=1e-12)
        for i, Hi in enumerate(H(pt)):
            np.testing.assert_allclose(np.array(Hi), sur.hess(pt)[i], rtol=1e-9, atol=1e-11)


# normalize divides by clamp_min(norm, eps), which the warning rightly names
@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_composite_operations_translate_exactly(name):
    """Operations torch.export keeps whole (einsum, chunk, pad, glu, ...) arrive lowered to
    torch's own decompositions, or through rules of their own: value, Jacobian and each
    output's Hessian equal the torch surrogate's (autograd) at points away from any kink."""
    assert_composite_translates_exactly(name, 3)


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
@pytest.mark.parametrize("name", sorted(SELECTIONS))
def test_selections_and_running_operations_translate_exactly(name):
    """sort, top-k, k-th value, median, max(dim), cummax: compare-exchanges that pick one input
    (a sorting network for the sorts), so each output's derivatives are those of the input it
    holds, as torch's; cumprod and logcumsumexp run as torch's kernels do; along an axis of a
    rank-3 tensor too. Value, Jacobian and Hessians equal the torch surrogate's (no ties)."""
    assert_composite_translates_exactly(name, 4)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 16, 33])
def test_the_sorting_network_sorts_every_order(n):
    """Batcher's network, cut to n positions, sorts any input: by the 0-1 principle, checked on
    every 0-1 input up to 13 positions and on random ones beyond; ascending and descending."""
    from surrogate_bridge.adapters.casadi_ops import _sorted

    x = ca.MX.sym("x", 1, n)
    up = ca.Function("up", [x], [ca.horzcat(*_sorted([x[:, j] for j in range(n)]))])
    down = ca.Function("down", [x], [ca.horzcat(*_sorted([x[:, j] for j in range(n)], True))])
    rng = np.random.default_rng(n)
    inputs = (
        np.array(list(itertools.product([0.0, 1.0], repeat=n)))
        if n <= 13
        else rng.normal(size=(200, n))
    )
    for v in inputs:
        np.testing.assert_array_equal(np.array(up(v)).ravel(), np.sort(v))
        np.testing.assert_array_equal(np.array(down(v)).ravel(), np.sort(v)[::-1])


class UsesSortIndices(nn.Module):
    def forward(self, z):
        return (z * torch.sort(z, 1).indices.to(z.dtype)).sum(1, keepdim=True)


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
def test_using_the_positions_a_sort_returns_is_refused_by_name():
    sur = sb.Surrogate(UsesSortIndices(), n_in=3)
    with pytest.raises(sb.adapters.casadi_symbolic.UnsupportedOperationError,
                       match="positions sort returns are used"):  # fmt: skip
        sb.casadi_function(sur, mode="symbolic")


class Spectral(nn.Module):
    """A spectral layer (Fourier neural operators): rfft, a complex weight, irfft."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Parameter(torch.randn(5, dtype=torch.cfloat))
        self.out = nn.Linear(8, 1)

    def forward(self, z):
        y = torch.fft.irfft(torch.fft.rfft(z, dim=-1) * self.w, n=8, dim=-1)
        return self.out(torch.tanh(y))


def test_complex_values_are_refused_by_name_and_auto_calls_back_exactly():
    """CasADi's matrices are real: a complex weight is refused saying so (before, torch's
    "casting complex values to real" warning was the message); auto falls back to the callback,
    whose numbers are torch's."""
    from surrogate_bridge.adapters.casadi_symbolic import UnsupportedOperationError

    sur = sb.Surrogate(Spectral())
    with pytest.raises(UnsupportedOperationError, match="complex values"):
        sb.casadi_function(sur, mode="symbolic")
    with pytest.warns(sb.CasadiFallbackWarning, match="complex values"):
        F = sb.casadi_function(sur)
    x = np.linspace(-1.0, 1.0, 8)
    assert float(F(x)) == sur(x)


def test_a_wrong_translation_is_refused(monkeypatch):
    """The translation is checked against torch at probe points: an operation translated
    wrongly (here tanh made sin) is refused by name instead of handed to a solver."""
    from surrogate_bridge.adapters import casadi_ops

    handler, extra = casadi_ops.OPS[torch.ops.aten.tanh.default]
    monkeypatch.setitem(
        casadi_ops.OPS, torch.ops.aten.tanh.default, (lambda out, x: ca.sin(x), extra)
    )
    with pytest.raises(NotImplementedError, match="does not compute what torch computes"):
        sb.casadi_function(sb.Surrogate(mlp([2, 8, 1])), mode="symbolic")
    monkeypatch.setitem(casadi_ops.OPS, torch.ops.aten.tanh.default, (handler, extra))
    sb.casadi_function(sb.Surrogate(mlp([2, 8, 1])), mode="symbolic")  # the real rule passes


class NaNAtProbes(nn.Module):
    """log(x1 - 10): NaN at every probe point (standard normal inputs), finite beyond 10."""

    def forward(self, z):
        return torch.log(z[:, :1] - 10.0) + z[:, 1:] ** 2


def test_a_translation_with_nothing_to_check_it_against_is_refused():
    """Where torch's own outputs are NaN at every probe point, agreeing NaNs show nothing: the
    translation is refused, saying so (it once passed unchecked), and auto falls back to the
    callback, which computes torch's function."""
    sur = sb.Surrogate(NaNAtProbes(), n_in=2)
    with pytest.raises(NotImplementedError, match="finite at none of them"):
        sb.casadi_function(sur, mode="symbolic")
    with pytest.warns(sb.CasadiFallbackWarning):
        F = sb.casadi_function(sur)
    assert F.mode == "callback"
    np.testing.assert_allclose(float(F([11.0, 0.5])), sur(np.array([11.0, 0.5])), rtol=1e-14)


def test_unsupported_operation_error_names_op_and_place():
    sur = sb.Surrogate(LogGamma())
    with pytest.raises(NotImplementedError, match=r"aten\.lgamma.*LogGamma.*mode='callback'"):
        sb.casadi_function(sur, mode="symbolic")


def test_auto_falls_back_with_warning(cases):
    sur = sb.Surrogate(LogGamma())
    with pytest.warns(sb.CasadiFallbackWarning, match="lgamma"):
        F = sb.casadi_function(sur)
    x = ca.MX.sym("x", 3)
    H = ca.Function("H", [x], [ca.hessian(F(x)[2], x)[0]])
    np.testing.assert_allclose(
        np.array(H([0.1, 0.2, 0.3])), sur.hess([0.1, 0.2, 0.3])[2], atol=TOL["deriv"]
    )
    auto = sb.casadi_function(cases["tanh-mlp"])  # translatable: no warning, native
    assert "Callback" not in type(auto).__name__


def test_relu_symbolic_warns():
    with pytest.warns(sb.SmoothnessWarning, match="relu"):
        sb.casadi_function(sb.Surrogate(mlp([2, 4, 1], nn.ReLU)), mode="symbolic")


def test_unbatched_model_translates():
    class Unbatched(nn.Module):
        def forward(self, z):
            return torch.stack([z[0] * z[1], torch.tanh(z[0])])

    sur = sb.Surrogate(Unbatched(), n_in=2)
    F = sb.casadi_function(sur)
    np.testing.assert_allclose(np.array(F([0.5, 2.0])).ravel(), sur([0.5, 2.0]), rtol=1e-14)


@pytest.mark.parametrize(
    "act", [nn.ReLU, nn.LeakyReLU, nn.Hardtanh], ids=["relu", "leaky", "hardtanh"]
)
def test_piecewise_linear_translations(act):
    sur = sb.Surrogate(mlp([2, 8, 2], act, seed=5))
    with pytest.warns(sb.SmoothnessWarning):
        F = sb.casadi_function(sur, mode="symbolic")
    x = ca.MX.sym("x", 2)
    J = ca.Function("J", [x], [ca.jacobian(F(x), x)])
    for pt in np.random.default_rng(4).uniform(-2, 2, (5, 2)):
        np.testing.assert_allclose(np.array(F(pt)).ravel(), sur(pt), atol=1e-14)
        np.testing.assert_allclose(np.array(J(pt)), sur.jac(pt), atol=1e-12)


# the mode chosen by measuring, fallbacks of any kind, pickling --------------------------------
def test_auto_mode_keeps_the_mode_it_measured_faster():
    F = sb.casadi_function(sb.Surrogate(mlp([2, 16, 1], nn.Tanh)))
    report = F.mode_report
    assert (
        F.mode == report["chosen"] == min(("symbolic", "callback"), key=lambda k: report[f"{k} us"])
    )
    assert report["measure s"] < 0.5


class ChannelScale(nn.Module):
    """A convolution whose channels are scaled by a (1, C, 1) tensor: a broadcast over a
    rank-3 tensor, which the translator reads at the positions torch gives."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 2).double()
        self.scale = nn.Parameter(torch.tensor([[[2.0], [3.0]]], dtype=torch.float64))

    def forward(self, z):
        return (torch.tanh(self.conv(z[:, None, :])) * self.scale).sum((1, 2))[:, None]


def test_per_channel_broadcast_of_a_rank3_tensor_translates_exactly():
    sur = sb.Surrogate(ChannelScale(), n_in=3)
    F = sb.casadi_function(sur, mode="symbolic")
    x = ca.MX.sym("x", 3)
    H = ca.Function("H", [x], [ca.hessian(F(x), x)[0]])
    for pt in np.random.default_rng(2).normal(size=(3, 3)):
        np.testing.assert_allclose(float(F(pt)), sur(pt), rtol=1e-13)
        np.testing.assert_allclose(np.array(H(pt)), sur.hess(pt), rtol=1e-10, atol=1e-12)


class ConvThen(nn.Module):
    """A convolution, then a per-channel PReLU (its weight along the channel axis of a rank-3
    tensor: translated), or a gather from that tensor at positions computed from the input
    (refused, saying so)."""

    def __init__(self, then: str):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.act, self.then = nn.Conv1d(1, 2, 2), nn.PReLU(2, init=0.2), then
        with torch.no_grad():
            self.act.weight.copy_(torch.tensor([0.2, -0.7]))
        self.register_buffer("w", torch.linspace(-1.0, 1.0, 6))
        self.double()

    def forward(self, z):
        h = self.conv(z[:, None, :])
        if self.then == "prelu":
            h = self.act(h)
        else:  # (each row's own positions: the rows stay independent)
            h = torch.gather(h, 2, (z[:, None, :3] > 0).long().expand(-1, 2, -1))
        return (torch.tanh(h).flatten(1) * self.w).sum(-1, keepdim=True)


def test_a_per_channel_prelu_after_a_convolution_translates_exactly():
    sur = sb.Surrogate(ConvThen("prelu"), n_in=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sb.SmoothnessWarning)
        F = sb.casadi_function(sur, mode="symbolic")
    x = ca.MX.sym("x", 4)
    J = ca.Function("J", [x], [ca.jacobian(F(x), x)])
    for pt in np.random.default_rng(6).normal(size=(4, 4)):
        np.testing.assert_allclose(float(F(pt)), sur(pt), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(np.array(J(pt)).ravel(), sur.grad(pt), rtol=1e-12, atol=1e-14)


def test_auto_falls_back_for_a_translation_failure_of_any_kind():
    sur = sb.Surrogate(ConvThen("index"), n_in=4)
    with pytest.warns(sb.CasadiFallbackWarning, match="falling back"):
        F = sb.casadi_function(sur)
    assert F.mode == "callback"
    x = np.array([0.1, -0.4, 0.7, 0.2])
    np.testing.assert_allclose(np.array(F(x)).ravel(), sur(x), rtol=1e-14)
    with pytest.raises(NotImplementedError, match=r"gather.*computed from the input.*callback"):
        sb.casadi_function(sur, mode="symbolic")


def test_symbolic_function_pickles_to_an_equal_function_and_callbacks_refuse_clearly():
    import pickle

    sur = sb.Surrogate(mlp([2, 8, 1], nn.Tanh))
    S = sb.casadi_function(sur, mode="symbolic")
    back = pickle.loads(pickle.dumps(S))
    x = ca.MX.sym("x", 2)
    for F in (S, back):
        H = ca.Function("H", [x], [ca.hessian(F(x), x)[0]])
        np.testing.assert_allclose(np.array(H([0.3, -0.2])), sur.hess([0.3, -0.2]), atol=1e-12)
    with pytest.raises(ValueError, match="x has shape"):
        back(np.zeros(3))  # the shape check survives the round trip
    with pytest.raises(TypeError, match="cannot be pickled.*mode='symbolic'"):
        pickle.dumps(sb.casadi_function(sur, mode="callback"))


# translation breadth: every layer exact against the surrogate --------------------------------
class Norms(nn.Module):
    def forward(self, z):
        both = torch.concat([z, z**2], dim=-1).sum(-1, keepdim=True)
        return both + torch.linalg.vector_norm(z + 2.0, dim=-1, keepdim=True)


def _between(layer, n_in=2, width=4):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(n_in, width), layer, nn.Tanh(), nn.Linear(width, 1)).double()
    if isinstance(layer, nn.BatchNorm1d):  # non-trivial running statistics, then eval
        with torch.no_grad():
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
        net.eval()
    if isinstance(layer, nn.GroupNorm):  # weights off their initial 1 and 0
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5), layer.bias.uniform_(-0.3, 0.3)
    return sb.Surrogate(net, sb.Affine([0.3, -0.2], [2.0, 0.5]), sb.Affine([1.0], [3.0]))


class ConvNet(nn.Module):
    """2 inputs -> a Linear to a 1-channel signal or image -> convolutions with batch norm (or
    ``norm``)."""

    def __init__(self, dims, norm=None):
        super().__init__()
        torch.manual_seed(0)
        conv, batch = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.shape = (1, 6) if dims == 1 else (1, 3, 3)
        self.lift = nn.Linear(2, 6 if dims == 1 else 9)
        self.conv = conv(1, 3, 2, padding=1, dilation=1)
        self.norm = batch(3) if norm is None else norm
        self.conv2 = conv(3, 2, 2, stride=2)
        self.head = nn.LazyLinear(1)
        with torch.no_grad():
            if norm is None:
                self.norm.running_mean.uniform_(-0.5, 0.5)
                self.norm.running_var.uniform_(0.5, 2.0)
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.3, 0.3)
            self(torch.zeros(1, 2))  # the lazy head learns its width
        self.double().eval()

    def forward(self, z):
        h = self.lift(z).view(-1, *self.shape)
        h = torch.tanh(self.norm(self.conv(h)))
        h = nn.functional.softplus(self.conv2(h)).mean(-1) if h.ndim == 3 else self.conv2(h)
        return self.head(torch.tanh(h).flatten(1))


LAYERS = {
    "conv1d+batch_norm1d+mean": lambda: sb.Surrogate(
        ConvNet(1), sb.Affine([0.3, -0.2], [2.0, 0.5])
    ),
    "conv2d+batch_norm2d": lambda: sb.Surrogate(ConvNet(2), sb.Affine([0.3, -0.2], [2.0, 0.5])),
    "layer_norm": lambda: _between(nn.LayerNorm(4)),
    "group_norm": lambda: _between(nn.GroupNorm(2, 4)),
    "conv1d+group_norm": lambda: sb.Surrogate(ConvNet(1, nn.GroupNorm(3, 3)), n_in=2),
    "batch_norm": lambda: _between(nn.BatchNorm1d(4)),
    "selu": lambda: _between(nn.SELU()),
    # CELU and Hardsigmoid: torch's own derivatives take 1 / alpha and 1 / 6 in single
    # precision; the surrogate's rewrites (rewrites.py) and the translation are both exact
    "celu": lambda: _between(nn.CELU(0.7)),
    "mish": lambda: _between(nn.Mish()),
    "log_sigmoid": lambda: _between(nn.LogSigmoid()),
    "hardswish": lambda: _between(nn.Hardswish()),
    "hardsigmoid": lambda: _between(nn.Hardsigmoid()),
    "prelu": lambda: _between(nn.PReLU(4, init=0.2)),
    "rrelu": lambda: _between(nn.RReLU()),
    "concat+vector_norm": lambda: sb.Surrogate(Norms(), n_in=2),
}
PIECEWISE = {"hardsigmoid", "prelu", "hardswish", "rrelu"}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_translates_exactly(name):
    sur = LAYERS[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sb.SmoothnessWarning)
        F = sb.casadi_function(sur, mode="symbolic")
    x = ca.MX.sym("x", 2)
    J = ca.Function("J", [x], [ca.jacobian(F(x), x)])
    H = ca.Function("H", [x], [ca.hessian(F(x), x)[0]])
    for p in np.random.default_rng(0).uniform(-1.5, 1.5, (4, 2)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sb.SmoothnessWarning)
            h = sur.hess(p)
        scale = max(1.0, abs(sur(p)))
        np.testing.assert_allclose(np.array(F(p)).ravel(), sur(p), rtol=1e-12, atol=1e-12 * scale)
        np.testing.assert_allclose(np.array(J(p)).ravel(), sur.grad(p), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.array(H(p)), h, rtol=1e-10, atol=1e-12)
    if name in PIECEWISE:
        with pytest.warns(sb.SmoothnessWarning):
            sb.casadi_function(sur, mode="symbolic")


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("name", ["layer_norm", "batch_norm", "conv1d+batch_norm1d+mean",
                                  "conv2d+batch_norm2d"])  # fmt: skip
def test_normalization_layers_generate_c_that_compiles(name, tmp_path):
    sur = LAYERS[name]()
    F = sb.casadi_function(sur, mode="symbolic")
    src = F.generate(f"{name.replace('+', '_')}.c", {"with_header": False})
    import os

    os.replace(src, tmp_path / src)
    so = tmp_path / f"{name.replace('+', '_')}.so"
    subprocess.run(
        ["gcc", "-fPIC", "-shared", "-O1", str(tmp_path / src), "-o", str(so)], check=True
    )
    G = ca.external("f", str(so))
    p = np.array([0.4, -0.7])
    np.testing.assert_allclose(np.array(G(p)).ravel(), sur(p), rtol=1e-12)


def test_callback_weights_update_inside_an_existing_ipopt_solver():
    """Online model updates (l4casadi's mutable): F.update swaps new weights into the solver
    already built on the callback; its next solve is a fresh solver's with the new model."""
    old, new = mlp([2, 8, 1], nn.Tanh, seed=0), mlp([2, 8, 1], nn.Tanh, seed=1)
    kept = {k: v.clone() for k, v in new.state_dict().items()}
    sur = sb.Surrogate(old, point_route="torch")
    F = sb.casadi_function(sur, mode="callback")
    x = ca.MX.sym("x", 2)
    opts = {"ipopt.print_level": 0, "print_time": 0, "ipopt.sb": "yes"}

    def solver(G):
        return ca.nlpsol("S", "ipopt", {"x": x, "f": G(x) + ca.sumsqr(x - 0.3)}, opts)

    S = solver(F)
    before = S(x0=[0.5, 0.5], lbx=-2, ubx=2)
    F.update(new)
    after = S(x0=[0.5, 0.5], lbx=-2, ubx=2)
    ref = solver(sb.casadi_function(sb.Surrogate(new), mode="symbolic"))(x0=[0.5, 0.5], lbx=-2,
                                                                         ubx=2)  # fmt: skip
    assert S.stats()["success"]
    np.testing.assert_allclose(np.array(after["x"]), np.array(ref["x"]), atol=1e-8)
    assert np.abs(np.array(after["x"]) - np.array(before["x"])).max() > 1e-3
    assert all(torch.equal(v, kept[k]) for k, v in new.state_dict().items())  # only read
    with pytest.raises(ValueError, match="do not fit the surrogate's model"):
        F.update(mlp([2, 4, 1], nn.Tanh))
    with pytest.raises(TypeError, match="holds its weights as constants"):
        sb.casadi_function(sur, mode="symbolic").update(new)


class ConvThenLayerNorm(nn.Module):
    """LayerNorm over the last axis (``trailing=1``) or the last two axes of a convolution's
    (1, C, L) output (with weights, so that the per-position scale matters), then a read-out
    weighted by position."""

    def __init__(self, trailing: int = 1):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(1, 2, 2)
        self.norm = nn.LayerNorm(3 if trailing == 1 else (2, 3))
        with torch.no_grad():
            w, b = self.norm.weight, self.norm.bias
            w.copy_(torch.linspace(0.5, 2.0, w.numel()).reshape(w.shape))
            b.copy_(torch.linspace(-1.0, 1.0, b.numel()).reshape(b.shape))
        self.register_buffer("w", torch.linspace(-1.0, 1.0, 6))
        self.double()

    def forward(self, z):
        h = torch.tanh(self.norm(self.conv(z[:, None, :])))
        return (h.flatten(1) * self.w).sum(-1, keepdim=True)


@pytest.mark.parametrize("trailing", [1, 2])
def test_layer_norm_over_the_last_axes_of_a_rank3_tensor_translates_exactly(trailing):
    """The rank-2 rule on the matrix whose rows are the tensor's lines over those axes."""
    sur = sb.Surrogate(ConvThenLayerNorm(trailing), n_in=4)
    F = sb.casadi_function(sur, mode="symbolic")
    x = ca.MX.sym("x", 4)
    H = ca.Function("H", [x], [ca.hessian(F(x), x)[0]])
    for pt in np.random.default_rng(3).normal(size=(3, 4)):
        np.testing.assert_allclose(float(F(pt)), sur(pt), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.array(H(pt)), sur.hess(pt), rtol=1e-9, atol=1e-11)


# random rearrangements of rank-3+ tensors: every translated one must be torch's function ------
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
_STEPS = ("permute", "flip", "slice", "scale", "cat", "expand", "select", "transpose", "softmax",
          "cumsum", "amax", "index", "gather", "pad")  # fmt: skip


class Rearranged(nn.Module):
    """x (N, 4) -> a linear layer to (N, 2, 3, 4) -> a drawn sequence of rearrangements and
    broadcasts -> tanh -> flattened -> a sum weighted by position -> (N, 1). The constants
    (broadcast factors, position weights) are made once, by a dry run, as buffers."""

    def __init__(self, steps, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.lin, self.steps, self.consts = nn.Linear(4, 24), steps, None
        shapes = []
        with torch.no_grad():
            self.forward(torch.zeros(1, 4), shapes)
        for i, shape in enumerate(shapes):
            self.register_buffer(f"c{i}", torch.linspace(0.5, 1.5, math.prod(shape)).reshape(shape))
        self.consts = len(shapes)

    def forward(self, x, shapes=None):
        made = iter(getattr(self, f"c{i}").to(x.dtype) for i in range(self.consts or 0))

        def const(shape):
            if shapes is not None:
                shapes.append(shape)
                return torch.ones(shape, dtype=x.dtype)
            return next(made)

        h = self.lin(x).reshape(-1, 2, 3, 4)
        for step, k in self.steps:
            dims = list(range(1, h.dim()))
            d = dims[k % len(dims)]
            if step == "permute":
                orders = list(itertools.permutations(dims))
                h = h.permute(0, *orders[k % len(orders)])
            elif step == "flip":
                h = h.flip(d)
            elif step == "slice" and h.shape[d] > 1:
                h = h.narrow(d, 1, h.shape[d] - 1)
            elif step == "scale":  # a constant with ones along some axes: a broadcast
                h = h * const([1] + [s if i % 2 == k % 2 else 1 for i, s in enumerate(h.shape[1:])])
            elif step == "cat":
                h = torch.cat([h, torch.tanh(h)], d)
            elif step == "expand" and h.dim() < 6:
                h = h.unsqueeze(1).expand(-1, 2, *h.shape[1:])
            elif step == "select" and h.dim() > 3:
                h = h.select(d, k % h.shape[d])
            elif step == "transpose" and len(dims) > 1:
                h = h.transpose(dims[0], dims[-1])
            elif step == "softmax":  # along one axis: the matrix of the tensor's lines
                h = torch.softmax(h, d)
            elif step == "cumsum":
                h = torch.cumsum(h, d)
            elif step == "amax" and h.dim() > 3:
                h = h * h.amax(d, keepdim=True)
            elif step == "index":  # positions the model holds, repeats and negatives included
                at = torch.tensor([(k * j + 1) % h.shape[d] - (j % 2) for j in range(k + 1)])
                h = h[(slice(None),) * d + (at,)]
            elif step == "gather":
                at = (
                    torch.arange(math.prod(h.shape[1:])).reshape(h.shape[1:]) * (k + 1)
                ) % h.shape[d]
                h = torch.gather(h, d, at[None].expand_as(h))
            elif step == "pad":  # the last axis or two, a constant fill
                h = nn.functional.pad(h, [1, k % 2, 0, 1][: 2 + 2 * (k % 2)], value=0.25 * k)
        h = torch.tanh(h).flatten(1)
        return (h * const([1, h.shape[1]])).sum(-1, keepdim=True)


# each example exports and translates a model: shrinking a failure would take minutes
@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")  # amax
@settings(max_examples=20, deadline=None, derandomize=True, phases=NO_SHRINK,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(
    st.lists(st.tuples(st.sampled_from(_STEPS), st.integers(0, 5)), min_size=1, max_size=4),
    st.integers(0, 100),
)
def test_property_rank3_rearrangements_and_axis_ops_translate_to_torchs_function(steps, seed):
    """Each translated rearrangement is a read at positions torch itself computes, and each
    operation along an axis the rank-2 rule on the matrix of the tensor's lines; whatever
    sequence is drawn, value, gradient and Hessian equal the torch surrogate's."""
    sur = sb.Surrogate(Rearranged(steps, seed), n_in=4)
    F = sb.casadi_function(sur, mode="symbolic")
    x = ca.MX.sym("x", 4)
    y = F(x)
    G = ca.Function("G", [x], [ca.gradient(y, x), ca.hessian(y, x)[0]])
    for pt in np.random.default_rng(seed).normal(size=(2, 4)):
        g, H = G(pt)
        np.testing.assert_allclose(float(F(pt)), sur(pt), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.array(g).ravel(), sur.grad(pt), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.array(H), sur.hess(pt), rtol=1e-9, atol=1e-11)


@settings(max_examples=40, deadline=None, derandomize=True, phases=NO_SHRINK)
@given(
    st.lists(st.integers(1, 5), min_size=3, max_size=5),
    st.lists(st.booleans(), min_size=5, max_size=5),
    st.sampled_from(["sum", "mean"]),
    st.booleans(),
)
def test_property_sums_over_axes_of_a_flattened_tensor_are_torchs(shape, reduced, kind, keepdim):
    """A sum or mean of a tensor of rank 3 or more (held as its flat row) over any of its axes
    is one sparse matrix with one entry per input position: torch's values, at any rank."""
    from surrogate_bridge.adapters.casadi_ops import OPS

    dims = [d for d in range(len(shape)) if reduced[d]]
    t = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(len(dims)))
    want = (torch.sum if kind == "sum" else torch.mean)(t, dims, keepdim=keepdim)
    handler, _ = OPS[torch.ops.aten.sum.dim_IntList if kind == "sum" else torch.ops.aten.mean.dim]
    out = sb.adapters.casadi_ops.shape2(want.shape)
    got = handler(out, ca.DM(t.reshape(1, -1).numpy()), dims, keepdim, shapes=[tuple(shape)])
    np.testing.assert_allclose(np.array(got).reshape(want.shape), want.numpy(), rtol=1e-13,
                               atol=1e-14)  # fmt: skip


@pytest.mark.parametrize("chunk", [7, 256])
def test_a_convolutions_matrix_is_built_in_chunks_of_unit_tensors(chunk):
    """The sparse matrix of a convolution (stride, padding, dilation, groups as torch has them)
    built from chunks of unit tensors: flat(x) @ M is torch's convolution of x, for a chunk that
    does not divide the input's size too."""
    from surrogate_bridge.adapters.casadi_ops import _matrix_of

    gen = torch.Generator().manual_seed(0)
    W = torch.randn(4, 1, 3, 2, dtype=torch.float64, generator=gen)
    conv = lambda t: torch.nn.functional.conv2d(t, W, None, (2, 1), (1, 0), (1, 2), 2)  # noqa: E731
    M = _matrix_of(conv, (1, 2, 9, 6), chunk=chunk)
    x = torch.randn(1, 2, 9, 6, dtype=torch.float64, generator=gen)
    want = conv(x).reshape(-1).numpy()
    np.testing.assert_allclose(x.reshape(1, -1).numpy() @ M.toarray(), want[None], rtol=1e-14,
                               atol=1e-14)  # fmt: skip
    assert M.nnz < 0.5 * M.shape[0] * M.shape[1]


class WideRBF(nn.Module):
    """A radial basis function layer with 3000 centres: its (1, 3000, 4) differences summed
    over the last axis."""

    def __init__(self):
        super().__init__()
        self.centres = nn.Parameter(
            torch.randn(3000, 4, generator=torch.Generator().manual_seed(0))
        )
        self.weight = nn.Parameter(torch.randn(3000, generator=torch.Generator().manual_seed(1)))

    def forward(self, z):
        d = ((z[:, None, :] - self.centres) ** 2).sum(-1)
        return torch.exp(-d) @ self.weight[:, None]


def test_a_wide_radial_basis_layer_translates_in_linear_size():
    """The sum over the centres' coordinates costs one entry per difference: a matrix built from
    unit tensors would hold 12000 x 3000 numbers (and 12000^2 to build it)."""
    from surrogate_bridge.adapters.casadi_ops import _summing

    assert _summing((1, 3000, 4), {2}, "sum").nnz() == 12000
    sur = sb.Surrogate(WideRBF(), n_in=4)
    F = sb.casadi_function(sur, mode="symbolic")
    x = ca.MX.sym("x", 4)
    G = ca.Function("G", [x], [ca.gradient(F(x), x), ca.hessian(F(x), x)[0]])
    for pt in np.random.default_rng(0).normal(size=(2, 4)) * 0.5:
        g, H = G(pt)
        np.testing.assert_allclose(float(F(pt)), sur(pt), rtol=1e-12)
        np.testing.assert_allclose(np.array(g).ravel(), sur.grad(pt), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.array(H), sur.hess(pt), rtol=1e-9, atol=1e-11)


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
@settings(max_examples=15, deadline=None, derandomize=True, phases=NO_SHRINK,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(random_graphs())
def test_property_random_layer_graphs_translate_to_torchs_function(case):
    """The numpy route's random layer graphs (functions, masks and selections, norms, softmax,
    gathers, products) through the symbolic translation: Jacobian and every output's Hessian
    equal the torch surrogate's (a 200-graph run agreed too)."""
    net, n_in = case
    sur = sb.Surrogate(net, n_in=n_in, point_route="torch", extrapolation="ignore")
    F = sb.casadi_function(sur, mode="symbolic")
    x = ca.MX.sym("x", n_in)
    y = F(x)
    G = ca.Function("G", [x], [y, ca.jacobian(y, x)] + [ca.hessian(y[i], x)[0] for i in
                                                          range(sur.n_out)])  # fmt: skip
    for pt in np.random.default_rng(1).normal(size=(2, n_in)):
        v, J, *H = G(pt)
        np.testing.assert_allclose(np.array(v).ravel(), np.atleast_1d(sur(pt)), rtol=1e-12)
        np.testing.assert_allclose(np.array(J), np.reshape(sur.jac(pt), J.shape), rtol=1e-10,
                                   atol=1e-12)  # fmt: skip
        want = np.reshape(sur.hess(pt), (sur.n_out, n_in, n_in))
        np.testing.assert_allclose(np.stack([np.array(h) for h in H]), want, rtol=1e-9,
                                   atol=1e-11)  # fmt: skip


def test_translation_gives_hessians_torch_cannot_take():
    """torch has no second derivative of its distance kernel (a model calling torch.cdist, or
    attention, is rewritten: tests/test_rewrites.py; this one calls the kernel itself); the
    CasADi translation is the exact Hessian here, checked against differences of torch's exact
    gradient."""
    sur = sb.Surrogate(KernelCdistRBF(3, 6, 2), sb.Affine([0.5, -1, 2], [2, 0.5, 1]))
    with pytest.raises(NotImplementedError, match="torch cannot take this derivative"):
        sur.hess(np.zeros(3))
    F = sb.casadi_function(sur, mode="symbolic")
    x = ca.MX.sym("x", 3)
    y = F(x)
    J = ca.Function("J", [x], [ca.jacobian(y, x)])
    H = ca.Function("H", [x], [ca.hessian(y[i], x)[0] for i in range(sur.n_out)])
    step = 1e-5
    for pt in np.random.default_rng(4).normal(size=(3, 3)) * [2, 0.5, 1] + [0.5, -1, 2]:
        np.testing.assert_allclose(np.array(F(pt)).ravel(), np.atleast_1d(sur(pt)), rtol=1e-12)
        np.testing.assert_allclose(np.array(J(pt)), sur.jac(pt), rtol=1e-10, atol=1e-12)
        # central differences of torch's exact Jacobian: the Hessian to O(step^2)
        fd = np.stack(
            [(sur.jac(pt + step * e) - sur.jac(pt - step * e)) / (2 * step) for e in np.eye(3)],
            axis=-1,
        )  # (n_out, n, n)
        hessians = H(pt)
        for i, Hi in enumerate([hessians] if sur.n_out == 1 else hessians):
            np.testing.assert_allclose(np.array(Hi), fd[i], rtol=1e-6, atol=1e-7)
    # the default mode cannot time the callback's Hessian (torch has none): it takes the
    # translation, and IPOPT with its exact Hessian reaches a stationary point
    auto = sb.casadi_function(sur)
    assert (
        auto.mode == "symbolic" and "cannot give this model's Hessian" in auto.mode_report["note"]
    )
    solver = ca.nlpsol("S", "ipopt", {"x": x, "f": auto(x)[0] + 0.5 * ca.dot(x, x)}, IPOPT_QUIET)
    x_star = np.array(solver(x0=[0.5, -1, 2], lbx=-10, ubx=10)["x"]).ravel()
    assert solver.stats()["return_status"] == "Solve_Succeeded"
    np.testing.assert_allclose(sur.jac(x_star)[0] + x_star, 0, atol=1e-7)


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
def test_a_kan_translates_and_gets_the_casadi_route():
    """A Kolmogorov-Arnold network's B-spline basis starts from a mask of two comparisons
    joined by a bitwise and, which had no translation: read as the logical and (the same
    values). Exact against torch and central differences (at points off the knots)."""
    sur = sb.Surrogate(KAN(), n_in=2, point_route="torch")
    F = sb.casadi_function(sur, mode="symbolic")
    x = ca.MX.sym("x", 2)
    dF = ca.Function("dF", [x], [ca.jacobian(F(x), x), ca.hessian(F(x), x)[0]])
    X = np.random.default_rng(3).uniform(-0.9, 0.9, size=(6, 2))
    via_casadi = sb.Surrogate(KAN(), n_in=2, point_route="casadi")
    for p in X:
        J, H = (np.asarray(v) for v in dF(p))
        assert float(F(p)) == pytest.approx(sur(p), rel=1e-14, abs=1e-15)
        np.testing.assert_allclose(J[0], sur.grad(p), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(H, sur.hess(p), rtol=1e-11, atol=1e-13)
        np.testing.assert_allclose(via_casadi.hess(p), sur.hess(p), rtol=1e-11, atol=1e-13)
        h = 1e-5
        fd = [(sur.grad(p + h * e) - sur.grad(p - h * e)) / (2 * h) for e in np.eye(2)]
        np.testing.assert_allclose(sur.hess(p), fd, rtol=1e-6, atol=1e-7)
