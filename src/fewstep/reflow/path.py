"""Path distillation: train a rectified flow's few-step solve itself to land on the teacher's endpoints.

Liu et al. 2023 ("Flow Straight and Fast", sec. 2.3, "distillation") follow reflow with a distillation that fits
the *one-step* map of the k-rectified flow to its pairs: ``min E || z - v(z, 1) - x1 ||^2`` (their eq. with the
squared distance; in fewstep's variables the Euler step from ``t_max`` to clean data).  Fitting the map the model
is sampled with, instead of the velocity at every time, spends all of the network's capacity where the sampler
looks.  This module does the same for a **k-step** deterministic solve: the plan ``(solver, nfe, times)``
(:class:`fewstep.plan.SamplingPlan`, the object ``fewstep sample`` runs) is unrolled with gradients through all of
its ``k`` evaluations,

    L(theta) = E_(z, x1) || Solve_plan(theta; prior_std z) - x1 ||^2 ,

so at ``k = 1`` it is Liu et al.'s distillation and at ``k = 2`` the two-step generator is trained end to end on
exactly the path (start, intermediate time, clean end) it is sampled along.  The solve is ``fewstep.sample`` itself
with ``grad=True`` (the registry's solver function with autograd on): one implementation of the update.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..api import sample
from ..plan import SamplingPlan, make_plan

__all__ = ["path_plan", "path_loss"]


def path_plan(denoiser: Any, solver: str = "euler", nfe: int = 2, times: Sequence[float] | None = None) -> SamplingPlan:
    """The plan path distillation unrolls: ``solver`` at ``nfe`` over ``times`` (``steps + 1`` decreasing times,
    the last replaced by clean data; default the process's grid), deterministic, fixed NFE, starting at ``t_max``."""
    plan = make_plan(denoiser, solver, nfe, None if times is None else list(times))
    return plan.require("path distillation", deterministic=True, fixed_nfe=True, net_times=False, clean_end=True)


def path_loss(denoiser: Any, plan: SamplingPlan, noise: Tensor, endpoint: Tensor) -> Tensor:
    """Per-sample ``mean((Solve_plan(prior_std noise) - endpoint)^2)``, shape ``(batch,)``, differentiable in the
    denoiser's network: the solve starts, like ``fewstep.sample``, from ``prior_std * noise`` at the plan's start."""
    out = sample(denoiser, denoiser.process.prior_std * noise, plan, grad=True)
    dtype = torch.promote_types(out.dtype, torch.float32)  # at least float32 (bf16 under autocast)
    return (out.to(dtype) - endpoint.to(dtype)).square().reshape(len(noise), -1).mean(dim=1)
