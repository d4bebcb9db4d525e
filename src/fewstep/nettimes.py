"""Network times (TimeTuner, Xia et al. 2024, CVPR): feed the network tuned time *inputs* while sampling.

With few steps the state ``x_{t_i}`` a solver reaches is off the training distribution at ``t_i``; TimeTuner
feeds the network a tuned time ``tau_i`` instead, ``eps_theta(x_{t_i}, tau_i)``, while the solver's coefficients
keep the planned ``t_i`` (their eq. 9-10).  :class:`TimeTunedDenoiser` applies saved times (a grid file entry's
``net_times``): the main evaluation of step ``i`` (known from ``ctx.step``) runs at ``tau_i``, its noise
prediction is kept and the data prediction follows from the planned time,
``x0 = (x - sigma(t_i) eps) / alpha(t_i)``.  Tuning the times is :mod:`fewstep.tuning.timetuner`.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor

from .context import StepContext
from .denoisers import DenoiserBase, DenoiserWrapper, Prediction
from .parametrization import alpha_sigma

__all__ = ["TimeTunedDenoiser", "time_tuned"]


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
