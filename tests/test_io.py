import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from problems import (
    COMPOSITES,
    KAN,
    SELECTIONS,
    CdistRBF,
    Composite,
    Hand,
    MixesRows,
    Unbatched,
    mlp,
    random_graphs,
)
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
    path = tmp_path / "sur.sbz"
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
    path = tmp_path / "relu.sbz"
    sb.save(sb.Surrogate(mlp([2, 4, 1], nn.ReLU)), path)
    loaded = sb.load(path)
    with pytest.warns(sb.SmoothnessWarning, match="relu"):
        loaded.hess([0.1, 0.2])


class Quantized(nn.Module):
    """A net of its input rounded to a grid: derivatives zero, and true."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 3).double()

    def forward(self, z):
        return torch.tanh(self.a(torch.round(4 * z) / 4))


def test_a_loaded_step_model_keeps_its_zero_derivatives_and_warning(tmp_path):
    """The file's graph calls aten.round, whose name the probe of a loaded surrogate does not
    see: the saved non-smooth names tell it that a zero gradient is the steps' own."""
    sb.save(sb.Surrogate(Quantized()), tmp_path / "q.sbz")
    back = sb.load(tmp_path / "q.sbz")
    assert back.nonsmooth_ops == ("round",)
    with pytest.warns(sb.SmoothnessWarning, match="steps"):
        J = back.jac([0.3, -0.2])
    assert J.shape == (3, 2) and not J.any()


@pytest.mark.parametrize(
    "f",
    [torch.asinh, torch.erfc, lambda h: torch.acosh(h * h + 1.5),
     lambda h: torch.atanh(0.5 * torch.tanh(h)), lambda h: torch.erfinv(0.9 * torch.tanh(h)),
     lambda h: torch.lgamma(h * h + 0.5) + torch.digamma(h * h + 1.5),
     lambda h: torch.special.gammaln(h * h + 0.5)],
    ids=["asinh", "erfc", "acosh", "atanh", "erfinv", "lgamma-digamma", "gammaln"],
)  # fmt: skip
def test_inverse_and_special_functions_round_trip(f, tmp_path):
    sur = sb.Surrogate(Hand(f, seed=1))
    sb.save(sur, tmp_path / "f.sbz")
    back, x = sb.load(tmp_path / "f.sbz"), np.array([0.4, -0.3])
    np.testing.assert_allclose(back.hess(x), sur.hess(x), rtol=1e-12, atol=1e-15)


def test_float32_round_trip(tmp_path):
    sur = sb.Surrogate(mlp([2, 4, 1]), dtype=torch.float32)
    sb.save(sur, tmp_path / "f32.sbz")
    back = sb.load(tmp_path / "f32.sbz")
    assert back.dtype == torch.float32
    assert back([0.1, 0.2]) == sur([0.1, 0.2])


class CastsItsConstant(nn.Module):
    """A constant kept as a plain float32 attribute (not a buffer), cast to x's dtype in the
    forward: torch.export records the float32 it found, which the loaded copy no longer has."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.center = torch.tensor([0.25, -0.5])

    def forward(self, x):
        return self.lin(torch.tanh(x - self.center.to(x.dtype)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_constant_cast_in_the_forward_round_trips(tmp_path, dtype):
    sur = sb.Surrogate(CastsItsConstant(), dtype=dtype)
    sb.save(sur, tmp_path / "cast.sbz")
    back = sb.load(tmp_path / "cast.sbz")
    X = np.random.default_rng(0).normal(size=(4, 2))
    np.testing.assert_array_equal(back(X), sur(X))
    np.testing.assert_allclose(back.hess(X), sur.hess(X), rtol=1e-13, atol=1e-14)


def test_torch_cdist_saves_as_plain_operations(tmp_path):
    """torch.cdist has no decomposition in torch and is not on the allowed list: it is saved
    lowered to differences, squares and a root, the same function as torch's. Its batched
    capture fails (torch takes another algorithm above 25 rows), so the file holds the
    one-point graph, run point by point for batches."""
    sur = sb.Surrogate(CdistRBF())
    sb.save(sur, tmp_path / "rbf.sbz")
    back = sb.load(tmp_path / "rbf.sbz")
    X = np.random.default_rng(1).normal(size=(40, 2))
    np.testing.assert_allclose(back(X), sur(X), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(back.jac(X), sur.jac(X), rtol=1e-10, atol=1e-13)


def test_a_weight_computed_by_an_operation_no_file_holds_is_saved_as_that_weight(tmp_path):
    """nn.utils.parametrizations.orthogonal computes its weight with matrix_exp, which a saved
    file may not call (was: save refused the model). That node does not depend on x: it is
    saved as the matrix it computes, and the loaded surrogate is the same function,
    derivatives included."""
    torch.manual_seed(0)
    layer = nn.utils.parametrizations.orthogonal(nn.Linear(3, 3).double())
    net = nn.Sequential(layer, nn.Tanh(), nn.Linear(3, 2)).double()
    sur = sb.Surrogate(net, sb.Affine([0.5, -1, 2], [2, 0.5, 1]))
    sb.save(sur, tmp_path / "orthogonal.sbz")
    back = sb.load(tmp_path / "orthogonal.sbz")
    X = np.random.default_rng(3).normal(size=(6, 3))
    np.testing.assert_allclose(back(X), sur(X), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(back.jac(X), sur.jac(X), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(back.hess(X), sur.hess(X), rtol=1e-12, atol=1e-14)
    with zipfile.ZipFile(tmp_path / "orthogonal.sbz") as zf:
        graph = zf.read("graph.json").decode()
    assert "aten.linalg_matrix_exp" not in graph and "aten.linear" in graph


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
def test_a_kan_is_saved_with_its_masks_as_logical_operations(tmp_path):
    """``(x >= g) & (x < g')`` (a bitwise and, which a file may not hold) is saved as the
    logical and of the two comparisons: the same function."""
    sur = sb.Surrogate(KAN(), n_in=2)
    sb.save(sur, tmp_path / "kan.sbz")
    back = sb.load(tmp_path / "kan.sbz")
    X = np.random.default_rng(4).uniform(-0.9, 0.9, size=(6, 2))
    np.testing.assert_allclose(back(X), sur(X), rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(back.hess(X), sur.hess(X), rtol=1e-13, atol=1e-15)
    with zipfile.ZipFile(tmp_path / "kan.sbz") as zf:
        graph = zf.read("graph.json").decode()
    assert "bitwise" not in graph and "aten.logical_and" in graph


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file"):
        sb.load(tmp_path / "nope.sbz")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        sb.load(tmp_path)


def test_foreign_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    with pytest.raises(ValueError, match="not a surrogate_bridge file"):
        sb.load(p)


def test_truncated_file(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.sbz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="surrogate_bridge file"):
        sb.load(cut)


def rewrite(path, out, edit, rehash=False):
    """Copy the archive at ``path`` to ``out`` with ``edit(name, bytes) -> bytes`` applied to each
    member; ``rehash`` also rewrites meta.json's SHA-256 entries, as a forger would."""
    with zipfile.ZipFile(path) as src:
        members = {n: edit(n, src.read(n)) for n in src.namelist()}
    if rehash:
        meta = json.loads(members["meta.json"])
        meta["sha256"] = {n: hashlib.sha256(members[n]).hexdigest() for n in meta["sha256"]}
        members["meta.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(out, "w") as dst:
        for name, data in members.items():
            dst.writestr(name, data)
    return out


class Payload:
    """Unpickling this writes a marker file: proof that a loader ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_torch_archive_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    ep = torch.export.export(nn.Linear(2, 1).double(), (torch.zeros(1, 2, dtype=torch.float64),))
    p = tmp_path / "evil.pt2"
    torch.export.save(ep, p)

    def poison(name, data):  # every weight and sample input becomes a pickle, flagged as one
        if "/weights/weight_" in name or "sample_inputs" in name:
            return pickle.dumps(Payload(marker))
        if name.endswith("model_weights_config.json"):
            cfg = json.loads(data)
            for entry in cfg.get("config", {}).values():
                entry["use_pickle"] = True
            return json.dumps(cfg).encode()
        return data

    evil = rewrite(p, tmp_path / "evil2.pt2", poison)
    with pytest.raises(ValueError, match="not written by surrogate_bridge.save"):
        sb.load(evil)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("member", "replace", "match"),
    [
        ("weights.safetensors", "pickle", "SHA-256"),
        ("graph.json", "eval", "not an allowed operation"),
        ("graph.json", "getattr", "not an allowed operation"),
        ("weights.safetensors", "pickle-rehashed", "damaged or was edited"),
    ],
)
def test_crafted_surrogate_files_never_run_code(saved, tmp_path, member, replace, match):
    _, path = saved
    marker = tmp_path / "pwned"

    def edit(name, data):
        if name != member:
            return data
        if replace.startswith("pickle"):
            return pickle.dumps(Payload(marker))
        graph = json.loads(data)
        target = "builtins.eval" if replace == "eval" else "aten.__getattr__.default"
        graph["nodes"][0][1] = target
        return json.dumps(graph).encode()

    out = rewrite(path, tmp_path / "evil.sbz", edit, rehash=replace != "pickle")
    with pytest.raises(ValueError, match=match):
        sb.load(out)
    assert not marker.exists()


def test_every_bit_flip_in_the_weights_is_refused(saved, tmp_path):
    _, path = saved
    with zipfile.ZipFile(path) as src:
        weights = src.read("weights.safetensors")
    (head,) = struct.unpack("<Q", weights[:8])
    rng = np.random.default_rng(0)
    for k, pos in enumerate(rng.integers(8 + head, len(weights), 50)):
        bit = int(rng.integers(8))

        def flip(name, data, pos=pos, bit=bit):
            if name != "weights.safetensors":
                return data
            b = bytearray(data)
            b[pos] ^= 1 << bit
            return bytes(b)

        with pytest.raises(ValueError, match="SHA-256"):
            sb.load(rewrite(path, tmp_path / f"flip{k}.sbz", flip))


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("dtype", "torch.int32", "dtype='torch.int32'"),
        ("nonsmooth", None, "nonsmooth"),
        ("n_in", 3, r"the graph does not run on 3 point\(s\) of 3 inputs"),
        ("format", 1, "format 1"),
        ("rows", "sideways", "rows='sideways'"),
        ("sha256", {}, "sha256 is incomplete"),
        ("feature_names", ["a"], "feature_names is not a list of n_in strings"),
        ("feature_names", [1, 2], "feature_names is not a list of n_in strings"),
    ],
)
def test_edited_metadata_gives_clear_errors(saved, tmp_path, key, value, match):
    _, path = saved

    def edit(name, data):
        if name != "meta.json":
            return data
        meta = json.loads(data)
        if value is None:
            del meta[key]
        else:
            meta[key] = value
        return json.dumps(meta).encode()

    with pytest.raises(ValueError, match=match):
        sb.load(rewrite(path, tmp_path / "edited.sbz", edit))


def test_files_hold_no_paths_of_the_machine_that_wrote_them(saved):
    _, path = saved
    with zipfile.ZipFile(path) as zf:
        text = b"".join(zf.read(n) for n in zf.namelist() if n.endswith(".json"))
    for leak in (os.getcwd(), os.path.expanduser("~"), "site-packages", ".py", "File "):
        assert leak.encode() not in text, leak


def test_loaded_surrogate_translates_to_casadi(saved):
    ca = pytest.importorskip("casadi")
    sur, path = saved
    back = sb.load(path)
    F = sb.casadi_function(back, mode="symbolic")
    x = np.array([0.3, -0.4])
    np.testing.assert_allclose(np.array(F(x)).ravel(), sur(x), rtol=1e-13)
    xs = ca.MX.sym("x", 2)
    H = ca.Function("H", [xs], [ca.hessian(F(xs)[0], xs)[0]])(x)
    np.testing.assert_allclose(np.array(H), sur.hess(x)[0], rtol=1e-10, atol=1e-12)


def test_a_loaded_graph_is_probed_where_the_original_was(tmp_path):
    """A loaded graph applies its log input scaler itself, so it is probed through the saved
    reference scaler: at the original's probe points, where the log is defined. (At standard
    normal points every value was NaN, and the CasADi translation and the fast point routes
    were refused as unchecked.)"""
    pytest.importorskip("casadi")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X = np.random.default_rng(0).uniform([300.0, 1e5], [400.0, 3e5], size=(100, 2))
    scaler = make_pipeline(FunctionTransformer(np.log, np.exp), MinMaxScaler()).fit(X)
    sur = sb.Surrogate(mlp([2, 8, 1], nn.Tanh, seed=0), scaler)
    sb.save(sur, tmp_path / "log.sbz")
    back = sb.load(tmp_path / "log.sbz")
    np.testing.assert_array_equal(back.function.probes(2), sur.function.probes(2))
    F = sb.casadi_function(back, mode="symbolic")
    for x in X[:3]:
        np.testing.assert_allclose(np.array(F(x)).ravel(), sur(x), rtol=1e-13)
    for x in X[:40]:  # auto measures the routes after 32 points
        np.testing.assert_allclose(back.grad(x), sur.grad(x), rtol=1e-12)
    assert "unavailable" not in back.point_route_report["note"]


def test_save_into_missing_folder_is_clear(saved, tmp_path):
    sur, _ = saved
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sb.save(sur, tmp_path / "no" / "such" / "dir" / "s.sbz")


def test_torch_archive_without_our_metadata(tmp_path):
    ep = torch.export.export(nn.Linear(2, 1), (torch.zeros(1, 2),))
    p = tmp_path / "plain.pt2"
    torch.export.save(ep, p)
    with pytest.raises(ValueError, match="not written by surrogate_bridge.save"):
        sb.load(p)


def test_file_objects_round_trip(saved, tmp_path):
    """A binary file object (a buffer for object storage or a database) holds the same file:
    written from its position and left open, read from its position to its end."""
    sur, path = saved
    buf = io.BytesIO(b"head")
    buf.seek(4)
    sb.save(sur, buf)
    assert not buf.closed and buf.getvalue()[:4] == b"head"
    buf.seek(4)
    X = np.array([[0.1, 0.2], [-1.0, 1.5]])
    back = sb.load(buf)
    with open(path, "rb") as f:
        from_file = sb.load(f)
    for other in (back, from_file):
        np.testing.assert_array_equal(other.hess(X), sur.hess(X))
    with pytest.raises(ValueError, match="the file object is not a surrogate_bridge file"):
        sb.load(io.BytesIO(b"hello"))
    with open(tmp_path / "t.txt", "w") as f:
        f.write("x")
    with open(tmp_path / "t.txt") as f, pytest.raises(TypeError, match="binary mode"):
        sb.load(f)
    with pytest.raises(TypeError, match="path must be a str, an os.PathLike or a binary file"):
        sb.save(sur, 42)
    with pytest.raises(TypeError, match="path must be a str, an os.PathLike or a binary file"):
        sb.load(None)


def test_save_rejects_non_surrogate(tmp_path):
    with pytest.raises(TypeError, match="must be a Surrogate"):
        sb.save(nn.Linear(2, 1), tmp_path / "x.sbz")


@pytest.mark.parametrize("model", [Unbatched(), MixesRows()], ids=["unbatched", "mixes-rows"])
def test_point_by_point_models_round_trip(model, tmp_path):
    """Saved as their one-point graph, run under vmap when loaded; a loaded one saves again
    and translates to CasADi (its graph's one row exported without vmap, which neither a file
    nor CasADi can hold)."""
    sur = sb.Surrogate(model, n_in=2)
    sb.save(sur, tmp_path / "m.sbz")
    back = sb.load(tmp_path / "m.sbz")
    sb.save(back, tmp_path / "again.sbz")
    again = sb.load(tmp_path / "again.sbz")
    X = np.random.default_rng(0).normal(size=(4, 2))
    for loaded in (back, again):
        np.testing.assert_array_equal(loaded(X), sur(X))
        np.testing.assert_array_equal(loaded.hess(X), sur.hess(X))
    pytest.importorskip("casadi")
    F = sb.casadi_function(back, mode="symbolic")
    np.testing.assert_allclose(np.array(F(X[0])).ravel(), sur(X[0]), rtol=1e-14)


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")  # where
@pytest.mark.parametrize("name", sorted(COMPOSITES) + sorted(SELECTIONS))
def test_composite_operations_round_trip(name, tmp_path):
    """einsum, glu, pad, lerp and the like are saved lowered to allowed operations (torch's own
    decompositions of them); sort, top-k, median, max(dim), cumprod and cummax as they are: the
    loaded surrogate is the same function, derivatives included."""
    sur = sb.Surrogate(Composite(name), sb.Affine([0.5, -1, 2, 0], [2, 0.5, 1, 3]))
    sb.save(sur, tmp_path / "c.sbz")
    back = sb.load(tmp_path / "c.sbz")
    X = np.random.default_rng(2).normal(size=(5, 4)) * [2, 0.5, 1, 3] + [0.5, -1, 2, 0]
    np.testing.assert_allclose(back(X), sur(X), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(back.jac(X), sur.jac(X), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(back.hess(X), sur.hess(X), rtol=1e-11, atol=1e-12)


# hostile files that hold no code but ask for memory, time or a wrong shape ---------------------
def _node(name, target, args, kwargs=None):
    return [name, target, args, {"kwargs": kwargs or {}}]


def _f64():
    return {"dtype": {"dtype": "F64"}}


def _prepend(*nodes):
    def edit(graph):
        graph["nodes"][:0] = list(nodes)

    return edit


_SQUARES = [_node("i0", "operator.add", [2**40, 0])] + [
    _node(f"i{k}", "operator.mul", [{"node": f"i{k - 1}"}, {"node": f"i{k - 1}"}]) for k in (1, 2)
]
HOSTILE_GRAPHS = {
    # 8 TB: refused from its shape on the meta device (a regression fails to allocate, at once)
    "full": (_prepend(_node("f", "aten.full.default", [[10**6, 10**6], 1.0], _f64())), "more than"),
    "expand-clone": (
        _prepend(
            _node("e0", "aten.ones.default", [[1, 1]], _f64()),
            _node("e1", "aten.expand.default", [{"node": "e0"}, [10**6, 10**6]]),
            _node("e2", "aten.clone.default", [{"node": "e1"}]),
        ),
        r"'e1' \(aten.expand.default\) makes a tensor of shape \(1000000, 1000000\)",
    ),
    "string-times-int": (_prepend(_node("s", "operator.mul", ["ab", 10**6])), "numbers only"),
    "list-times-int": (_prepend(_node("s", "operator.mul", [[0], 10**6])), "numbers only"),
    "squared-integers": (_prepend(*_SQUARES), "beyond 64 bits"),
    "getitem-of-tensor": (
        lambda g: g["nodes"].append(_node("g", "operator.getitem", [{"node": g["input"]}, 0])),
        "numbers only",
    ),
    "node-too-short": (lambda g: g["nodes"].insert(0, ["a", "aten.add.Tensor"]), "not \\[name"),
    "op-named-by-number": (lambda g: g["nodes"].insert(0, ["a", 7, [], {"kwargs": {}}]), "by a"),
    "no-input": (lambda g: g.pop("input"), "not an object of input, nodes and output"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_GRAPHS))
def test_hostile_graphs_are_refused_before_they_compute(saved, tmp_path, name):
    """Each edit asks the loader for terabytes, a gigabyte string, a huge integer or a wrong
    shape; each is refused with a reason, from shapes alone, before anything is computed."""
    _, path = saved
    edit_graph, match = HOSTILE_GRAPHS[name]

    def edit(member, data):
        if member != "graph.json":
            return data
        graph = json.loads(data)
        edit_graph(graph)
        return json.dumps(graph).encode()

    with pytest.raises(ValueError, match=f"damaged or was edited: .*({match})"):
        sb.load(rewrite(path, tmp_path / "hostile.sbz", edit, rehash=True))


def test_output_that_disagrees_with_the_metadata_is_refused(tmp_path):
    sur = sb.Surrogate(mlp((2, 4, 1)))
    sb.save(sur, tmp_path / "s.sbz")

    def edit(member, data):
        if member != "graph.json":
            return data
        graph = json.loads(data)
        graph["output"] = graph["input"]  # (N, 2) where meta.json says n_out = 1
        return json.dumps(graph).encode()

    with pytest.raises(ValueError, match=r"gives \(3, 2\) on 3 point\(s\), not \(3, 1\)"):
        sb.load(rewrite(tmp_path / "s.sbz", tmp_path / "edited.sbz", edit, rehash=True))


@pytest.mark.parametrize(
    ("member", "payload", "match"),
    [
        ("graph.json", b"[" * 100_000 + b"]" * 100_000, "recursion"),
        ("weights.safetensors", struct.pack("<Q", 5) + b"[1,2]", "header is a list"),
    ],
)
def test_deep_or_foreign_json_is_refused(saved, tmp_path, member, payload, match):
    _, path = saved
    edited = rewrite(path, tmp_path / "deep.sbz", lambda m, d: payload if m == member else d, True)
    with pytest.raises(ValueError, match=match):
        sb.load(edited)


@pytest.mark.parametrize(("key", "n"), [("n_in", 4 * 10**8), ("n_in", 3), ("n_out", 5)])
def test_sizes_that_disagree_with_the_graph_are_refused_unallocated(saved, tmp_path, key, n):
    """n_in = 4e8 would be 9.6 GB of probe points; the graph's shapes refuse it first."""
    _, path = saved

    def edit(member, data):
        meta = json.loads(data) if member == "meta.json" else None
        return data if meta is None else json.dumps({**meta, key: n}).encode()

    with pytest.raises(ValueError, match="damaged or was edited: the graph (does not run|gives)"):
        sb.load(rewrite(path, tmp_path / "sizes.sbz", edit))


def test_compressed_members_are_refused(saved, tmp_path):
    """A 20 MB graph compressed to kilobytes: a loader that inflated it would pay 20 MB (or 20 GB)
    for a small file; save writes members stored, and load takes nothing else."""
    _, path = saved
    with zipfile.ZipFile(path) as src:
        members = {n: src.read(n) for n in src.namelist()}
    members["graph.json"] += b" " * 20_000_000  # still valid JSON, and rehashed below
    meta = json.loads(members["meta.json"])
    meta["sha256"]["graph.json"] = hashlib.sha256(members["graph.json"]).hexdigest()
    members["meta.json"] = json.dumps(meta).encode()
    bomb = tmp_path / "bomb.sbz"
    with zipfile.ZipFile(bomb, "w") as dst:
        for name, data in members.items():
            method = zipfile.ZIP_DEFLATED if name == "graph.json" else zipfile.ZIP_STORED
            dst.writestr(name, data, compress_type=method)
    assert os.path.getsize(bomb) < 200_000
    with pytest.raises(ValueError, match="'graph.json' is compressed"):
        sb.load(bomb)


def test_saved_graph_makes_its_constants_on_the_run_device():
    """A constant node without a device argument is made where the input is (else a file
    saved on one device breaks on another, and a shape check on ``meta`` allocates)."""
    from surrogate_bridge.saved_graph import SavedGraph

    graph = {
        "input": "x",
        "nodes": [
            _node("c", "aten.full.default", [[1, 2], 2.0], _f64()),
            _node("y", "aten.mul.Tensor", [{"node": "x"}, {"node": "c"}]),
        ],
        "output": "y",
    }
    g = SavedGraph(graph, {}, one_point=False)
    g.check_shapes(2, 2, torch.float64)
    x = torch.tensor([[1.0, -3.0]], dtype=torch.float64)
    torch.testing.assert_close(g(x), 2 * x, rtol=0, atol=0)
    out = g(x.to("meta"))
    assert out.device.type == "meta" and out.shape == (1, 2)


def test_save_refuses_what_load_would_refuse(tmp_path, monkeypatch):
    """A graph whose tensors exceed load's bound is refused when saved, naming the node, rather
    than written to a file that cannot be loaded."""
    import surrogate_bridge.saved_graph as saved_graph

    monkeypatch.setattr(saved_graph, "_MAX_ELEMENTS", 3 * 4 - 1)  # the (3, 4) hidden layer
    with pytest.raises(ValueError, match=r"save: .*'linear' \(aten.linear.default\).*\(3, 4\)"):
        sb.save(sb.Surrogate(mlp((2, 4, 1))), tmp_path / "s.sbz")
    assert not (tmp_path / "s.sbz").exists()


class Cholesky(nn.Module):
    """A 2 x 2 Cholesky factor: torch.linalg.cholesky, whose decomposition checks for errors
    through an effect token."""

    def forward(self, z):
        m = z[:, :4].reshape(-1, 2, 2)
        m = m @ m.transpose(-1, -2) + 3 * torch.eye(2, dtype=z.dtype)
        return torch.linalg.cholesky(m).flatten(1).sum(1, keepdim=True)


def test_an_operation_outside_the_list_is_named_when_its_lowering_has_an_effect_token(tmp_path):
    """(The token once reached the weights' table and failed there as KeyError: None.)"""
    with pytest.raises(ValueError, match=r"save: the model's graph calls aten.linalg_cholesky_ex"):
        sb.save(sb.Surrogate(Cholesky(), n_in=4), tmp_path / "s.sbz")


def test_update_weights_on_a_loaded_surrogate(tmp_path):
    """A loaded graph already holds the scalers and hides the activations' names (the file
    records them). New weights rebuild the function: the scalers must not be applied a second
    time (values were off by the scale factor), nor the recorded smoothness dropped (the ReLU
    Hessian warning went silent)."""
    ins, outs = sb.Affine([1.0, -2.0], [3.0, 0.5]), sb.Affine([10.0], [4.0])
    loaded = []
    for seed in (0, 1):
        sb.save(sb.Surrogate(mlp((2, 8, 1), nn.ReLU, seed=seed), ins, outs), tmp_path / "r.sbz")
        loaded.append(sb.load(tmp_path / "r.sbz"))
    back, other = loaded
    X = np.array([[0.3, -1.0], [2.0, 0.5], [-1.0, -3.0]])
    before = back(X)
    sb.update_weights(back, back._model.state_dict())  # the loaded module's own: w0, w1, ...
    np.testing.assert_array_equal(back(X), before)
    sb.update_weights(back, other._model.state_dict())
    np.testing.assert_array_equal(back(X), other(X))
    assert back.nonsmooth_ops == ("relu",) and back.input_scaler is not None
    with pytest.warns(sb.SmoothnessWarning, match="relu"):
        back.hess(X[0])


class Varied(nn.Module):
    """Many kinds of graph node (a norm, a gather, a reduction, a product) for the fuzz below."""

    def __init__(self):
        super().__init__()
        self.a, self.n, self.b = nn.Linear(2, 8), nn.LayerNorm(8), nn.Linear(8, 2)

    def forward(self, z):
        h = nn.functional.silu(self.n(self.a(z)))
        return self.b(h) + torch.sin(z)[:, [1, 0]] * z.sum(1, keepdim=True)


def _json_paths(doc, at=()):
    yield at
    if isinstance(doc, (dict, list)):
        items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    else:
        items = ()
    for k, v in items:
        yield from _json_paths(v, (*at, k))


def _mutated(doc, rng, words):
    """``doc`` with 1-3 random edits: a value replaced (by a number, a name, a tagged argument,
    a container), deleted, duplicated, or swapped with another part of the document."""
    values = [0, 1, -1, 3, 10**6, 2**63, 0.5, 1e308, float("nan"), None, True, [], {}, [0, -1],
              {"node": "x"}, {"kwargs": {"dim": -1}}, {"dtype": "torch.int64"}]  # fmt: skip
    paths = list(_json_paths(doc))[1:]
    for _ in range(rng.randint(1, 3)):
        at = rng.choice(paths)
        try:
            parent = doc
            for k in at[:-1]:
                parent = parent[k]
            key, edit = at[-1], rng.randrange(4)
            if edit == 0:
                parent[key] = rng.choice([*values, {"node": rng.choice(words)}, rng.choice(words)])
            elif edit == 1:
                del parent[key]
            elif edit == 2 and isinstance(parent, list):
                parent.insert(key, json.loads(json.dumps(parent[key])))
            else:
                other = doc
                for k in rng.choice(paths):
                    other = other[k]
                parent[key] = json.loads(json.dumps(other))
        except (KeyError, IndexError, TypeError):  # an earlier edit removed this path
            pass
    return doc


_RAW_PYTHON = ("unhashable", "object is not", "not iterable", "values to unpack", "invalid literal",
               "argument must be", "object has no attribute", "list index", "KeyError")  # fmt: skip


def test_randomly_edited_files_load_or_are_refused_clearly(tmp_path):
    """600 files, each one saved file with a few random edits to one member's JSON (the graph,
    the metadata, or the weights' header), rehashed as a forger would: every one either loads
    into a surrogate that evaluates, or is refused with a ValueError that says what is wrong in
    the loader's words (no bare KeyError, TypeError or RuntimeError from deep inside)."""
    import random

    torch.manual_seed(0)
    sur = sb.Surrogate(Varied().double(), domain=([-2, -2], [2, 2]))
    sb.save(sur, tmp_path / "base.sbz")
    with zipfile.ZipFile(tmp_path / "base.sbz") as zf:
        base = {n: zf.read(n) for n in zf.namelist()}
    (n,) = struct.unpack("<Q", base["weights.safetensors"][:8])
    weights = base["weights.safetensors"]
    header, data = json.loads(weights[8 : 8 + n]), weights[8 + n :]
    graph = json.loads(base["graph.json"])
    words = [w for node in graph["nodes"] for w in node[:2]] + list(header) + [graph["input"]]
    words += ["aten.expand.default", "aten.full.default", "aten.index.Tensor", "operator.mul"]
    refused, loaded = 0, 0
    for seed in range(600):
        rng = random.Random(seed)
        member = rng.choice(["graph.json", "graph.json", "meta.json", "weights.safetensors"])
        if member == "weights.safetensors":
            head = json.dumps(_mutated(json.loads(json.dumps(header)), rng, words)).encode()
            head += b" " * (-len(head) % 8)
            payload = struct.pack("<Q", len(head)) + head + data
        else:
            payload = json.dumps(_mutated(json.loads(base[member]), rng, words)).encode()
        path = rewrite(tmp_path / "base.sbz", tmp_path / "edited.sbz",
                       lambda m, d, member=member, payload=payload: payload if m == member else d,
                       rehash=member != "meta.json")  # fmt: skip
        try:
            back = sb.load(path)
        except ValueError as err:
            refused += 1
            text = str(err)
            assert text.startswith("load: ") and not any(w in text for w in _RAW_PYTHON), text
            continue
        loaded += 1
        x = np.array([0.3, -0.4])
        assert back(x).shape == back.jac(x)[:, 0].shape and back.hess(x).shape == (2, 2, 2)
        assert back(np.zeros((4, 2))).shape == (4, 2)
    assert refused > 400 and loaded > 10  # the edits reach deep, and some are harmless


@pytest.mark.filterwarnings("ignore::surrogate_bridge.diagnostics.SmoothnessWarning")
@settings(max_examples=15, deadline=None, derandomize=True, phases=[Phase.generate],
          suppress_health_check=list(HealthCheck))  # fmt: skip
@given(case=random_graphs())
def test_property_random_layer_graphs_round_trip(case, tmp_path_factory):
    """Random compositions of functions, masks and selections, norms, softmax, gathers and
    products, saved and loaded: the same values and derivatives (a 200-graph run agreed too)."""
    net, n_in = case
    sur = sb.Surrogate(net, n_in=n_in, point_route="torch", extrapolation="ignore")
    path = tmp_path_factory.mktemp("graphs") / "g.sbz"
    sb.save(sur, path)
    back = sb.load(path)
    for x in np.random.default_rng(2).normal(size=(2, n_in)):
        np.testing.assert_allclose(back.jac(x), sur.jac(x), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(back.hess(x), sur.hess(x), rtol=1e-12, atol=1e-15)


class _Recurrent(nn.Module):
    """A sequence model of three steps of two inputs: how dynamics surrogates are often built."""

    def __init__(self, cell):
        super().__init__()
        self.cell, self.head = cell(2, 6, batch_first=True), nn.Linear(6, 1)

    def forward(self, x):
        h, _ = self.cell(x.reshape(x.shape[0], 3, 2))
        return self.head(h[:, -1])


@pytest.mark.parametrize("cell", [nn.RNN, nn.GRU, nn.LSTM], ids=["rnn", "gru", "lstm"])
def test_recurrent_models_save_and_translate_quietly_and_exactly(cell, tmp_path):
    """torch.export notes the weight list these modules rebuild per call (an error here, under
    filterwarnings=error); the saved graph and the CasADi translation are the same function."""
    torch.manual_seed(0)
    sur = sb.Surrogate(_Recurrent(cell).double(), n_in=6)
    X = np.random.default_rng(0).normal(size=(5, 6))
    x = X[0]
    h = 1e-5
    fd = np.stack([(sur.grad(x + e) - sur.grad(x - e)) / (2 * h) for e in np.eye(6) * h])
    np.testing.assert_allclose(sur.hess(x), fd, atol=1e-8)
    sb.save(sur, tmp_path / "rnn.sbz")
    loaded = sb.load(tmp_path / "rnn.sbz")
    np.testing.assert_array_equal(loaded(X), sur(X))
    np.testing.assert_allclose(loaded.hess(X), sur.hess(X), rtol=1e-13, atol=1e-15)
    ca = pytest.importorskip("casadi")
    F = sb.casadi_function(sur, mode="symbolic")
    np.testing.assert_allclose(float(F(x)), sur(x), rtol=1e-14)
    J = ca.Function("J", [F.mx_in(0)], [ca.jacobian(F(F.mx_in(0)), F.mx_in(0))])
    np.testing.assert_allclose(np.array(J(x)).ravel(), sur.grad(x), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("route", ["torch", "numpy", "casadi"])
def test_load_takes_the_single_point_route(route, tmp_path):
    pytest.importorskip("casadi")
    X = np.random.default_rng(0).uniform(-2, 2, size=(20, 2))
    sur = sb.Surrogate(mlp([2, 16, 16, 1], nn.Tanh, seed=0), MinMaxScaler().fit(X))
    sb.save(sur, tmp_path / "r.sbz")
    loaded = sb.load(tmp_path / "r.sbz", point_route=route)
    assert loaded.point_route == route
    for x in X[:3]:
        assert loaded(x) == pytest.approx(sur(x), rel=1e-13)
        np.testing.assert_allclose(loaded.hess(x), sur.hess(x), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match=r"load: point_route='fast' is not valid"):
        sb.load(tmp_path / "r.sbz", point_route="fast")
