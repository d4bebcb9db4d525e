"""Denoising losses for every prediction type, with weighting and noise-level sampling.

One function per idea, shared by all processes:

* :func:`sample_t_uniform`, :func:`sample_t_lognormal` - where on the process to train
  (log-normal in ``sigma/alpha``: EDM, Karras et al. 2022, sec. 5).
* what a network of each prediction type should output, how it is called and how an error in
  its output becomes an error in ``x0``: :class:`fewstep.parametrization.Parametrization`, the
  same object the :class:`~fewstep.Denoiser` samples with.
* :func:`weight_uniform`, :func:`weight_min_snr`, :func:`weight_edm` - weightings
  ("simple" loss, Ho et al. 2020; min-SNR-gamma, Hang et al. 2023; EDM's lambda(sigma)).
* :func:`diffusion_loss` - the per-sample weighted squared error of a network.

Weightings are defined on the error of the *data prediction*: a weighting ``lambda(t)`` on
``||x0_hat - x0||^2`` is the weight ``lambda(t) k(t)^2`` on the native error, where
``x0_hat - x0 = k(t) (out - target)``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..data import random_hflip, to_model_range
from ..parametrization import network_output, parametrization
from ..processes import NoiseProcess
from .curriculum import Curriculum

__all__ = ["sample_t_uniform", "sample_t_lognormal", "weight_uniform", "weight_min_snr", "weight_edm",
           "network_output", "diffusion_loss", "WEIGHTINGS", "TIME_SAMPLERS"]


def sample_t_uniform(process: NoiseProcess, n: int, generator: torch.Generator | None = None, **_: Any) -> Tensor:
    """Times uniform on ``[t_min, t_max]`` (float64, shape ``(n,)``)."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return process.t_min + (process.t_max - process.t_min) * u


def sample_t_lognormal(process: NoiseProcess, n: int, generator: torch.Generator | None = None, *,
                       p_mean: float = -1.2, p_std: float = 1.2, **_: Any) -> Tensor:
    """``ln(sigma/alpha) ~ N(p_mean, p_std^2)`` (EDM, Karras et al. 2022, Table 1), clipped to the process's range."""
    z = torch.randn(n, generator=generator, dtype=torch.float64)
    t = process.t_of_sigma_hat(torch.exp(p_mean + p_std * z))
    return t.clamp(process.t_min, process.t_max)


TIME_SAMPLERS: dict[str, Callable[..., Tensor]] = {"uniform": sample_t_uniform, "lognormal": sample_t_lognormal}


def weight_uniform(prediction: str, process: NoiseProcess, t: Tensor, **_: Any) -> Tensor:
    """Weight 1 on the native error: the "simple" loss of each parametrisation (Ho et al. 2020)."""
    return torch.ones_like(process.sigma(t))


def weight_min_snr(prediction: str, process: NoiseProcess, t: Tensor, *, gamma: float = 5.0,
                   sigma_data: float = 0.5, **_: Any) -> Tensor:
    """Min-SNR-gamma (Hang et al. 2023): ``min(SNR, gamma)`` on the x0 error."""
    snr = torch.exp(2 * process.lam(t))
    return snr.clamp(max=gamma) * parametrization(prediction, process, sigma_data).x0_error_scale(t) ** 2


def weight_edm(prediction: str, process: NoiseProcess, t: Tensor, *, sigma_data: float = 0.5, **_: Any) -> Tensor:
    """EDM's ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` on the x0 error (Karras et al. 2022, eq. 8)."""
    s_hat = process.sigma(t) / process.alpha(t)
    lam = (s_hat**2 + sigma_data**2) / (s_hat * sigma_data) ** 2
    return lam * parametrization(prediction, process, sigma_data).x0_error_scale(t) ** 2


WEIGHTINGS: dict[str, Callable[..., Tensor]] = {"uniform": weight_uniform, "min_snr": weight_min_snr, "edm": weight_edm}


def diffusion_loss(net: Callable[..., Tensor], prediction: str, process: NoiseProcess, x0: Tensor, t: Tensor,
                   eps: Tensor, *, weighting: str = "uniform", cond: dict[str, Any] | None = None,
                   sigma_data: float = 0.5, **weight_options: Any) -> Tensor:
    """Per-sample ``w(t) * mean((net_out - target)^2)``, shape ``(batch,)``; average it for the batch loss."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
    param = parametrization(prediction, process, sigma_data)
    a, s = param.alpha_sigma(x0, t)
    x_t = a * x0 + s * eps
    out = network_output(net, param, x_t, t, cond)
    target = param.target(x0, eps, t)
    err = (out.float() - target.float()).square().reshape(x0.shape[0], -1).mean(dim=1)
    w = WEIGHTINGS[weighting](prediction, process, t, sigma_data=sigma_data, **weight_options)
    return w.to(err.dtype) * err


def draw_noising(process: Any, images: Tensor, generator: torch.Generator, *, hflip: bool = False,
                 time_sampling: str = "uniform", p_mean: float = -1.2, p_std: float = 1.2,
                 curriculum: Curriculum | None = None, step: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """One training batch's ``(x0, t, eps)``: uint8 ``images`` in [-1, 1] (each flipped left-right with
    probability 1/2 when ``hflip``), times from ``TIME_SAMPLERS[time_sampling]`` (or from ``curriculum`` at
    ``step``) and noise from the process's perturbation kernel (:meth:`~fewstep.processes.NoiseProcess.noise`:
    Gaussian, or PFGM++'s), all drawn from ``generator`` in that order (a step's batch is a function of its
    seed and step alone)."""
    x0 = to_model_range(images)
    if hflip:
        x0 = random_hflip(x0, generator)
    if curriculum is not None:
        t = curriculum.sample(process, len(x0), generator, step)
    else:
        t = TIME_SAMPLERS[time_sampling](process, len(x0), generator, p_mean=p_mean, p_std=p_std)
    eps = process.noise(x0.shape, generator, dtype=x0.dtype)  # the process's kernel (Gaussian; PFGM++'s t)
    return x0, t, eps


def flow_time(process: NoiseProcess, t: Tensor) -> Tensor:
    """The rectified-flow time ``sigma_hat / (1 + sigma_hat)`` of process time ``t`` (``sigma_hat = sigma / alpha``):
    every Gaussian process is rectified flow's straight path ``(1 - s) x0 + s eps`` rescaled (by ``alpha + sigma``)."""
    a, s = process.alpha(t), process.sigma(t)
    return s / (a + s)


def sample_t_flow_uniform(process: NoiseProcess, n: int, generator: torch.Generator | None = None, **_: Any) -> Tensor:
    """Times whose rectified-flow time (:func:`flow_time`) is uniform on [0, 1] (Liu et al. 2023, eq. 1), clipped to
    the process's range: ``t`` itself on the rectified-flow process."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return process.t_of_sigma_hat(u / (1 - u)).clamp(process.t_min, process.t_max)


def weight_flow(prediction: str, process: NoiseProcess, t: Tensor, *, sigma_data: float = 0.5, **_: Any) -> Tensor:
    """Rectified flow's loss ``||u - (eps - x0)||^2`` in any parametrisation: ``1 / s^2`` on the x0 error with ``s``
    the rectified-flow time (:func:`flow_time`), since there ``x0 = x - s u``; exactly 1 for ``flow`` on
    ``rectified_flow``."""
    s = flow_time(process, t)
    return parametrization(prediction, process, sigma_data).x0_error_scale(t) ** 2 / s**2


TIME_SAMPLERS["flow_uniform"] = sample_t_flow_uniform
WEIGHTINGS["flow"] = weight_flow
__all__ += ["flow_time", "sample_t_flow_uniform", "weight_flow"]


def pseudo_huber(sq_norm: Tensor, c: float) -> Tensor:
    """The pseudo-Huber distance ``sqrt(||d||^2 + c^2) - c`` from the squared norm ``||d||^2`` (Song & Dhariwal
    2023, "Improved Techniques for Training Consistency Models", sec. 3.3): quadratic below ``c``, linear above it,
    so a few large errors do not dominate the gradient.  ``c = 0`` gives the norm itself (with a 1e-20 floor so its
    gradient at 0 is finite)."""
    return torch.sqrt(sq_norm + c * c) - c if c > 0 else torch.sqrt(sq_norm + 1e-20)


#: iCT's constant: ``c = 0.00054 sqrt(d)`` for data of dimension ``d`` (sec. 3.3).
ICT_HUBER_C_PER_SQRT_DIM = 0.00054
__all__ += ["pseudo_huber", "ICT_HUBER_C_PER_SQRT_DIM"]
