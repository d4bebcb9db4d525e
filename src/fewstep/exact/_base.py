"""Exact denoisers: models whose posterior mean E[x0 | x_t] is known in closed form."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..context import StepContext
from ..denoisers import DenoiserBase, Prediction
from ..processes import NoiseProcess

__all__ = ["ExactModel", "ExactDenoiser"]


class ExactModel:
    """A data distribution with a closed-form ``x0_at(y, sigma_hat) = E[x0 | x0 + sigma_hat eps = y]``.

    ``y`` is float64 of shape ``(batch, dim)``; ``sigma_hat`` a float or a ``(batch,)`` tensor.
    Since ``x_t / alpha = x0 + (sigma/alpha) eps``, this one function gives the exact denoiser
    under every noise process.
    """

    dim: int

    def x0_at(self, y: Tensor, sigma_hat: float | Tensor) -> Tensor:
        raise NotImplementedError

    def denoiser(self, process: NoiseProcess) -> "ExactDenoiser":
        return ExactDenoiser(self, process)


class ExactDenoiser(DenoiserBase):
    """The exact denoiser of an :class:`ExactModel` under ``process``, computed in float64."""

    def __init__(self, model: ExactModel, process: NoiseProcess):
        self.model = model
        self.process = process

    def predict(self, x: Tensor, t: float | Tensor, *, ctx: StepContext | None = None, **cond: Any) -> Prediction:
        p = self.process
        a, s = p.alpha(t), p.sigma(t)
        shape = x.shape
        xd = x.reshape(shape[0], -1).to(torch.float64)
        if a.ndim:
            a, s = a.reshape(-1, 1), s.reshape(-1, 1)
        x0 = self.model.x0_at(xd / a, (s / a).reshape(-1) if s.ndim else float(s / a))
        eps = (xd - a * x0) / s
        return Prediction(x0.to(x.dtype).reshape(shape), eps.to(x.dtype).reshape(shape))
