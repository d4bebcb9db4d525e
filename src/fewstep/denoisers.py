"""Denoisers: turn a network (or an exact model) into data and noise predictions.

A denoiser maps ``(x, t)`` to a :class:`Prediction` holding both ``x0_hat`` (data prediction)
and ``eps_hat`` (noise prediction), related by ``x = alpha x0_hat + sigma eps_hat``.  Each is
computed from the network's native output in the numerically best way, so noise-prediction
solvers on eps networks see the network's eps, and data-prediction solvers see its x0.

Wrappers (guidance, thresholding, counting, caching) are denoisers around a denoiser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from .processes import NoiseProcess

__all__ = [
    "Prediction",
    "DenoiserBase",
    "Denoiser",
    "DenoiserWrapper",
    "ClassifierFreeGuidance",
    "DynamicThresholding",
    "NFECounter",
    "PREDICTION_TYPES",
]

PREDICTION_TYPES = ("eps", "x0", "v", "flow", "edm")


@dataclass
class Prediction:
    """Data prediction ``x0`` and noise prediction ``eps`` at one ``(x, t)``."""

    x0: Tensor
    eps: Tensor


def _per_sample(value: Tensor, x: Tensor) -> Tensor | float:
    """A float64 coefficient as a python float (scalar t) or broadcastable to ``x``."""
    if value.ndim == 0:
        return float(value)
    return value.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


class DenoiserBase:
    """Anything with a ``process`` and ``predict(x, t, **cond) -> Prediction``.

    ``t`` is a python float shared by the batch or a float64 tensor of shape ``(batch,)``.
    Calling the denoiser returns the data prediction, like a k-diffusion denoiser.
    """

    process: NoiseProcess

    def predict(self, x: Tensor, t: float | Tensor, **cond: Any) -> Prediction:
        raise NotImplementedError

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        return self.predict(x, t, **cond).x0

    def eps(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        return self.predict(x, t, **cond).eps

    def coefficients(self, x: Tensor, t: float | Tensor) -> tuple[Tensor | float, Tensor | float]:
        """``(alpha(t), sigma(t))`` as floats or tensors broadcastable to ``x``."""
        if isinstance(t, float):
            return self.process.alpha_sigma(t)
        p = self.process
        return _per_sample(p.alpha(t), x), _per_sample(p.sigma(t), x)


class Denoiser(DenoiserBase):
    """Wrap ``net(x, t_model, **cond)`` trained with prediction type ``prediction``.

    * ``"eps"``: the net predicts the noise (DDPM).
    * ``"x0"``: the net predicts the clean sample.
    * ``"v"``: ``v = alpha eps - sigma x0`` (Salimans & Ho 2022).
    * ``"flow"``: the velocity ``dx/dt = alpha' x0 + sigma' eps`` (rectified flow: ``eps - x0``).
    * ``"edm"``: EDM preconditioning (Karras et al. 2022, Table 1) in the scaled variable
      ``x / alpha`` with noise level ``sigma / alpha``: ``D = c_skip x + c_out F(c_in x, c_noise)``.
    """

    def __init__(self, net: Callable[..., Tensor], process: NoiseProcess, prediction: str = "eps",
                 sigma_data: float = 0.5):
        if prediction not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {prediction!r}; valid: {', '.join(PREDICTION_TYPES)}")
        self.net = net
        self.process = process
        self.prediction = prediction
        self.sigma_data = sigma_data

    def _net_time(self, x: Tensor, t: float | Tensor) -> Tensor:
        tm = self.process.model_time(t)
        if tm.ndim == 0:
            return torch.full((x.shape[0],), float(tm), device=x.device, dtype=x.dtype)
        return tm.to(device=x.device, dtype=x.dtype)

    def _call_net(self, x: Tensor, t_model: Tensor, cond: dict[str, Any]) -> Tensor:
        out = self.net(x, t_model, **cond)
        if not isinstance(out, Tensor):
            out = getattr(out, "sample", out)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"the denoiser's network returned shape {shape} for input of shape {tuple(x.shape)}; "
                f"a '{self.prediction}'-prediction network must return a tensor shaped like its input"
            )
        return out

    def predict(self, x: Tensor, t: float | Tensor, **cond: Any) -> Prediction:
        a, s = self.coefficients(x, t)
        kind = self.prediction
        if kind == "edm":
            s_hat = s / a
            sd2 = self.sigma_data**2
            c_in = 1.0 / (s_hat**2 + sd2) ** 0.5
            c_skip = sd2 / (s_hat**2 + sd2)
            c_out = s_hat * self.sigma_data / (s_hat**2 + sd2) ** 0.5
            y = x / a
            if isinstance(s_hat, float):
                c_noise = torch.full((x.shape[0],), math.log(s_hat) / 4, dtype=x.dtype, device=x.device)
            else:
                c_noise = (torch.log(s_hat) / 4).reshape(-1)
            f = self._call_net(y * c_in, c_noise, cond)
            x0 = c_skip * y + c_out * f
            return Prediction(x0, (x - a * x0) / s)
        out = self._call_net(x, self._net_time(x, t), cond)
        if kind == "eps":
            return Prediction((x - s * out) / a, out)
        if kind == "x0":
            return Prediction(out, (x - a * out) / s)
        if kind == "v":
            norm = a * a + s * s
            return Prediction((a * x - s * out) / norm, (s * x + a * out) / norm)
        # flow: u = a' x0 + s' eps, x = a x0 + s eps
        da, ds = self.process.derivatives(t)
        da, ds = _per_sample(da, x), _per_sample(ds, x)
        det = a * ds - s * da
        return Prediction((ds * x - s * out) / det, (a * out - da * x) / det)


class DenoiserWrapper(DenoiserBase):
    """Base class of wrappers: delegates to ``inner`` and exposes its process."""

    def __init__(self, inner: DenoiserBase):
        self.inner = inner

    @property
    def process(self) -> NoiseProcess:  # type: ignore[override]
        return self.inner.process

    def predict(self, x: Tensor, t: float | Tensor, **cond: Any) -> Prediction:
        return self.inner.predict(x, t, **cond)


class NFECounter(DenoiserWrapper):
    """Counts denoiser evaluations (one per ``predict`` call, whatever the batch size)."""

    def __init__(self, inner: DenoiserBase):
        super().__init__(inner)
        self.count = 0

    def predict(self, x: Tensor, t: float | Tensor, **cond: Any) -> Prediction:
        self.count += 1
        return self.inner.predict(x, t, **cond)


class ClassifierFreeGuidance(DenoiserWrapper):
    """Classifier-free guidance (Ho & Salimans 2022): ``D = D_u + w (D_c - D_u)``.

    ``uncond`` maps the conditioning keywords to their unconditional form (e.g. the null class).
    The conditional and unconditional passes are batched into one network call.  Because the
    combination is linear and both predictions share ``(x, t)``, it applies equally to x0 and eps.
    """

    def __init__(self, inner: DenoiserBase, scale: float, uncond: dict[str, Any]):
        super().__init__(inner)
        self.scale = scale
        self.uncond = uncond

    def predict(self, x: Tensor, t: float | Tensor, **cond: Any) -> Prediction:
        if self.scale == 1.0:
            return self.inner.predict(x, t, **cond)
        both = {k: torch.cat([self.uncond[k], v]) if isinstance(v, Tensor) else v for k, v in cond.items()}
        tt = t if not isinstance(t, Tensor) or t.ndim == 0 else torch.cat([t, t])
        p = self.inner.predict(torch.cat([x, x]), tt, **both)
        (x0_u, x0_c), (e_u, e_c) = p.x0.chunk(2), p.eps.chunk(2)
        w = self.scale
        return Prediction(x0_u + w * (x0_c - x0_u), e_u + w * (e_c - e_u))


class DynamicThresholding(DenoiserWrapper):
    """Dynamic thresholding of the data prediction (Imagen, Saharia et al. 2022; DPM-Solver++ sec. 5).

    Per sample, ``s = quantile(|x0|, ratio)`` clipped to ``[1, max_value]``; x0 is clipped to
    ``[-s, s]`` and divided by ``s``, and eps is recomputed from it.
    """

    def __init__(self, inner: DenoiserBase, ratio: float = 0.995, max_value: float = 1.0):
        super().__init__(inner)
        if not 0 < ratio <= 1:
            raise ValueError("ratio must lie in (0, 1]")
        self.ratio = ratio
        self.max_value = max_value

    def predict(self, x: Tensor, t: float | Tensor, **cond: Any) -> Prediction:
        p = self.inner.predict(x, t, **cond)
        flat = p.x0.reshape(p.x0.shape[0], -1).abs().float()
        s = torch.quantile(flat, self.ratio, dim=1).clamp(min=1.0, max=self.max_value)
        s = s.to(p.x0.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        x0 = p.x0.clamp(-s, s) / s
        a, sg = self.coefficients(x, t)
        return Prediction(x0, (x - a * x0) / sg)
