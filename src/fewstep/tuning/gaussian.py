"""Model-free optimal steps from a Gaussian data model.

Xue et al. 2024 ("Accelerating Diffusion Sampling with Optimized Time Steps", CVPR, sec. 3-4)
choose the steps of a given solver by minimising the distance between the exact solution of the
probability-flow ODE and the solver's, with a model-free surrogate for the data prediction.  Here
the surrogate is the data model whose ODE is known in closed form (the Gaussian analyses of Align
Your Steps, sec. 3.1, and Sun, Poor & Zhang 2026): data ``N(0, diag(c_1^2 .. c_K^2))`` with
standard deviations ``c_k`` log-uniform in ``data_std = (c_min, c_max)``.  Its denoiser is linear,
``x0_hat = alpha c^2 / (alpha^2 c^2 + sigma^2) x``, and the ODE carries ``x_T`` to
``c / s(t_max) x_T`` with ``s(t) = sqrt(alpha(t)^2 c^2 + sigma(t)^2)`` (a 1-d Gaussian flow is linear).

:func:`analytic_grid` minimises a bound on the solver's accumulated local truncation error under this
model (no network evaluation); :func:`gaussian_error` is the solver's *exact* error under it, obtained
by running the registered solver on the Gaussian (tests and benchmarks measure with it).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .. import solvers
from ..api import sample
from ..exact import ExactDenoiser
from ..processes import NoiseProcess

__all__ = ["gaussian_spectrum", "gaussian_error", "analytic_grid", "lte_weights", "DEFAULT_DATA_STD"]

DEFAULT_DATA_STD = (0.1, 4.0)


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
    den = ExactDenoiser(_Gaussian(stds), process)  # type: ignore[arg-type]
    t_max = process.t_start  # where sampling starts
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


def _g_derivative(lam: Tensor, c: float, p: int) -> Tensor:
    """``d^p/dlam^p (c^2 + e^{-2 lam})^{-1/2}`` by automatic differentiation (float64)."""
    x = lam.clone().requires_grad_(True)
    with torch.enable_grad():
        y = (c * c + torch.exp(-2 * x)) ** -0.5
        for _ in range(p):
            (y,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    return y.detach()


def lte_weights(lam: Tensor, stds: Tensor, p: int, a_T: float, s_T: float) -> tuple[Tensor, Tensor]:
    """``(w(lam), E_last(lam))`` of the bound minimised by :func:`analytic_grid` (equations in its docstring)."""
    w = torch.zeros_like(lam)
    last = torch.zeros_like(lam)
    for c in (float(v) for v in stds):
        gain = c / math.sqrt(a_T * a_T * c * c + s_T * s_T)  # E|x0| per unit of x_T
        g = (c * c + torch.exp(-2 * lam)) ** -0.5
        w += gain * c * c * g * _g_derivative(lam, c, p).abs()
        last += gain * (1 - c * g)
    return w / len(stds), last / len(stds)


def analytic_grid(process: NoiseProcess, solver: str, nfe: int, *,
                  data_std: float | tuple[float, float] = DEFAULT_DATA_STD, points: int = 4001) -> tuple[Tensor, float]:
    """Steps of ``solver`` at ``nfe`` minimising a local-truncation-error bound for Gaussian data
    (no network evaluation; milliseconds).  Returns the grid and the bound.

    Along the exact ODE of data ``N(0, c^2)`` the data prediction is
    ``x0(lam) = K c^2 g(lam)``, ``g = (c^2 + e^{-2 lam})^{-1/2}``, ``K = x_T / s(t_max)``.  An order-``p``
    exponential integrator in data prediction (DPM-Solver++ eq. 9) makes a local error of about
    ``alpha_{i+1} h_i^{p+1} |x0^{(p)}| / (p+1)!`` at step ``i`` (``h_i`` the logSNR step), which the exact
    flow carries to the data with gain ``c / s(t_{i+1}) = c g / alpha``.  Summing over steps and
    averaging over the directions ``c_k`` bounds the error by ``sum_i w(lam_i) h_i^{p+1} / (p+1)!`` with
    ``w(lam) = mean_k |K_k| c_k^3 g_k |g_k^{(p)}|``, whose minimum over ``n - 1`` steps covering
    ``[lam_0, lam_{n-1}]`` puts the points uniformly in ``W(lam) = int w^{1/(p+1)}`` (equidistribution)
    with value ``W^{p+1} / ((p+1)! (n-1)^p)``.  The last step lands on clean data with the prediction
    at ``lam_{n-1}``, erring by ``E_last = mean_k |K_k| c_k (1 - c_k g_k(lam_{n-1}))``; ``lam_{n-1}`` is
    chosen to minimise the sum of both terms.  ``p`` is the solver's registered order.
    """
    spec = solvers.get(solver)
    if spec.stochastic or not spec.fixed_nfe:
        raise ValueError(f"analytic grids need a deterministic fixed-NFE solver; {spec.name!r} is not")
    steps, _ = spec.steps_for(nfe)
    t_max, t_min = process.t_start, process.t_min  # the grid starts where sampling starts
    if steps == 1:
        return torch.tensor([t_max, t_min], dtype=torch.float64), float("nan")
    p = max(1, int(spec.order))
    lam = torch.linspace(float(process.lam(t_max)), float(process.lam(t_min)), points, dtype=torch.float64)
    a_T, s_T = float(process.alpha(t_max)), float(process.sigma(t_max))
    w, last = lte_weights(lam, gaussian_spectrum(data_std), p, a_T, s_T)
    dens = w.clamp(min=1e-300) ** (1.0 / (p + 1))
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum((dens[1:] + dens[:-1]) / 2 * lam.diff(), 0)])
    n = steps - 1  # steps between t_max and the last evaluation point
    bound = cum ** (p + 1) / (math.factorial(p + 1) * n**p) + last
    j = int(torch.argmin(bound[1:-1])) + 1
    targets = cum[j] * torch.arange(1, n + 1, dtype=torch.float64) / n
    inner = torch.from_numpy(np.interp(targets.numpy(), cum[: j + 1].numpy(), lam[: j + 1].numpy()))
    inner[-1] = lam[j]
    ts = torch.cat([torch.tensor([t_max], dtype=torch.float64), process.t_of_lambda(inner).to(torch.float64),
                    torch.tensor([t_min], dtype=torch.float64)])
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"the analytic grid for {spec.name} at nfe={nfe} collapsed on this process's time "
                         f"resolution; use fewer steps")
    return ts, float(bound[j])
