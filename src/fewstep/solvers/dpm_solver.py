"""DPM-Solver, singlestep in noise prediction (Lu et al. 2022, DPM-Solver, NeurIPS): orders 1-3, the fast
order allocation and adaptive step size."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from ..denoisers import DenoiserBase
from ..grids import Schedule
from ..context import BoundDenoiser, bind
from ._common import Callback, Cond, Generator, NonFiniteError, step_done
from ._expint import exp_combine, phi
from .registry import register


class _Point:
    """A time with its float64 ``alpha, sigma, lam``."""

    __slots__ = ("t", "a", "s", "lam")

    def __init__(self, t: float, a: float, s: float, lam: float):
        self.t, self.a, self.s, self.lam = t, a, s, lam

    @classmethod
    def at_lam(cls, process, lam: float) -> "_Point":
        t = float(process.t_of_lambda(lam))
        return cls(t, float(process.alpha(t)), float(process.sigma(t)), lam)

    @classmethod
    def on(cls, schedule: Schedule, i: int) -> "_Point":
        return cls(float(schedule.t[i]), float(schedule.alpha[i]), float(schedule.sigma[i]), float(schedule.lam[i]))


def _first(x: Tensor, eps: Tensor, s: _Point, t: _Point) -> Tensor:
    """DPM-Solver-1 (eq. 3.7): ``x_t = (a_t/a_s) x - s_t (e^h - 1) eps_s`` (DDIM; clean end handled)."""
    h = t.lam - s.lam
    return exp_combine(x, [eps], [h * phi(1, h)], data=False, alpha_s=s.a, sigma_s=s.s, alpha_t=t.a, sigma_t=t.s, h=h)


def _singlestep(model: BoundDenoiser, x: Tensor, eps_s: Tensor, s: _Point, t: _Point, order: int,
                mids: Sequence[_Point], step: int) -> tuple[Tensor, Tensor]:
    """One DPM-Solver-``order`` step from ``s`` to ``t`` through the intermediate points ``mids`` (the
    evaluations there are stages 1, 2 of step ``step``).

    Returns ``(x_t, x_lower)`` where ``x_lower`` is the embedded lower-order solution (DPM-Solver-12/23, Alg. 4-5).
    Order 2 (Alg. 1): ``u = DPM-Solver-1(x, s -> s1)``, ``x_t = (a_t/a_s) x - s_t (e^h-1) eps_s
    - s_t/(2 r1) (e^h-1) (eps(u, s1) - eps_s)``.  Order 3 (Alg. 2): ``u2 = (a_s2/a_s) x - s_s2 (e^{r2 h}-1) eps_s
    - s_s2 (r2/r1) (e^{r2 h}/(r2 h) - 1/(r2 h) - 1) D1``, ``x_t = ... - s_t/r2 ((e^h-1)/h - 1) D2``.
    """
    h = t.lam - s.lam
    base = _first(x, eps_s, s, t)
    if order == 1:
        return base, base
    s1 = mids[0]
    r1 = (s1.lam - s.lam) / h
    u1 = _first(x, eps_s, s, s1)
    d1 = model.eps(u1, s1.t, step, 1) - eps_s
    if order == 2:
        return base - (t.s * h * phi(1, h) / (2 * r1)) * d1, base
    s2 = mids[1]
    r2 = (s2.lam - s.lam) / h
    u2 = _first(x, eps_s, s, s2) - (s2.s * (r2 / r1) * r2 * h * phi(2, r2 * h)) * d1
    d2 = model.eps(u2, s2.t, step, 2) - eps_s
    lower = base - (t.s * h * phi(1, h) / (2 * r1)) * d1
    return base - (t.s / r2 * h * phi(2, h)) * d2, lower


def dpm_orders(nfe: int, clean_end: bool, order: int) -> list[int]:
    """Orders of the steps spending ``nfe``: as many order-``order`` steps as fit, the remainder in lower
    orders; a step onto clean data is first order (its intermediate points would be at ``lam = inf``)."""
    if order == 1:
        return [1] * nfe
    k = (nfe - 1) // order if clean_end else nfe // order
    rest = nfe - order * k
    tail = {0: [], 1: [1], 2: [1, 1] if clean_end else [2], 3: [2, 1]}[rest]
    return [order] * k + tail


def fast_orders(nfe: int, clean_end: bool) -> list[int]:
    """DPM-Solver-fast (sec. 3.4): ``K = nfe // 3 + 1`` steps, orders ``[3]*(K-2) + [2, 1]`` (nfe = 0 mod 3),
    ``[3]*(K-1) + [1]`` (1 mod 3), ``[3]*(K-1) + [2]`` (2 mod 3); onto clean data the last of these becomes
    ``[2, 2, 1]`` since a clean step must be first order."""
    k = nfe // 3 + 1
    if nfe % 3 == 0:
        orders = [3] * (k - 2) + [2, 1]
    elif nfe % 3 == 1:
        orders = [3] * (k - 1) + [1]
    elif clean_end:
        orders = [3] * (k - 2) + [2, 2, 1] if k >= 2 else [1, 1]  # nfe = 2: two first-order steps
    else:
        orders = [3] * (k - 1) + [2]
    return orders


def _plan(order: int | None):
    def plan(nfe: int, clean_end: bool) -> tuple[int, dict[str, Any]]:
        orders = fast_orders(nfe, clean_end) if order is None else dpm_orders(nfe, clean_end, order)
        return len(orders), {"orders": orders}

    return plan


def _dpm_solver(den: DenoiserBase, x: Tensor, schedule: Schedule, orders: Sequence[int], *, intermediate: str,
                r1: float | None, r2: float | None, callback: Callback, cond: Cond) -> Tensor:
    """Singlestep DPM-Solver along ``schedule`` with per-step ``orders``.

    ``intermediate="lambda"``: steps are grid intervals, intermediate points at ``lam_s + r h`` (the paper's
    ``r1 = 1/2`` for order 2, ``r1, r2 = 1/3, 2/3`` for order 3).  ``"grid"``: a step of order ``k`` spans ``k``
    grid intervals and uses the grid's points as intermediate points (diffusers' singlestep layout).
    """
    proc = schedule.process
    span = 1 if intermediate == "lambda" else None
    if intermediate not in ("lambda", "grid"):
        raise ValueError(f"intermediate must be 'lambda' or 'grid', got {intermediate!r}")
    need = len(orders) if span else sum(orders)
    if need != schedule.steps:
        raise ValueError(f"orders {list(orders)} need a grid of {need} steps, got {schedule.steps}")
    model = bind(den, schedule, cond)
    j = 0
    for i, o in enumerate(orders):
        k = 1 if span else o
        s, t = _Point.on(schedule, j), _Point.on(schedule, j + k)
        if schedule.lands_clean(j + k - 1) and o > 1:
            raise ValueError("a step onto clean data must be first order")
        p = model.predict(x, s.t, j)
        if o == 1 or span is None:
            mids = [_Point.on(schedule, j + m) for m in range(1, o)]
        else:
            rs = [r1 or 0.5] if o == 2 else [r1 or 1 / 3, r2 or 2 / 3]
            mids = [_Point.at_lam(proc, s.lam + r * (t.lam - s.lam)) for r in rs]
        x, _ = _singlestep(model, x, p.eps, s, t, o, mids, j)
        j += k
        step_done(j - 1, schedule, x, p.x0, callback)
    return x


def _register_fixed(name: str, order: int | None, paper: str):
    @register(name, order=order or 3, nfe_per_step=order or 3, plan=_plan(order), paper=paper,
              ranges={"r1": (0, 1, False, False), "r2": (0, 1, False, False)})  # intermediate points inside a step
    def solve(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
              callback: Callback = None, cond: Cond = None, orders: Sequence[int] | None = None,
              intermediate: str = "lambda", r1: float | None = None, r2: float | None = None) -> Tensor:
        """Singlestep DPM-Solver (noise prediction); ``orders`` per step (default from the NFE plan)."""
        if orders is None:
            n = schedule.steps
            if order is None:
                orders = fast_orders(3 * n, schedule.clean_end)[:n]
            else:
                orders = [order] * n if intermediate == "lambda" else [order] * (n // order) + [1] * (n % order)
            if schedule.clean_end:
                orders = list(orders[:-1]) + [1] if intermediate == "lambda" else orders
        return _dpm_solver(denoiser, x, schedule, orders, intermediate=intermediate, r1=r1, r2=r2,
                           callback=callback, cond=cond)

    solve.__name__ = name.replace("+", "p")
    return solve


dpm1 = _register_fixed("dpm1", 1, "Lu et al. 2022, DPM-Solver, eq. 3.7 (DPM-Solver-1)")
dpm2 = _register_fixed("dpm2", 2, "Lu et al. 2022, DPM-Solver, Algorithm 1 (DPM-Solver-2, r1 = 1/2)")
dpm3 = _register_fixed("dpm3", 3, "Lu et al. 2022, DPM-Solver, Algorithm 2 (DPM-Solver-3, r1 = 1/3, r2 = 2/3)")
dpm_fast = _register_fixed("dpm_fast", None, "Lu et al. 2022, DPM-Solver, sec. 3.4 (DPM-Solver-fast order allocation)")


def _adaptive_plan(nfe: int, clean_end: bool) -> tuple[int, dict[str, Any]]:
    """The adaptive solver uses only the grid's start and end; ``nfe`` is its budget cap."""
    return 1, {"max_nfe": nfe}


@register("dpm_adaptive", order=3, nfe_per_step=2, plan=_adaptive_plan, fixed_nfe=False, min_nfe=2,
          ranges={"order": (2, 3), "atol": (0, 1, False, True), "rtol": (0, 1), "h_init": (0, math.inf, False, False),
                  "theta": (0, 1, False, True), "max_nfe": (2, math.inf, True, False)},
          paper="Lu et al. 2022, DPM-Solver, Algorithms 4-5 (DPM-Solver-12/23 adaptive step size)")
def dpm_adaptive(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
                 callback: Callback = None, cond: Cond = None, order: int = 3, atol: float = 0.0078,
                 rtol: float = 0.05, h_init: float = 0.05, theta: float = 0.9, max_nfe: int | None = None,
                 stats: dict | None = None) -> Tensor:
    """Adaptive DPM-Solver-12 (``order=2``) or -23 (``order=3``) from the grid's first to its last point.

    A trial step of size ``h`` (in lambda) gives ``x_high`` and the embedded ``x_low``; with
    ``delta = max(atol, rtol max(|x_low|, |x_prev|))`` and ``E = max_batch rms((x_high - x_low)/delta)`` it is
    accepted if ``E <= 1``; then ``h = min(theta h E^{-1/order}, lam_end - lam)`` (Alg. 4-5).  Onto clean
    data the solve ends at the process's ``t_min`` and a first-order step (one more evaluation) lands on it.
    ``max_nfe`` caps the evaluations (``fewstep.sample`` passes its ``nfe``): exceeding it raises, naming the
    cost.  ``stats`` (a dict) receives ``nfe``, ``steps`` and ``rejected``.
    """
    if order not in (2, 3):
        raise ValueError(f"dpm_adaptive order must be 2 or 3, got {order}")
    proc = schedule.process
    start = _Point.on(schedule, 0)
    end = _Point.on(schedule, schedule.steps) if not schedule.clean_end else _Point(
        float(proc.t_min), float(proc.alpha(proc.t_min)), float(proc.sigma(proc.t_min)), float(proc.lam(proc.t_min)))
    info = {"nfe": 0, "steps": 0, "rejected": 0}
    rs = [0.5] if order == 2 else [1 / 3, 2 / 3]

    def spend(n: int) -> None:
        info["nfe"] += n
        if stats is not None:
            stats.update(info)
        if max_nfe is not None and info["nfe"] > max_nfe:
            raise RuntimeError(f"dpm_adaptive needs more than its budget of {max_nfe} evaluations for atol={atol}, "
                               f"rtol={rtol} ({info['steps']} steps accepted so far); raise nfe or loosen the tolerances")

    model = bind(denoiser, schedule, cond)
    s, h = start, h_init
    while s.lam < end.lam - 1e-12:
        spend(1)
        p = model.predict(x, s.t, info["steps"])
        eps = p.eps
        while True:
            h = min(h, end.lam - s.lam)
            t = end if h >= end.lam - s.lam - 1e-12 else _Point.at_lam(proc, s.lam + h)
            spend(order - 1)
            mids = [_Point.at_lam(proc, s.lam + r * (t.lam - s.lam)) for r in rs]
            high, low = _singlestep(model, x, eps, s, t, order, mids, info["steps"])
            delta = torch.maximum(torch.full_like(x, atol), rtol * torch.maximum(low.abs(), x.abs()))
            err = float(((high - low) / delta).reshape(len(x), -1).pow(2).mean(1).sqrt().max())
            if not math.isfinite(err):
                raise NonFiniteError(f"NaN or inf appeared in dpm_adaptive's step from t={s.t:.6g} to t={t.t:.6g} "
                                     f"({info['steps']} steps accepted); check the model and the grid's end points")
            h_new = theta * (t.lam - s.lam) * max(err, 1e-10) ** (-1.0 / order)
            if err <= 1.0:
                x, s = high, t
                info["steps"] += 1
                h = h_new
                break
            info["rejected"] += 1
            h = h_new
    x0 = p.x0 if info["steps"] else None
    if schedule.clean_end:
        spend(1)
        p = model.predict(x, s.t, info["steps"])
        x, x0 = _first(x, p.eps, s, _Point.on(schedule, schedule.steps)), p.x0
    if stats is not None:
        stats.update(info)
    step_done(schedule.steps - 1, schedule, x, x0, callback)
    return x
