"""Every example runs as written, at a tiny size (smoke)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quickstart(capsys):
    x = load("quickstart").main(n_grid=15, steps=200)
    assert np.linalg.norm(x) < 0.5
    assert "trust-exact" in capsys.readouterr().out


def test_scipy_lyapunov(capsys):
    rows = load("scipy_lyapunov").main(n_grid=12, epochs=400)
    assert [r["method"] for r in rows] == ["BFGS", "BFGS", "Newton-CG", "trust-exact"]
    assert rows[0]["nfev"] > rows[1]["nfev"]  # finite differences pay n extra evaluations
    ends = [r["dist"] for r in rows]
    assert max(ends) - min(ends) < 1e-3  # all methods find the surrogate's own minimum
    assert "finite differences" in capsys.readouterr().out


def test_sobolev_fit():
    errs = load("sobolev_fit").main(epochs=300)
    assert set(errs) == {"values", "gradients", "both"}
    assert errs["both"][1] < errs["values"][1]  # gradient data improves gradients


def test_pinn_sine():
    assert load("pinn_sine").main(adam_steps=300, lbfgs_steps=150, n_points=32) < 1e-2


def test_casadi_ipopt():
    rows = load("casadi_ipopt").main(n_samples=800, epochs=300)
    assert [r["status"] for r in rows] == ["Solve_Succeeded"] * 2
    assert rows[0]["iters"] == rows[1]["iters"]
    assert abs(rows[0]["cost"] - rows[1]["cost"]) < 1e-6


def test_neural_ode(tmp_path):
    pytest.importorskip("matplotlib")
    _, worst = load("neural_ode").main(
        n_samples=500, epochs=300, n_traj=16, png=str(tmp_path / "phase.png")
    )
    assert worst < 0.5
    assert (tmp_path / "phase.png").stat().st_size > 0


def test_neural_ode_without_png():
    median, worst = load("neural_ode").main(n_samples=500, epochs=300, n_traj=16)
    assert median <= worst < 0.5


def test_global_design(tmp_path):
    pytest.importorskip("matplotlib")
    res = load("global_design").main(
        n_samples=600, epochs=600, n_starts=64, png=str(tmp_path / "minima.png")
    )
    assert res.converged.all() and len(res.minima) >= 1
    assert (tmp_path / "minima.png").stat().st_size > 0


def test_lyapunov_roa(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    roa, ref, box, proof = load("lyapunov_roa").main(
        n_samples=300, epochs=600, n_sim=16, png=str(tmp_path / "roa.png")
    )
    assert not box.certified  # V is only a local Lyapunov function on this box
    assert roa.certified and roa.simulation.fraction == 1.0
    assert abs(roa.level / ref.level - 1) < 0.2
    assert proof.proven
    assert (tmp_path / "roa.png").stat().st_size > 0
    assert "learned V: level" in capsys.readouterr().out


def test_distributed_hessians(capsys):
    pytest.importorskip("dask.distributed")
    H, results = load("distributed_hessians").main(n_points=20_000, n_seeds=2, epochs=200)
    assert H.shape == (20_000, 2, 2) and len(results) == 2
    assert "points/s on 2 workers" in capsys.readouterr().out


def test_casadi_codegen(capsys):
    pytest.importorskip("casadi")
    sur, x_mx, x_c = load("casadi_codegen").main(n_samples=400, epochs=200)
    assert {"layer_norm", "batch_norm"} <= {n.split(".")[0] for n in _aten_ops(sur)}
    assert abs(np.sum((x_mx - [0.0, 1.0]) ** 2)) <= 1.0 + 1e-6  # feasible
    if x_c is not None:  # a C compiler was found: the compiled NLP gives the same optimum
        np.testing.assert_allclose(x_c, x_mx, atol=1e-10)
        assert "compiled C" in capsys.readouterr().out


def _aten_ops(sur):
    graph = sur.export(one_point=True).graph
    return [str(n.target).removeprefix("aten.") for n in graph.nodes if n.op == "call_function"]


def test_readme_complete_example_runs_as_written():
    """The README's complete example, executed as it stands there: scipy, IPOPT and the
    gradient flow reach the same minimum of the trained surrogate, near the origin."""
    text = (EXAMPLES.parent / "README.md").read_text()
    section = text.split("## A complete example", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    ns: dict = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), ns)
    x_scipy = ns["res"].x
    x_ipopt = np.asarray(ns["sol"]["x"]).ravel()
    x_flow = ns["path"][-1, 0].numpy()
    assert np.linalg.norm(x_scipy) < 0.3
    np.testing.assert_allclose(x_ipopt, x_scipy, atol=1e-5)
    np.testing.assert_allclose(x_flow, x_scipy, atol=1e-3)
    assert np.linalg.norm(ns["sur"].grad(x_scipy)) < 1e-6


def test_log_scaled_design(capsys):
    pytest.importorskip("casadi")
    out = load("log_scaled_design").main(n_samples=500, epochs=300)
    (med_std, max_std), (med_log, max_log) = out["errors"].values()
    assert med_log < med_std and max_log < max_std  # log units: right over every decade
    d = out["designs"]
    np.testing.assert_allclose(d["trust-constr"], d["IPOPT"], rtol=1e-5)  # one surrogate problem
    assert "IPOPT" in capsys.readouterr().out


def test_field_inversion(capsys):
    out = load("field_inversion").main(n_samples=300, epochs=300)
    exact, fd = out["runs"]["exact Jacobian"], out["runs"]["finite differences"]
    assert out["kept"] > 0.9999  # six components hold the profiles
    np.testing.assert_allclose(exact["x"], fd["x"], atol=1e-4)  # the surrogate's own optimum
    assert fd["jacobians"] == 0 and fd["fields"] > exact["fields"]  # three per difference
    assert exact["residual"] < 2 * out["true_residual"]
    assert "PCA components keep" in capsys.readouterr().out
