"""DC-Solver's ratio search (Zhao et al. 2024, DC-Solver, sec. 3.2-3.3): the compensation ratios of
:func:`fewstep.solvers.dc.dc_solver`, searched per NFE against the near-exact solution, and the CPR fitted on them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import torch

from .. import solvers
from ..api import generators, prior_noise
from ..denoisers import DenoiserBase
from ..grids import GridSpec, make_schedule
from ..solvers._common import Cond
from ..solvers.dc import RatioTable, fit_cpr, search_pass
from ..teleport import teleported_start
from .reference import ReferenceSettings, near_exact_path

__all__ = ["search_ratios", "search_table"]


def _golden(loss: Callable[[float], float], lo: float, hi: float, iterations: int) -> float:
    """Golden-section minimum of a one-dimensional ``loss`` on ``[lo, hi]``; 1.0 is kept unless beaten."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = loss(d)
    best, fbest = (c, fc) if fc < fd else (d, fd)
    return best if fbest < loss(1.0) else 1.0


def search_ratios(denoiser: DenoiserBase, shape: Sequence[int], nfe: int, seeds: Iterable[int], *,
                  reference_nfe: int = 200, grid: GridSpec | None = None, order: int = 2, dc_order: int = 2,
                  variant: str = "bh2", prediction: str = "data", bounds: tuple[float, float] = (0.6, 1.4),
                  iterations: int = 10, cond: Cond = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, teleport: float | None = None) -> list[float]:
    """Search DC-Solver's ratios for one NFE: greedily per step, the ``rho_i`` in ``bounds`` minimising the mean
    squared distance of the step's result (predictor and corrector) to the near-exact solution at ``t_{i+1}``
    (:func:`~fewstep.tuning.reference.near_exact_path` through the grid's times with ``reference_nfe``
    evaluations; Zhao et al. 2024, sec. 3.2; golden-section search instead of the paper's gradient steps, so no
    gradient flows through the network).  ``teleport``: the grid starts at that time, reached from ``t_max`` by
    the data Gaussian's exact flow (:mod:`fewstep.teleport`), while the reference is the network's own solution
    from ``t_max``.  Costs about ``nfe * (iterations + 4)`` evaluations of ``len(seeds)`` samples plus the
    reference solve.
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("search_ratios needs seeds, e.g. range(32)")
    process = denoiser.process
    steps, _ = solvers.get("dc_solver").steps_for(nfe)
    schedule = make_schedule(process, steps, grid, **({"t_max": teleport} if teleport is not None else {}))
    x_T = prior_noise(process, shape, generators(seeds), dtype=dtype, device=device)
    knots = schedule.t.tolist()
    if schedule.clean_end:
        knots[-1] = process.t_min  # the reference's clean end is the data prediction there
    skip = 1 if teleport is not None and knots[0] < process.t_start else 0
    knots = [process.t_start] * skip + knots
    ref = near_exact_path(denoiser, x_T, knots, ReferenceSettings(nfe=reference_nfe), clean_end=schedule.clean_end,
                          cond=cond)[skip:]
    found = [1.0] * steps

    def search(i: int, evaluate: Callable[[float], torch.Tensor]) -> float:
        target = ref[i]  # the reference at point i + 1

        def loss(rho: float) -> float:
            return float((evaluate(rho) - target).double().pow(2).mean())

        found[i] = _golden(loss, bounds[0], bounds[1], iterations)
        return found[i]

    with torch.inference_mode():
        start = x_T if teleport is None else teleported_start(denoiser, x_T, float(schedule.t[0]))
        search_pass(denoiser, start, schedule, search, order=order,
                    dc_order=dc_order, variant=variant, prediction=prediction, cond=cond)
    return found


def search_table(denoiser: DenoiserBase, shape: Sequence[int], nfes: Iterable[int], seeds: Iterable[int], *,
                 dc_order: int = 2, progress: bool = False, **options: Any) -> RatioTable:
    """:func:`search_ratios` for each NFE, with the CPR fitted on all of them."""
    seeds = list(seeds)
    searched: dict[int, list[float]] = {}
    for nfe in nfes:
        searched[int(nfe)] = search_ratios(denoiser, shape, int(nfe), seeds, dc_order=dc_order, **options)
        if progress:
            print(f"nfe={nfe}: ratios {', '.join(f'{r:.4f}' for r in searched[int(nfe)])}", flush=True)
    meta = {"seeds": [seeds[0], seeds[-1] + 1], "n_seeds": len(seeds),
            **{k: (v if isinstance(v, (int, float, str, type(None))) else str(v)) for k, v in options.items()}}
    return RatioTable(searched, dc_order, fit_cpr(searched, dc_order), meta)
