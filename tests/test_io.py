import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from problems import MixesRows, Unbatched, mlp
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from torch import nn

import surrogate_bridge as sb


class Custom(nn.Module):
    """A class the loading process does not have."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, z):
        return self.b(torch.nn.functional.silu(self.a(z))) + torch.sin(z)


@pytest.fixture
def saved(tmp_path):
    X = np.random.default_rng(0).uniform(-2, 2, size=(50, 2))
    sur = sb.Surrogate(
        Custom().double(), MinMaxScaler().fit(X), StandardScaler().fit(X * 3), extrapolation="raise"
    )
    path = tmp_path / "sur.pt2"
    sb.save(sur, path)
    return sur, path


def test_round_trip_in_fresh_process(saved, tmp_path):
    sur, path = saved
    X = np.array([[0.1, 0.2], [-1.0, 1.5], [1.9, -1.9]])
    script = f"""
import json, numpy as np, surrogate_bridge as sb
sur = sb.load({str(path)!r})
X = np.array({X.tolist()})
print(json.dumps({{"f": sur(X).tolist(), "J": sur.jac(X).tolist(), "H": sur.hess(X).tolist(),
  "n": [sur.n_in, sur.n_out], "ub": sur.bounds().ub.tolist(), "pol": sur.extrapolation}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_array_equal(got["f"], sur(X))  # identical, not just close
    np.testing.assert_array_equal(got["J"], sur.jac(X))
    np.testing.assert_array_equal(got["H"], sur.hess(X))
    assert got["n"] == [2, 2]
    np.testing.assert_array_equal(got["ub"], sur.bounds().ub)
    assert got["pol"] == "raise"


def test_round_trip_keeps_smoothness_warning(tmp_path):
    path = tmp_path / "relu.pt2"
    sb.save(sb.Surrogate(mlp([2, 4, 1], nn.ReLU)), path)
    loaded = sb.load(path)
    with pytest.warns(sb.SmoothnessWarning, match="relu"):
        loaded.hess([0.1, 0.2])


def test_float32_round_trip(tmp_path):
    sur = sb.Surrogate(mlp([2, 4, 1]), dtype=torch.float32)
    sb.save(sur, tmp_path / "f32.pt2")
    back = sb.load(tmp_path / "f32.pt2")
    assert back.dtype == torch.float32
    assert back([0.1, 0.2]) == sur([0.1, 0.2])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file"):
        sb.load(tmp_path / "nope.pt2")


def test_foreign_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    with pytest.raises(ValueError, match="not a surrogate_bridge file"):
        sb.load(p)


def test_truncated_file(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.pt2"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="surrogate_bridge file"):
        sb.load(cut)


def test_corrupt_member(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            payload = src.read(item.filename)
            if item.filename.endswith(".json") and "surrogate_bridge" not in item.filename:
                payload = b"{corrupt"
            dst.writestr(item, payload)
    with pytest.raises(ValueError, match="could not be read"):
        sb.load(bad)


def test_torch_archive_without_our_metadata(tmp_path):
    ep = torch.export.export(nn.Linear(2, 1), (torch.zeros(1, 2),))
    p = tmp_path / "plain.pt2"
    torch.export.save(ep, p)
    with pytest.raises(ValueError, match="not written by surrogate_bridge.save"):
        sb.load(p)


def test_save_rejects_non_surrogate(tmp_path):
    with pytest.raises(TypeError, match="must be a Surrogate"):
        sb.save(nn.Linear(2, 1), tmp_path / "x.pt2")


@pytest.mark.parametrize("model", [Unbatched(), MixesRows()], ids=["unbatched", "mixes-rows"])
def test_point_by_point_models_round_trip(model, tmp_path):
    sur = sb.Surrogate(model, n_in=2)
    sb.save(sur, tmp_path / "m.pt2")
    back = sb.load(tmp_path / "m.pt2")
    X = np.random.default_rng(0).normal(size=(4, 2))
    np.testing.assert_array_equal(back(X), sur(X))
    np.testing.assert_array_equal(back.hess(X), sur.hess(X))
