"""DC-Solver (Zhao et al. 2024, DC-Solver: Improving Predictor-Corrector Diffusion Sampler via Dynamic Compensation).

UniPC whose buffered model output ``m_i`` is replaced, before step ``i``, by the Lagrange interpolant of the last
``dc_order + 1`` buffered outputs evaluated at the shifted time ``tau_i = t_{i-1} + rho_i (t_i - t_{i-1})``
(``unipc._compensate``; the loop is UniPC's own).  The ratios ``rho_i`` are searched once per NFE against a
high-NFE reference on a few dozen seeds (:func:`fewstep.tuning.dc.search_ratios`), saved to JSON (:class:`RatioTable`) and reused;
the cascade polynomial regression (CPR) fitted on the searched NFEs predicts ratios for any other NFE.
``rho = 1`` everywhere is exactly UniPC.  The search itself is tuning (:mod:`fewstep.tuning.dc`); it runs the
loop of this module through :func:`search_pass`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from torch import Tensor

from .._io import atomic_write_text
from ..denoisers import DenoiserBase
from ..grids import Schedule
from ._common import Callback, Cond, Generator
from .registry import register
from .unipc import _unipc

__all__ = ["dc_solver", "search_pass", "RatioTable", "fit_cpr", "predict_cpr", "resolve_ratios"]

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


@register("dc_solver", order=3, aliases=("dc-solver", "dcsolver"), ranges={"order": (1, 3), "dc_order": (1, 3)},
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


def search_pass(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, search: Callable[[int, Callable[[float], Tensor]], float],
                *, order: int = 2, dc_order: int = 2, variant: str = "bh2", prediction: str = "data",
                cond: Cond = None) -> Tensor:
    """One DC-Solver solve whose ratio for each step ``i >= dc_order`` is chosen by ``search(i, evaluate)``:
    ``evaluate(rho)`` is the step's result (predictor, then corrector) for a trial ratio (the ratio search,
    :func:`fewstep.tuning.dc.search_ratios`)."""
    return _unipc(denoiser, x, schedule, order=order, variant=variant, prediction=prediction, corrector=True,
                  disable_corrector=(), lower_order_final=True, callback=None, cond=cond, dc_order=dc_order,
                  search=search)
