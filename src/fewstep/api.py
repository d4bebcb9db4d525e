"""The library's entry points: ``sample`` and seeded noise."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from . import solvers
from .denoisers import DenoiserBase
from .grids import GridSpec, Schedule, make_schedule, tuned_for, tuned_options
from .solvers._common import Callback, Cond, Generator

__all__ = ["sample", "plan_solve", "start_state", "generators", "prior_noise", "generate"]


def sample(denoiser: DenoiserBase, x_T: Tensor, solver: str = "dpm++2m", nfe: int = 10,
           grid: GridSpec | None = None, generator: Generator = None, *, cond: Cond = None,
           clean_end: bool = True, callback: Callback = None, grid_options: dict[str, float] | None = None,
           grad: bool = False, teleport: float | None = None, gaussian: Any = None, **options: Any) -> Tensor:
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

    ``teleport=t`` starts the solve at time ``t < t_max``: ``x_T`` is carried there by the exact flow of the
    training data's Gaussian (:mod:`fewstep.teleport`; ``gaussian`` a saved one, default the model's
    ``data_gaussian``) and all ``nfe`` evaluations are spent below ``t``.  A built-in grid then runs from ``t``;
    a grid file entry tuned with teleport carries its own ``t``.  (Without teleport, a grid that starts below
    ``t_max`` takes ``x_T`` as the state at its first time, as diffusers' "leading" spacings do.)

    Sampling runs under ``torch.inference_mode`` (no autograd graph; the result does not require
    grad); ``grad=True`` keeps autograd on, for methods that differentiate through sampling.
    """
    if not isinstance(x_T, Tensor):
        raise TypeError(f"x_T must be a torch.Tensor, got {type(x_T).__name__}")
    spec, schedule, denoiser, kwargs, teleport = _plan(denoiser, solver, nfe, grid, cond=cond, clean_end=clean_end,
                                                       grid_options=grid_options, teleport=teleport, **options)
    x_T = start_state(denoiser, x_T, schedule, teleport, gaussian, cond)
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
    spec, schedule, den, kwargs, teleport = _plan(denoiser, solver, nfe, grid, cond=cond, clean_end=clean_end,
                                                  grid_options=grid_options, **options)
    if teleport is not None:
        raise ValueError(f"this grid file's entry for {spec.name} at nfe={nfe} starts at a teleported time "
                         f"(teleport={teleport:g}); only fewstep.sample can run it. Use another grid here")
    return spec, schedule, den, kwargs


def _plan(denoiser: DenoiserBase, solver: str, nfe: int, grid: GridSpec | None = None, *, cond: Cond = None,
          clean_end: bool = True, grid_options: dict[str, float] | None = None, teleport: float | None = None,
          **options: Any) -> tuple[solvers.SolverSpec, Schedule, DenoiserBase, dict[str, Any], float | None]:
    """:func:`plan_solve` and the teleport time in effect (the argument, else the grid file entry's)."""
    spec = solvers.get(solver)
    if cond is not None and not isinstance(cond, dict):
        raise TypeError(f"cond must be a dict of conditioning keywords (e.g. {{'class_labels': labels}}), "
                        f"got {type(cond).__name__}")
    spec.check_options(options)
    steps, planned = spec.steps_for(nfe, clean_end)
    tuned = tuned_options(grid, denoiser.process, spec.name, nfe, steps)
    saved_teleport = tuned.pop("teleport", None)  # a sampling option saved with the entry, not a solver option
    teleport = saved_teleport if teleport is None else teleport
    if tuned:  # options saved with a grid file's entry for this solver; explicit ones win
        spec.check_options(tuned)
        options = {**tuned, **options}
    grid_options = dict(grid_options or {})
    if teleport is not None:
        teleport = _check_teleport(denoiser.process, teleport)
        grid_options.setdefault("t_max", teleport)  # a built-in grid starts there; explicit and file grids keep theirs
    schedule = make_schedule(denoiser.process, steps, grid, clean_end=clean_end, solver=spec.name, nfe=nfe,
                             teleported=True, **grid_options)
    if teleport is not None and abs(float(schedule.t[0]) - teleport) > 1e-6 * max(1.0, abs(teleport)):
        raise ValueError(f"teleport={teleport:g} but the grid starts at t={float(schedule.t[0]):g}; an explicit grid or a "
                         f"grid file entry used with teleport must start at the teleport time")
    denoiser = tuned_for(denoiser, grid, spec.name, nfe, steps)
    return spec, schedule, denoiser, {**planned, **options}, teleport  # only fixed-NFE-free solvers may override the plan


def _check_teleport(process, teleport: Any) -> float:
    if isinstance(teleport, bool) or not isinstance(teleport, (int, float)):
        raise TypeError(f"teleport must be a time (a number in the process's time units), got {teleport!r}")
    t = float(teleport)
    if not process.t_min < t <= process.t_max:
        raise ValueError(f"teleport={t:g} is outside the process's times ({process.t_min:g}, {process.t_max:g}]; "
                         f"pass the time the solve should start at, e.g. {0.7 * process.t_max + 0.3 * process.t_min:g}")
    return t


def start_state(denoiser: DenoiserBase, x_T: Tensor, schedule: Schedule, teleport: float | None = None,
                gaussian: Any = None, cond: Cond = None) -> Tensor:
    """The state the solver starts from: ``x_T``, or with ``teleport`` ``x_T`` (a draw at ``t_max``) carried to the
    schedule's first time by the data Gaussian's exact flow (:func:`fewstep.teleport.teleport`); with
    ``cond={"class_labels": ...}`` by each sample's class Gaussian."""
    if teleport is None:
        return x_T
    from .teleport import resolve_gaussian, teleport as flow

    labels = None
    if cond:
        if set(cond) != {"class_labels"}:
            raise ValueError(f"teleport follows unconditional or class-conditional sampling; it cannot follow "
                             f"conditioning on {', '.join(sorted(set(cond) - {'class_labels'}))}")
        labels = cond["class_labels"]
    return flow(x_T, schedule.process, float(schedule.t[0]), resolve_gaussian(denoiser, gaussian, labels is not None),
                labels=labels)


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
