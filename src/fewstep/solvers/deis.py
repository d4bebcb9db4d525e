"""DEIS (Zhang & Chen 2023, Fast Sampling of Diffusion Models with Exponential Integrator): tAB and rhoAB."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoisers import DenoiserBase
from ..grids import Schedule
from ..context import bind
from ._common import Callback, Cond, Generator, multistep_order, step_done
from ._expint import exp_combine, lagrange_integral
from .registry import register


def deis_coefficients(schedule: Schedule, order: int, basis: str = "t", lower_order_final: bool = True) -> list[list[float]]:
    """Per step the weights ``C_ij`` of ``x_t = (a_t/a_s) x_s - s_t sum_j C_ij eps_{i-j}`` (eq. 14 / 16).

    ``C_ij = int_{lam_s}^{lam_t} e^{lam_t - lam} L_j(v(lam)) dlam`` with ``L_j`` the Lagrange basis through
    the last ``order`` grid points in ``v = t`` (tAB) or ``v = lam`` (rhoAB, i.e. polynomial in log rho:
    diffusers' "logrho"), computed once per grid by Gauss-Legendre quadrature.
    """
    if basis not in ("t", "lam"):
        raise ValueError(f"basis must be 't' (tAB) or 'lam' (log-rho AB), got {basis!r}")
    proc = schedule.process
    lam, ts = schedule.lam.tolist(), schedule.t.tolist()

    def t_of(l):
        return proc.t_of_lambda(torch.as_tensor(l, dtype=torch.float64)).numpy()

    out = []
    for i in range(schedule.steps):
        o = multistep_order(i, schedule, order, lower_order_final=lower_order_final)
        if math.isinf(lam[i + 1]):
            out.append([1.0])
            continue
        nodes = [(ts if basis == "t" else lam)[i - j] for j in range(o)]
        out.append(lagrange_integral(nodes, t_of if basis == "t" else (lambda l: l), lam[i], lam[i + 1], data=False))
    return out


@register("deis", order=3, paper="Zhang & Chen 2023, DEIS, eq. 14-16 (tAB-DEIS, orders 1-3)", ranges={"order": (1, 3)})
def deis(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
         callback: Callback = None, cond: Cond = None, order: int = 3, basis: str = "t",
         lower_order_final: bool = True) -> Tensor:
    """tAB-DEIS on the noise prediction: polynomial extrapolation of the last ``order`` eps in ``t``.

    Warm-up with lower orders; a clean last step is first order (DDIM) and, with ``lower_order_final``, grids
    under 15 steps end with orders 2, 1.  ``basis="lam"`` is the rhoAB variant that diffusers implements.
    """
    a, s = schedule.alpha.tolist(), schedule.sigma.tolist()
    lam = schedule.lam.tolist()
    coeffs = deis_coefficients(schedule, order, basis, lower_order_final)
    model = bind(denoiser, schedule, cond)
    eps_hist: list[Tensor] = []
    for i in range(schedule.steps):
        p = model.predict(x, float(schedule.t[i]), i)
        eps_hist = (eps_hist + [p.eps])[-order:]
        c = coeffs[i]
        x = exp_combine(x, [eps_hist[-1 - j] for j in range(len(c))], c, data=False, alpha_s=a[i], sigma_s=s[i],
                        alpha_t=a[i + 1], sigma_t=s[i + 1], h=lam[i + 1] - lam[i])
        step_done(i, schedule, x, p.x0, callback)
    return x
