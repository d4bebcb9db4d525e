"""RePaint: inpainting with an unconditional diffusion model by replacing the known pixels and resampling."""

from __future__ import annotations

from torch import Tensor

from ..context import bind
from ..denoisers import DenoiserBase
from ..grids import Schedule
from ..solvers._common import Callback, Cond, Generator, step_done
from ..solvers.ddim import ddim_step
from ._steps import noised, renoise

__all__ = ["repaint", "repaint_nfe"]


def repaint_nfe(steps: int, jump: int = 1, resample: int = 1) -> int:
    """Network evaluations of :func:`repaint` on a grid of ``steps`` steps: every step once, plus ``resample - 1``
    extra passes over each ``jump``-step block that ends at a point ``k * jump < steps``."""
    blocks = max(0, (steps - 1) // jump)
    return steps + (resample - 1) * jump * blocks


def repaint(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, y: Tensor, operator, *,
            generator: Generator = None, callback: Callback = None, cond: Cond = None,
            jump: int = 1, resample: int = 1) -> Tensor:
    """RePaint (Lugmayr et al. 2022, Algorithm 1 and sec. 4.2 "jumps").

    Each step is a DDPM ancestral step for the unknown pixels (eq. 8b) merged with the measurement
    forward-noised to the new level for the known ones (eq. 8a, 8c):
    ``x_{i+1} = m * (a_{i+1} y + s_{i+1} z) + (1 - m) * ddpm(x_i)``.  After a block of ``jump`` steps that
    ends at point ``k`` (before the last), the sample is noised back ``jump`` points with ``q(x_{k-jump} | x_k)``
    and the block is run again, ``resample - 1`` times, so the two parts harmonise (``resample = 1``: no
    resampling, the plain "replacement" method).  ``operator`` must be an inpainting operator (it has
    ``known``); the NFE is :func:`repaint_nfe`.
    """
    if not hasattr(operator, "known"):
        raise ValueError(f"RePaint only inpaints: it needs a mask operator, got {getattr(operator, 'name', operator)!r}; "
                         "use dps or reddiff for super-resolution and denoising")
    if jump < 1 or resample < 1:
        raise ValueError(f"RePaint needs jump >= 1 and resample >= 1, got jump={jump}, resample={resample}")
    m = operator.known(x)
    model = bind(denoiser, schedule, cond)
    ts = schedule.t.tolist()
    passes: dict[int, int] = {}
    i = 0
    while i < schedule.steps:
        p = model.predict(x, ts[i], i)
        unknown = ddim_step(p, schedule, i, 1.0, generator)  # DDPM's ancestral step
        x = m * noised(y, schedule, i + 1, generator) + (1 - m) * unknown
        step_done(i, schedule, x, p.x0, callback)
        i += 1
        if i % jump == 0 and i < schedule.steps and passes.get(i, 1) < resample:
            passes[i] = passes.get(i, 1) + 1
            x = renoise(x, schedule, i, i - jump, generator)
            i -= jump
    return x
