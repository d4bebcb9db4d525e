"""Linear multistep in sigma space (k-diffusion's ``sample_lms``; Karras et al. 2022 ODE in ``(x/alpha, sigma/alpha)``)."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from ..denoisers import DenoiserBase
from ..grids import Schedule
from ..context import bind
from ._common import Callback, Cond, Generator, step_done
from .registry import register


def lms_coefficients(sigmas: list[float], order: int) -> list[list[float]]:
    """``c[i][j] = int_{s_i}^{s_{i+1}} L_j(s) ds`` for the Lagrange basis through ``s_i, s_{i-1}, ...``.

    Adams-Bashforth on the non-uniform grid, integrated exactly (the basis is a polynomial), once per grid.
    """
    out = []
    for i in range(len(sigmas) - 1):
        o = min(i + 1, order)
        nodes = [sigmas[i - j] for j in range(o)]
        row = []
        for j in range(o):
            basis = np.poly1d([1.0])
            for k in range(o):
                if k != j:
                    basis = basis * np.poly1d([1.0, -nodes[k]]) / (nodes[j] - nodes[k])
            prim = basis.integ()
            row.append(float(prim(sigmas[i + 1]) - prim(sigmas[i])))
        out.append(row)
    return out


@register("lms", order=4, paper="k-diffusion sample_lms / Karras et al. 2022 eq. 4: Adams-Bashforth in sigma",
          ranges={"order": (1, 4)})
def lms(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, *, generator: Generator = None,
        callback: Callback = None, cond: Cond = None, order: int = 4) -> Tensor:
    """``y_{i+1} = y_i + sum_j c_ij d_{i-j}`` with ``d = (y - D(y))/sigma``, ``y = x/alpha``, ``sigma = sigma/alpha``.

    Orders grow 1, 2, ... up to ``order`` (no lower-order final step: the clean end ``sigma = 0`` is regular here).
    """
    a, sh = schedule.alpha.tolist(), schedule.sigma_hat.tolist()
    coeffs = lms_coefficients(sh, order)
    y = x / a[0]
    model = bind(denoiser, schedule, cond)
    ds: list[Tensor] = []
    for i in range(schedule.steps):
        x0 = model.x0(a[i] * y, float(schedule.t[i]), i)
        ds = (ds + [(y - x0) / sh[i]])[-order:]
        for j, c in enumerate(coeffs[i]):
            y = y + c * ds[-1 - j]
        step_done(i, schedule, y, x0, callback)
    return a[-1] * y
