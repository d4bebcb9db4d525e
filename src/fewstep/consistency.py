"""Consistency models as denoisers (Song et al. 2023, "Consistency Models"; Geng et al. 2024, ECT).

A consistency function ``f(x_t, t)`` maps every point of a probability-flow ODE trajectory to the
trajectory's clean end.  Here it is built on an ordinary network of any prediction type: its data
prediction ``D(x, t)`` (:mod:`fewstep.parametrization`) is blended with the scaled input
``y = x / alpha(t)`` so that the boundary condition holds by construction (Song et al. 2023, eq. 5,
``c_skip(eps) = 1, c_out(eps) = 0``):

    ``f(x, t) = c(t) y + (1 - c(t)) D(x, t)``,  ``c(t) = sigma_min / sigma_hat(t)``  (``sigma_hat = sigma / alpha``)

so ``f(x, t_min) = y`` exactly at ``sigma_hat(t_min) = sigma_min``, while far from ``sigma_min``
``f ~ D``: a pretrained diffusion model is already a (poor) consistency model, the starting point
of Easy Consistency Tuning.  Near ``sigma_min``, ``|y - D| ~ sigma_hat |eps|``, so the blend moves
the teacher's prediction by at most ``sigma_min |eps|``.

:class:`ConsistencyModel` is a :class:`~fewstep.Denoiser` whose data prediction is ``f``: one step
of any solver from ``t_max`` onto clean data is the consistency model's one-step sample, and the
``cm`` solver (:mod:`fewstep.solvers.consistency`) is the paper's multistep sampling.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .context import StepContext
from .denoisers import Denoiser
from .parametrization import Prediction, TimeLike, alpha_sigma
from .processes import NoiseProcess

__all__ = ["ConsistencyModel", "consistency_x0", "default_sigma_min"]


def default_sigma_min(process: NoiseProcess) -> float:
    """``sigma_hat(t_min)`` of ``process``: the smallest EDM noise level it reaches, the boundary's."""
    a, s = process.alpha_sigma(float(process.t_min))
    return float(s / a)


def consistency_x0(process: NoiseProcess, x: Tensor, t: TimeLike, d: Tensor, sigma_min: float) -> Tensor:
    """``f = c y + (1 - c) d`` with ``y = x / alpha(t)``, ``c = min(1, sigma_min / sigma_hat(t))``: the consistency
    function from the data prediction ``d`` of a network at ``(x, t)`` (see the module docstring)."""
    a, s = alpha_sigma(process, x, t)
    c = sigma_min * a / s
    c = min(c, 1.0) if isinstance(c, float) else c.clamp(max=1.0)
    return d + c * (x / a - d)


class ConsistencyModel(Denoiser):
    """A :class:`~fewstep.Denoiser` predicting ``x0 = f(x, t)`` (:func:`consistency_x0`), ``eps`` to match."""

    def __init__(self, *args: Any, sigma_min: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.sigma_min = default_sigma_min(self.process) if sigma_min is None else float(sigma_min)
        if not self.sigma_min > 0:
            raise ValueError(f"consistency sigma_min must be > 0, got {self.sigma_min}")

    def predict(self, x: Tensor, t: float | Tensor, *, ctx: StepContext | None = None, **cond: Any) -> Prediction:
        d = super().predict(x, t, ctx=ctx, **cond).x0
        x0 = consistency_x0(self.process, x, t, d, self.sigma_min)
        a, s = alpha_sigma(self.process, x, t)
        return Prediction(x0, (x - a * x0) / s)
