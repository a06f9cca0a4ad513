"""Every example runs as written, at a tiny size (smoke)."""

import importlib.util
from pathlib import Path

import numpy as np

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
