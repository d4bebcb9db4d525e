"""Prediction types: what a network outputs and how that output becomes ``x0`` and ``eps``.

One object per prediction type owns all of its maths, used by both sides of a model's life:
the :class:`~fewstep.Denoiser` (network input, output -> prediction) and the training loss
(network input, regression target, error scale).  Keeping them together is what guarantees
that a network is sampled exactly as it was trained (k-diffusion keeps loss and forward side
by side for the same reason).

With ``x = alpha x0 + sigma eps``:

* ``eps``: the network predicts the noise (Ho et al. 2020).
* ``x0``: the network predicts the clean sample.
* ``v``: ``v = alpha eps - sigma x0`` (Salimans & Ho 2022, sec. 4).
* ``flow``: the velocity ``dx/dt = alpha' x0 + sigma' eps`` (rectified flow: ``eps - x0``).
* ``edm``: EDM preconditioning (Karras et al. 2022, Table 1) in the scaled variable
  ``y = x / alpha`` with noise level ``sigma_hat = sigma / alpha``:
  ``D(y) = c_skip y + c_out F(c_in y, c_noise)``.

Coefficients accept a python float time (one time for the batch) or a float64 tensor of shape
``(batch,)`` (per-sample times), and are broadcast against the images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from .processes import NoiseProcess

__all__ = ["Prediction", "LearnedVariance", "VARIANCE_TYPES", "split_variance", "Parametrization", "PREDICTION_TYPES",
           "parametrization", "network_output", "alpha_sigma", "edm_coefficients"]

Coef = float | Tensor
TimeLike = float | Tensor


#: Learned variances of improved-DDPM-style networks, whose output has twice the input's channels.
VARIANCE_TYPES = ("learned", "learned_range")


@dataclass
class LearnedVariance:
    """The variance channels of a network that learns the reverse step's variance (Nichol & Dhariwal 2021).

    ``"learned_range"`` (their eq. 15): ``value`` ``v`` in [-1, 1] interpolates the log variance between the step's
    ``beta`` and its posterior variance ``beta_tilde``: ``log Sigma = f log beta + (1 - f) log beta_tilde``,
    ``f = (v + 1) / 2``.  ``"learned"``: ``value`` is the variance itself, as diffusers' ``DDPMScheduler`` reads it.
    With skipped steps both apply to the step taken (``beta = 1 - alpha_bar_s / alpha_bar_t`` of the respaced
    step, as improved-diffusion's respacing and diffusers do).
    """

    kind: str
    value: Tensor

    def std(self, beta: float, beta_tilde: float) -> Tensor:
        """The standard deviation of the ancestral step with (respaced) ``beta`` and posterior variance ``beta_tilde``."""
        if self.kind == "learned":
            return self.value.clamp(min=0).sqrt()
        frac = (self.value + 1) / 2
        log_var = frac * math.log(beta) + (1 - frac) * math.log(max(beta_tilde, 1e-20))  # diffusers' clamp at 1e-20
        return torch.exp(0.5 * log_var)

    def chunk(self, parts: int) -> tuple["LearnedVariance", ...]:
        """Split along the batch like ``Tensor.chunk`` (guidance batches its passes)."""
        return tuple(LearnedVariance(self.kind, v) for v in self.value.chunk(parts))


@dataclass
class Prediction:
    """Data prediction ``x0`` and noise prediction ``eps`` at one ``(x, t)``; ``variance``: the network's learned
    variance of the reverse step, if it has one (only DDPM ancestral sampling uses it)."""

    x0: Tensor
    eps: Tensor
    variance: LearnedVariance | None = None


def split_variance(out: Tensor, x: Tensor, variance: str | None) -> tuple[Tensor, LearnedVariance | None]:
    """``(mean output, learned variance)`` of a network's output ``out`` at input ``x``: with ``variance`` (one of
    :data:`VARIANCE_TYPES`) the first ``C`` channels are the prediction and the last ``C`` the variance; without,
    ``out`` itself.  A shape that does not fit is refused with the setting that would make it fit."""
    channels = x.shape[1] if x.ndim > 1 else None
    if variance is None:
        if channels is not None and out.ndim == x.ndim and out.shape[1] == 2 * channels and out.shape[2:] == x.shape[2:]:
            raise ValueError(f"the network returns {out.shape[1]} channels for {channels} input channels (a learned "
                             f"variance); declare it: variance_type 'learned_range' or 'learned'")
        return out, None
    if variance not in VARIANCE_TYPES:
        raise ValueError(f"unknown variance type {variance!r}; valid: {', '.join(VARIANCE_TYPES)} or None")
    if channels is None or out.ndim != x.ndim or out.shape[1] != 2 * channels or out.shape[2:] != x.shape[2:]:
        raise ValueError(f"variance_type {variance!r} needs a network returning 2 x {channels} channels shaped like "
                         f"its input, got {tuple(out.shape)} for {tuple(x.shape)}")
    mean, var = out.split(channels, dim=1)
    return mean, LearnedVariance(variance, var)


def _per_sample(value: Tensor, x: Tensor) -> Coef:
    """A float64 coefficient as a python float (0-d) or a tensor broadcastable to ``x``."""
    if value.ndim == 0:
        return float(value)
    return value.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def alpha_sigma(process: NoiseProcess, x: Tensor, t: TimeLike) -> tuple[Coef, Coef]:
    """``(alpha(t), sigma(t))`` as python floats (scalar ``t``, memoised) or tensors broadcastable to ``x``."""
    if isinstance(t, float):
        return process.alpha_sigma(t)
    return _per_sample(process.alpha(t), x), _per_sample(process.sigma(t), x)


def edm_coefficients(sigma_hat: Coef, sigma_data: float) -> tuple[Coef, Coef, Coef]:
    """``(c_in, c_skip, c_out)`` of EDM's preconditioning (Karras et al. 2022, Table 1) at ``sigma_hat``."""
    d2 = sigma_hat**2 + sigma_data**2
    root = d2**0.5
    return 1.0 / root, sigma_data**2 / d2, sigma_hat * sigma_data / root


class Parametrization:
    """The maths of one prediction type on one noise process.

    * :meth:`net_input` - what the network is called with at ``(x, t)``;
    * :meth:`prediction` - the network's output turned into ``x0`` and ``eps``, each in the
      numerically best way (an eps network's eps is its output, not re-derived from x0);
    * :meth:`target` - the output a perfect network gives at ``x_t = alpha x0 + sigma eps``;
    * :meth:`x0_error_scale` - ``k(t)`` with ``x0_hat - x0 = k(t) (out - target)``, which turns a
      weighting of the data-prediction error into a weighting of the native error.
    """

    name: str = ""

    def __init__(self, process: NoiseProcess, sigma_data: float = 0.5):
        self.process = process
        self.sigma_data = sigma_data

    # -- shared coefficient helpers ----------------------------------------------------------------------------
    def alpha_sigma(self, x: Tensor, t: TimeLike) -> tuple[Coef, Coef]:
        """``(alpha(t), sigma(t))`` as floats (scalar ``t``) or tensors broadcastable to ``x``."""
        return alpha_sigma(self.process, x, t)

    def _batch_time(self, x: Tensor, value: Tensor) -> Tensor:
        """A time value as a ``(batch,)`` tensor in ``x``'s dtype and device (what networks take)."""
        if value.ndim == 0:
            return torch.full((x.shape[0],), float(value), device=x.device, dtype=x.dtype)
        return value.reshape(-1).to(device=x.device, dtype=x.dtype)

    # -- the interface ------------------------------------------------------------------------------------------
    def net_input(self, x: Tensor, t: TimeLike) -> tuple[Tensor, Tensor]:
        """``(network input, network time)``: ``x`` and the process's ``model_time(t)``."""
        return x, self._batch_time(x, self.process.model_time(t))

    def prediction(self, x: Tensor, t: TimeLike, out: Tensor) -> Prediction:
        raise NotImplementedError

    def target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def x0_error_scale(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.process!r})"


class EpsPrediction(Parametrization):
    name = "eps"

    def prediction(self, x: Tensor, t: TimeLike, out: Tensor) -> Prediction:
        a, s = self.alpha_sigma(x, t)
        return Prediction((x - s * out) / a, out)

    def target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        return eps

    def x0_error_scale(self, t: Tensor) -> Tensor:
        return self.process.sigma(t) / self.process.alpha(t)


class X0Prediction(Parametrization):
    name = "x0"

    def prediction(self, x: Tensor, t: TimeLike, out: Tensor) -> Prediction:
        a, s = self.alpha_sigma(x, t)
        return Prediction(out, (x - a * out) / s)

    def target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        return x0

    def x0_error_scale(self, t: Tensor) -> Tensor:
        return torch.ones_like(self.process.sigma(t))


class VPrediction(Parametrization):
    """``v = alpha eps - sigma x0`` (Salimans & Ho 2022); for any ``alpha, sigma``:
    ``x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)``, ``eps = (sigma x + alpha v) / (alpha^2 + sigma^2)``."""

    name = "v"

    def prediction(self, x: Tensor, t: TimeLike, out: Tensor) -> Prediction:
        a, s = self.alpha_sigma(x, t)
        norm = a * a + s * s
        return Prediction((a * x - s * out) / norm, (s * x + a * out) / norm)

    def target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        a, s = self.alpha_sigma(x0, t)
        return a * eps - s * x0

    def x0_error_scale(self, t: Tensor) -> Tensor:
        a, s = self.process.alpha(t), self.process.sigma(t)
        return s / (a * a + s * s)


class FlowPrediction(Parametrization):
    """The velocity ``u = alpha' x0 + sigma' eps``; with ``x = alpha x0 + sigma eps`` the 2x2 system gives
    ``x0 = (sigma' x - sigma u) / det``, ``eps = (alpha u - alpha' x) / det``, ``det = alpha sigma' - sigma alpha'``."""

    name = "flow"

    def _derivatives(self, x: Tensor, t: TimeLike) -> tuple[Coef, Coef]:
        da, ds = self.process.derivatives(t)
        return _per_sample(da, x), _per_sample(ds, x)

    def prediction(self, x: Tensor, t: TimeLike, out: Tensor) -> Prediction:
        a, s = self.alpha_sigma(x, t)
        da, ds = self._derivatives(x, t)
        det = a * ds - s * da
        return Prediction((ds * x - s * out) / det, (a * out - da * x) / det)

    def target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        da, ds = self._derivatives(x0, t)
        return da * x0 + ds * eps

    def x0_error_scale(self, t: Tensor) -> Tensor:
        a, s = self.process.alpha(t), self.process.sigma(t)
        da, ds = self.process.derivatives(t)
        return s / (a * ds - s * da).abs()


class EDMPrediction(Parametrization):
    """EDM preconditioning in ``y = x / alpha``: ``c_noise = ln(sigma_hat) / 4`` (Karras et al. 2022, Table 1)."""

    name = "edm"

    def _sigma_hat(self, x: Tensor, t: TimeLike) -> tuple[Coef, Coef]:
        a, s = self.alpha_sigma(x, t)
        return a, s / a

    def net_input(self, x: Tensor, t: TimeLike) -> tuple[Tensor, Tensor]:
        a, s_hat = self._sigma_hat(x, t)
        c_in = edm_coefficients(s_hat, self.sigma_data)[0]
        if isinstance(s_hat, float):
            c_noise = torch.full((x.shape[0],), math.log(s_hat) / 4, dtype=x.dtype, device=x.device)
        else:
            c_noise = (torch.log(s_hat) / 4).reshape(-1)
        return x / a * c_in, c_noise

    def prediction(self, x: Tensor, t: TimeLike, out: Tensor) -> Prediction:
        a, s = self.alpha_sigma(x, t)
        _, c_skip, c_out = edm_coefficients(s / a, self.sigma_data)
        x0 = c_skip * (x / a) + c_out * out
        return Prediction(x0, (x - a * x0) / s)

    def target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """``F`` target: ``(x0 - c_skip y) / c_out`` with ``y = x0 + sigma_hat eps``."""
        _, s_hat = self._sigma_hat(x0, t)
        _, c_skip, c_out = edm_coefficients(s_hat, self.sigma_data)
        return (x0 - c_skip * (x0 + s_hat * eps)) / c_out

    def x0_error_scale(self, t: Tensor) -> Tensor:
        return edm_coefficients(self.process.sigma(t) / self.process.alpha(t), self.sigma_data)[2]


_TYPES: dict[str, Callable[[NoiseProcess, float], Parametrization]] = {
    cls.name: cls for cls in (EpsPrediction, X0Prediction, VPrediction, FlowPrediction, EDMPrediction)}
PREDICTION_TYPES = tuple(_TYPES)


def parametrization(prediction: str, process: NoiseProcess, sigma_data: float = 0.5) -> Parametrization:
    """The :class:`Parametrization` of ``prediction`` (one of :data:`PREDICTION_TYPES`) on ``process``."""
    if prediction not in _TYPES:
        raise ValueError(f"unknown prediction type {prediction!r}; valid: {', '.join(PREDICTION_TYPES)}")
    return _TYPES[prediction](process, sigma_data)


def network_output(net: Callable[..., Tensor], param: Parametrization, x_t: Tensor, t: Tensor,
                   cond: dict[str, Any] | None = None) -> Tensor:
    """Call ``net`` at ``(x_t, t)`` exactly as :class:`fewstep.Denoiser` does (the parametrization's input): what
    the training loss and the distilled generators evaluate."""
    x_in, t_in = param.net_input(x_t, t)
    return net(x_in, t_in, **(cond or {}))
