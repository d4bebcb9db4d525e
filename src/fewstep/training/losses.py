"""Denoising losses for every prediction type, with weighting and noise-level sampling.

One function per idea, shared by all processes:

* :func:`sample_t_uniform`, :func:`sample_t_lognormal` - where on the process to train
  (log-normal in ``sigma/alpha``: EDM, Karras et al. 2022, sec. 5).
* :func:`native_target` - what a network of each prediction type should output.
* :func:`x0_error_scale` - how an error in that output becomes an error in ``x0``.
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

from ..denoisers import PREDICTION_TYPES
from ..processes import NoiseProcess

__all__ = ["sample_t_uniform", "sample_t_lognormal", "native_target", "x0_error_scale", "weight_uniform",
           "weight_min_snr", "weight_edm", "network_output", "diffusion_loss", "WEIGHTINGS", "TIME_SAMPLERS"]


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


def _coef(v: Tensor, like: Tensor) -> Tensor:
    return v.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def _edm_coefs(process: NoiseProcess, t: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(sigma_hat, c_in, c_skip, c_out)`` of EDM preconditioning in the scaled variable (float64)."""
    s_hat = process.sigma(t) / process.alpha(t)
    d2 = s_hat**2 + sigma_data**2
    return s_hat, d2.rsqrt(), sigma_data**2 / d2, s_hat * sigma_data / d2.sqrt()


def native_target(prediction: str, process: NoiseProcess, x0: Tensor, eps: Tensor, t: Tensor,
                  sigma_data: float = 0.5) -> Tensor:
    """The regression target of a ``prediction``-type network at ``x_t = alpha x0 + sigma eps``."""
    a, s = _coef(process.alpha(t), x0), _coef(process.sigma(t), x0)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":  # Salimans & Ho 2022
        return a * eps - s * x0
    if prediction == "flow":  # d x_t / dt
        da, ds = process.derivatives(t)
        return _coef(da, x0) * x0 + _coef(ds, x0) * eps
    if prediction == "edm":  # F target: (x0 - c_skip y) / c_out with y = x0 + sigma_hat eps
        s_hat, _, c_skip, c_out = (_coef(c, x0) for c in _edm_coefs(process, t, sigma_data))
        return (x0 - c_skip * (x0 + s_hat * eps)) / c_out
    raise ValueError(f"unknown prediction type {prediction!r}; valid: {', '.join(PREDICTION_TYPES)}")


def x0_error_scale(prediction: str, process: NoiseProcess, t: Tensor, sigma_data: float = 0.5) -> Tensor:
    """``k(t)`` with ``x0_hat - x0 = k(t) (out - target)`` for each prediction type (float64, ``(n,)``)."""
    a, s = process.alpha(t), process.sigma(t)
    if prediction == "eps":
        return s / a
    if prediction == "x0":
        return torch.ones_like(a)
    if prediction == "v":
        return s / (a * a + s * s)
    if prediction == "flow":
        da, ds = process.derivatives(t)
        return s / (a * ds - s * da).abs()
    if prediction == "edm":
        return _edm_coefs(process, t, sigma_data)[3]
    raise ValueError(f"unknown prediction type {prediction!r}; valid: {', '.join(PREDICTION_TYPES)}")


def weight_uniform(prediction: str, process: NoiseProcess, t: Tensor, **_: Any) -> Tensor:
    """Weight 1 on the native error: the "simple" loss of each parametrisation (Ho et al. 2020)."""
    return torch.ones_like(process.sigma(t))


def weight_min_snr(prediction: str, process: NoiseProcess, t: Tensor, *, gamma: float = 5.0,
                   sigma_data: float = 0.5, **_: Any) -> Tensor:
    """Min-SNR-gamma (Hang et al. 2023): ``min(SNR, gamma)`` on the x0 error."""
    snr = torch.exp(2 * process.lam(t))
    return snr.clamp(max=gamma) * x0_error_scale(prediction, process, t, sigma_data) ** 2


def weight_edm(prediction: str, process: NoiseProcess, t: Tensor, *, sigma_data: float = 0.5, **_: Any) -> Tensor:
    """EDM's ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` on the x0 error (Karras et al. 2022, eq. 8)."""
    s_hat = process.sigma(t) / process.alpha(t)
    lam = (s_hat**2 + sigma_data**2) / (s_hat * sigma_data) ** 2
    return lam * x0_error_scale(prediction, process, t, sigma_data) ** 2


WEIGHTINGS: dict[str, Callable[..., Tensor]] = {"uniform": weight_uniform, "min_snr": weight_min_snr, "edm": weight_edm}


def network_output(net: Callable[..., Tensor], prediction: str, process: NoiseProcess, x_t: Tensor, t: Tensor,
                   cond: dict[str, Any] | None = None, sigma_data: float = 0.5) -> Tensor:
    """Call ``net`` exactly as :class:`fewstep.Denoiser` does (same time input and EDM preconditioning)."""
    cond = cond or {}
    if prediction == "edm":
        s_hat, c_in, _, _ = _edm_coefs(process, t, sigma_data)
        y = x_t / _coef(process.alpha(t), x_t)
        return net(y * _coef(c_in, x_t), (torch.log(s_hat) / 4).to(x_t.dtype), **cond)
    return net(x_t, process.model_time(t).to(x_t.dtype), **cond)


def diffusion_loss(net: Callable[..., Tensor], prediction: str, process: NoiseProcess, x0: Tensor, t: Tensor,
                   eps: Tensor, *, weighting: str = "uniform", cond: dict[str, Any] | None = None,
                   sigma_data: float = 0.5, **weight_options: Any) -> Tensor:
    """Per-sample ``w(t) * mean((net_out - target)^2)``, shape ``(batch,)``; average it for the batch loss."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
    x_t = _coef(process.alpha(t), x0) * x0 + _coef(process.sigma(t), x0) * eps
    out = network_output(net, prediction, process, x_t, t, cond, sigma_data)
    target = native_target(prediction, process, x0, eps, t, sigma_data)
    err = (out.float() - target.float()).square().reshape(x0.shape[0], -1).mean(dim=1)
    w = WEIGHTINGS[weighting](prediction, process, t, sigma_data=sigma_data, **weight_options)
    return w.to(err.dtype) * err
