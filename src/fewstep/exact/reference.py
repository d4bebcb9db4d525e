"""A float64 high-accuracy solution of the probability-flow ODE, for measuring trajectory error.

In ``y = x / alpha`` and ``lam = log(alpha / sigma)`` the probability-flow ODE of every process
is ``dy/dlam = x0_hat(y, sigma_hat = e^{-lam}) - y`` (from EDM eq. 4 with sigma = e^{-lam}),
a non-stiff system that an adaptive 8th-order Runge-Kutta method (DOP853) solves to a tight
tolerance.  A clean end (``sigma = 0``) is the limit ``lam -> inf``, reached to within
``exp(-lam_clean)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ._base import ExactDenoiser

__all__ = ["reference_solution"]


def reference_solution(denoiser: ExactDenoiser, x_T: Tensor, *, t_end: float | None = None,
                       rtol: float = 1e-10, atol: float = 1e-10, lam_clean: float = 16.0) -> Tensor:
    """Integrate the PF-ODE of an exact model from the process's ``t_start`` (where sampling starts; its ``t_max``
    unless the schedule's end is singular) to ``t_end`` (``None``: clean data).

    Returns float64 samples shaped like ``x_T``; solves each sample independently of the batch.
    """
    from scipy.integrate import solve_ivp  # scipy loads in about a second: only exact references need it

    process, model = denoiser.process, denoiser.model
    lam0 = float(process.lam(process.t_start))
    lam1 = lam_clean if t_end is None else float(process.lam(t_end))
    a0 = float(process.alpha(process.t_start))
    y0 = (x_T.reshape(len(x_T), -1).to(torch.float64) / a0)
    shape = y0.shape

    def rhs(lam: float, y_flat: np.ndarray) -> np.ndarray:
        y = torch.from_numpy(y_flat).reshape(shape)
        return (model.x0_at(y, math.exp(-lam)) - y).reshape(-1).numpy()

    sol = solve_ivp(rhs, (lam0, lam1), y0.reshape(-1).numpy(), method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"the reference ODE solve failed: {sol.message}")
    y1 = torch.from_numpy(sol.y[:, -1]).reshape(shape)
    a1 = 1.0 if t_end is None else float(process.alpha(t_end))
    return (a1 * y1).reshape(x_T.shape)
