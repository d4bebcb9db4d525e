"""DC-Solver (Zhao et al. 2024, DC-Solver: Improving Predictor-Corrector Diffusion Sampler via Dynamic Compensation).

UniPC whose buffered model output ``m_i`` is replaced, before step ``i``, by the Lagrange interpolant of the last
``dc_order + 1`` buffered outputs evaluated at the shifted time ``tau_i = t_{i-1} + rho_i (t_i - t_{i-1})``
(``unipc._compensate``; the loop is UniPC's own).  The ratios ``rho_i`` are searched once per NFE against a
high-NFE reference on a few dozen seeds (:func:`search_ratios`), saved to JSON (:class:`RatioTable`) and reused;
the cascade polynomial regression (CPR) fitted on the searched NFEs predicts ratios for any other NFE.
``rho = 1`` everywhere is exactly UniPC.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from .._io import atomic_write_text
from ..denoisers import DenoiserBase
from ..grids import GridSpec, Schedule, make_schedule
from ._common import Callback, Cond, Generator
from .registry import register
from .unipc import _unipc

__all__ = ["dc_solver", "search_ratios", "search_table", "RatioTable", "fit_cpr", "predict_cpr", "reference_states"]

FORMAT = "fewstep-dc-ratios"


# --- cascade polynomial regression -------------------------------------------------------------------------------

def _cpr_features(step: int, nfe: int) -> list[float]:
    """Monomials ``x^k v^l`` (``k, l <= 2``) with ``x = (step + 1) / nfe`` and ``v = nfe / 10``.

    CPR (Zhao et al. 2024, sec. 3.3) writes ``rho(x) = sum_k c_k x^k`` whose coefficients ``c_k`` are themselves
    quadratics in the NFE (the paper cascades a third level over the guidance scale, absent without guidance);
    the product is linear in the nine coefficients, so it is fitted by least squares.
    """
    x, v = (step + 1) / nfe, nfe / 10.0
    return [x**k * v**l for k in range(3) for l in range(3)]


def fit_cpr(searched: dict[int, Sequence[float]], dc_order: int) -> list[float]:
    """Least-squares CPR coefficients from searched ratios (``{nfe: ratios}``; steps below ``dc_order`` are not searched)."""
    rows, target = [], []
    for nfe, ratios in searched.items():
        for i, rho in enumerate(ratios):
            if i >= dc_order:
                rows.append(_cpr_features(i, int(nfe)))
                target.append(float(rho))
    if not rows:
        raise ValueError("no searched ratios to fit the cascade polynomial regression to")
    coef, *_ = np.linalg.lstsq(np.asarray(rows), np.asarray(target), rcond=None)
    return coef.tolist()


def predict_cpr(coefficients: Sequence[float], steps: int, dc_order: int) -> list[float]:
    """Ratios for a solve of ``steps`` steps (one per NFE) predicted by CPR; warm-up steps get 1."""
    coef = np.asarray(coefficients, dtype=np.float64)
    return [1.0 if i < dc_order else float(np.dot(coef, _cpr_features(i, steps))) for i in range(steps)]


# --- saved ratios ------------------------------------------------------------------------------------------------

@dataclass
class RatioTable:
    """Searched ratios per NFE plus the CPR coefficients fitted on them, with how they were searched (``meta``)."""

    ratios: dict[int, list[float]]
    dc_order: int = 2
    cpr: list[float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def for_steps(self, steps: int) -> list[float]:
        """The searched ratios for this NFE, else the CPR prediction; refuses when neither exists."""
        if steps in self.ratios:
            return list(self.ratios[steps])
        if self.cpr is None:
            raise ValueError(f"no DC-Solver ratios for NFE {steps} (searched: {sorted(self.ratios)}) and no CPR "
                             "coefficients to predict them; search this NFE or refit CPR")
        return predict_cpr(self.cpr, steps, self.dc_order)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": 1, "dc_order": self.dc_order,
                           "ratios": {str(k): v for k, v in sorted(self.ratios.items())}, "cpr": self.cpr,
                           "meta": self.meta}, indent=1)

    def save(self, path: str | os.PathLike) -> None:
        """Write the table as JSON atomically (a reader never sees a half-written file)."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RatioTable":
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a DC-Solver ratio file ({err})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"{path}: not a DC-Solver ratio file (written by `fewstep dc-search`)")
        return cls({int(k): [float(r) for r in v] for k, v in raw["ratios"].items()}, int(raw["dc_order"]),
                   raw.get("cpr"), raw.get("meta") or {})


def resolve_ratios(ratios: "str | os.PathLike | Sequence[float] | RatioTable | None", steps: int, dc_order: int) -> list[float] | None:
    """``None`` (UniPC), an explicit list (one per step), a :class:`RatioTable` or the path of a saved one."""
    if ratios is None:
        return None
    if isinstance(ratios, (str, os.PathLike)):
        ratios = RatioTable.load(ratios)
    if isinstance(ratios, RatioTable):
        if ratios.dc_order != dc_order:
            raise ValueError(f"the ratios were searched with dc_order={ratios.dc_order}, not {dc_order}")
        return ratios.for_steps(steps)
    out = [float(r) for r in ratios]
    if not all(math.isfinite(r) for r in out):
        raise ValueError("DC-Solver ratios must be finite numbers")
    return out


@register("dc_solver", order=3, aliases=("dc-solver", "dcsolver"),
          paper="Zhao et al. 2024, DC-Solver: UniPC with dynamic compensation (searched ratios or CPR)")
def dc_solver(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
              callback: Callback = None, cond: Cond = None, ratios: "str | os.PathLike | Sequence[float] | RatioTable | None" = None, order: int = 2,
              dc_order: int = 2, variant: str = "bh2", prediction: str = "data",
              lower_order_final: bool = True) -> Tensor:
    """UniPC-``order`` with dynamic compensation of its buffered outputs (``ratios``: see :func:`resolve_ratios`).

    Without ratios this is exactly ``unipc`` with the same options.
    """
    rs = resolve_ratios(ratios, schedule.steps, dc_order)
    return _unipc(denoiser, x, schedule, order=order, variant=variant, prediction=prediction, corrector=True,
                  disable_corrector=(), lower_order_final=lower_order_final, callback=callback, cond=cond,
                  ratios=rs, dc_order=dc_order)


# --- the search --------------------------------------------------------------------------------------------------

def reference_states(denoiser: DenoiserBase, x_T: Tensor, schedule: Schedule, reference_nfe: int,
                     cond: Cond = None, teleported: bool = False) -> list[Tensor]:
    """The near-exact solution from ``x_T`` (at the process's ``t_start``) at every point of ``schedule`` (index 1..n):
    DPM-Solver++(3M) on the grid refined ``ceil(reference_nfe / n)`` times, each interval split uniformly in
    logSNR.  ``teleported``: the schedule starts below ``t_start`` (:mod:`fewstep.teleport`);
    the solve then begins at ``t_start`` with as many logSNR-uniform steps down to the schedule's start as one
    interval has, so the states are the network's own solution, not the teleported one."""
    from ..api import sample

    process, n = schedule.process, schedule.steps
    r = max(1, math.ceil(reference_nfe / n))
    ts = schedule.t.clone()
    if schedule.clean_end:
        ts[-1] = process.t_min
    skip = 0
    if teleported and float(ts[0]) < process.t_start:
        ts, skip = torch.cat([torch.tensor([process.t_start], dtype=torch.float64), ts]), 1
    lam = process.lam(ts)
    fine = [float(ts[0])]
    for k in range(len(ts) - 1):
        inner = process.t_of_lambda(lam[k] + (lam[k + 1] - lam[k]) * torch.arange(1, r, dtype=torch.float64) / r)
        fine += [float(v) for v in inner.reshape(-1)] + [float(ts[k + 1])]
    states: list[Tensor] = []

    def keep(info: dict[str, Any]) -> None:
        if (info["i"] + 1) % r == 0:
            states.append(info["x"].clone())

    sample(denoiser, x_T, "dpm++3m", (len(ts) - 1) * r, fine, clean_end=schedule.clean_end, callback=keep, cond=cond)
    return states[skip:]


def _golden(loss, lo: float, hi: float, iterations: int) -> float:
    """Golden-section minimum of a one-dimensional ``loss`` on ``[lo, hi]``; 1.0 is kept unless beaten."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = loss(d)
    best, fbest = (c, fc) if fc < fd else (d, fd)
    return best if fbest < loss(1.0) else 1.0


def search_ratios(denoiser: DenoiserBase, shape: Sequence[int], nfe: int, seeds: Iterable[int], *,
                  reference_nfe: int = 200, grid: GridSpec | None = None, order: int = 2, dc_order: int = 2,
                  variant: str = "bh2", prediction: str = "data", bounds: tuple[float, float] = (0.6, 1.4),
                  iterations: int = 10, cond: Cond = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, teleport: float | None = None) -> list[float]:
    """Search DC-Solver's ratios for one NFE: greedily per step, the ``rho_i`` in ``bounds`` minimising the mean
    squared distance of the step's result (predictor and corrector) to the reference solution at ``t_{i+1}``
    (Zhao et al. 2024, sec. 3.2; golden-section search instead of the paper's gradient steps, so no gradient
    flows through the network).  ``teleport``: the grid starts at that time, reached from ``t_max`` by the data
    Gaussian's exact flow (:mod:`fewstep.teleport`).  Costs about ``nfe * (iterations + 4)`` evaluations of ``len(seeds)`` samples plus
    the reference solve.
    """
    from ..api import generators, prior_noise, start_state
    from . import get

    seeds = list(seeds)
    if not seeds:
        raise ValueError("search_ratios needs seeds, e.g. range(32)")
    steps, _ = get("dc_solver").steps_for(nfe)
    schedule = make_schedule(denoiser.process, steps, grid, **({"t_max": teleport} if teleport is not None else {}))
    x_T = prior_noise(denoiser.process, shape, generators(seeds), dtype=dtype, device=device)
    found = [1.0] * steps

    def search(i: int, evaluate) -> float:
        target = ref[i]  # the reference at point i + 1

        def loss(rho: float) -> float:
            return float((evaluate(rho) - target).double().pow(2).mean())

        found[i] = _golden(loss, bounds[0], bounds[1], iterations)
        return found[i]

    with torch.inference_mode():
        ref = reference_states(denoiser, x_T, schedule, reference_nfe, cond, teleported=teleport is not None)
        _unipc(denoiser, start_state(denoiser, x_T, schedule, teleport), schedule, order=order, variant=variant, prediction=prediction, corrector=True,
               disable_corrector=(), lower_order_final=True, callback=None, cond=cond, dc_order=dc_order,
               search=search)
    return found


def search_table(denoiser: DenoiserBase, shape: Sequence[int], nfes: Iterable[int], seeds: Iterable[int], *,
                 dc_order: int = 2, progress: bool = False, **options: Any) -> RatioTable:
    """:func:`search_ratios` for each NFE, with the CPR fitted on all of them."""
    seeds = list(seeds)
    searched: dict[int, list[float]] = {}
    for nfe in nfes:
        searched[int(nfe)] = search_ratios(denoiser, shape, int(nfe), seeds, dc_order=dc_order, **options)
        if progress:
            print(f"nfe={nfe}: ratios {', '.join(f'{r:.4f}' for r in searched[int(nfe)])}", flush=True)
    meta = {"seeds": [seeds[0], seeds[-1] + 1], "n_seeds": len(seeds),
            **{k: (v if isinstance(v, (int, float, str, type(None))) else str(v)) for k, v in options.items()}}
    return RatioTable(searched, dc_order, fit_cpr(searched, dc_order), meta)
