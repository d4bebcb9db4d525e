"""The noise-level axis of Denoising MCMC: a discrete set of times with a prior over them.

Kim & Ye (2022, "Denoising MCMC for Accelerating Diffusion-Based Generative Models", sec. 3) sample the product
space of data and noise level, ``pi(x, t) = pi(t) p_t(x)``, where ``p_t`` is the diffusion's marginal at time
``t``.  Here the noise level takes ``L`` values, uniform in logSNR ``lambda`` between ``t_low`` and ``t_high``,
with a uniform prior ``pi``: the conditional ``pi(t | x)`` is then an ``L``-way categorical that a classifier
can learn and a Gibbs step can draw exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch
from torch import Tensor

__all__ = ["NoiseLevels"]


@dataclass(frozen=True)
class NoiseLevels:
    """``times`` ``(L,)`` float64, decreasing (level 0 is the noisiest); ``log_prior`` ``(L,)``, normalised."""

    times: Tensor
    log_prior: Tensor

    def __post_init__(self) -> None:
        t = self.times
        if t.ndim != 1 or len(t) < 1 or self.log_prior.shape != t.shape:
            raise ValueError("noise levels need 1-d times and a log prior of the same length")
        if len(t) > 1 and not bool((t[1:] < t[:-1]).all()):
            raise ValueError("noise-level times must decrease (level 0 the noisiest)")

    @classmethod
    def logsnr(cls, process, count: int, t_low: float, t_high: float) -> "NoiseLevels":
        """``count`` times uniform in logSNR from ``t_high`` down to ``t_low`` (inclusive), uniform prior."""
        if count < 1:
            raise ValueError(f"need at least one noise level, got {count}")
        process.check_time(t_low)
        process.check_time(t_high)
        if count > 1 and not t_low < t_high:
            raise ValueError(f"t_low = {t_low:g} must be below t_high = {t_high:g}")
        lam = torch.linspace(float(process.lam(t_high)), float(process.lam(t_low)), count, dtype=torch.float64)
        times = torch.as_tensor(process.t_of_lambda(lam), dtype=torch.float64).reshape(-1)
        times[0], times[-1] = float(t_high), float(t_low)
        return cls(times, torch.full((count,), -math.log(count), dtype=torch.float64))

    def __len__(self) -> int:
        return len(self.times)

    def to_dict(self) -> dict:
        return {"times": self.times.tolist(), "log_prior": self.log_prior.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "NoiseLevels":
        return cls(torch.tensor(d["times"], dtype=torch.float64), torch.tensor(d["log_prior"], dtype=torch.float64))
