"""Denoising Langevin Gibbs (Kim & Ye 2022, sec. 3.2): a Markov chain on (data, noise level).

Target: ``pi(x, l) = pi(l) p_{t_l}(x)``.  One step, per chain:

1. ``x | l``: a Langevin step on ``p_{t_l}``, whose score is the diffusion model's,
   ``grad log p_t(x) = -eps_hat(x, t) / sigma(t)`` (one network evaluation):
   ``x <- x + e grad log p_t(x) + sqrt(2 e) z`` with ``e = step_scale * sigma(t)^2`` (the step that is a fixed
   fraction of the noise variance, as in annealed Langevin dynamics, Song & Ermon 2019);
2. ``l | x``: a draw from the level posterior ``pi(l | x)`` (exact, or the noise-level estimator's).

With exact conditionals the chain leaves ``pi`` invariant; the Langevin step is unadjusted, so its
stationary law carries an O(step_scale) bias (measured in docs/dmcmc.md).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .posterior import LevelPosterior

__all__ = ["gibbs_step", "run_chain", "draw_levels"]


def draw_levels(log_post: Tensor, gens: Sequence[torch.Generator]) -> Tensor:
    """One categorical draw per row of ``log_post`` ``(n, L)``, each from its own generator (inverse CDF)."""
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens])
    cdf = torch.cumsum(torch.softmax(log_post.double(), 1), 1)
    cdf[:, -1] = 1.0
    return torch.searchsorted(cdf, u[:, None]).reshape(-1).clamp_max(log_post.shape[1] - 1)


def gibbs_step(denoiser, x: Tensor, level: Tensor, posterior: LevelPosterior, gens: Sequence[torch.Generator], *,
               step_scale: float) -> tuple[Tensor, Tensor]:
    """One Langevin-within-Gibbs step of every chain (one network evaluation per chain)."""
    times = posterior.levels.times
    t = times[level].to(x.device)
    sigma = torch.as_tensor(denoiser.process.sigma(t), dtype=torch.float64).reshape(-1, *([1] * (x.ndim - 1)))
    eps = denoiser.predict(x, t.to(torch.float64)).eps.to(torch.float64)
    z = torch.stack([torch.randn(x.shape[1:], generator=g, dtype=torch.float64) for g in gens]).to(x.device)
    # x + e * (-eps / sigma) + sqrt(2 e) z,  e = step_scale * sigma^2
    x_new = x.to(torch.float64) - step_scale * sigma * eps + sigma * (2 * step_scale) ** 0.5 * z
    x_new = x_new.to(x.dtype)
    return x_new, draw_levels(posterior.log_posterior(x_new), gens).to(level.device)


def run_chain(denoiser, x: Tensor, level: Tensor, posterior: LevelPosterior, gens: Sequence[torch.Generator],
              steps: int, *, step_scale: float) -> tuple[Tensor, Tensor]:
    """``steps`` Gibbs steps of every chain; returns the final ``(x, level)``."""
    for _ in range(steps):
        x, level = gibbs_step(denoiser, x, level, posterior, gens, step_scale=step_scale)
    return x, level
