"""The type stub of surrogate.py: complete, and its overloads give numpy for numpy and torch
for torch to a real type checker."""

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import surrogate_bridge as sb
from surrogate_bridge import surrogate

STUB = Path(surrogate.__file__).with_suffix(".pyi")


def stub_members(name):
    tree = ast.parse(STUB.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    found = set()
    for node in cls.body:
        if isinstance(node, ast.FunctionDef):
            found.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            found.add(node.target.id)
    return found


def test_the_stub_names_every_public_member():
    public = {
        name
        for name, _ in inspect.getmembers(sb.Surrogate)
        if not name.startswith("_") or name in ("__init__", "__call__")
    }
    assert public <= stub_members("Surrogate"), public - stub_members("Surrogate")
    names = {n.name for n in ast.parse(STUB.read_text()).body if hasattr(n, "name")}
    assert set(surrogate.__all__) <= names


def test_stub_signatures_match_the_implementation():
    tree = ast.parse(STUB.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Surrogate")
    for node in cls.body:
        special = node.name in ("__init__", "__call__") if hasattr(node, "name") else False
        if not isinstance(node, ast.FunctionDef) or (node.name.startswith("_") and not special):
            continue
        impl = getattr(sb.Surrogate, node.name)
        if isinstance(impl, property):
            continue
        params = [a.arg for a in node.args.args + node.args.kwonlyargs]
        real = [p for p in inspect.signature(impl).parameters if p not in ("kwargs",)]
        assert params[1:] == real[(0 if params[0] == "cls" else 1) :] or params == real, node.name


def test_mypy_sees_numpy_for_numpy_and_tensor_for_tensor(tmp_path):
    pytest.importorskip("mypy")
    code = tmp_path / "use.py"
    code.write_text(
        "import numpy as np\nimport torch\nimport surrogate_bridge as sb\n"
        "sur = sb.Surrogate(torch.nn.Linear(2, 1))\n"
        "reveal_type(sur(np.zeros(2)))\n"
        "reveal_type(sur.grad([1.0, 2.0]))\n"
        "reveal_type(sur.hess(torch.zeros(2)))\n"
        "reveal_type(sur.value_and_grad(torch.zeros(2)))\n"
    )
    root = Path(surrogate.__file__).parent.parent
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--cache-dir",
         str(tmp_path / "cache"), str(code)],
        capture_output=True, text=True, cwd=root, env={"MYPYPATH": str(root), "PATH": ""},
    ).stdout  # fmt: skip
    revealed = [
        line.split("Revealed type is ")[1] for line in out.splitlines() if "Revealed" in line
    ]
    assert revealed[0] in ('"builtins.float | numpy.ndarray[Any, Any]"',) or (
        "float" in revealed[0] and "ndarray" in revealed[0]
    ), out
    assert "ndarray" in revealed[1] and "Tensor" not in revealed[1], out
    assert revealed[2] == '"torch._tensor.Tensor"', out
    assert revealed[3] == "tuple[torch._tensor.Tensor, torch._tensor.Tensor]".join('""'), out


def test_the_package_namespace_lists_the_api_and_not_its_plumbing():
    listed = set(dir(sb))
    assert set(sb.__all__) <= listed  # the lazy adapters too (tab completion finds them)
    assert {"casadi_function", "ode_rhs", "gradient_flow"} <= listed
    assert not {"version", "find_spec", "PackageNotFoundError"} & listed
    assert all(hasattr(sb, name) for name in sb.__all__)
