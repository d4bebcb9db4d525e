"""The exponential-integrator maths shared by DDIM, DPM-Solver(++), DEIS and UniPC.

With ``h = lam_t - lam_s`` the exact solution of the probability-flow ODE is
``x_t = (sigma_t/sigma_s) x_s + sigma_t int e^{lam} x0(lam) dlam`` in data-prediction form
(DPM-Solver++, Lu et al. 2022, eq. 9) and ``x_t = (alpha_t/alpha_s) x_s - alpha_t int e^{-lam}
eps(lam) dlam`` in noise-prediction form (DPM-Solver, eq. 3.4).  Coefficients are float64
python floats; ``h = inf`` (a step onto clean data) is handled exactly.
"""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["phi", "data_step", "noise_step", "ddim_noise_split"]


def phi(k: int, h: float) -> float:
    """``phi_k(h) = int_0^1 e^{(1-u) h} u^{k-1} / (k-1)! du`` (phi_0 = e^h), stable for small h."""
    if k == 0:
        return math.exp(h)
    if abs(h) < 1e-3:  # Taylor series: sum_j h^j / (j + k)!
        return sum(h**j / math.factorial(j + k) for j in range(6))
    value = math.expm1(h) / h  # phi_1
    for j in range(2, k + 1):
        value = (value - 1.0 / math.factorial(j - 1)) / h
    return value


def data_step(x: Tensor, x0: Tensor, alpha_t: float, sigma_s: float, sigma_t: float, h: float) -> Tensor:
    """First-order data-prediction step (DDIM / DPM-Solver++1): ``(s_t/s_s) x - a_t (e^{-h}-1) x0``."""
    return (sigma_t / sigma_s) * x - (alpha_t * math.expm1(-h)) * x0


def noise_step(x: Tensor, eps: Tensor, alpha_s: float, alpha_t: float, sigma_t: float, h: float) -> Tensor:
    """First-order noise-prediction step (DPM-Solver-1): ``(a_t/a_s) x - s_t (e^{h}-1) eps``."""
    return (alpha_t / alpha_s) * x - (sigma_t * math.expm1(h)) * eps


def ddim_noise_split(sigma_t: float, h: float, eta: float) -> tuple[float, float]:
    """``(sqrt(sigma_t^2 - c^2), c)`` with ``c = eta sigma_t sqrt(1 - e^{-2h})`` (DDIM eq. 16).

    ``c`` is the standard deviation of the fresh noise of a DDIM step; ``eta = 1`` is DDPM's
    posterior ``q(x_t | x_s, x0)``.
    """
    c = eta * sigma_t * math.sqrt(-math.expm1(-2 * h)) if h != math.inf else eta * sigma_t
    return math.sqrt(max(sigma_t**2 - c**2, 0.0)), c
