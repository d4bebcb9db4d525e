"""Maths shared by the restoration methods: forward noising between levels (their DDPM step is
:func:`fewstep.solvers.ddim.ddim_step` with ``eta = 1``)."""

from __future__ import annotations

import math

from torch import Tensor

from ..grids import Schedule
from ..solvers._common import Generator, randn_like

__all__ = ["renoise", "noised"]


def renoise(x: Tensor, schedule: Schedule, src: int, dst: int, generator: Generator) -> Tensor:
    """A draw of the forward process ``q(x_dst | x_src)`` from point ``src`` back to the noisier point ``dst < src``:
    ``(a_d / a_s) x + sqrt(s_d^2 - (a_d / a_s)^2 s_s^2) z`` (RePaint's resampling jump, Lugmayr et al. 2022, eq. 1)."""
    if not dst < src:
        raise ValueError(f"renoise goes back to a noisier point: need dst < src, got {dst} and {src}")
    ratio = float(schedule.alpha[dst] / schedule.alpha[src])
    var = float(schedule.sigma[dst]) ** 2 - ratio**2 * float(schedule.sigma[src]) ** 2
    return ratio * x + math.sqrt(max(var, 0.0)) * randn_like(x, generator)


def noised(x0: Tensor, schedule: Schedule, i: int, generator: Generator) -> Tensor:
    """A draw of ``q(x_i | x0) = N(a_i x0, s_i^2 I)`` (exactly ``x0`` at a clean end)."""
    s = float(schedule.sigma[i])
    x = float(schedule.alpha[i]) * x0
    return x + s * randn_like(x, generator) if s > 0 else x
