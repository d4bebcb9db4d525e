"""DPM-Solver++ (Lu et al. 2022, DPM-Solver++: Fast Solver for Guided Sampling): 2M, 3M, 2S and the SDE forms."""

from __future__ import annotations

import math

from torch import Tensor

from ..denoisers import DenoiserBase
from ..grids import Schedule
from ..context import bind
from ._common import Callback, Cond, Generator, multistep_order, randn_like, step_done, two_stage_plan
from ._expint import data_step, exp_combine, expint_weights, taylor_factors
from .registry import register


@register("dpm++2m", order=2, aliases=("dpmpp_2m", "dpmpp2m"),
          paper="Lu et al. 2022, DPM-Solver++, Algorithm 2 (multistep second order, data prediction)")
def dpmpp_2m(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
             callback: Callback = None, cond: Cond = None) -> Tensor:
    """``x_t = (s_t/s_s) x_s - a_t (e^{-h}-1) D`` with ``D = (1 + 1/(2r)) x0_s - x0_prev / (2r)``, ``r = h_prev/h``.

    The first step has no history and the step onto clean data (``h = inf``) cannot use one:
    both are first order, as in the paper's Algorithm 2 and its lower-order final step.
    """
    ts, a, s, lam = schedule.t.tolist(), schedule.alpha.tolist(), schedule.sigma.tolist(), schedule.lam.tolist()
    model = bind(denoiser, schedule, cond)
    x0_prev, h_prev = None, 0.0
    for i in range(schedule.steps):
        x0 = model.x0(x, ts[i], i)
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


def _multistep(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, order: int, *, sde: bool,
               generator: Generator, callback: Callback, solver_type: str, half_d2: bool,
               lower_order_final: bool, cond: Cond) -> Tensor:
    """DPM-Solver++(kM) and its SDE form: polynomial interpolation of past ``x0`` in lambda, exact integral.

    ODE (Lu et al. 2022, eq. 9-10): ``x_t = (s_t/s_s) x_s + a_t sum_k h phi_{k+1}(-h) P^{(k)}``;
    SDE (appendix, 'SDE-DPM-Solver++'): ``x_t = (s_t/s_s) e^{-h} x_s + a_t sum_k 2h phi_{k+1}(-2h) P^{(k)}
    + s_t sqrt(1 - e^{-2h}) z``.  ``P^{(k)}`` are the derivatives of the interpolant (see ``_expint``).
    """
    a, s, lam = schedule.alpha.tolist(), schedule.sigma.tolist(), schedule.lam.tolist()
    rate = 2.0 if sde else 1.0
    model = bind(denoiser, schedule, cond)
    hist: list[Tensor] = []
    for i in range(schedule.steps):
        x0 = model.x0(x, float(schedule.t[i]), i)
        hist = (hist + [x0])[-order:]
        h = lam[i + 1] - lam[i]
        o = min(multistep_order(i, schedule, order, lower_order_final=lower_order_final), len(hist))
        if h == math.inf:
            x = x0
        else:
            nodes = [(lam[i - j] - lam[i]) / h for j in range(o)]
            factors = taylor_factors(o, h, data=True, rate=rate)
            if o == 2 and solver_type == "midpoint":  # D = x0 + P'/2 against h phi_1 (DPM-Solver++ Alg. 2)
                factors[1] = factors[0] / 2
            if o == 3 and half_d2:
                factors[2] = factors[2] / 2
            w = expint_weights(nodes, h, data=True, factors=factors)
            x = exp_combine(x, [hist[-1 - j] for j in range(o)], w, data=True, alpha_s=a[i], sigma_s=s[i],
                            alpha_t=a[i + 1], sigma_t=s[i + 1], h=h, decay=math.exp(-h) if sde else 1.0)
            if sde:
                x = x + (s[i + 1] * math.sqrt(-math.expm1(-2 * h))) * randn_like(x, generator)
        step_done(i, schedule, x, x0, callback)
    return x


@register("dpm++3m", order=3, aliases=("dpmpp_3m",),
          paper="Lu et al. 2022, DPM-Solver++, sec. 4 multistep (third order, data prediction)")
def dpmpp_3m(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
             callback: Callback = None, cond: Cond = None, lower_order_final: bool = True, half_d2: bool = False) -> Tensor:
    """Third-order multistep DPM-Solver++: quadratic interpolation of the last three ``x0`` in lambda.

    Warm-up orders 1, 2; a clean last step is first order (and with ``lower_order_final``, grids under
    15 steps end with orders 2, 1, as DPM-Solver++'s code).  ``half_d2=True`` reproduces the reference
    code's (dpm-solver, diffusers) weight of the second difference, half the Taylor term's ``h phi_3``
    (which makes it second order on smooth problems) and the midpoint form on its second-order
    steps; only for comparison.
    """
    return _multistep(denoiser, x, schedule, 3, sde=False, generator=generator, callback=callback,
                      solver_type="midpoint" if half_d2 else "taylor", half_d2=half_d2, lower_order_final=lower_order_final, cond=cond)


@register("dpm++2m_sde", order=2, stochastic=True, aliases=("dpmpp_2m_sde",),
          paper="Lu et al. 2022, DPM-Solver++, appendix (SDE-DPM-Solver++2M)")
def dpmpp_2m_sde(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
                 callback: Callback = None, cond: Cond = None, solver_type: str = "midpoint",
                 lower_order_final: bool = True) -> Tensor:
    """Second-order multistep SDE solver in data prediction; ``solver_type`` ``"midpoint"`` or ``"taylor"`` (``2h phi_2(-2h)``)."""
    return _multistep(denoiser, x, schedule, 2, sde=True, generator=generator, callback=callback,
                      solver_type=solver_type, half_d2=False, lower_order_final=lower_order_final, cond=cond)


@register("dpm++3m_sde", order=3, stochastic=True, aliases=("dpmpp_3m_sde",),
          paper="Lu et al. 2022, DPM-Solver++, appendix (SDE-DPM-Solver++, third-order multistep)")
def dpmpp_3m_sde(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
                 callback: Callback = None, cond: Cond = None, lower_order_final: bool = True,
                 half_d2: bool = False) -> Tensor:
    """Third-order multistep SDE solver in data prediction (Taylor weights ``2h phi_{k+1}(-2h)``)."""
    return _multistep(denoiser, x, schedule, 3, sde=True, generator=generator, callback=callback,
                      solver_type="taylor", half_d2=half_d2, lower_order_final=lower_order_final, cond=cond)


@register("dpm++2s", order=2, nfe_per_step=2, plan=two_stage_plan("second_order_steps"), aliases=("dpmpp_2s",),
          ranges={"r": (0, 1, False, True)},
          paper="Lu et al. 2022, DPM-Solver++, Algorithm 1 (singlestep second order, data prediction)")
def dpmpp_2s(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
             callback: Callback = None, cond: Cond = None, second_order_steps: int | None = None,
             r: float = 0.5) -> Tensor:
    """``u = (s_r/s_s) x - a_r (e^{-rh}-1) x0_s``; ``x_t = (s_t/s_s) x - a_t (e^{-h}-1) ((1-1/2r) x0_s + x0(u)/2r)``.

    ``s_r`` is the time with ``lam = lam_s + r h``.  Steps ``i >= second_order_steps`` (by default only a
    step onto clean data, where ``lam_s + r h`` is infinite) are first order, so NFE = steps + second_order_steps.
    """
    proc = schedule.process
    n = schedule.steps
    if second_order_steps is None:
        second_order_steps = n - 1 if schedule.clean_end else n
    a, s, lam = schedule.alpha.tolist(), schedule.sigma.tolist(), schedule.lam.tolist()
    model = bind(denoiser, schedule, cond)
    for i in range(n):
        x0 = model.x0(x, float(schedule.t[i]), i)
        h = lam[i + 1] - lam[i]
        d = x0
        if i < second_order_steps and h != math.inf:
            t_r = float(proc.t_of_lambda(lam[i] + r * h))
            a_r, s_r = float(proc.alpha(t_r)), float(proc.sigma(t_r))
            u = data_step(x, x0, a_r, s[i], s_r, r * h)
            d = (1 - 0.5 / r) * x0 + (0.5 / r) * model.x0(u, t_r, i, 1)
        x = data_step(x, d, a[i + 1], s[i], s[i + 1], h)
        step_done(i, schedule, x, x0, callback)
    return x
