"""UniPC: unified predictor-corrector (Zhao et al. 2023, UniPC, NeurIPS)."""

from __future__ import annotations

import math
from typing import Callable, Sequence

from torch import Tensor

from ..denoisers import DenoiserBase
from ..grids import Schedule
from ..context import bind
from ._common import Callback, Cond, Generator, multistep_order, step_done
from ._expint import lagrange_weights, solve_vandermonde, unipc_b, unipc_rhs
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


#: ``search(i, evaluate) -> rho``: chooses step ``i``'s compensation ratio; ``evaluate(rho)`` returns the step's
#: result (predictor, then corrector: one evaluation) for a trial ratio (DC-Solver's ratio search).
RatioSearch = Callable[[int, Callable[[float], Tensor]], float]


class _Grid:
    """The schedule's float64 coefficients as python floats, read by the predictor and the corrector."""

    __slots__ = ("a", "s", "lam", "t", "variant", "data")

    def __init__(self, schedule: Schedule, variant: str, data: bool):
        self.a, self.s, self.lam = schedule.alpha.tolist(), schedule.sigma.tolist(), schedule.lam.tolist()
        self.t, self.variant, self.data = schedule.t.tolist(), variant, data


def _predict(g: _Grid, x: Tensor, hist: list[Tensor | None], i: int, o: int) -> Tensor:
    """UniP-``o`` from point ``i`` to ``i + 1`` with the buffered outputs ``hist[i - o + 1 .. i]`` (Alg. 2)."""
    lam = g.lam
    h = lam[i + 1] - lam[i]
    rks = [(lam[i - k] - lam[i]) / h for k in range(1, o)]
    diffs = [(hist[i - k] - hist[i]) / r for k, r in zip(range(1, o), rks)]
    rhos = [] if o == 1 else [0.5] if o == 2 else solve_vandermonde(rks, unipc_rhs(h, o - 1, g.variant, data=g.data))
    return _update(x, hist[i], diffs, rhos, data=g.data, a_s=g.a[i], s_s=g.s[i], a_t=g.a[i + 1], s_t=g.s[i + 1], h=h,
                   variant=g.variant)


def _correct(g: _Grid, x_s: Tensor, hist: list[Tensor | None], j: int, o: int, m_new: Tensor) -> Tensor:
    """UniC-``o`` for the step from point ``j`` (state ``x_s``) to ``j + 1``, whose model output is ``m_new`` (Alg. 1)."""
    lam = g.lam
    h = lam[j + 1] - lam[j]
    rks = [(lam[j - k] - lam[j]) / h for k in range(1, o)]
    diffs = [(hist[j - k] - hist[j]) / r for k, r in zip(range(1, o), rks)]
    rhs = unipc_rhs(h, o, g.variant, data=g.data)
    rhos = [0.5] if o == 1 else solve_vandermonde(rks + [1.0], rhs)
    return _update(x_s, hist[j], diffs + [m_new - hist[j]], rhos, data=g.data, a_s=g.a[j], s_s=g.s[j], a_t=g.a[j + 1],
                   s_t=g.s[j + 1], h=h, variant=g.variant)


def _compensate(g: _Grid, hist: list[Tensor | None], i: int, rho: float, dc_order: int) -> Tensor:
    """DC-Solver's dynamic compensation (Zhao et al. 2024): the Lagrange interpolant of the buffered outputs at
    ``t_{i-k}``, ``k = 0..dc_order``, evaluated at ``tau = t_{i-1} + rho (t_i - t_{i-1})``; ``rho = 1`` gives ``hist[i]``."""
    nodes = [g.t[i - k] for k in range(dc_order + 1)]
    weights = lagrange_weights(nodes, g.t[i - 1] + rho * (g.t[i] - g.t[i - 1]))
    out = weights[0] * hist[i]
    for k in range(1, dc_order + 1):
        out = out + weights[k] * hist[i - k]
    return out


def _unipc(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, order: int, variant: str, prediction: str,
           corrector: bool, disable_corrector: Sequence[int], lower_order_final: bool, callback: Callback,
           cond: Cond, ratios: Sequence[float] | None = None, dc_order: int = 2,
           search: RatioSearch | None = None) -> Tensor:
    """UniP-p predictor and, reusing the next evaluation, the UniC corrector (Zhao et al. 2023, Alg. 1-2).

    With past values ``m_k`` at ``lam_k`` (``r_k = (lam_k - lam_s)/h``, ``D_k = (m_k - m0)/r_k``) the predictor
    solves ``sum_k a_k r_k^{i-1} = g_i/B(h)`` for ``i < p`` (second order: ``a = 1/2`` as in the paper's code);
    the corrector adds ``r = 1``, ``D = m(x_t) - m0`` and solves all ``p`` conditions, raising the order by one
    at no extra evaluation.  The last step has no corrector (no evaluation follows it).

    ``ratios`` (DC-Solver): before step ``i >= dc_order`` the buffered output ``m_i`` is replaced by its dynamic
    compensation with ratio ``ratios[i]`` (:func:`_compensate`; a ratio of exactly 1 leaves it untouched, so
    ``ratios=None`` is UniPC).  ``search`` chooses each such ratio instead (used by ``dc.search_ratios``).
    """
    if prediction not in ("data", "noise"):
        raise ValueError(f"prediction must be 'data' or 'noise', got {prediction!r}")
    n = schedule.steps
    if ratios is not None and len(ratios) != n:
        raise ValueError(f"ratios has {len(ratios)} entries but this solve has {n} steps; give one ratio per step")
    data = prediction == "data"
    g = _Grid(schedule, variant, data)
    skip = set(disable_corrector)
    model = bind(denoiser, schedule, cond)
    keep = max(order, dc_order + 1 if (ratios is not None or search is not None) else 0)
    hist: list[Tensor | None] = []  # (compensated) model outputs at grid points 0..i (only the last few kept)
    prev = None  # (x_s, order) of the previous step, for its corrector
    for i in range(n):
        p = model.predict(x, g.t[i], i)
        m = p.x0 if data else p.eps
        if prev is not None and corrector and (i - 1) not in skip:
            x = _correct(g, prev[0], hist, i - 1, prev[1], m)
        hist.append(m)
        if i >= keep + 1:
            hist[i - keep - 1] = None  # older outputs are never read again: free them
        o = multistep_order(i, schedule, order, lower_order_final=lower_order_final, final_rule="unipc")
        if i >= dc_order and (search is not None or ratios is not None):
            raw = m
            corrects = corrector and i + 1 < n and i not in skip

            def evaluate(rho: float, x_s: Tensor = x, i: int = i, o: int = o, raw: Tensor = raw,
                         corrects: bool = corrects) -> Tensor:
                hist[i] = raw if rho == 1.0 else _compensate(g, hist, i, rho, dc_order)
                out = _predict(g, x_s, hist, i, o)
                if corrects:
                    q = model.predict(out, g.t[i + 1], i + 1, 1)
                    out = _correct(g, x_s, hist, i, o, q.x0 if data else q.eps)
                hist[i] = raw
                return out

            rho = float(search(i, evaluate)) if search is not None else float(ratios[i])
            if rho != 1.0:
                hist[i] = _compensate(g, hist, i, rho, dc_order)
        prev = (x, o)
        x = _predict(g, x, hist, i, o)
        step_done(i, schedule, x, p.x0, callback)
    return x


@register("unipc", order=3, paper="Zhao et al. 2023, UniPC, Algorithms 1-3 (UniP-p with UniC, B(h) = bh1/bh2)",
          ranges={"order": (1, 3)})
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


@register("unip", order=3, paper="Zhao et al. 2023, UniPC, Algorithm 2 (the UniP-p predictor alone)",
          ranges={"order": (1, 3)})
def unip(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
         callback: Callback = None, cond: Cond = None, order: int = 3, variant: str = "bh2",
         prediction: str = "data", lower_order_final: bool = True) -> Tensor:
    """The UniP-p predictor without corrector: a multistep solver of order ``order``."""
    return _unipc(denoiser, x, schedule, order=order, variant=variant, prediction=prediction, corrector=False,
                  disable_corrector=(), lower_order_final=lower_order_final, callback=callback, cond=cond)
