"""EDM2's learned per-noise-level loss weighting (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", EDM2: the learned uncertainty of the loss weighting, sec. 2 and App. B).

The loss at noise level ``sigma`` becomes ``w(sigma) L(sigma) / exp(u(sigma)) + u(sigma)``, where ``w`` is any
fixed weighting (:data:`fewstep.training.losses.WEIGHTINGS`) and ``u`` a small learned function of the noise
level.  For a fixed ``sigma`` the minimiser over ``u`` is ``u* = log E[w L | sigma]`` (set the derivative
``1 - E[w L] exp(-u)`` to zero), so at the optimum every noise level contributes ``E[w L] / exp(u*) = 1`` to
the network's loss: the weighting is normalised by the loss level the network currently reaches there, the
"uncertainty" of multi-task learning (Kendall et al. 2018) applied to the continuum of noise levels.

``u`` is :class:`UncertaintyHead`: fixed random Fourier features of ``c = ln(sigma_hat) / 4`` (``sigma_hat =
sigma/alpha``, EDM's noise level) and one linear layer, started at zero, so the first step's loss is the
plain weighted one.  It is trained with the network and saved in checkpoints, never used for sampling.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["UncertaintyHead", "uncertainty_loss"]


class UncertaintyHead(nn.Module):
    """``u(sigma) = Linear(sqrt(2) cos(2 pi (f c + phi)))`` with ``c = log_sigma / 4`` (EDM2's one-layer MLP over
    the Fourier embedding of the noise level); ``f, phi ~ N(0, 1)`` fixed from ``seed``."""

    def __init__(self, features: int = 128, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(features, generator=g))
        self.register_buffer("phases", torch.randn(features, generator=g))
        self.linear = nn.Linear(features, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def features(self, log_sigma: Tensor) -> Tensor:
        c = log_sigma.float()[:, None] / 4
        return math.sqrt(2.0) * torch.cos(2 * math.pi * (c * self.freqs + self.phases))

    def forward(self, log_sigma: Tensor) -> Tensor:
        """``u`` per sample, shape ``(batch,)``, for ``log_sigma = ln(sigma/alpha)`` of shape ``(batch,)``."""
        return self.linear(self.features(log_sigma))[:, 0]


def uncertainty_loss(weighted: Tensor, u: Tensor) -> Tensor:
    """``weighted / exp(u) + u`` per sample (EDM2's uncertainty-weighted loss), ``weighted = w(sigma) L(sigma)``."""
    return weighted * torch.exp(-u.to(weighted.dtype)) + u.to(weighted.dtype)
