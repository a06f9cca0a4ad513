"""New weights for an existing surrogate, swapped in whole so that threads sharing it never see
half of them; everything built on the surrogate (solvers, callbacks) follows without a rebuild.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .convert import outside_inference
from .estimators import from_estimator
from .physical import frozen_copy
from .projections import unwrap
from .surrogate import Surrogate, require_surrogate
from .weight_reads import changed_read

__all__ = ["update_weights"]


@outside_inference
def update_weights(sur: Surrogate, source: nn.Module | Mapping[str, Any]) -> None:
    """Load new weights into a surrogate: ``source`` is a model of the same architecture or its
    ``state_dict``. Scalers and settings stay; the cache is cleared and the single-point route
    measured again. Everything that calls back into the surrogate sees the new weights at its
    next evaluation without being rebuilt: CasADi callback Functions and the IPOPT solvers
    built on them (``F.update(source)`` is this), scipy callbacks, ``sb.ode_rhs`` right-hand
    sides. Symbolic CasADi Functions hold their weights as constants: rebuild those. The model
    ``source`` is only read. Safe while other threads evaluate the surrogate: the new weights go
    into a fresh private copy, swapped in whole; a call in flight finishes with the old ones.

    Examples
    --------
    >>> import numpy as np, torch, surrogate_bridge as sb
    >>> sur = sb.Surrogate(torch.nn.Linear(2, 1))
    >>> new = torch.nn.Linear(2, 1)
    >>> sb.update_weights(sur, new)
    >>> bool(np.isclose(sur([1.0, 2.0]), new(torch.tensor([1.0, 2.0])).item()))
    True
    """
    require_surrogate(sur, "update_weights")
    inner = unwrap(sur._model)
    if not isinstance(inner, nn.Module):
        raise TypeError("update_weights: this surrogate's model is a plain function: no weights.")
    # (an exported program's, a skorch net's or an MLPRegressor's weights: its module's)
    source, _, _ = from_estimator(source, None, None, "update_weights")
    state = source.state_dict() if isinstance(source, nn.Module) else source
    if not hasattr(state, "items"):
        raise TypeError(
            f"update_weights: source must be a torch model or its state_dict, got "
            f"{type(source).__name__}."
        )
    fresh = frozen_copy(sur._model, sur.dtype, sur.device)  # the weights in use stay untouched
    # (a projection or a column order wraps the model: the weights are the model's own)
    target = unwrap(fresh)
    own = target.state_dict()
    moved = {
        k: torch.as_tensor(v).to(own[k].device, own[k].dtype) if k in own else v
        for k, v in state.items()
    }
    try:
        with torch.no_grad():
            target.load_state_dict(moved, strict=True)
    except RuntimeError as err:
        said = " ".join(str(err).split())[:300]  # torch's own lines: which keys, which shapes
        raise ValueError(
            f"update_weights: the new weights do not fit the surrogate's model: {said} (same "
            "architecture, same parameter names and shapes)"
        ) from err
    try:
        sur._setup(sur.n_in, fresh, sur.nonsmooth_ops)  # the same layers: the same smoothness
    except ValueError as err:  # a loaded graph fixed a branch on its weights that these change
        if (why := changed_read(err)) is None:
            raise
        raise ValueError(f"update_weights: {why}") from err
