"""A saved file's graph as data (``graph.json``), and the interpreter that runs it.

``graph_to_data`` writes an exported program as JSON-able nodes ``[name, target, args,
kwargs]`` (tensors by name, arguments tagged by kind) after lowering any composite operation
to allowed ones (``lowering.lowered``: torch's own decompositions, checked to be the same
function). :class:`SavedGraph` reads such nodes back and runs them, calling only the aten
operations of the allowed list (``ALLOWED``: pure tensor math, shapes and run-time checks) and
a few Python operators of shape arithmetic on numbers: a file can name no Python function to
run. Before a loaded graph computes anything, :meth:`SavedGraph.check_shapes` runs it on
torch's ``meta`` device (shapes only, no memory), so a file whose graph does not fit its stated
sizes, or would allocate a huge tensor, is refused before it allocates one.
"""

from __future__ import annotations

import operator
from functools import cache

import torch
from torch import nn

from .lowering import constant, lowered

__all__ = ["CODES", "DTYPES", "Refused", "SavedGraph", "graph_to_data"]

DTYPES = {  # safetensors' dtype codes
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
CODES = {v: k for k, v in DTYPES.items()}
_FORMATS = {"contiguous_format": torch.contiguous_format, "preserve_format": torch.preserve_format}
_MAX_ELEMENTS = 2**28  # per tensor of a graph run on its probe rows: 2 GiB in float64
_FACTORIES = frozenset({"full", "zeros", "ones", "scalar_tensor"})  # made on the run's device
_PYTHON_OPS = {  # shape arithmetic that torch.export records for a dynamic batch
    "getitem": operator.getitem, "add": operator.add, "sub": operator.sub,
    "mul": operator.mul, "floordiv": operator.floordiv, "truediv": operator.truediv,
    "neg": operator.neg,
}  # fmt: skip
# aten operations a saved graph may call: pure tensor math, shapes and run-time checks
ALLOWED = frozenset(
    """linear addmm mm bmm matmul mv t transpose permute numpy_T add sub rsub mul div neg pow square
    sqrt rsqrt reciprocal exp exp2 log log2 log10 log1p expm1 sin cos tan asin acos atan atan2
    sinh cosh tanh asinh acosh atanh sigmoid silu softplus elu selu celu gelu erf erfc erfinv lgamma
    digamma abs sign xlogy special_xlogy
    floor ceil round trunc frac remainder fmod relu relu6 leaky_relu hardtanh hardswish
    hardsigmoid mish log_sigmoid prelu threshold clamp clamp_min clamp_max maximum minimum where
    gt ge lt le eq ne logical_and logical_or logical_not any all sum cumsum mean amax amin prod
    logsumexp max min sort topk kthvalue median cumprod cummax cummin logcumsumexp copysign
    isnan addmv unfold special_erfcx i0 linalg_solve _linalg_solve_ex linalg_inv linalg_inv_ex
    _linalg_check_errors
    softmax _softmax log_softmax _log_softmax layer_norm native_layer_norm batch_norm
    _native_batch_norm_legit_no_training linalg_vector_norm norm conv1d conv2d convolution cat
    concat stack split split_with_sizes chunk unbind slice select index index_select gather
    narrow constant_pad_nd slice_scatter select_scatter view reshape _unsafe_view unsqueeze
    squeeze flatten expand expand_as repeat flip clone copy alias detach detach_ contiguous
    _to_copy to lift_fresh_copy dropout
    full full_like zeros zeros_like ones ones_like scalar_tensor arange tril triu sym_size
    _assert_tensor_metadata _assert_scalar _assert_async sym_constrain_range
    sym_constrain_range_for_size""".split()
)


class Refused(Exception):
    """A check of a loaded file failed; the message says which."""


# graph <-> data -------------------------------------------------------------------------------
def graph_to_data(program, probes: torch.Tensor) -> tuple[dict, dict[str, torch.Tensor]]:
    """The exported program as JSON-able nodes, and its weights by placeholder name; composite
    operations outside the allowed list are first lowered (checked at ``probes``, (k, n))."""
    program = lowered(program, _allowed, probes)
    state = {**program.state_dict, **program.constants}
    tensors, user_inputs = {}, []
    for spec in program.graph_signature.input_specs:
        if spec.kind.name == "USER_INPUT":
            user_inputs.append(spec.arg.name)
        elif spec.kind.name != "TOKEN":  # (an effect's order token: its operation is refused)
            value = state[spec.target]
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"save: {spec.target} is a {type(value).__name__}, not a tensor.")
            if value.is_meta:  # data-free (a torch.func ensemble's base module): never read
                continue
            tensors[spec.arg.name] = value.detach().cpu().contiguous()
    consts = dict(tensors)  # values of the nodes that do not depend on x, as found
    nodes, output = [], None
    for node in program.graph.nodes:
        if node.op == "call_function":
            value = constant(node, consts)
            if isinstance(value, torch.Tensor) and not _allowed(node.target):
                # a weight computed from weights by an operation a file may not hold (an
                # orthogonal parametrization's matrix_exp): saved as the weight it computes
                tensors[node.name] = value.detach().cpu().contiguous()
                continue
            target = _target_name(node.target)
            nodes.append([node.name, target, _encode(node.args), _encode(dict(node.kwargs))])
        elif node.op == "output":
            (out,) = node.args[0]
            output = out.name
    nodes, tensors = _used(nodes, tensors, output)
    return {"input": user_inputs[0], "nodes": nodes, "output": output}, tensors


def _used(nodes: list, tensors: dict, output: str) -> tuple[list, dict]:
    """The nodes and weights that the output and the weights' checks read, directly or through
    other nodes (those a folded weight alone read are left out)."""
    reads = {}
    for name, _, args, kwargs in nodes:
        found: set = set()
        _names((args, kwargs), found)
        reads[name] = found
    # (a check that the weights give what the model's Python read from them is kept, with
    # what it reads: weight_reads.py)
    needed, todo = set(), [output, *(n[0] for n in nodes if n[1] == "aten._assert_async.msg")]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(reads.get(name, ()))
    # (a run-time check of torch.export's is kept where what it checks is)
    checks = {
        n[0] for n in nodes if n[1].split(".")[1].startswith("_assert") and reads[n[0]] <= needed
    }
    kept = [n for n in nodes if n[0] in needed | checks]
    return kept, {k: v for k, v in tensors.items() if k in needed}


def _names(a, found: set) -> None:
    """The node names an encoded argument refers to, added to ``found``."""
    if isinstance(a, (list, tuple)):
        for b in a:
            _names(b, found)
    elif isinstance(a, dict):
        if "node" in a and len(a) == 1:
            found.add(a["node"])
        else:
            for b in a.values():
                _names(b, found)


def _allowed(target) -> bool:
    name = str(target)
    return name.startswith("aten.") and name.split(".")[1] in ALLOWED


def _target_name(target) -> str:
    name = str(target)
    if _allowed(target):
        return name
    py = getattr(target, "__name__", "")
    if getattr(target, "__module__", "") in ("_operator", "operator") and py in _PYTHON_OPS:
        return f"operator.{py}"
    raise ValueError(
        f"save: the model's graph calls {name}, which a saved file may not contain (only plain "
        "aten tensor operations are saved, so that loading can never run code)."
    )


def _encode(a):
    if isinstance(a, torch.fx.Node):
        return {"node": a.name}
    if a is None or isinstance(a, (bool, int, float, str)):
        return a
    if isinstance(a, (list, tuple)):
        return [_encode(b) for b in a]
    if isinstance(a, dict):
        return {"kwargs": {k: _encode(v) for k, v in a.items()}}
    if isinstance(a, torch.dtype):
        return {"dtype": CODES[a]}
    if isinstance(a, torch.device):
        return {"device": None}  # the loading surrogate's device
    if isinstance(a, torch.memory_format):
        return {"memory_format": str(a).removeprefix("torch.")}
    if isinstance(a, torch.layout):
        return {"layout": "strided"}
    raise ValueError(f"save: a graph argument of type {type(a).__name__} cannot be saved.")


def _decode(a, env: dict, device):
    if isinstance(a, list):
        return [_decode(b, env, device) for b in a]
    if not isinstance(a, dict):
        return a
    ((kind, value),) = a.items()
    if kind == "node":
        return env[value]
    if kind == "kwargs":
        return {k: _decode(v, env, device) for k, v in value.items()}
    if kind == "dtype":
        return DTYPES[value]
    if kind == "device":
        return device
    if kind == "memory_format":
        return _FORMATS[value]
    if kind == "layout":
        return torch.strided
    raise Refused(f"unknown argument kind {kind!r}")


_KINDS = {"node", "kwargs", "dtype", "device", "memory_format", "layout"}


def _check_arg(a, known: set) -> None:
    """An encoded argument is plain JSON, or a tagged value of a known kind whose node exists."""
    if isinstance(a, list):
        for b in a:
            _check_arg(b, known)
    elif isinstance(a, dict):
        if len(a) != 1 or next(iter(a)) not in _KINDS:
            raise Refused(f"unknown argument {str(a)[:60]}")
        ((kind, value),) = a.items()
        named = isinstance(value, str)  # a node, dtype or format is named by a string
        ok = {
            "node": lambda: named and value in known,
            "kwargs": lambda: isinstance(value, dict),
            "dtype": lambda: named and value in DTYPES,
            "memory_format": lambda: named and value in _FORMATS,
        }.get(kind, lambda: True)()
        if not ok:
            raise Refused(f"argument {str(a)[:60]} refers to nothing known")
        if kind == "kwargs":
            for v in value.values():
                _check_arg(v, known)
    elif not (a is None or isinstance(a, (bool, int, float, str))):
        raise Refused(f"argument of type {type(a).__name__}")


def _arithmetic(name: str):
    """A Python operator of the graph, on numbers only: a file cannot multiply a string or a list
    into gigabytes, or square an integer into one."""
    f = _PYTHON_OPS[name]
    numbers = (bool, int, float, torch.SymInt, torch.SymFloat)

    def checked(*args):
        if name == "getitem":
            ok = isinstance(args[0], (list, tuple)) and isinstance(args[1], int)
        else:
            ok = all(isinstance(a, numbers) for a in args)
        if not ok:
            kinds = ", ".join(type(a).__name__ for a in args)
            raise Refused(f"operator.{name} of ({kinds}): shape arithmetic takes numbers only")
        out = f(*args)
        if isinstance(out, int) and abs(out) > 2**63:
            raise Refused(f"operator.{name} gives an integer beyond 64 bits")
        return out

    return checked


@cache
def _op(target: str):
    """An allowed operation by name; anything else is refused."""
    parts = target.split(".")
    if parts[0] == "operator" and len(parts) == 2 and parts[1] in _PYTHON_OPS:
        return _arithmetic(parts[1])
    if parts[0] != "aten" or len(parts) != 3 or parts[1] not in ALLOWED:
        raise Refused(f"the graph calls {target!r}, which is not an allowed operation")
    packet = getattr(torch.ops.aten, parts[1])
    if parts[2] not in packet.overloads():
        raise Refused(f"aten.{parts[1]} has no overload {parts[2]!r}")
    return _DIFFERENTIABLE.get(target, getattr(packet, parts[2]))


def _copy(dst: torch.Tensor, src: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
    """``aten.copy`` (an in-place call of the forward, as export records it: ``src``'s values
    in ``dst``'s shape and dtype), in operations torch can differentiate: it cannot
    differentiate ``aten.copy`` itself."""
    return src.to(dst.dtype).expand_as(dst).clone()


_DIFFERENTIABLE = {"aten.copy.default": _copy}


class SavedGraph(nn.Module):
    """A loaded graph: (N, n_in) -> (N, n_out), interpreted node by node from data.

    Every target was checked against the allowed operations when the module was built; the
    weights are buffers. ``one_point`` graphs were captured on a single (1, n_in) point and run
    here under ``torch.func.vmap``. ``nonsmooth_calls`` names the non-smooth torch functions the
    saved model called (``diagnostics.NONSMOOTH``), which its aten operations no longer show.
    """

    def __init__(
        self, graph: dict, tensors: dict[str, torch.Tensor], one_point: bool,
        nonsmooth_calls: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        super().__init__()
        self.nonsmooth_calls = tuple(nonsmooth_calls)
        if not isinstance(graph, dict) or sorted(graph) != ["input", "nodes", "output"]:
            raise Refused("graph.json is not an object of input, nodes and output")
        if not isinstance(graph["nodes"], list):
            raise Refused("graph.json has no node list")
        self._names = {}
        for i, (name, t) in enumerate(tensors.items()):
            self.register_buffer(f"w{i}", t)
            self._names[name] = f"w{i}"
        self.input, self.output, self.one_point = graph["input"], graph["output"], one_point
        if not isinstance(self.input, str) or not isinstance(self.output, str):
            raise Refused("the graph's input and output must be named by strings")
        self.nodes = []
        known = {self.input, *self._names}
        for i, node in enumerate(graph["nodes"]):  # refuse anything malformed now
            if not (isinstance(node, list) and len(node) == 4 and isinstance(node[0], str)):
                raise Refused(f"node {i} is not [name, target, args, kwargs]: {str(node)[:60]}")
            name, target, args, kwargs = node
            if not isinstance(target, str):
                raise Refused(f"node {name!r} names its operation by a {type(target).__name__}")
            _op(target)
            _check_arg(args, known)
            _check_arg(kwargs, known)
            if not isinstance(args, list) or not (isinstance(kwargs, dict) and "kwargs" in kwargs):
                raise Refused(f"node {name!r} has malformed arguments")
            op_name = target.split(".")[1]
            if op_name == "_assert_tensor_metadata":  # torch.export's record of a dtype that
                continue  # held when captured: weights may be in another dtype now (dtype=)
            self.nodes.append((name, target, args, kwargs, op_name in _FACTORIES))
            known.add(name)
        if self.output not in known:
            raise Refused(f"the graph's output {self.output!r} is not one of its nodes")

    def _run(self, x: torch.Tensor, env: dict | None = None, each=None) -> torch.Tensor:
        """The graph at ``x``; ``env`` replaces the weights, and ``each(name, target, value)``
        sees every node's value as it is made."""
        if env is None:
            env = {name: getattr(self, attr) for name, attr in self._names.items()}
        else:
            env = dict(env)  # the caller's stays as it was
        env[self.input] = x
        for name, target, args, kwargs, factory in self.nodes:
            kw = _decode(kwargs, env, x.device)
            if factory:
                kw.setdefault("device", x.device)  # a constant of the graph, made where x is
            env[name] = _op(target)(*_decode(args, env, x.device), **kw)
            if each is not None:
                each(name, target, env[name])
        return env[self.output]

    def check_shapes(self, n_in: int, n_out: int, dtype: torch.dtype, rows: int = 3) -> None:
        """Run the graph on torch's ``meta`` device (shapes only: nothing is allocated) on
        ``rows`` points of ``n_in`` inputs; refuse it, naming the node, if an operation fails,
        a tensor would hold more than ``_MAX_ELEMENTS`` numbers, or the output is not
        (rows, n_out)."""
        meta = torch.device("meta")
        rows = 1 if self.one_point else rows  # a one-point graph was captured on one row
        x = torch.empty(rows, n_in, dtype=dtype, device=meta)

        def bounded(name, target, value):
            for t in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(t, torch.Tensor) and t.numel() > _MAX_ELEMENTS:
                    raise Refused(
                        f"node {name!r} ({target}) makes a tensor of shape {tuple(t.shape)} on "
                        f"{rows} point(s): more than {_MAX_ELEMENTS} numbers"
                    )

        weights = {name: getattr(self, attr).to(meta) for name, attr in self._names.items()}
        try:
            with torch.device(meta):
                out = self._run(x, weights, bounded)
        except Refused:
            raise
        except Exception as err:  # the operation's own message says what did not fit
            raise Refused(
                f"the graph does not run on {rows} point(s) of {n_in} inputs: "
                f"{type(err).__name__}: {str(err)[:200]}"
            ) from err
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        if shape != (rows, n_out):
            raise Refused(f"the graph gives {shape} on {rows} point(s), not ({rows}, {n_out})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.one_point and x.shape[0] != 1:  # one row is the captured graph itself, so
            return torch.func.vmap(lambda r: self._run(r[None])[0])(x)  # it exports without vmap
        return self._run(x)
