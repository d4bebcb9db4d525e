"""Drive a diffusers scheduler with an eps-prediction callable, for agreement tests."""

from __future__ import annotations

import torch

# DDPM's linear betas, as diffusers' schedulers take them.
BETAS = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def trailing_times(num_train: int, steps: int) -> list[float]:
    """diffusers' ``timestep_spacing="trailing"`` times, plus the final point (0 -> clean end)."""
    ratio = num_train / steps
    ts = [round(num_train - k * ratio) - 1 for k in range(steps)]
    return [float(t) for t in ts] + [0.0]


def run_scheduler(scheduler, eps_fn, noise: torch.Tensor, steps: int, generator=None) -> torch.Tensor:
    """The standard diffusers loop: ``x = noise * init_noise_sigma``, then ``step`` per timestep."""
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = eps_fn(scheduler.scale_model_input(x, t), float(t))
        kwargs = {"generator": generator} if generator is not None else {}
        x = scheduler.step(eps, t, x, **kwargs).prev_sample
    return x
