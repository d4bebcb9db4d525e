"""DDIM and DDPM ancestral sampling, and the one DDIM step that restoration and inversion share."""

from __future__ import annotations

from torch import Tensor

from ..context import bind
from ..denoisers import DenoiserBase
from ..grids import Schedule
from ..parametrization import Prediction
from ._common import Callback, Cond, Generator, randn_like, step_done
from ._expint import ddim_noise_split
from .registry import register

__all__ = ["ddim", "ddpm", "ddim_mean", "ddim_step"]


def ddim_mean(p: Prediction, schedule: Schedule, i: int, eta: float = 0.0) -> tuple[Tensor, float]:
    """The DDIM step from point ``i`` to ``i + 1`` without its fresh noise, and that noise's scale:
    ``(alpha_{i+1} x0 + sqrt(sigma_{i+1}^2 - c^2) eps, c)`` with ``c = eta sigma_{i+1} sqrt(1 - e^{-2h})``
    (Song et al. 2021, eq. 12 and 16; ``eta = 1`` is the mean of DDPM's posterior ``q(x_{i+1} | x_i, x0_hat)``)."""
    keep, c = ddim_noise_split(float(schedule.sigma[i + 1]), float(schedule.lam[i + 1] - schedule.lam[i]), eta)
    return float(schedule.alpha[i + 1]) * p.x0 + keep * p.eps, c


def ddim_step(p: Prediction, schedule: Schedule, i: int, eta: float = 0.0, generator: Generator = None,
              noise: Tensor | None = None) -> Tensor:
    """``x_{i+1}`` of DDIM from the prediction ``p`` at point ``i``: :func:`ddim_mean` plus ``c z``, ``z`` the given
    ``noise`` or a draw from ``generator`` (none when ``c = 0``: ``eta = 0``, or a step onto clean data).  At
    ``eta = 1`` (DDPM) a prediction with a learned variance draws the noise with it instead of ``c``."""
    mean, c = ddim_mean(p, schedule, i, eta)
    if c == 0:
        return mean
    std = c
    if eta == 1.0 and getattr(p, "variance", None) is not None:  # learned variance (Nichol & Dhariwal 2021, eq. 15)
        std = p.variance.std(1 - float(schedule.alpha[i] / schedule.alpha[i + 1]) ** 2, c * c)
    return mean + std * (noise if noise is not None else randn_like(mean, generator))


@register("ddim", order=1, paper="Song, Meng & Ermon 2021, Denoising Diffusion Implicit Models, eq. 12",
          ranges={"eta": (0, 1)})  # eta = 1 is DDPM's posterior; beyond it the fresh noise exceeds sigma_t
def ddim(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
         callback: Callback = None, cond: Cond = None, eta: float = 0.0) -> Tensor:
    """DDIM: ``x_t = alpha_t x0 + sqrt(sigma_t^2 - c^2) eps + c z`` (eq. 12; ``eta = 0`` is deterministic).

    With ``eta = 0`` this is the first-order exponential integrator (DPM-Solver-1) and also
    Euler's method on ``x/alpha`` against ``sigma/alpha`` (Karras et al. 2022, sec. 4).  ``eta = 1`` is DDPM
    ancestral sampling: a model with a learned variance (:class:`~fewstep.parametrization.LearnedVariance`) then
    draws the fresh noise with it instead of the posterior variance (Nichol & Dhariwal 2021, eq. 15), around the
    same posterior mean.
    """
    ts = schedule.t.tolist()
    model = bind(denoiser, schedule, cond)
    for i in range(schedule.steps):
        p = model.predict(x, ts[i], i)
        x = ddim_step(p, schedule, i, eta, generator)
        step_done(i, schedule, x, p.x0, callback)
    return x


@register("ddpm", order=1, stochastic=True,
          paper="Ho, Jain & Abbeel 2020, Denoising Diffusion Probabilistic Models, eq. 6-7")
def ddpm(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
         callback: Callback = None, cond: Cond = None) -> Tensor:
    """DDPM ancestral sampling from the posterior ``q(x_t | x_s, x0_hat)`` (DDIM with ``eta = 1``); with the model's
    learned variance if it has one (Nichol & Dhariwal 2021, eq. 15)."""
    return ddim(denoiser, x, schedule, generator=generator, callback=callback, eta=1.0, cond=cond)
