"""surrogate_bridge: a trained PyTorch surrogate, handed to solvers with exact derivatives.

A :class:`Surrogate` bakes input scaling and output unscaling into one differentiable torch
function of physical inputs; adapters hand it to scipy.optimize, CasADi and torchdiffeq.
"""

from importlib.metadata import PackageNotFoundError as _NotInstalled
from importlib.metadata import version as _version
from importlib.util import find_spec as _find_spec

from . import distributed, lyapunov
from .adapters.scipy import minimize, scipy_constraint, scipy_ode
from .derivatives import derivatives
from .diagnostics import (
    DerivativeReport,
    ExtrapolationError,
    ExtrapolationWarning,
    PrecisionWarning,
    SmoothnessWarning,
    check_derivatives,
)
from .io import load, save
from .multistart import multistart
from .normalization import Affine
from .points import CacheInfo
from .scaling import Scaling, Warp
from .surrogate import Surrogate
from .threads import limit_threads
from .training import fit, mlp
from .weights import update_weights

# optional extras, imported on first use: name -> (module, the package it needs)
_LAZY = {
    "casadi_function": ("adapters.casadi", "casadi"),
    "CasadiFallbackWarning": ("adapters.casadi", "casadi"),
    "ode_rhs": ("adapters.torchdiffeq", "torchdiffeq"),
    "gradient_flow": ("adapters.torchdiffeq", "torchdiffeq"),
}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name][0]}", __name__), name)
    raise AttributeError(f"module 'surrogate_bridge' has no attribute {name!r}")


def __dir__() -> list[str]:  # the lazy adapters too, for tab completion; not the plumbing
    return sorted(set(__all__) | set(_LAZY) | {n for n in globals() if not n.startswith("_")})


try:
    __version__ = _version("surrogate-bridge")
except _NotInstalled:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "Affine",
    "CacheInfo",
    "DerivativeReport",
    "ExtrapolationError",
    "ExtrapolationWarning",
    "PrecisionWarning",
    "Scaling",
    "SmoothnessWarning",
    "Surrogate",
    "Warp",
    "__version__",
    "check_derivatives",
    "derivatives",
    "distributed",
    "fit",
    "limit_threads",
    "load",
    "lyapunov",
    "minimize",
    "mlp",
    "multistart",
    "save",
    "scipy_constraint",
    "scipy_ode",
    "update_weights",
]
# adapters whose extra is installed: `from surrogate_bridge import *` never fails on a missing one
__all__ += [name for name, (_, needs) in _LAZY.items() if _find_spec(needs) is not None]
