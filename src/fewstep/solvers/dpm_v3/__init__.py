"""DPM-Solver-v3 (Zheng et al. 2023): empirical model statistics and the solver that uses them.

``compute_ems(denoiser, data, ...) -> EMS``; ``EMS.save(dir)`` / ``EMS.load(dir)``; the solver ``"dpm_v3"``.
"""

from .compute import compute_ems
from .solver import dpm_v3, resolve_ems
from .stats import EMS, EMSMismatch, find_ems

__all__ = ["compute_ems", "EMS", "EMSMismatch", "dpm_v3", "find_ems", "resolve_ems"]
