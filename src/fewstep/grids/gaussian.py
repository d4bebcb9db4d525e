"""Model-free optimal steps from a Gaussian data model.

Xue et al. 2024 ("Accelerating Diffusion Sampling with Optimized Time Steps", CVPR; sec. 3-4)
choose the time steps of a given solver by minimising the distance between the exact solution of
the probability-flow ODE and the solver's, with a model-free surrogate in place of the network.
Here the surrogate is the one whose ODE is known in closed form (the Gaussian analysis of Align
Your Steps, sec. 3.1, and Sun, Poor & Zhang 2026, "An Elementary Approach to Scheduling"): data
``N(0, diag(c_1^2 .. c_K^2))`` with per-direction standard deviations ``c_k`` spread log-uniformly
over ``data_std = (c_min, c_max)``.  Its denoiser is linear, ``x0_hat = alpha c^2 / (alpha^2 c^2 +
sigma^2) x``, and the ODE carries ``x_T`` to ``x_0 = c / s_k(t_max) x_T`` with
``s_k(t) = sqrt(alpha(t)^2 c_k^2 + sigma(t)^2)``, since each marginal's quantiles are transported
(the flow of a 1-d Gaussian is linear).  The score of a grid is the solver's exact mean squared
error over the directions,

    E(grid) = (1/K) sum_k (G_k(grid) - c_k / s_k(t_max))^2 prior_std^2,

with ``G_k`` the solver's gain on direction ``k`` -- obtained by running the registered solver
itself on the diagonal Gaussian (no second implementation of any solver, no network evaluation).
It is minimised by the coordinate descent shared with the model-based search, from the better of
the logSNR grid and the tangent law (:func:`tangent_grid`).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .. import solvers
from ..processes import NoiseProcess
from .descent import DescentResult
from .search import descend_grid

__all__ = ["gaussian_spectrum", "gaussian_error", "tangent_grid", "analytic_grid", "DEFAULT_DATA_STD"]

DEFAULT_DATA_STD = (0.02, 1.0)


def gaussian_spectrum(data_std: float | tuple[float, float] = DEFAULT_DATA_STD, count: int = 24) -> Tensor:
    """Per-direction standard deviations: one value, or ``count`` log-uniform in ``(c_min, c_max)``."""
    if isinstance(data_std, (int, float)):
        return torch.tensor([float(data_std)], dtype=torch.float64)
    lo, hi = (float(v) for v in data_std)
    if not 0 < lo <= hi:
        raise ValueError(f"data_std must be 0 < c_min <= c_max, got {data_std}")
    return torch.logspace(math.log10(lo), math.log10(hi), count, dtype=torch.float64)


class _Gaussian:
    """Exact diagonal Gaussian data ``N(0, diag(stds^2))`` as an exact model (a linear filter)."""

    def __init__(self, stds: Tensor):
        self.var = stds.to(torch.float64) ** 2
        self.dim = len(stds)

    def x0_at(self, y: Tensor, sigma_hat: float | Tensor) -> Tensor:
        s2 = torch.as_tensor(sigma_hat, dtype=torch.float64) ** 2
        s2 = s2.reshape(-1, 1) if s2.ndim else s2
        return y * self.var / (self.var + s2)


def gaussian_error(process: NoiseProcess, solver: str, nfe: int, stds: Tensor) -> Callable[[Tensor], float]:
    """``score(times)``: the solver's exact mean squared error on ``N(0, diag(stds^2))`` (eq. above)."""
    from ..api import sample
    from ..exact import ExactDenoiser

    den = ExactDenoiser(_Gaussian(stds), process)  # type: ignore[arg-type]
    t_max = process.t_max
    a, s = float(process.alpha(t_max)), float(process.sigma(t_max))
    exact = stds / torch.sqrt(a * a * stds * stds + s * s)
    x_T = torch.full((1, len(stds)), 1.0, dtype=torch.float64)

    def score(times: Tensor) -> float:
        try:
            gain = sample(den, x_T, solver, nfe, times)[0]
        except solvers.NonFiniteError:
            return float("inf")
        err = float(((gain - exact) ** 2).mean()) * process.prior_std ** 2
        return err if err == err else float("inf")

    return score


def tangent_grid(process: NoiseProcess, steps: int, c: float) -> Tensor:
    """The tangent law: ``sigma_hat = c tan(u)``, ``u`` uniform between ``atan(sigma_hat(t_max)/c)`` and
    ``atan(sigma_hat(t_min)/c)`` (AYS sec. 3.1 for data ``N(0, c^2)``; Sun et al. 2026)."""
    from . import make_grid

    hi, lo = process.t_max, process.t_min
    u_hi = math.atan(math.exp(-float(process.lam(hi))) / c)
    u_lo = math.atan(math.exp(-float(process.lam(lo))) / c)
    u = torch.linspace(u_hi, u_lo, steps + 1, dtype=torch.float64)
    ts = process.t_of_sigma_hat(c * torch.tan(u))
    ts[0], ts[-1] = hi, lo
    if not bool((ts[1:] < ts[:-1]).all()):  # coarse discrete processes can merge points
        return make_grid(process, steps, "logsnr")
    return ts


def analytic_grid(process: NoiseProcess, solver: str, nfe: int, *,
                  data_std: float | tuple[float, float] = DEFAULT_DATA_STD, rounds: int = 6,
                  candidates: int = 3) -> tuple[Tensor, DescentResult]:
    """Optimal steps of ``solver`` at ``nfe`` for Gaussian data of standard deviations ``data_std``
    (no network evaluation; a second or so)."""
    from . import make_grid

    spec = solvers.get(solver)
    if spec.stochastic or not spec.fixed_nfe:
        raise ValueError(f"analytic grids need a deterministic fixed-NFE solver; {spec.name!r} is not")
    steps, _ = spec.steps_for(nfe)
    stds = gaussian_spectrum(data_std)
    score = gaussian_error(process, spec.name, nfe, stds)
    c = float(torch.exp(torch.log(stds).mean()))
    starts = [make_grid(process, steps, "logsnr"), tangent_grid(process, steps, c)]
    first = min(starts, key=score)
    return descend_grid(score, process, first, rounds=rounds, candidates=candidates)
