"""The library's entry points: ``sample`` and seeded noise."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from . import solvers
from .denoisers import DenoiserBase
from .grids import GridSpec, Schedule
from .plan import SamplingPlan, make_plan
from .solvers._common import Callback, Cond, Generator

__all__ = ["sample", "plan_solve", "generators", "prior_noise", "generate", "make_plan", "SamplingPlan"]


def sample(denoiser: DenoiserBase, x_T: Tensor, solver: str | SamplingPlan = solvers.DEFAULT_SOLVER, nfe: int | None = None,
           grid: GridSpec | None = None, generator: Generator = None, *, cond: Cond = None,
           callback: Callback = None, grad: bool = False, **plan_args: Any) -> Tensor:
    """Solve from ``x_T`` (a draw from the prior) to data with exactly the planned number of evaluations.

    ``solver`` is a resolved :class:`~fewstep.plan.SamplingPlan` (from :func:`fewstep.make_plan`; ``nfe``, ``grid``
    and plan arguments must then be absent), or a solver name from ``fewstep.solvers.available()``: the plan is
    then resolved here by ``make_plan(denoiser, solver, nfe, grid, **plan_args)`` (``nfe`` default 10; plan
    arguments: ``teleport``, ``gaussian``, ``borrow``, ``t_start``, ``clean_end``, ``grid_options`` and the
    solver's own options, checked).  ``generator`` is a ``torch.Generator`` or one per sample (results then do
    not depend on the batch size); ``cond`` the conditioning passed to every network call (e.g.
    ``{"class_labels": labels}``).

    Sampling runs under ``torch.inference_mode`` (no autograd graph; the result does not require
    grad); ``grad=True`` keeps autograd on, for methods that differentiate through sampling.
    """
    if not isinstance(x_T, Tensor):
        raise TypeError(f"x_T must be a torch.Tensor, got {type(x_T).__name__}")
    if cond is not None and not isinstance(cond, dict):
        raise TypeError(f"cond must be a dict of conditioning keywords (e.g. {{'class_labels': labels}}), "
                        f"got {type(cond).__name__}")
    plan = _as_plan(denoiser, solver, nfe, grid, plan_args)
    schedule = plan.schedule(denoiser.process)
    x_T = plan.start_state(denoiser, x_T, cond)
    model = plan.bind(denoiser)
    fn = plan.spec.fn
    if grad:
        return fn(model, x_T, schedule, generator=generator, callback=callback, cond=cond, **plan.options)
    with torch.inference_mode():
        x = fn(model, x_T, schedule, generator=generator, callback=callback, cond=cond, **plan.options)
    return x.clone()  # a normal tensor: inference tensors refuse in-place updates outside inference mode


def _as_plan(denoiser: DenoiserBase, solver: str | SamplingPlan, nfe: int | None, grid: GridSpec | None,
             plan_args: dict[str, Any]) -> SamplingPlan:
    """``solver`` if it is a plan (nothing else given), else the plan ``make_plan`` resolves from the arguments."""
    if isinstance(solver, SamplingPlan):
        given = [k for k, v in (("nfe", nfe), ("grid", grid)) if v is not None] + sorted(plan_args)
        if given:
            raise ValueError(f"sample was given a SamplingPlan and also {', '.join(given)}; the plan fixes them: "
                             f"resolve a new plan with fewstep.make_plan instead")
        return solver
    return make_plan(denoiser, solver, 10 if nfe is None else nfe, grid, **plan_args)


def plan_solve(denoiser: DenoiserBase, solver: str | SamplingPlan, nfe: int | None = None,
               grid: GridSpec | None = None, *, where: str = "this method", **plan_args: Any
               ) -> tuple[solvers.SolverSpec, Schedule, DenoiserBase, dict[str, Any]]:
    """What a method that runs a solver itself (inversion) needs: ``(spec, schedule, denoiser, kwargs)`` of a plan
    without a teleported start (refused, naming ``where``); the denoiser is behind the plan's network times."""
    plan = _as_plan(denoiser, solver, nfe, grid, plan_args).require(where, net_times=True)
    return plan.spec, plan.schedule(denoiser.process), plan.bind(denoiser), dict(plan.options)


def generators(seeds: Iterable[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One seeded ``torch.Generator`` per sample."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def prior_noise(process, shape: Sequence[int], gens: Sequence[torch.Generator],
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Tensor:
    """``x_T``: per-sample draws from the prior, ``prior_std`` times the process's kernel (``process.noise``:
    ``N(0, prior_std^2)`` for a Gaussian process, PFGM++'s heavy-tailed kernel at ``r_max``), ``shape`` excluding
    the batch."""
    noise = torch.stack([process.noise((1, *shape), g, dtype=dtype)[0] for g in gens])
    return (process.prior_std * noise).to(device)


def generate(denoiser: DenoiserBase, shape: Sequence[int], seeds: Iterable[int], solver: str | SamplingPlan = solvers.DEFAULT_SOLVER,
             nfe: int | None = None, grid: GridSpec | None = None, *, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, **options: Any) -> Tensor:
    """Draw ``x_T`` from per-sample ``seeds`` and sample: the same seed gives the same image in any batch.

    ``solver`` a solver name or a :class:`~fewstep.plan.SamplingPlan`; ``options`` are :func:`sample`'s keywords
    (``cond``, ``callback``, ``grad``, plan arguments and solver options).
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("generate: seeds is empty; pass at least one seed (e.g. seeds=range(16))")
    gens = generators(seeds)
    x_T = prior_noise(denoiser.process, shape, gens, dtype=dtype, device=device)
    return sample(denoiser, x_T, solver, nfe, grid, gens, **options)
