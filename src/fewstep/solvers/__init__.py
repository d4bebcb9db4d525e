"""Training-free solvers, one stateless function each, and their registry.

``solve(denoiser, x, schedule, *, generator=None, callback=None, **options) -> x``; see
:mod:`fewstep.solvers.registry` for what is recorded about each.
"""

from . import ddim, deis, dpm_solver, dpm_v3, dpmpp, euler, lms, pndm, unipc  # noqa: F401  (registration)
from . import consistency  # noqa: F401  (registration)
from . import dc  # noqa: F401  (registration; after unipc, whose loop it uses)
from . import time_shift  # noqa: F401  (registration of ts-*: last, it wraps the solvers registered above)
from ._common import DivergedError, NonFiniteError, randn_like
from .registry import DEFAULT_SOLVER, SolverSpec, available, get, register, specs

__all__ = ["DEFAULT_SOLVER", "available", "get", "register", "specs", "SolverSpec", "NonFiniteError", "DivergedError", "randn_like"]
