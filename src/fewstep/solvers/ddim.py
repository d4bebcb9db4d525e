"""DDIM and DDPM ancestral sampling."""

from __future__ import annotations

from torch import Tensor

from ..denoisers import DenoiserBase
from ..grids import Schedule
from ..context import bind
from ._common import Callback, Cond, Generator, randn_like, step_done
from ._expint import ddim_noise_split
from .registry import register


@register("ddim", order=1, paper="Song, Meng & Ermon 2021, Denoising Diffusion Implicit Models, eq. 12")
def ddim(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
         callback: Callback = None, cond: Cond = None, eta: float = 0.0) -> Tensor:
    """DDIM: ``x_t = alpha_t x0 + sqrt(sigma_t^2 - c^2) eps + c z`` (eq. 12; ``eta = 0`` is deterministic).

    With ``eta = 0`` this is the first-order exponential integrator (DPM-Solver-1) and also
    Euler's method on ``x/alpha`` against ``sigma/alpha`` (Karras et al. 2022, sec. 4).  ``eta = 1`` is DDPM
    ancestral sampling: a model with a learned variance (:class:`~fewstep.parametrization.LearnedVariance`) then
    draws the fresh noise with it instead of the posterior variance (Nichol & Dhariwal 2021, eq. 15), around the
    same posterior mean.
    """
    ts, a, s, lam = schedule.t.tolist(), schedule.alpha.tolist(), schedule.sigma.tolist(), schedule.lam.tolist()
    model = bind(denoiser, schedule, cond)
    for i in range(schedule.steps):
        p = model.predict(x, ts[i], i)
        keep, c = ddim_noise_split(s[i + 1], lam[i + 1] - lam[i], eta)
        x = a[i + 1] * p.x0 + keep * p.eps
        if c > 0:
            std = c if p.variance is None or eta != 1.0 else p.variance.std(1 - (a[i] / a[i + 1]) ** 2, c * c)
            x = x + std * randn_like(x, generator)
        step_done(i, schedule, x, p.x0, callback)
    return x


@register("ddpm", order=1, stochastic=True,
          paper="Ho, Jain & Abbeel 2020, Denoising Diffusion Probabilistic Models, eq. 6-7")
def ddpm(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
         callback: Callback = None, cond: Cond = None) -> Tensor:
    """DDPM ancestral sampling from the posterior ``q(x_t | x_s, x0_hat)`` (DDIM with ``eta = 1``); with the model's
    learned variance if it has one (Nichol & Dhariwal 2021, eq. 15)."""
    return ddim(denoiser, x, schedule, generator=generator, callback=callback, eta=1.0, cond=cond)
