"""DPM-Solver-v3: multistep predictor, corrector and pseudo-order (Zheng et al. 2023, sec. 3.3-3.6)."""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Sequence

import torch
from torch import Tensor

from ...context import bind
from ...denoisers import DenoiserBase
from ...grids import Schedule
from .._common import Callback, Cond, Generator, multistep_order, step_done
from .._expint import taylor_matrix
from ..registry import register
from .coefficients import EMSFunctions
from .stats import EMS, find_ems

__all__ = ["dpm_v3", "resolve_ems"]

_DEGENERATE_KNOTS = 64


def resolve_ems(denoiser: DenoiserBase, ems: EMS | str | os.PathLike | None, sample_shape: tuple[int, ...]) -> EMS:
    """The statistics to solve with: ``ems`` (an :class:`EMS`, a folder, or ``"degenerate"``) or the model's own.

    A model without statistics falls back to ``l = 1, s = b = 0`` (multistep DPM-Solver++) with a warning, so
    that sweeps over every solver run; results under the name ``dpm_v3`` are then DPM-Solver++'s.
    """
    if ems is None:
        ems = find_ems(denoiser)
        if ems is None:
            warnings.warn("dpm_v3: the model has no empirical statistics, so it runs with l=1, s=b=0 (multistep "
                          "DPM-Solver++); compute them with `fewstep ems --model M --data D` (load_model finds "
                          "<checkpoint>/ems/) or pass ems=EMS", UserWarning, stacklevel=4)
            ems = "degenerate"
    if isinstance(ems, str) and ems == "degenerate":
        p = denoiser.process
        lam = torch.linspace(float(p.lam(p.t_max)), float(p.lam(p.t_min)), _DEGENERATE_KNOTS + 1, dtype=torch.float64)
        return EMS.degenerate(lam, sample_shape)
    if isinstance(ems, (str, os.PathLike)):
        ems = EMS.load(ems)
    ems.check(denoiser)
    if ems.sample_shape != tuple(sample_shape):
        raise ValueError(f"the statistics are for samples of shape {ems.sample_shape}, the solve is for {tuple(sample_shape)}")
    return ems


def _functions(ems: EMS) -> EMSFunctions:
    """The splines of ``ems``, built once per statistics object."""
    fns = ems.__dict__.get("_functions")
    if fns is None:
        fns = ems.__dict__["_functions"] = EMSFunctions(ems)
    return fns


def _derivative_rows(nodes: list[float], pseudo: bool) -> list[list[float]]:
    """``M[k][j]``: ``h^k g^{(k)}(s) ~ sum_j M[k][j] g_j`` from values at ``nodes`` (in ``u = (lam - lam_s)/h``).

    Full order: the derivatives of the interpolating polynomial (eq. 14-15).  Pseudo-order (sec. 3.6):
    the k-th derivative from the first ``k + 1`` nodes only (``k!`` times their divided difference).
    """
    if not pseudo:
        return taylor_matrix(nodes)
    n = len(nodes)
    return [taylor_matrix(nodes[:k + 1])[k] + [0.0] * (n - k - 1) for k in range(n)]


class _V3Step:
    """One local approximation (eq. 12-15): ``y_t`` from ``y_s`` and ``f`` at the nodes (the base first)."""

    def __init__(self, fns: EMSFunctions, like: Tensor):
        self.fns = fns
        self.like = like
        self.cache: dict[tuple[tuple[float, ...], float], Any] = {}

    def _t(self, a: Any) -> Tensor:
        return torch.as_tensor(a, dtype=torch.float64).reshape(self.fns.shape).to(self.like.device, self.like.dtype)

    def __call__(self, y_s: Tensor, lams: list[float], fs: list[Tensor], lam_t: float, pseudo: bool) -> Tensor:
        lam_s, n = lams[0], len(lams)
        key = (tuple(lams), lam_t)
        if key not in self.cache:
            c = self.fns.step(lam_s, lam_t, n)
            scale, shift = self.fns.to_g(lam_s, lams)
            self.cache[key] = (self._t(c.decay), [self._t(a) for a in c.A], self._t(c.bterm),
                               [self._t(v) for v in scale], [self._t(v) for v in shift])
        decay, A, bterm, scale, shift = self.cache[key]
        g = [scale[j] * fs[j] - shift[j] for j in range(n)]
        h = lam_t - lam_s
        rows = _derivative_rows([(v - lam_s) / h for v in lams], pseudo)
        y = decay * y_s - bterm
        for k in range(n):
            d = sum(w * gj for w, gj in zip(rows[k], g) if w != 0.0)
            y = y - (A[k] / h**k) * d
        return y


@register("dpm_v3", order=3, ranges={"order": (1, 3)},
          paper="Zheng et al. 2023, DPM-Solver-v3 (NeurIPS), sec. 3.3-3.6: EMS-based multistep predictor, "
                "corrector and pseudo-order")
def dpm_v3(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
           callback: Callback = None, cond: Cond = None, order: int = 3, corrector: bool = True,
           pseudo: bool | None = None, corrector_pseudo: bool = False, lower_order_final: bool = True,
           disable_corrector: Sequence[int] = (), ems: EMS | str | None = None) -> Tensor:
    """DPM-Solver-v3 with the model's empirical statistics (``denoiser.ems`` unless ``ems`` is given; without
    any, ``l = 1, s = b = 0`` with a warning).

    Predictor of order ``order`` (1-3; warm-up 1, 2, ...; orders capped by the steps left with
    ``lower_order_final``); the corrector (sec. 3.5) re-solves the previous step with the new evaluation in
    place of the oldest value (``corrector_pseudo``: in addition to it, pseudo-order), keeping ``f`` of the
    corrected point, at no extra evaluation.  ``pseudo`` (sec. 3.6) estimates the k-th derivative from k + 1
    values; ``None`` uses it on grids of at most 5 steps, as the paper does at 5 NFE.  ``ems="degenerate"``
    (``l = 1, s = b = 0``) is multistep DPM-Solver++ in data prediction.  A step onto clean data returns the
    data prediction.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"dpm_v3 supports order 1, 2 or 3, got {order}")
    stats = resolve_ems(denoiser, ems, tuple(x.shape[1:]))
    fns = _functions(stats)
    n = schedule.steps
    lam, a = schedule.lam.tolist(), schedule.alpha.tolist()
    lo, hi = fns.range
    finite = [v for v in lam if math.isfinite(v)]
    tol = 1e-6 * max(1.0, hi - lo)
    if min(finite) < lo - tol or max(finite) > hi + tol:
        raise ValueError(f"the statistics cover lambda in [{lo:.4g}, {hi:.4g}] but the grid reaches "
                         f"[{min(finite):.4g}, {max(finite):.4g}]; compute them over the process's whole time range")
    if pseudo is None:
        pseudo = n <= 5
    skip = set(disable_corrector)
    step = _V3Step(fns, x)
    l_at = {i: step._t(fns.l(lam[i])) for i in range(n)}
    model = bind(denoiser, schedule, cond)
    ys: list[Tensor | None] = []
    fs: list[Tensor | None] = []
    prev_order = 0
    for i in range(n):
        p = model.predict(x, float(schedule.t[i]), i)
        y = x / a[i]
        f = (1 - l_at[i]) * y - p.x0
        c = prev_order + (1 if corrector_pseudo else 0)
        if corrector and c > 1 and (i - 1) not in skip:  # re-solve step i-1 -> i with the value at i (sec. 3.5)
            idx = [i - 1, i] + [i - 1 - k for k in range(1, c - 1)]
            y = step(ys[i - 1], [lam[j] for j in idx], [fs[j] if j != i else f for j in idx], lam[i],
                     corrector_pseudo)
            x = a[i] * y
        ys.append(y)
        fs.append(f)
        if i >= 4:
            ys[i - 4] = fs[i - 4] = None  # never read again
        o = multistep_order(i, schedule, order, lower_order_final=lower_order_final, final_rule="unipc")
        if schedule.lands_clean(i):
            x = (1 - l_at[i]) * y - f  # the data prediction at the (corrected) point
        else:
            idx = [i - k for k in range(o)]
            x = a[i + 1] * step(y, [lam[j] for j in idx], [fs[j] for j in idx], lam[i + 1], pseudo)
        prev_order = o
        step_done(i, schedule, x, p.x0, callback)
    return x
