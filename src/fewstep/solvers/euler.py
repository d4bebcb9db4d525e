"""Euler, Euler ancestral and Heun (with EDM's stochastic churn) in the EDM variables.

These samplers integrate ``dy/dsigma = (y - D(y; sigma)) / sigma`` for ``y = x / alpha`` and
``sigma = sigma/alpha`` of the process (Karras et al. 2022, eq. 4 with s(t) = 1), as
k-diffusion's samplers do; ``x = alpha(t) y`` is what the denoiser sees.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..denoisers import DenoiserBase
from ..grids import Schedule
from ..context import bind
from ._common import Callback, Cond, Generator, randn_like, step_done
from .registry import register


@register("euler", order=1, paper="Karras et al. 2022, Elucidating the Design Space, Alg. 1 without the 2nd-order correction")
def euler(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
          callback: Callback = None, cond: Cond = None) -> Tensor:
    """Euler's method in ``(y, sigma_hat)``: ``y_{i+1} = y_i + (s_{i+1} - s_i) (y_i - D_i) / s_i``."""
    ts, a, sh = schedule.t.tolist(), schedule.alpha.tolist(), schedule.sigma_hat.tolist()
    y = x / a[0]
    model = bind(denoiser, schedule, cond)
    for i in range(schedule.steps):
        x0 = model.x0(a[i] * y, ts[i], i)
        y = y + (sh[i + 1] - sh[i]) / sh[i] * (y - x0)
        step_done(i, schedule, y, x0, callback)
    return a[-1] * y


@register("euler_a", order=1, stochastic=True, aliases=("euler_ancestral",),
          ranges={"eta": (0, math.inf, True, False), "s_noise": (0, math.inf, True, False)},
          paper="k-diffusion's Euler ancestral: Euler to sigma_down, then fresh noise sigma_up (Ho et al. 2020 posterior variance)")
def euler_ancestral(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
                    callback: Callback = None, cond: Cond = None, eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """Euler ancestral: ``sigma_up = min(s', eta sqrt(s'^2 (s^2 - s'^2) / s^2))``, ``sigma_down = sqrt(s'^2 - sigma_up^2)``."""
    ts, a, sh = schedule.t.tolist(), schedule.alpha.tolist(), schedule.sigma_hat.tolist()
    y = x / a[0]
    model = bind(denoiser, schedule, cond)
    for i in range(schedule.steps):
        s, s_next = sh[i], sh[i + 1]
        x0 = model.x0(a[i] * y, ts[i], i)
        s_up = min(s_next, eta * math.sqrt(max(s_next**2 * (s**2 - s_next**2) / s**2, 0.0)))
        s_down = math.sqrt(s_next**2 - s_up**2)
        y = y + (s_down - s) / s * (y - x0)
        if s_up > 0:
            y = y + s_noise * s_up * randn_like(y, generator)
        step_done(i, schedule, y, x0, callback)
    return a[-1] * y


def _heun_plan(nfe: int, clean_end: bool) -> tuple[int, dict[str, Any]]:
    """Heun steps cost 2 evaluations and Euler steps 1; the step onto clean data must be Euler.

    ``steps = nfe // 2 + 1`` (clean end) or ``ceil(nfe / 2)``; the first ``nfe - steps`` steps are Heun.
    """
    steps = nfe // 2 + 1 if clean_end else (nfe + 1) // 2
    return steps, {"heun_steps": nfe - steps}


@register("heun", order=2, nfe_per_step=2, plan=_heun_plan, min_nfe=1,
          ranges={"s_churn": (0, math.inf, True, False), "s_tmin": (0, math.inf, True, False),
                  "s_tmax": (0, math.inf), "s_noise": (0, math.inf, True, False)},
          paper="Karras et al. 2022, Elucidating the Design Space, Alg. 2 (stochastic churn) / Alg. 1 (S_churn=0)")
def heun(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
         callback: Callback = None, cond: Cond = None, heun_steps: int | None = None, s_churn: float = 0.0,
         s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0) -> Tensor:
    """EDM Algorithm 2: churn ``sigma -> sigma (1 + gamma)``, Euler step, trapezoidal correction.

    ``gamma = min(S_churn / N, sqrt(2) - 1)`` for ``sigma in [S_tmin, S_tmax]``; the raised level
    is capped at the process's largest noise level.  Steps ``i >= heun_steps`` (by default only
    a step onto ``sigma = 0``) are plain Euler, so NFE = steps + heun_steps.
    """
    process = schedule.process
    n = schedule.steps
    if heun_steps is None:
        heun_steps = n - 1 if schedule.clean_end else n
    a, sh, ts = schedule.alpha.tolist(), schedule.sigma_hat.tolist(), schedule.t.tolist()
    s_cap = float(torch.exp(-process.lam(process.t_max)))
    y = x / a[0]
    model = bind(denoiser, schedule, cond)
    for i in range(n):
        s, t, alpha = sh[i], ts[i], a[i]
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0.0
        if gamma > 0:
            s_raised = min(s * (1 + gamma), s_cap)
            if s_raised > s:
                y = y + s_noise * math.sqrt(s_raised**2 - s**2) * randn_like(y, generator)
                t = float(process.t_of_sigma_hat(s_raised))
                alpha, s = float(process.alpha(t)), s_raised
        x0 = model.x0(alpha * y, t, i)
        d = (y - x0) / s
        y_next = y + (sh[i + 1] - s) * d
        if i < heun_steps and sh[i + 1] > 0:
            x0_next = model.x0(a[i + 1] * y_next, ts[i + 1], i, 1)
            d_next = (y_next - x0_next) / sh[i + 1]
            y_next = y + (sh[i + 1] - s) * 0.5 * (d + d_next)
        y = y_next
        step_done(i, schedule, y, x0, callback)
    return a[-1] * y
