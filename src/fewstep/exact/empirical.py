"""The optimal denoiser of a finite data set (the empirical distribution's posterior mean)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import ExactModel

__all__ = ["EmpiricalData"]


class EmpiricalData(ExactModel):
    """``x0_hat(y) = sum_i softmax_i(-|y - x_i|^2 / (2 sigma^2)) x_i`` over data points ``x_i``.

    The exact minimiser of the denoising loss on the training set (Karras et al. 2022, eq. 3):
    a perfectly trained network on this data would reproduce it.
    """

    def __init__(self, data: Tensor, chunk: int = 4096):
        data = torch.as_tensor(data, dtype=torch.float64)
        self.data = data.reshape(len(data), -1)
        if len(self.data) == 0:
            raise ValueError("EmpiricalData needs at least one data point")
        self.dim = self.data.shape[1]
        self._sq = (self.data * self.data).sum(1)
        self.chunk = chunk

    def x0_at(self, y: Tensor, sigma_hat: float | Tensor) -> Tensor:
        s2 = torch.as_tensor(sigma_hat, dtype=torch.float64) ** 2
        s2 = s2.reshape(-1, 1) if s2.ndim else s2
        d2 = (y * y).sum(1, keepdim=True) - 2 * y @ self.data.T + self._sq[None]
        w = torch.softmax(-d2 / (2 * s2), dim=1)
        return w @ self.data
