"""The library's entry points: ``sample`` and seeded noise."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from . import solvers
from .denoisers import DenoiserBase
from .grids import GridSpec, Schedule, make_schedule, tuned_for, tuned_options
from .solvers._common import Callback, Cond, Generator

__all__ = ["sample", "plan_solve", "generators", "prior_noise", "generate"]


def sample(denoiser: DenoiserBase, x_T: Tensor, solver: str = "dpm++2m", nfe: int = 10,
           grid: GridSpec | None = None, generator: Generator = None, *, cond: Cond = None,
           clean_end: bool = True, callback: Callback = None, grid_options: dict[str, float] | None = None,
           grad: bool = False, **options: Any) -> Tensor:
    """Solve from ``x_T`` (at the process's ``t_max``) to data with exactly ``nfe`` evaluations.

    ``solver`` is a name from ``fewstep.solvers.available()``; ``grid`` a name from
    ``fewstep.grids.GRIDS``, an explicit decreasing list of times, a grid file (its grid for this
    solver and NFE, and its TimeTuner network times and solver options if tuned for this solver), or ``None`` for the process's
    ``default_grid`` (time-uniform for VP processes, Karras for EDM/VE); ``generator`` a
    ``torch.Generator`` or one per sample (results then do not depend on the batch size).
    ``clean_end`` makes the last step land on ``sigma = 0``; without it the solver stops at the
    process's ``t_min``.  ``cond`` is the conditioning passed to every network call (e.g.
    ``{"class_labels": labels}``); extra keywords are the solver's options
    (``fewstep.solvers.get(name).options``): unknown ones, and ones the NFE plan sets, are refused.

    Sampling runs under ``torch.inference_mode`` (no autograd graph; the result does not require
    grad); ``grad=True`` keeps autograd on, for methods that differentiate through sampling.
    """
    if not isinstance(x_T, Tensor):
        raise TypeError(f"x_T must be a torch.Tensor, got {type(x_T).__name__}")
    spec, schedule, denoiser, kwargs = plan_solve(denoiser, solver, nfe, grid, cond=cond, clean_end=clean_end,
                                                  grid_options=grid_options, **options)
    if grad:
        return spec.fn(denoiser, x_T, schedule, generator=generator, callback=callback, cond=cond, **kwargs)
    with torch.inference_mode():
        x = spec.fn(denoiser, x_T, schedule, generator=generator, callback=callback, cond=cond, **kwargs)
    return x.clone()  # a normal tensor: inference tensors refuse in-place updates outside inference mode


def plan_solve(denoiser: DenoiserBase, solver: str, nfe: int, grid: GridSpec | None = None, *, cond: Cond = None,
               clean_end: bool = True, grid_options: dict[str, float] | None = None,
               **options: Any) -> tuple[solvers.SolverSpec, Schedule, DenoiserBase, dict[str, Any]]:
    """What :func:`sample` runs: ``(spec, schedule, denoiser, kwargs)``, every argument checked.

    ``spec.fn(denoiser, x, schedule, cond=cond, **kwargs)`` then spends exactly ``nfe`` evaluations; the
    denoiser is the given one, behind a grid file's TimeTuner times where that applies.  Inversion
    (:mod:`fewstep.inversion`) runs the same plan on the reversed schedule.
    """
    spec = solvers.get(solver)
    if cond is not None and not isinstance(cond, dict):
        raise TypeError(f"cond must be a dict of conditioning keywords (e.g. {{'class_labels': labels}}), "
                        f"got {type(cond).__name__}")
    spec.check_options(options)
    steps, planned = spec.steps_for(nfe, clean_end)
    tuned = tuned_options(grid, denoiser.process, spec.name, nfe, steps)
    if tuned:  # options saved with a grid file's entry for this solver; explicit ones win
        spec.check_options(tuned)
        options = {**tuned, **options}
    schedule = make_schedule(denoiser.process, steps, grid, clean_end=clean_end, solver=spec.name, nfe=nfe,
                             **(grid_options or {}))
    denoiser = tuned_for(denoiser, grid, spec.name, nfe, steps)
    return spec, schedule, denoiser, {**planned, **options}  # only solvers without a fixed NFE may override the plan


def generators(seeds: Iterable[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One seeded ``torch.Generator`` per sample."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def prior_noise(process, shape: Sequence[int], gens: Sequence[torch.Generator],
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Tensor:
    """``x_T``: per-sample draws from the prior ``N(0, prior_std^2)``, ``shape`` excluding the batch."""
    noise = torch.stack([torch.randn(tuple(shape), generator=g, device=g.device, dtype=dtype) for g in gens])
    return (process.prior_std * noise).to(device)


def generate(denoiser: DenoiserBase, shape: Sequence[int], seeds: Iterable[int], solver: str = "dpm++2m",
             nfe: int = 10, grid: GridSpec | None = None, *, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, **options: Any) -> Tensor:
    """Draw ``x_T`` from per-sample ``seeds`` and sample: the same seed gives the same image in any batch.

    ``options`` are :func:`sample`'s keywords (``cond``, ``callback``, ``grad``, solver options).
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("generate: seeds is empty; pass at least one seed (e.g. seeds=range(16))")
    gens = generators(seeds)
    x_T = prior_noise(denoiser.process, shape, gens, dtype=dtype, device=device)
    return sample(denoiser, x_T, solver, nfe, grid, gens, **options)
