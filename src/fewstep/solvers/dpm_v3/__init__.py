"""DPM-Solver-v3 (Zheng et al. 2023): the solver and the storage of the empirical model statistics it uses.

``EMS.save(dir)`` / ``EMS.load(dir)``; the solver ``"dpm_v3"``.  Computing the statistics from data is tuning:
:func:`fewstep.tuning.compute_ems`.
"""

from .solver import dpm_v3, resolve_ems
from .stats import EMS, EMSMismatch, find_ems

__all__ = ["EMS", "EMSMismatch", "dpm_v3", "find_ems", "resolve_ems"]
