"""Python that reads a model's own weights (``if self.alpha == 0.0``, ``self.scale.item()``),
fixed in its exported graph.

A learnable activation may branch on its parameter's value (neuromancer's ``SoftExponential``,
the default activation of its ``blocks.MLP``: ``if alpha == 0.0: ... elif alpha < 0.0: ...``)
or read a weight as a Python number. ``torch.export`` traces weights as symbols, cannot decide
such a branch, and gives up ("data-dependent"), and with it the saved file, the CasADi
translation and the numpy route. A surrogate's weights are constants, so the branch is decided.
:func:`recorded` runs the model under ``torch.func.vmap`` and records, in order, every
Python value its forward takes from a tensor (``bool``, ``.item()``, ``float``, ``.tolist()``,
``torch.equal``, ...). Under ``vmap`` whatever is computed from the input is batched, and such a
read raises: a read that succeeds is of weights alone. (torch's own way,
``fake_tensor_propagate_real_tensors``, has no real values for the weights: it decided
``alpha == 0.0`` False at alpha = 0.) Then ``torch.export`` captures the model while the same
reads are answered with the recorded values (:func:`captured`; without reads, torch.export
alone), so the graph holds the branch taken, and each read
leaves a check in the graph: ``aten._assert_async`` that the weights still give that value.
New weights rebuild a surrogate's graphs (``update_weights``); a loaded file's graph is the
file's, so there the check refuses weights that would take another branch rather than compute
a wrong one.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from .diagnostics import OpRecorder

__all__ = ["captured", "changed_read", "recorded"]

# what a forward's Python takes from a tensor: a branch (bool), or a number it computes with
_READS = frozenset({
    torch.Tensor.__bool__, torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.__int__,
    torch.Tensor.__index__, torch.Tensor.tolist, torch.equal, torch.is_nonzero,
})  # fmt: skip
_RELATIVE = 1e-6  # a float read is checked to this: a file's weights may be loaded in float32
_CHANGED = "the graph was captured where the model's forward read "


def recorded(module, example: torch.Tensor) -> list | None:
    """The values ``module``'s Python reads from its weights at ``example``, in order (none:
    ``[]``); None where it reads from its input, or where neither reading run works
    (``torch.export`` alone is tried then, and says what it says). The first run is under
    ``vmap``; a forward that ``vmap`` cannot run (one that writes its input into a tensor of
    its own in place, as torchdiffeq's solvers do with the state) is run once more, every
    tensor not shown constant taken for one computed from the input (:class:`_ConstantReads`)."""
    for record in (_Record(), _ConstantReads(module)):
        try:
            with warnings.catch_warnings(), record:
                warnings.simplefilter("ignore")  # (vmap's notes on its fallbacks: not the user's)
                if isinstance(record, _ConstantReads):
                    module(example)
                else:
                    torch.func.vmap(module)(example[None])
        except _ReadsInput:
            return None
        except Exception:  # (the model's own error, of any type, or vmap's): the next run
            continue
        return record.reads
    return None


def captured(module, example: torch.Tensor, dynamic, reads: list):
    """``module`` exported at ``example`` with its ``reads`` (:func:`recorded`) answered and
    checked in the graph."""
    with _Replay(reads):
        return torch.export.export(module, (example,), dynamic_shapes=dynamic)


class _Record(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        value = func(*args, **(kwargs or {}))
        if func in _READS:
            self.reads.append((func, value))
        return value


class _ReadsInput(Exception):
    """A forward's Python read a value computed from its input: no one graph computes it."""


class _ConstantReads(OpRecorder):
    """Records the reads of a plain run, with the smoothness probe's account of which tensors
    are constants (:class:`~surrogate_bridge.diagnostics.OpRecorder`: the weights and what
    they alone compute; a tensor written in place with anything else, and every view of it,
    is not): a read of any other tensor raises :class:`_ReadsInput`."""

    def __init__(self, module) -> None:
        weights = [*module.parameters(), *module.buffers()] if isinstance(module, nn.Module) else []
        super().__init__(weights)
        self.reads: list = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func not in _READS:
            return super().__torch_function__(func, types, args, kwargs)
        if not all(self._constant(t) for t in tree_leaves(args) if isinstance(t, torch.Tensor)):
            raise _ReadsInput(func.__name__)
        value = func(*args, **(kwargs or {}))
        self.reads.append((func, value))
        return value


class _Replay(TorchFunctionMode):
    """Answers the reads with the recorded values, in order (again from the first, should the
    tracer run the forward twice), each leaving its check in the graph."""

    def __init__(self, reads: list) -> None:
        super().__init__()
        self.reads, self.next = reads, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func not in _READS:
            return func(*args, **(kwargs or {}))
        recorded, value = self.reads[self.next % len(self.reads)]
        self.next += 1
        if recorded is not func:
            raise ValueError(
                f"the model's forward read its weights with {func.__name__} where it read them "
                f"with {recorded.__name__} before: its Python decides differently each call"
            )
        _check(func, args, value)
        return value


def _check(func, args, value) -> None:
    """``_assert_async``, in the graph, that the weights still give ``value``."""
    if func is torch.equal:
        a, b = args[0], args[1]
        if a.shape != b.shape:  # (shapes are fixed in the graph: nothing to check)
            return
        got, value = (a == b).all(), bool(value)
    else:
        got = args[0]
        if isinstance(value, list):
            value = torch.tensor(value, dtype=got.dtype)
    if got.is_floating_point():
        same = (got - value).abs() <= _RELATIVE * torch.as_tensor(value).abs()
    else:
        same = got == value
    torch._assert_async(
        same.all(),
        f"{_CHANGED}{value!r} from its weights (an if, .item() or float() on them); these "
        "weights give another value, so the graph does not compute the model with them: save "
        "the surrogate again from a model with these weights",
    )


def changed_read(err: BaseException | None) -> str | None:
    """The message of a graph's check that new weights no longer give a value its model's
    Python read (:func:`_check`), where ``err`` or its causes hold one; else None."""
    while err is not None:
        text = str(err)
        if _CHANGED in text:
            return text[text.index(_CHANGED) :].split(". Check n_in")[0]
        err = err.__cause__ or err.__context__
    return None
