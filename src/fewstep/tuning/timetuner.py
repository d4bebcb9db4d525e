"""TimeTuner (Xia et al. 2024, "Towards More Accurate Diffusion Model Acceleration with A Timestep
Tuner", CVPR): tuning the time *inputs* of the network.

The paper trains a time ``tau_i`` per step to match the trajectory of a many-step sampler; here ``tau_i`` is
tuned by coordinate descent against the same near-exact reference as the grid search
(:class:`~fewstep.tuning.reference.ReferenceSet`).  Sampling with the tuned times is
:class:`fewstep.nettimes.TimeTunedDenoiser` (what a grid file entry's ``net_times`` apply).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..nettimes import TimeTunedDenoiser
from .descent import DescentResult, coordinate_descent
from .reference_set import ReferenceSet

__all__ = ["tune_net_times"]


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
