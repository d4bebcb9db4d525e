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
exactly the path (start, intermediate time, clean end) it is sampled along.  The squared distance can be replaced
(:func:`path_distance`) by iCT's pseudo-Huber distance or by a perceptual (LPIPS-style) one, as consistency
distillation does (Song et al. 2023 train with LPIPS).  The solve is ``fewstep.sample`` itself
with ``grad=True`` (the registry's solver function with autograd on): one implementation of the update.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..api import sample
from ..plan import SamplingPlan, make_plan
from ..training.losses import ICT_HUBER_C_PER_SQRT_DIM, pseudo_huber
from ..training.perceptual import perceptual_distance

__all__ = ["path_plan", "path_loss", "path_solve", "path_distance", "mean_squared", "PATH_METRICS"]


def path_plan(denoiser: Any, solver: str = "euler", nfe: int = 2, times: Sequence[float] | None = None) -> SamplingPlan:
    """The plan path distillation unrolls: ``solver`` at ``nfe`` over ``times`` (``steps + 1`` decreasing times,
    the last replaced by clean data; default the process's grid), deterministic, fixed NFE, starting at ``t_max``."""
    plan = make_plan(denoiser, solver, nfe, None if times is None else list(times))
    return plan.require("path distillation", deterministic=True, fixed_nfe=True, net_times=False, clean_end=True)


#: A distance between a batch of solves and their endpoints: ``(out, endpoint) -> (batch,)``.
Distance = Callable[[Tensor, Tensor], Tensor]

#: The distances ``objective.path_metric`` names.
PATH_METRICS = ("l2", "pseudo_huber", "perceptual")


def mean_squared(out: Tensor, endpoint: Tensor) -> Tensor:
    """Per-sample ``mean((out - endpoint)^2)`` (Liu et al.'s squared distance, per dimension)."""
    dtype = torch.promote_types(out.dtype, torch.float32)  # at least float32 (bf16 under autocast)
    return (out.to(dtype) - endpoint.to(dtype)).square().reshape(len(out), -1).mean(dim=1)


def path_distance(metric: str = "l2", *, huber_c: float = 0.0, encoder: nn.Module | None = None) -> Distance:
    """The distance of ``metric``: ``l2`` (:func:`mean_squared`); ``pseudo_huber``, iCT's robust distance per
    dimension, ``sqrt(mean((out - x1)^2) + c^2) - c`` (= iCT's ``d(x, y) / sqrt(d)``; ``huber_c`` 0 picks iCT's
    ``c = 0.00054 sqrt(d)``, i.e. 0.00054 here); ``perceptual``, the LPIPS-style distance on ``encoder``'s features
    (:func:`fewstep.training.perceptual.perceptual_distance`)."""
    if metric == "l2":
        if encoder is not None:
            raise ValueError("an encoder is only used by the 'perceptual' path metric")
        return mean_squared
    if metric == "pseudo_huber":
        if encoder is not None:
            raise ValueError("an encoder is only used by the 'perceptual' path metric")
        c = huber_c if huber_c > 0 else ICT_HUBER_C_PER_SQRT_DIM
        return lambda out, endpoint: pseudo_huber(mean_squared(out, endpoint), c)
    if metric == "perceptual":
        if encoder is None:
            raise ValueError("the 'perceptual' path metric needs an encoder (objective.path_encoder: a run of "
                             "`fewstep train --config fashion-encoder`)")
        return lambda out, endpoint: perceptual_distance(encoder, out, endpoint)
    raise ValueError(f"unknown path metric {metric!r}; valid: {', '.join(PATH_METRICS)}")


def path_loss(denoiser: Any, plan: SamplingPlan, noise: Tensor, endpoint: Tensor,
              distance: Distance = mean_squared) -> Tensor:
    """Per-sample ``distance(Solve_plan(prior_std noise), endpoint)``, shape ``(batch,)`` (default the mean squared
    error), differentiable in the denoiser's network: the solve starts, like ``fewstep.sample``, from
    ``prior_std * noise`` at the plan's start."""
    return distance(path_solve(denoiser, plan, noise), endpoint)


def path_solve(denoiser: Any, plan: SamplingPlan, noise: Tensor) -> Tensor:
    """The plan's solve from ``prior_std * noise`` with autograd on (``fewstep.sample(..., grad=True)``): the samples
    the path loss and the adversarial term (:mod:`fewstep.reflow.adversarial`) judge."""
    return sample(denoiser, denoiser.process.prior_std * noise, plan, grad=True)
