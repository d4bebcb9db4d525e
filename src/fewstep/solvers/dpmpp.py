"""DPM-Solver++ multistep (Lu et al. 2022, DPM-Solver++: Fast Solver for Guided Sampling)."""

from __future__ import annotations

from torch import Tensor

from ..denoisers import DenoiserBase
from ..grids import Schedule
from ._common import Callback, Generator, step_done
from ._expint import data_step
from .registry import register


@register("dpm++2m", order=2, aliases=("dpmpp_2m", "dpmpp2m"),
          paper="Lu et al. 2022, DPM-Solver++, Algorithm 2 (multistep second order, data prediction)")
def dpmpp_2m(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
             callback: Callback = None, **cond) -> Tensor:
    """``x_t = (s_t/s_s) x_s - a_t (e^{-h}-1) D`` with ``D = (1 + 1/(2r)) x0_s - x0_prev / (2r)``, ``r = h_prev/h``.

    The first step has no history and the step onto clean data (``h = inf``) cannot use one:
    both are first order, as in the paper's Algorithm 2 and its lower-order final step.
    """
    ts, a, s, lam = schedule.t.tolist(), schedule.alpha.tolist(), schedule.sigma.tolist(), schedule.lam.tolist()
    x0_prev, h_prev = None, 0.0
    for i in range(schedule.steps):
        x0 = denoiser(x, ts[i], **cond)
        h = lam[i + 1] - lam[i]
        if x0_prev is None or schedule.lands_clean(i):
            d = x0
        else:
            r = h_prev / h
            d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
        x = data_step(x, d, a[i + 1], s[i], s[i + 1], h)
        x0_prev, h_prev = x0, h
        step_done(i, schedule, x, x0, callback)
    return x
