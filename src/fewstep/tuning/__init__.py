"""Tuning: what fewstep fits to a model before sampling it, above the sampling layer.

* ``reference`` - the near-exact ODE solution every tuner and the evaluation measure against (one
  computation: :func:`near_exact_path`); ``reference_cache`` - its on-disk cache (:class:`NearExact`);
  ``reference_set`` - :class:`ReferenceSet` (fixed seeds, their reference, the RMSE of a solve to it).
* ``search`` - model-based grid search (Align Your Steps-style), the teleported start time as one more
  coordinate; ``descent`` - the coordinate descent behind it and TimeTuner.
* ``gaussian`` - analytic grids from a Gaussian data model (no network evaluation).
* ``timetuner`` - TimeTuner's network times (sampling with them: :mod:`fewstep.nettimes`).
* ``dc`` - DC-Solver's ratio search (the solver: :mod:`fewstep.solvers.dc`).
* ``ems`` - DPM-Solver-v3's empirical model statistics (storage and solver: :mod:`fewstep.solvers.dpm_v3`).
* ``optimize`` - :func:`optimize_grids`: any of these per NFE, as grid-file entries (:mod:`fewstep.grids.files`).
* ``tune`` - :func:`tune`: all of them chained per solver x NFE on tuning seeds, each candidate plan judged on
  fresh validation seeds (``validate``: paired bootstrap interval of the error ratio to the best standard
  solver, and the fraction of samples that end worse); only winners are written (``fewstep tune``).

Sampling never imports tuning: what tuning produces (grid files, ratio tables, statistics) is data that the
samplers read.
"""

from .dc import search_ratios, search_table
from .descent import DescentResult, coordinate_descent
from .ems import compute_ems
from .gaussian import DEFAULT_DATA_STD, analytic_grid, gaussian_error, gaussian_spectrum, lte_weights
from .reference_cache import NearExact, reference_solutions
from .optimize import METHODS, expected_evaluations, optimize_grids
from .reference import ReferenceSettings, near_exact, near_exact_batch, near_exact_path
from .reference_set import ReferenceSet
from .search import descend_grid, interior_lams, search_grid, times_from_lams
from .timetuner import tune_net_times
from .tune import TuneReport, tune
from .validate import Comparison, best_standard, check_disjoint, compare, judge

__all__ = ["ReferenceSettings", "near_exact_path", "near_exact", "near_exact_batch", "ReferenceSet", "NearExact",
           "reference_solutions", "DescentResult", "coordinate_descent", "search_grid", "descend_grid",
           "interior_lams", "times_from_lams", "analytic_grid", "gaussian_error", "gaussian_spectrum",
           "lte_weights", "DEFAULT_DATA_STD", "tune_net_times", "search_ratios", "search_table", "compute_ems",
           "METHODS", "optimize_grids", "expected_evaluations", "tune", "TuneReport", "Comparison", "compare",
           "judge", "best_standard", "check_disjoint"]
