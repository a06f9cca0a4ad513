"""surrogate_bridge: a trained PyTorch surrogate, handed to solvers with exact derivatives.

A :class:`Surrogate` bakes input scaling and output unscaling into one differentiable torch
function of physical inputs; adapters hand it to scipy.optimize, CasADi and torchdiffeq.
"""

from importlib.metadata import PackageNotFoundError, version

from .adapters.scipy import minimize, scipy_constraint, scipy_ode
from .cache import CacheInfo
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
from .normalization import Affine
from .surrogate import Surrogate
from .threads import limit_threads
from .training import fit

# optional extras: imported on first use, so a missing casadi or torchdiffeq only matters there
_LAZY = {
    "casadi_function": "adapters.casadi",
    "CasadiFallbackWarning": "adapters.casadi",
    "ode_rhs": "adapters.torchdiffeq",
    "gradient_flow": "adapters.torchdiffeq",
}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'surrogate_bridge' has no attribute {name!r}")


try:
    __version__ = version("surrogate-bridge")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [  # noqa: RUF022 (public names, then the lazily imported adapters)
    "Affine",
    "CacheInfo",
    "DerivativeReport",
    "ExtrapolationError",
    "ExtrapolationWarning",
    "PrecisionWarning",
    "SmoothnessWarning",
    "Surrogate",
    "__version__",
    "check_derivatives",
    "derivatives",
    "fit",
    "limit_threads",
    "load",
    "minimize",
    "save",
    "scipy_constraint",
    "scipy_ode",
    "casadi_function",
    "CasadiFallbackWarning",
    "ode_rhs",
    "gradient_flow",
]
