"""Lyapunov analysis with exact derivatives: falsification and regions of attraction.

For a scalar surrogate ``V`` and a vector field ``f`` (n -> n) with equilibrium ``x*``, the
Lyapunov conditions at a point x outside a small ball around ``x*`` are, as margins that are
positive where the condition holds:

    positivity   p(x) = V(x) - V(x*)                           > 0
    decrease     d(x) = -(grad V(x) . f(x) + decay |x - x*|^2) > 0

Both margins and their gradients (the gradient of V-dot is ``H_V f + J_f^T grad V``) are exact
through torch autograd, for a whole batch of points in one pass. :func:`falsify` hunts for points
where a margin is <= 0: a dense quasi-random sample of the region seeds a joint L-BFGS-B over many
starts (the multistart engine), which minimizes each margin divided by ``|x - x*|^2`` (so that
searches are not drawn into the equilibrium, where both margins vanish). Every counterexample it
returns is re-checked by a plain evaluation of the surrogates. :func:`region_of_attraction` finds
the largest sublevel set ``{V <= c}`` inside the box with no counterexample: ``c`` is the least of
V's minimum on the box's faces and V's minimum over the counterexamples (local SLSQP solves of
``min V s.t. d(x) <= 0`` refine the sampled ones), confirmed by :func:`falsify` on the set.

This is **falsification, not proof**: "certified" means that no counterexample was found.
:func:`certify` proves the conditions on a region instead, by interval bounds of the exact
derivatives with branch and bound over boxes (small smooth nets in low dimension).
"""

from .certify import Certificate, certify
from .falsify import falsify
from .region import region_of_attraction, simulate
from .results import Falsification, Region, Simulation

__all__ = [
    "Certificate",
    "Falsification",
    "Region",
    "Simulation",
    "certify",
    "falsify",
    "region_of_attraction",
    "simulate",
]
