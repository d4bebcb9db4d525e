"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1)."""

from __future__ import annotations

from torch import Tensor

from ..context import bind
from ..denoisers import DenoiserBase
from ..grids import Schedule
from ._common import Callback, Cond, Generator, randn_like, step_done
from .registry import register

__all__ = ["cm"]


@register("cm", order=1, stochastic=True, aliases=("consistency",),
          paper="Song et al. 2023, Consistency Models, Algorithm 1 (multistep consistency sampling)")
def cm(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
       callback: Callback = None, cond: Cond = None) -> Tensor:
    """``x0 = f(x_i, t_i)``, then ``x_{i+1} = alpha_{i+1} x0 + sigma_{i+1} z`` with fresh noise ``z``.

    Each step re-noises the one-step prediction completely (the noise of ``x_i`` is forgotten), which is
    right for a consistency model and wrong for a diffusion model (there it is DDIM's ``keep`` term that carries
    the trajectory).  Onto a clean end the step returns ``x0``; one step is the one-step sample.
    """
    ts = schedule.t.tolist()
    model = bind(denoiser, schedule, cond)
    for i in range(schedule.steps):
        x0 = model.x0(x, ts[i], i)
        x = float(schedule.alpha[i + 1]) * x0
        if float(schedule.sigma[i + 1]) > 0:
            x = x + float(schedule.sigma[i + 1]) * randn_like(x0, generator)
        step_done(i, schedule, x, x0, callback)
    return x
