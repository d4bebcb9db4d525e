"""TimeTuner (Xia et al. 2024, "Towards More Accurate Diffusion Model Acceleration with A Timestep
Tuner", CVPR): tuned time *inputs* of the network.

With few steps the state ``x_{t_i}`` a solver reaches is off the training distribution at
``t_i``; the paper feeds the network a tuned time ``tau_i`` instead, ``eps_theta(x_{t_i}, tau_i)``,
while the solver's coefficients keep the planned ``t_i`` (their eq. 9-10).  Here ``tau_i`` is
tuned per step against the same near-exact reference as the grid search (the paper trains it to
match the trajectory of a many-step sampler), and :class:`TimeTunedDenoiser` applies it while
sampling: the main evaluation of step ``i`` (known from ``ctx.step``) runs at ``tau_i``, its noise
prediction is kept and the data prediction follows from the planned time,
``x0 = (x - sigma(t_i) eps) / alpha(t_i)``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..context import StepContext
from ..denoisers import DenoiserBase, DenoiserWrapper, Prediction
from ..parametrization import alpha_sigma
from .descent import DescentResult, coordinate_descent
from .search import ReferenceSet

__all__ = ["TimeTunedDenoiser", "tune_net_times", "time_tuned"]


class TimeTunedDenoiser(DenoiserWrapper):
    """Feed the network ``net_times[i]`` at the main evaluation of step ``i`` of the grid ``times``."""

    def __init__(self, inner: DenoiserBase, times: Sequence[float], net_times: Sequence[float]):
        super().__init__(inner)
        self.times = [float(t) for t in times]
        self.net_times = [float(t) for t in net_times]
        if len(self.net_times) != len(self.times) - 1:
            raise ValueError(f"TimeTuner: {len(self.net_times)} network times for a grid of {len(self.times) - 1} steps")

    def predict(self, x: Tensor, t: float | Tensor, *, ctx: StepContext | None = None, **cond: Any) -> Prediction:
        if ctx is None or ctx.stage != 0:
            return self.inner.predict(x, t, ctx=ctx, **cond)
        i = ctx.step
        planned = self.times[i] if i < len(self.net_times) else None
        if planned is None or ctx.schedule.steps != len(self.net_times) or \
                abs(float(ctx.schedule.t[i]) - planned) > 1e-9 * max(1.0, abs(planned)):
            raise ValueError("TimeTuner: the solve's grid is not the grid these network times were tuned for")
        tau = self.net_times[i]
        if tau == planned:
            return self.inner.predict(x, t, ctx=ctx, **cond)
        eps = self.inner.predict(x, tau, ctx=ctx, **cond).eps
        a, s = alpha_sigma(self.process, x, t)
        return Prediction((x - s * eps) / a, eps)


def time_tuned(denoiser: DenoiserBase, times: Sequence[float], net_times: Sequence[float] | None) -> DenoiserBase:
    """``denoiser`` behind a :class:`TimeTunedDenoiser`, or itself when there are no network times."""
    return denoiser if net_times is None else TimeTunedDenoiser(denoiser, times, net_times)


def tune_net_times(reference: ReferenceSet, solver: str, nfe: int, times: Tensor, *, rounds: int = 3,
                   candidates: int = 2, on_eval: Callable[[float], None] | None = None,
                   options: dict[str, Any] | None = None) -> tuple[list[float], DescentResult]:
    """Per-step network times for ``solver`` (with solver ``options``) on ``times``, tuned by coordinate descent in logSNR offsets
    ``tau_i = t(lambda_i + d_i)`` (``|d_i|`` at most half the neighbouring steps; ``d = 0`` is the start)."""
    process = reference.denoiser.process
    times = torch.as_tensor(times, dtype=torch.float64)
    lam = [float(v) for v in process.lam(times)]
    lam_max, lam_min = float(process.lam(process.t_max)), float(process.lam(process.t_min))
    steps = len(times) - 1

    def net_times(d: list[float]) -> list[float]:
        taus = process.t_of_lambda(torch.tensor([lam[i] + d[i] for i in range(steps)], dtype=torch.float64))
        return [float(times[i]) if d[i] == 0 else float(taus[i]) for i in range(steps)]

    def bracket(d: list[float], i: int) -> tuple[float, float]:
        back = lam[i] - lam[i - 1] if i > 0 else 0.0
        ahead = min(lam[i + 1] - lam[i], 4.0)
        return max(-0.5 * back, lam_max - lam[i]), min(0.5 * ahead, lam_min - lam[i])

    def score(d: list[float]) -> float:
        return reference.rmse(solver, nfe, times, TimeTunedDenoiser(reference.denoiser, times.tolist(), net_times(d)),
                              options)

    res = coordinate_descent(score, [0.0] * steps, bracket, rounds=rounds, candidates=candidates, on_eval=on_eval)
    return net_times(res.x), res
