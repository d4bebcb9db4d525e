"""The optimal denoiser of a finite data set (the empirical distribution's posterior mean)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._base import ExactModel

__all__ = ["EmpiricalData"]


class EmpiricalData(ExactModel):
    """``x0_hat(y) = sum_i softmax_i(-|y - x_i|^2 / (2 sigma^2)) x_i`` over data points ``x_i``.

    The exact minimiser of the denoising loss on the training set (Karras et al. 2022, eq. 3):
    a perfectly trained network on this data would reproduce it.

    With a finite ``D`` the noise is PFGM++'s kernel (Xu et al. 2023, eq. 4, ``r = sigma sqrt(D)``;
    :class:`~fewstep.processes.PFGMPP`) and the weights are its posterior,
    ``softmax_i(-(N + D) / 2 * log(|y - x_i|^2 + sigma^2 D))``: the denoiser of the PFGM++ ODE (their eq. 10).
    ``D = inf`` (the default) is the Gaussian kernel above.
    """

    def __init__(self, data: Tensor, chunk: int = 4096, *, D: float = math.inf):
        data = torch.as_tensor(data, dtype=torch.float64)
        self.data = data.reshape(len(data), -1)
        if len(self.data) == 0:
            raise ValueError("EmpiricalData needs at least one data point")
        self.dim = self.data.shape[1]
        self._sq = (self.data * self.data).sum(1)
        self.chunk = chunk
        if not float(D) > 0:
            raise ValueError(f"EmpiricalData needs D > 0 (PFGM++'s augmented dimensions) or inf, got {D}")
        self.D = float(D)

    def x0_at(self, y: Tensor, sigma_hat: float | Tensor) -> Tensor:
        s2 = torch.as_tensor(sigma_hat, dtype=torch.float64) ** 2
        s2 = s2.reshape(-1, 1) if s2.ndim else s2
        d2 = (y * y).sum(1, keepdim=True) - 2 * y @ self.data.T + self._sq[None]
        if self.D == math.inf:
            w = torch.softmax(-d2 / (2 * s2), dim=1)
        else:
            r2 = s2 * self.D
            w = torch.softmax(-0.5 * (self.dim + self.D) * torch.log1p(d2.clamp(min=0) / r2), dim=1)
        return w @ self.data
