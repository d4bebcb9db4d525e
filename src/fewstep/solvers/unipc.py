"""UniPC: unified predictor-corrector (Zhao et al. 2023, UniPC, NeurIPS)."""

from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor

from ..denoisers import DenoiserBase
from ..grids import Schedule
from ..context import bind
from ._common import Callback, Cond, Generator, multistep_order, step_done
from ._expint import solve_vandermonde, unipc_b, unipc_rhs
from .registry import register


def _update(x: Tensor, m0: Tensor, diffs: list[Tensor], rhos: list[float], *, data: bool, a_s: float, s_s: float,
            a_t: float, s_t: float, h: float, variant: str) -> Tensor:
    """``x_t = (s_t/s_s) x - a_t (e^{-h}-1) m0 - a_t B(h) sum_m rho_m D_m`` (data; UniP/UniC eq. 7-8),
    ``x_t = (a_t/a_s) x - s_t (e^h-1) m0 - s_t B(h) sum_m rho_m D_m`` (noise)."""
    if h == math.inf:  # onto clean data: first order only
        return m0 if data else (x - s_s * m0) / a_s
    if data:
        out = (s_t / s_s) * x - (a_t * math.expm1(-h)) * m0
        scale = -a_t * unipc_b(h, variant, data=True)
    else:
        out = (a_t / a_s) * x - (s_t * math.expm1(h)) * m0
        scale = -s_t * unipc_b(h, variant, data=False)
    for rho, d in zip(rhos, diffs):
        out = out + (scale * rho) * d
    return out


def _unipc(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, order: int, variant: str, prediction: str,
           corrector: bool, disable_corrector: Sequence[int], lower_order_final: bool, callback: Callback,
           cond: Cond) -> Tensor:
    """UniP-p predictor and, reusing the next evaluation, the UniC corrector (Zhao et al. 2023, Alg. 1-2).

    With past values ``m_k`` at ``lam_k`` (``r_k = (lam_k - lam_s)/h``, ``D_k = (m_k - m0)/r_k``) the predictor
    solves ``sum_k a_k r_k^{i-1} = g_i/B(h)`` for ``i < p`` (second order: ``a = 1/2`` as in the paper's code);
    the corrector adds ``r = 1``, ``D = m(x_t) - m0`` and solves all ``p`` conditions, raising the order by one
    at no extra evaluation.  The last step has no corrector (no evaluation follows it).
    """
    if prediction not in ("data", "noise"):
        raise ValueError(f"prediction must be 'data' or 'noise', got {prediction!r}")
    data = prediction == "data"
    a, s, lam = schedule.alpha.tolist(), schedule.sigma.tolist(), schedule.lam.tolist()
    skip = set(disable_corrector)
    model = bind(denoiser, schedule, cond)
    hist: list[Tensor | None] = []  # model outputs at grid points 0..i (only the last few kept)
    prev = None  # (x_s, order) of the previous step, for its corrector
    for i in range(schedule.steps):
        p = model.predict(x, float(schedule.t[i]), i)
        m = p.x0 if data else p.eps
        if prev is not None and corrector and (i - 1) not in skip:
            x_s, o_prev = prev
            j = i - 1
            h = lam[i] - lam[j]
            rks = [(lam[j - k] - lam[j]) / h for k in range(1, o_prev)]
            diffs = [(hist[j - k] - hist[j]) / r for k, r in zip(range(1, o_prev), rks)]
            rhs = unipc_rhs(h, o_prev, variant, data=data)
            rhos = [0.5] if o_prev == 1 else solve_vandermonde(rks + [1.0], rhs)
            x = _update(x_s, hist[j], diffs + [m - hist[j]], rhos, data=data, a_s=a[j], s_s=s[j], a_t=a[i],
                        s_t=s[i], h=h, variant=variant)
        hist.append(m)
        if i >= order + 1:
            hist[i - order - 1] = None  # older outputs are never read again: free them
        o = multistep_order(i, schedule, order, lower_order_final=lower_order_final, final_rule="unipc")
        h = lam[i + 1] - lam[i]
        rks = [(lam[i - k] - lam[i]) / h for k in range(1, o)]
        diffs = [(hist[i - k] - hist[i]) / r for k, r in zip(range(1, o), rks)]
        rhos = [] if o == 1 else [0.5] if o == 2 else solve_vandermonde(rks, unipc_rhs(h, o - 1, variant, data=data))
        prev = (x, o)
        x = _update(x, m, diffs, rhos, data=data, a_s=a[i], s_s=s[i], a_t=a[i + 1], s_t=s[i + 1], h=h,
                    variant=variant)
        step_done(i, schedule, x, p.x0, callback)
    return x


@register("unipc", order=3, paper="Zhao et al. 2023, UniPC, Algorithms 1-3 (UniP-p with UniC, B(h) = bh1/bh2)")
def unipc(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
          callback: Callback = None, cond: Cond = None, order: int = 2, variant: str = "bh2",
          prediction: str = "data", disable_corrector: Sequence[int] = (), lower_order_final: bool = True) -> Tensor:
    """UniPC-p (``order`` 1-3 predictor, order ``p+1`` with the corrector on every step but the last).

    ``variant``: ``B(h)`` ``"bh1"`` (``hh``) or ``"bh2"`` (``e^{hh}-1``); ``prediction``: ``"data"``
    (UniPC with DPM-Solver++'s parametrisation) or ``"noise"``; ``disable_corrector``: step indices whose
    result is left uncorrected.  Warm-up orders 1, 2, ...; the last steps' orders are capped at the
    steps left (the paper's code), and a step onto clean data is first order.
    """
    return _unipc(denoiser, x, schedule, order=order, variant=variant, prediction=prediction, corrector=True,
                  disable_corrector=disable_corrector, lower_order_final=lower_order_final, callback=callback,
                  cond=cond)


@register("unip", order=3, paper="Zhao et al. 2023, UniPC, Algorithm 2 (the UniP-p predictor alone)")
def unip(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
         callback: Callback = None, cond: Cond = None, order: int = 3, variant: str = "bh2",
         prediction: str = "data", lower_order_final: bool = True) -> Tensor:
    """The UniP-p predictor without corrector: a multistep solver of order ``order``."""
    return _unipc(denoiser, x, schedule, order=order, variant=variant, prediction=prediction, corrector=False,
                  disable_corrector=(), lower_order_final=lower_order_final, callback=callback, cond=cond)
