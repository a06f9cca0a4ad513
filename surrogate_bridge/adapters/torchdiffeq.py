"""torchdiffeq adapter: the surrogate as a right-hand side ``f(t, y)`` for neural ODE simulation.

The right-hand sides are ``torch.nn.Module``s (``odeint_adjoint`` finds parameters through them)
that evaluate the surrogate's physical-units function on any batch shape, keep the state's shape,
dtype and device, and give exact batched Jacobians ``df/dy``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..derivatives import rowwise
from ..physical import deep_copy
from ..surrogate import Surrogate, require_surrogate, require_vector_field

__all__ = ["GradientFlow", "SurrogateRHS", "gradient_flow", "ode_rhs"]


class SurrogateRHS(nn.Module):
    """``dy/dt = f(y)`` (or ``f(t, y)``) from a surrogate; see :func:`ode_rhs`.

    ``forward(t, y)``: y of shape (n,) or (..., n) -> the same shape, dtype and device.
    ``jacobian(t, y)``: exact df/dy of shape y.shape[:-1] + (n, n).
    ``function``: with ``trainable=True``, the private copy evaluated and trained; else the
    surrogate's ``function`` (a copy handed out: changing it changes nothing here). The module
    evaluated otherwise is the surrogate's own, read at every call (so ``sb.update_weights``
    applies at once).
    """

    def __init__(self, sur: Surrogate, time_input: bool, trainable: bool) -> None:
        super().__init__()
        self.time_input, self._trainable = time_input, trainable
        self.dtype, self.device = sur.dtype, sur.device
        self._sur, self._copy, self.n = sur, None, None
        if sur.n_in is not None:  # else learned from the first state
            self._bind()

    @property
    def function(self) -> nn.Module | None:
        if self._trainable:
            return self._copy
        return None if self.n is None else self._sur.function

    def evaluated(self) -> nn.Module:
        """The module this right-hand side evaluates (bound)."""
        return self._copy if self._trainable else self._sur._own_function()

    def _verify(self, sur: Surrogate) -> None:
        require_vector_field(sur, "ode_rhs", self.time_input)

    def _bind(self) -> None:
        self._verify(self._sur)
        if self._trainable:  # a private trainable copy: the surrogate itself stays frozen
            fn = deep_copy(self._sur._own_function())
            for p in fn.parameters():
                p.requires_grad_(True)
            self._copy = fn
        self.n = self._sur.n_in - self.time_input

    def _check(self, y: torch.Tensor, where: str) -> None:
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"{where}: y must be a torch.Tensor, got {type(y).__name__}.")
        if self.n is None and y.ndim > 0:  # set up through the public call path
            self._sur(np.zeros(y.shape[-1] + self.time_input))
            self._bind()
        if y.ndim == 0 or y.shape[-1] != self.n:
            raise ValueError(
                f"{where}: y has shape {tuple(y.shape)}, expected (..., {self.n}) (the last "
                f"dimension holds the {self.n} states)."
            )
        if y.dtype != self.dtype or y.device != self.device:
            raise TypeError(
                f"{where}: y is {y.dtype} on {y.device}, the surrogate computes in {self.dtype} "
                f"on {self.device}. Convert y0 with .to({self.dtype}, '{self.device}'), or build "
                "the Surrogate with that dtype/device."
            )

    def _field(self, t: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """(B, n) states -> (B, n) derivatives."""
        if self.time_input:
            tt = torch.as_tensor(t, dtype=Y.dtype, device=Y.device).reshape(1, 1)
            Y = torch.cat([tt.expand(Y.shape[0], 1), Y], dim=1)
        return self.evaluated()(Y)

    def forward(self, t, y: torch.Tensor) -> torch.Tensor:
        self._check(y, f"{type(self).__name__}.forward")
        out = self._field(t, y.reshape(-1, self.n)).reshape(y.shape)
        wanted = y.requires_grad or getattr(t, "requires_grad", False) or self._trainable
        if not (wanted and torch.is_grad_enabled()):  # a forward that differentiates inside
            out = out.detach()  # (a Hamiltonian network) keeps a graph no one asked for
        return out

    def jacobian(self, t, y: torch.Tensor) -> torch.Tensor:
        """Exact df/dy: (n, n) for one state, y.shape[:-1] + (n, n) for a batch."""
        self._check(y, f"{type(self).__name__}.jacobian")
        Y = y.detach().reshape(-1, self.n)
        J = rowwise(lambda Z: self._field(t, Z), Y, 1, create_graph=False)[1]
        return J.reshape(*y.shape[:-1], self.n, self.n)


class GradientFlow(SurrogateRHS):
    """``dy/dt = -grad V(y)`` for a scalar surrogate V; see :func:`gradient_flow`."""

    def __init__(self, sur: Surrogate, trainable: bool) -> None:
        super().__init__(sur, time_input=False, trainable=trainable)

    def _verify(self, sur: Surrogate) -> None:
        if sur.n_out != 1:
            raise ValueError(
                f"gradient_flow: V must be scalar (n_out == 1); this surrogate has n_out = "
                f"{sur.n_out}. For a vector field use sb.ode_rhs(sur)."
            )

    def _field(self, t, Y: torch.Tensor) -> torch.Tensor:
        # differentiable when the caller differentiates (odeint backprop, the adjoint's VJPs) with
        # respect to the state or trainable parameters; plain values otherwise (the adjoint's
        # forward solve runs under no_grad, where a state may still say requires_grad)
        trainable = any(p.requires_grad for p in self.evaluated().parameters())
        keep = torch.is_grad_enabled() and (Y.requires_grad or trainable)
        return -rowwise(self.evaluated(), Y, 1, create_graph=keep)[1][:, 0, :]


def ode_rhs(sur: Surrogate, time_input: bool = False, *, trainable: bool = False) -> SurrogateRHS:
    """The surrogate as a torchdiffeq right-hand side ``f(t, y)``.

    Parameters
    ----------
    sur : Surrogate
        A vector field: n_out == n_in states, or n_in == n_out + 1 with ``time_input=True``.
    time_input : bool
        The surrogate's first input is t.
    trainable : bool
        Parameters frozen by default (gradients flow to y0 and t only); True makes a private
        trainable copy (``rhs.function.model``) for fine-tuning through the solver.

    Returns
    -------
    SurrogateRHS
        A ``torch.nn.Module``: ``rhs(t, y)`` for ``torchdiffeq.odeint``/``odeint_adjoint``, with
        y of shape (n,) or (..., n) in the surrogate's dtype and on its device, and
        ``rhs.jacobian(t, y)`` for the exact df/dy.

    Examples
    --------
    >>> import math, torch, torchdiffeq, surrogate_bridge as sb
    >>> lin = torch.nn.Linear(1, 1, bias=False)
    >>> _ = torch.nn.init.constant_(lin.weight, -1.0)
    >>> rhs = sb.ode_rhs(sb.Surrogate(lin))
    >>> t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    >>> y0 = torch.ones(4, 1, dtype=torch.float64)
    >>> y = torchdiffeq.odeint(rhs, y0, t, rtol=1e-10, atol=1e-12)
    >>> y.shape, bool(abs(y[-1, 0, 0] - math.exp(-1)) < 1e-8)
    (torch.Size([2, 4, 1]), True)
    """
    require_surrogate(sur, "ode_rhs", ready=False)
    return SurrogateRHS(sur, time_input, trainable)


def gradient_flow(sur: Surrogate, *, trainable: bool = False) -> GradientFlow:
    """Descent dynamics ``dy/dt = -grad V(y)`` of a scalar surrogate V, as a torchdiffeq
    right-hand side (differentiable: usable in ``odeint`` backprop and ``odeint_adjoint``).

    Along its trajectories V never increases, which makes it a check of a learned Lyapunov
    function; ``jacobian(t, y)`` is the exact ``-Hessian of V``.

    Examples
    --------
    >>> import torch, torchdiffeq, surrogate_bridge as sb
    >>> class Bowl(torch.nn.Module):
    ...     def forward(self, z):
    ...         return (z ** 2).sum(-1)
    >>> flow = sb.gradient_flow(sb.Surrogate(Bowl(), n_in=2))
    >>> y = torchdiffeq.odeint(flow, torch.ones(2, dtype=torch.float64),
    ...                        torch.linspace(0, 5, 3, dtype=torch.float64))
    >>> bool(y[-1].abs().max() < 1e-3)
    True
    """
    require_surrogate(sur, "gradient_flow", ready=False)
    return GradientFlow(sur, trainable)
