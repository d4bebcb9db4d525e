"""The library's entry points: ``sample`` and seeded noise."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from . import solvers
from .denoisers import DenoiserBase
from .grids import GridSpec, make_schedule
from .solvers._common import Callback, Generator

__all__ = ["sample", "generators", "prior_noise", "generate"]


def sample(denoiser: DenoiserBase, x_T: Tensor, solver: str = "dpm++2m", nfe: int = 10,
           grid: GridSpec | None = None, generator: Generator = None, *, clean_end: bool = True,
           callback: Callback = None, grid_options: dict[str, float] | None = None,
           **options: Any) -> Tensor:
    """Solve from ``x_T`` (at the process's ``t_max``) to data with exactly ``nfe`` evaluations.

    ``solver`` is a name from ``fewstep.solvers.available()``; ``grid`` a name from
    ``fewstep.grids.GRIDS``, an explicit decreasing list of times, or ``None`` for the process's
    ``default_grid`` (time-uniform for VP processes, Karras for EDM/VE); ``generator`` a
    ``torch.Generator`` or one per sample (results then do not depend on the batch size).
    ``clean_end`` makes the last step land on ``sigma = 0``; without it the solver stops at the
    process's ``t_min``.  Extra keywords are the solver's options and conditioning (e.g. ``class_labels``).
    """
    spec = solvers.get(solver)
    if not isinstance(x_T, Tensor):
        raise TypeError(f"x_T must be a torch.Tensor, got {type(x_T).__name__}")
    steps, planned = spec.steps_for(nfe, clean_end)
    schedule = make_schedule(denoiser.process, steps, grid, clean_end=clean_end, **(grid_options or {}))
    return spec.fn(denoiser, x_T, schedule, generator=generator, callback=callback, **{**planned, **options})


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
    """Draw ``x_T`` from per-sample ``seeds`` and sample: the same seed gives the same image in any batch."""
    gens = generators(seeds)
    x_T = prior_noise(denoiser.process, shape, gens, dtype=dtype, device=device)
    return sample(denoiser, x_T, solver, nfe, grid, gens, **options)
