"""DPS: diffusion posterior sampling by the gradient of the measurement residual through the denoiser."""

from __future__ import annotations

import torch
from torch import Tensor

from ..context import BoundDenoiser, bind
from ..denoisers import DenoiserBase
from ..grids import Schedule
from ..parametrization import Prediction
from ..solvers._common import Callback, Cond, Generator, step_done
from ..solvers.ddim import ddim_step

__all__ = ["dps", "dps_gradient"]


def dps_gradient(model: BoundDenoiser, x: Tensor, t: float, i: int, y: Tensor, operator) -> tuple[Prediction, Tensor, Tensor]:
    """``(prediction, grad, norm)`` at ``x_i``: ``grad = d/dx_i ||y - A(x0_hat(x_i))||^2`` per sample by autograd
    through the denoiser and ``A``, and ``norm = ||y - A(x0_hat(x_i))||`` (Chung et al. 2023, eq. 16).
    The prediction is detached; one network evaluation (and its backward pass)."""
    with torch.inference_mode(False), torch.enable_grad():
        x_in = x.detach().clone().requires_grad_(True)
        p = model.predict(x_in, t, i)
        r = y - operator(p.x0)
        sq = r.pow(2).flatten(1).sum(1)
        (grad,) = torch.autograd.grad(sq.sum(), x_in)
    return Prediction(p.x0.detach(), p.eps.detach()), grad, sq.detach().sqrt()


def dps(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, y: Tensor, operator, *,
        generator: Generator = None, callback: Callback = None, cond: Cond = None, zeta: float = 1.0) -> Tensor:
    """DPS (Chung et al. 2023, Algorithm 1): a DDPM ancestral step, then
    ``x_{i+1} <- x_{i+1} - zeta_i grad_{x_i} ||y - A(x0_hat(x_i))||^2`` with the step size
    ``zeta_i = zeta / ||y - A(x0_hat(x_i))||`` per sample (sec. 4 and App. C.2).  ``operator`` is any
    differentiable ``A``; each step costs one network evaluation and one backward pass through it.
    ``zeta = 0`` is plain DDPM sampling.
    """
    if zeta < 0:
        raise ValueError(f"DPS needs zeta >= 0, got {zeta}")
    model = bind(denoiser, schedule, cond)
    ts = schedule.t.tolist()
    for i in range(schedule.steps):
        p, grad, norm = dps_gradient(model, x, ts[i], i, y, operator)
        x = ddim_step(p, schedule, i, 1.0, generator)  # DDPM's ancestral step
        if zeta > 0:
            scale = zeta / norm.clamp_min(torch.finfo(norm.dtype).tiny)
            x = x - scale.reshape((-1,) + (1,) * (x.ndim - 1)).to(x.dtype) * grad
        step_done(i, schedule, x, p.x0, callback)
    return x
