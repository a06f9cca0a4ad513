"""surrogate_bridge: a trained PyTorch surrogate, handed to solvers with exact derivatives.

A :class:`Surrogate` bakes input scaling and output unscaling into one differentiable torch
function of physical inputs; adapters hand it to scipy.optimize, CasADi and torchdiffeq.
"""

from importlib.metadata import PackageNotFoundError, version

from .cache import CacheInfo
from .derivatives import derivatives
from .diagnostics import (
    DerivativeReport,
    ExtrapolationError,
    ExtrapolationWarning,
    SmoothnessWarning,
    check_derivatives,
)
from .io import load, save
from .normalization import Affine
from .surrogate import Surrogate

try:
    __version__ = version("surrogate-bridge")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "Affine",
    "CacheInfo",
    "DerivativeReport",
    "ExtrapolationError",
    "ExtrapolationWarning",
    "SmoothnessWarning",
    "Surrogate",
    "__version__",
    "check_derivatives",
    "derivatives",
    "load",
    "save",
]
