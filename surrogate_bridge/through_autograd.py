"""A forward that differentiates inside itself, captured as one graph.

A Hamiltonian network computes its field from the gradient of its energy, taken in its own
forward (``torch.autograd.grad`` on an input it marks as requiring grad, or
``torch.func.grad``). ``torch.export`` cannot capture that (it does not trace into autograd), so
such a model had no saved file, no symbolic CasADi translation and no numpy route.

torch's ``make_fx`` traces through autograd: run on a fake input (shapes only) with the weights
as they are, it records the forward and the backward operations autograd takes for it
(``tanh_backward``, ...) as one flat graph of aten operations, which ``torch.export`` then
captures like any other. A Python decision on the input's values fails there as in
``torch.export`` (data-dependent: the input is fake), so no branch on the input is fixed; one on
the weights' values is decided by their real values (as ``weight_reads.py`` decides it). The
shapes are fixed, so only the one-point graph (1, n) is made (a saved file runs it under
``vmap``), and it is used only where it computes the forward's values, to float64 rounding, at
the probe points.
"""

from __future__ import annotations

import logging

import torch

from .lowering import same_function

__all__ = ["through_autograd"]


class _Quiet(logging.Filter):
    """Drops torch's log of a trace that failed on a data-dependent decision (its graph so
    far): the caller reports the failure its own way."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


def through_autograd(module, example: torch.Tensor, probes: torch.Tensor):
    """``module`` at one point (``example``, (1, n)) traced through autograd and exported; None
    where the trace fails or does not compute ``module``'s values at ``probes`` (k, n)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    log, quiet = logging.getLogger("torch.fx.experimental.symbolic_shapes"), _Quiet()
    log.addFilter(quiet)
    try:
        traced = make_fx(module, tracing_mode="fake", _allow_non_fake_inputs=True)(example)
        _saved_values_attached(traced)
        program = torch.export.export(traced, (example,))
    except Exception:  # (torch's own error, of any type): the caller's first error stands
        return None
    finally:
        log.removeFilter(quiet)
    probes = probes.to(example.dtype)
    if not same_function(program, module, probes) or not _same_jacobian(program, module, probes):
        return None
    return program


def _saved_values_attached(traced) -> None:
    """The values autograd saved for the backward (tanh's output for ``tanh_backward``) appear
    in the trace as ``detach`` of them: the same values, but cut from the graph, where
    ``create_graph=True`` kept them attached (the field's derivative reads them). A detach
    that the forward itself made of a value of the input is refused before this (a cut graph,
    ``physical._first_derivatives``); of the weights, it changes nothing."""
    for node in list(traced.graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.detach.default:
            node.replace_all_uses_with(node.args[0])
            traced.graph.erase_node(node)
    traced.recompile()


def _same_jacobian(program, module, probes: torch.Tensor) -> bool:
    """Whether the graph's Jacobian is the forward's (autograd through each) at the first
    probe point: the values alone would not show a cut."""
    x = probes[:1]
    try:
        mine = torch.autograd.functional.jacobian(program.module(), x)
        theirs = torch.autograd.functional.jacobian(module, x)
    except Exception:  # (either fails to differentiate: not shown the same)
        return False
    scale = float(theirs.abs().max()) + 1.0
    return bool((mine - theirs).abs().max() <= 1e-10 * scale)
