"""Model-based grid search (Align Your Steps-style, Sabour et al. 2024).

The score of a grid is the RMS distance of a deterministic solver's samples to a near-exact
solution of the same probability-flow ODE from the same noise, on fixed seeds: the near-exact
solution is computed once (:class:`ReferenceSet`) and every candidate grid costs one few-step
solve of those seeds.  AYS minimises a KL upper bound instead (their eq. 7); the trajectory error
is what fewstep's benchmarks measure, and needs no gradients.  Interior times move in logSNR
``lambda`` between their neighbours (:func:`~fewstep.grids.descent.coordinate_descent`), so every
candidate is a valid decreasing grid from ``t_max`` to ``t_min``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor

from .. import solvers
from ..processes import NoiseProcess
from .descent import DescentResult, coordinate_descent

__all__ = ["ReferenceSet", "times_from_lams", "interior_lams", "descend_grid", "search_grid"]


class ReferenceSet:
    """Prior noise of fixed ``seeds`` and the near-exact solution from it, computed once.

    ``reference`` is ``solver`` at ``nfe`` evaluations on ``grid`` (dpm++3m at 200 NFE by default).
    :meth:`rmse` scores any deterministic few-step solve against it.  With ``cache_dir`` (a contiguous
    seed range, no ``cond``) the reference is the evaluation yardstick's near-exact solution
    ``x0_hat(x(t_min), t_min)`` (:class:`fewstep.metrics.NearExact`), read from or written to that
    cache, so repeated optimizations (other solvers, NFEs, methods) and ``fewstep bench model
    --reference-cache`` share one computation.
    """

    def __init__(self, denoiser: Any, shape: Sequence[int], seeds: Iterable[int], *, solver: str = "dpm++3m",
                 nfe: int = 200, grid: Any = "logsnr", batch_size: int = 64, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", cond: dict[str, Any] | None = None,
                 cache_dir: str | None = None, progress: bool = False):
        from ..api import generators, prior_noise, sample

        self.denoiser, self.seeds, self.batch_size, self.cond = denoiser, list(seeds), batch_size, cond
        if not self.seeds:
            raise ValueError("a reference set needs at least one seed")
        self.x_T = prior_noise(denoiser.process, shape, generators(self.seeds), dtype=dtype, device=device)
        self.description = {"solver": solver, "nfe": nfe, "grid": grid if isinstance(grid, str) else "explicit",
                            "seeds": [self.seeds[0], self.seeds[-1] + 1]}
        if cache_dir is not None:
            self.reference = self._near_exact(shape, solver, nfe, grid, cache_dir, dtype, device, progress)
            self.description["near_exact"] = True
        else:
            self.reference = torch.cat([sample(denoiser, x, solver, nfe, grid, cond=self._cond(len(x)))
                                        for x in self.x_T.split(batch_size)])

    def _near_exact(self, shape: Sequence[int], solver: str, nfe: int, grid: Any, cache_dir: str,
                    dtype: torch.dtype, device: Any, progress: bool) -> Tensor:
        """The yardstick's near-exact solutions of the seeds, through the on-disk cache."""
        from ..metrics.near_exact import ReferenceSettings, reference_solutions

        if self.cond:
            raise ValueError("a cached reference (cache_dir) does not take conditioning; leave cache_dir unset")
        if self.seeds != list(range(self.seeds[0], self.seeds[0] + len(self.seeds))):
            raise ValueError("a cached reference needs a contiguous seed range (e.g. 10000:10064)")
        if not isinstance(grid, str):
            raise ValueError("a cached reference needs a named grid (e.g. logsnr)")
        settings = ReferenceSettings(solver, nfe, grid, str(dtype).removeprefix("torch."))
        ref = reference_solutions(self.denoiser, shape, self.seeds, settings, cache_dir=cache_dir,
                                  batch_size=self.batch_size, device=device, progress=progress)
        return ref.to(self.x_T.device, self.x_T.dtype)

    def _cond(self, n: int) -> dict[str, Any] | None:
        return {k: v[:n] if isinstance(v, Tensor) else v for k, v in self.cond.items()} if self.cond else None

    def solve(self, solver: str, nfe: int, grid: Any, denoiser: Any = None,
              options: dict[str, Any] | None = None) -> Tensor:
        """The few-step solve of every seed (optionally through another ``denoiser``, e.g. a TimeTuner,
        with solver ``options``, e.g. DC-Solver's ratios)."""
        from ..api import sample

        den = self.denoiser if denoiser is None else denoiser
        return torch.cat([sample(den, x, solver, nfe, grid, cond=self._cond(len(x)), **(options or {}))
                          for x in self.x_T.split(self.batch_size)])

    def rmse(self, solver: str, nfe: int, grid: Any, denoiser: Any = None,
             options: dict[str, Any] | None = None) -> float:
        """RMS distance of the few-step solve to the reference (inf when it diverges)."""
        out = self.solve(solver, nfe, grid, denoiser, options)
        err = float((out.double() - self.reference.double()).pow(2).mean().sqrt())
        return err if err == err else float("inf")


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
    ends = (float(process.lam(process.t_max if free_start else t_max)), float(process.lam(t_min)))

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
    With ``options["teleport"]`` (a teleported start, :mod:`fewstep.teleport`) the start time is searched too."""
    from . import make_grid

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
