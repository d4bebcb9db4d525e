"""The near-exact solution of a model's probability-flow ODE: the one yardstick of tuning and evaluation.

From ``x_T`` at the process's start ``t_start`` (its ``t_max`` unless the schedule's end is singular) it is the point every deterministic solver converges to as its NFE grows.  With a
clean end a solver's last evaluation is at the grid point just above ``t_min`` and lands on its data
prediction, so the limit is

    x_ref = x0_hat( x(t_min), t_min ),   x(t_min) the exact ODE solution from x_T at t_start.

:func:`near_exact_path` computes it with a high-order solver (``settings``: DPM-Solver++(3M), 200 NFE, logSNR
grid by default) stopping at ``t_min`` with ``nfe - 1`` evaluations, plus one data prediction there: the
solver's own order holds over the whole interval, no first-order jump to ``sigma = 0`` at the end.  Passing
through given times it also returns the states there (each interval refined alike), what DC-Solver's ratio
search compares each step with.  Every user calls it: the evaluation's error to the near-exact solution and
its on-disk cache (:mod:`fewstep.tuning.reference_cache`), the grid search and TimeTuner
(:class:`~fewstep.tuning.reference_set.ReferenceSet`),
DC-Solver's ratio search (:mod:`fewstep.tuning.dc`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from .. import solvers
from ..api import generators, prior_noise, sample
from ..grids import make_grid
from ..solvers import DivergedError, NonFiniteError
from ..solvers._common import Cond

__all__ = ["ReferenceSettings", "near_exact_path", "near_exact", "near_exact_batch"]


@dataclass(frozen=True)
class ReferenceSettings:
    """How the near-exact solution is computed: ``solver`` at ``nfe`` evaluations on ``grid``
    (``None``: the process's default grid); ``dtype`` is that of ``x_T`` drawn from seeds
    (:func:`near_exact_batch`; :func:`near_exact_path` works in the dtype of the ``x_T`` it is given).

    The defaults (DPM-Solver++(3M), 200 NFE, logSNR grid) change by about 4e-4 RMSE from 200 to
    400 NFE on ``bundled:fashion``, where 5-10 NFE solvers are 0.05-0.15 away
    (``benchmarks/reference_accuracy.py``; docs/evaluation.md, "Error to the near-exact solution")."""

    solver: str = "dpm++3m"
    nfe: int = 200
    grid: str | None = "logsnr"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        spec = solvers.get(self.solver)  # raises with the valid names
        if spec.stochastic or not spec.fixed_nfe:
            raise ValueError(f"the near-exact reference needs a deterministic fixed-NFE solver, not {self.solver!r} "
                             f"(e.g. dpm++3m or dpm++2m)")
        if not isinstance(self.nfe, int) or self.nfe < 2:
            raise ValueError(f"the near-exact reference needs at least 2 evaluations, got nfe={self.nfe!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"reference dtype must be float32 or float64, got {self.dtype!r}")

    def describe(self, process: Any) -> dict[str, Any]:
        """The settings with the grid resolved to a name (for keys and reports)."""
        return {**asdict(self), "grid": self.grid or process.default_grid}


def _split(steps: int, parts: int) -> list[int]:
    """``steps`` shared out as evenly as possible over ``parts`` intervals (earlier ones take the remainder)."""
    return [steps // parts + (1 if k < steps % parts else 0) for k in range(parts)]


def near_exact_path(denoiser: Any, x_T: Tensor, times: Sequence[float], settings: ReferenceSettings | None = None, *,
                    clean_end: bool = True, cond: Cond = None) -> list[Tensor]:
    """The near-exact solution of the probability-flow ODE from ``x_T`` (the state at ``times[0]``) at each of
    ``times[1:]`` (decreasing); with ``clean_end`` the last one is replaced by the data prediction there,
    ``x0_hat(x(t_end), t_end)`` (see the module docstring).

    ``settings.solver`` spends ``settings.nfe - 1`` evaluations (``settings.nfe`` with the clean end's
    prediction) on a grid that passes through every time: each interval of ``times`` is refined into an equal
    share of the steps, spaced as ``settings.grid`` spaces a whole grid (``[t_start, t_min]`` alone is that grid).
    A teleported grid passes ``[t_start, *its times]`` and drops the first state: the network's own solution.
    Raises :class:`~fewstep.solvers.DivergedError` when the solve is not finite.
    """
    settings = settings or ReferenceSettings()
    process = denoiser.process
    knots = [float(t) for t in times]
    if len(knots) < 2 or any(b >= a for a, b in zip(knots, knots[1:])):
        raise ValueError(f"the near-exact reference needs at least 2 decreasing times, got {knots}")
    steps, _ = solvers.get(settings.solver).steps_for(settings.nfe - 1, False)
    if steps < len(knots) - 1:
        raise ValueError(f"the near-exact reference ({settings.solver}, nfe={settings.nfe}) takes {steps} steps, "
                         f"fewer than the {len(knots) - 1} intervals it must pass through; raise its nfe")
    fine, ends = [torch.tensor([knots[0]], dtype=torch.float64)], set()
    for (hi, lo), r in zip(zip(knots, knots[1:]), _split(steps, len(knots) - 1)):
        fine.append(make_grid(process, r, settings.grid, t_max=hi, t_min=lo)[1:])
        ends.add(sum(len(f) for f in fine) - 2)  # the step index whose end is ``lo``
    states: list[Tensor] = []

    def keep(info: dict[str, Any]) -> None:
        if info["i"] in ends:
            states.append(info["x"].clone())

    what = f"the near-exact reference ({settings.solver}, {settings.nfe} NFE)"
    try:
        sample(denoiser, x_T, settings.solver, settings.nfe - 1, torch.cat(fine), clean_end=False, callback=keep,
               cond=cond)
        if clean_end:
            with torch.inference_mode():
                states[-1] = denoiser.predict(states[-1], knots[-1], **(cond or {})).x0.clone()
    except NonFiniteError as err:
        raise DivergedError(f"{what} diverged: {err}") from err
    if not all(bool(torch.isfinite(s).all()) for s in states):
        raise DivergedError(f"{what} is not finite")
    return [s.clone() for s in states]  # normal tensors (the solve ran in inference mode)


def near_exact(denoiser: Any, x_T: Tensor, settings: ReferenceSettings | None = None, *, cond: Cond = None) -> Tensor:
    """``x0_hat(x(t_min), t_min)`` from ``x_T`` at ``t_start``: :func:`near_exact_path` over ``[t_start, t_min]``."""
    process = denoiser.process
    return near_exact_path(denoiser, x_T, [process.t_start, process.t_min], settings, cond=cond)[-1]


def near_exact_batch(denoiser: Any, shape: Sequence[int], seeds: Sequence[int], settings: ReferenceSettings,
                     device: str | torch.device = "cpu") -> Tensor:
    """:func:`near_exact` of the ``x_T`` that :func:`fewstep.generate` draws for ``seeds`` (in ``settings.dtype``),
    as float32 on the CPU."""
    x_T = prior_noise(denoiser.process, shape, generators(seeds), dtype=getattr(torch, settings.dtype), device=device)
    try:
        x0 = near_exact(denoiser, x_T, settings)
    except DivergedError as err:
        raise DivergedError(f"{err} (seeds {seeds[0]}..{seeds[-1]})") from err
    return x0.detach().to("cpu", torch.float32).clone()
