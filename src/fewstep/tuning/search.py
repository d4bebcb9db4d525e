"""Model-based grid search (Align Your Steps-style, Sabour et al. 2024).

The score of a grid is the RMS distance of a deterministic solver's samples to a near-exact
solution of the same probability-flow ODE from the same noise, on fixed seeds: the near-exact
solution is computed once (:class:`~fewstep.tuning.reference.ReferenceSet`) and every candidate grid costs one
few-step solve of those seeds.  AYS minimises a KL upper bound instead (their eq. 7); the trajectory error
is what fewstep's benchmarks measure, and needs no gradients.  Interior times move in logSNR
``lambda`` between their neighbours (:func:`~fewstep.tuning.descent.coordinate_descent`), so every
candidate is a valid decreasing grid from ``t_max`` to ``t_min``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .. import solvers
from ..grids import make_grid
from ..processes import NoiseProcess
from .descent import DescentResult, coordinate_descent
from .reference_set import ReferenceSet

__all__ = ["times_from_lams", "interior_lams", "descend_grid", "search_grid"]


def interior_lams(process: NoiseProcess, times: Tensor) -> list[float]:
    """logSNR of a grid's interior points (the search coordinates)."""
    return [float(v) for v in process.lam(torch.as_tensor(times, dtype=torch.float64)[1:-1])]


def times_from_lams(process: NoiseProcess, lams: Sequence[float], t_max: float, t_min: float) -> Tensor:
    """The grid ``t_max > t(lams[0]) > ... > t_min``."""
    inner = process.t_of_lambda(torch.tensor(list(lams), dtype=torch.float64)) if lams else torch.zeros(0)
    return torch.cat([torch.tensor([t_max], dtype=torch.float64), inner.to(torch.float64),
                      torch.tensor([t_min], dtype=torch.float64)])


def descend_grid(score_times: Callable[[Tensor], float], process: NoiseProcess, start: Tensor, *, rounds: int = 3,
                 candidates: int = 2, on_eval: Callable[[float], None] | None = None,
                 free_start: bool = False) -> tuple[Tensor, DescentResult]:
    """Coordinate descent of ``score_times(times)`` over the interior times of ``start`` in logSNR; with
    ``free_start`` the first time moves too (between ``t_max`` and the second time: a teleported start)."""
    start = torch.as_tensor(start, dtype=torch.float64)
    t_max, t_min = float(start[0]), float(start[-1])
    ends = (float(process.lam(process.t_start if free_start else t_max)), float(process.lam(t_min)))

    def bracket(lams: list[float], i: int) -> tuple[float, float]:
        lo = lams[i - 1] if i > 0 else ends[0]
        hi = lams[i + 1] if i + 1 < len(lams) else ends[1]
        return lo, hi

    def grid(lams: list[float]) -> Tensor:
        if free_start:  # coordinate 0 is the start time
            return times_from_lams(process, lams[1:], float(process.t_of_lambda(lams[0])), t_min)
        return times_from_lams(process, lams, t_max, t_min)

    def score(lams: list[float]) -> float:
        ts = grid(lams)
        if not bool((ts[1:] < ts[:-1]).all()):
            return float("inf")
        return score_times(ts)

    x0 = ([float(process.lam(t_max))] if free_start else []) + interior_lams(process, start)
    res = coordinate_descent(score, x0, bracket, rounds=rounds, candidates=candidates, on_eval=on_eval)
    times = start if res.score >= res.start_score else grid(res.x)
    return times, res


def search_grid(reference: ReferenceSet, solver: str, nfe: int, start: Any = None, *, rounds: int = 3,
                candidates: int = 2, on_eval: Callable[[float], None] | None = None,
                options: dict[str, Any] | None = None) -> tuple[Tensor, DescentResult]:
    """The grid for ``solver`` (with solver ``options``) at ``nfe`` with the lowest RMSE to ``reference`` found
    from ``start`` (a grid name, explicit times or a grid file; default: the process's default grid).
    With ``options["teleport"]`` (a teleported start, :mod:`fewstep.teleport`) the start time is searched too:
    the choice of start time is one more coordinate."""
    spec = solvers.get(solver)
    if spec.stochastic or not spec.fixed_nfe:
        raise ValueError(f"grid search needs a deterministic fixed-NFE solver; {spec.name!r} is not")
    process = reference.denoiser.process
    steps, _ = spec.steps_for(nfe)
    options = dict(options or {})
    teleported = options.get("teleport") is not None
    first = make_grid(process, steps, start, solver=spec.name, nfe=nfe,  # t_max: built-in grids only
                      **({"t_max": float(options["teleport"])} if teleported else {}))

    def score(ts: Tensor) -> float:
        return reference.rmse(spec.name, nfe, ts, options={**options, "teleport": float(ts[0])} if teleported
                              else options)

    return descend_grid(score, process, first, rounds=rounds, candidates=candidates, on_eval=on_eval,
                        free_start=teleported)
