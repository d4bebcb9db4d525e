"""Time grids and the noise schedule a solver walks along.

A grid of ``n`` steps is ``n + 1`` times ``t_0 = t_start > t_1 > ... > t_n = t_min``: it starts at the
process's ``t_start`` (its ``t_max`` unless the schedule's end is singular for the model, see
:func:`fewstep.processes.well_conditioned_start`; no hidden 'leading' offset).  With ``clean_end=True`` (the
default when sampling) the last point is replaced by clean data, ``sigma = 0``: the last step
lands on the data prediction, as diffusers' ``final_sigmas_type="zero"`` and k-diffusion's
appended ``sigma = 0`` do, without an extra network evaluation.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..processes import NoiseProcess
from .files import grid_entry, is_grid_file

__all__ = ["GRIDS", "GridSpec", "make_grid", "Schedule", "make_schedule"]

GRIDS = ("uniform", "logsnr", "quadratic", "karras")

GridSpec = str | os.PathLike | Sequence[float] | Tensor


def make_grid(process: NoiseProcess, steps: int, kind: GridSpec | None = None, *, rho: float = 7.0,
              t_max: float | None = None, t_min: float | None = None, solver: str | None = None,
              nfe: int | None = None) -> Tensor:
    """``steps + 1`` decreasing float64 times from ``t_max`` to ``t_min`` (defaults: the process's ``t_start`` and
    ``t_min``; they shape the named grids only: explicit times and grid file entries keep their own).

    ``kind``: ``"uniform"`` in t; ``"logsnr"`` uniform in lambda (DPM-Solver); ``"quadratic"``
    time-quadratic (DDIM, Song et al. 2021, sec. D.2); ``"karras"`` uniform in
    ``(sigma/alpha)^(1/rho)`` (EDM eq. 5); an explicit decreasing sequence of times; or the path
    of a grid file (``fewstep grid optimize``; its entry for ``solver`` at ``nfe`` with ``steps``
    steps, see :mod:`fewstep.grids.files`).  ``None`` is the process's ``default_grid``
    (time-uniform for VP processes and rectified flow, Karras for EDM and VE).
    """
    if kind is None:
        kind = process.default_grid
    if isinstance(kind, (str, os.PathLike)) and str(kind) not in GRIDS and is_grid_file(kind):
        kind = grid_entry(kind, process, solver, nfe, steps).times
    hi = process.t_start if t_max is None else t_max
    lo = process.t_min if t_min is None else t_min
    if not isinstance(kind, str):
        ts = torch.as_tensor(kind, dtype=torch.float64).flatten()
        if len(ts) < 2:
            raise ValueError("an explicit grid needs at least 2 times (start and end)")
        if not bool((ts[1:] < ts[:-1]).all()):
            raise ValueError("an explicit grid must be strictly decreasing (from noise to data)")
        for t in (float(ts[0]), float(ts[-1])):
            process.check_time(t)
        return ts
    if kind not in GRIDS:
        raise ValueError(f"unknown grid {kind!r}; valid grids: {', '.join(GRIDS)}, an explicit list "
                         f"of times, or a grid file (.json)")
    if steps < 1:
        raise ValueError(f"a grid needs at least 1 step, got {steps}")
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    if kind == "uniform":
        ts = hi + (lo - hi) * u
    elif kind == "quadratic":
        ts = lo + (hi - lo) * (1 - u) ** 2
    elif kind == "logsnr":
        l_hi, l_lo = process.lam(hi), process.lam(lo)
        ts = process.t_of_lambda(l_hi + (l_lo - l_hi) * u)
    else:  # karras
        s_hi = float(torch.exp(-process.lam(hi))) ** (1 / rho)
        s_lo = float(torch.exp(-process.lam(lo))) ** (1 / rho)
        sig = (s_hi + (s_lo - s_hi) * u) ** rho
        ts = process.t_of_sigma_hat(sig)
    ts[0], ts[-1] = hi, lo  # exact endpoints despite round trips
    return ts


@dataclass(frozen=True)
class Schedule:
    """The noise levels along a grid, precomputed once in float64.

    ``t[i]``, ``alpha[i]``, ``sigma[i]``, ``lam[i]`` for ``i = 0..n``.  When ``clean_end`` is set
    the last point is clean data: ``alpha = 1``, ``sigma = 0``, ``lam = +inf``, ``t = nan``.
    """

    process: NoiseProcess
    t: Tensor
    alpha: Tensor
    sigma: Tensor
    lam: Tensor
    clean_end: bool

    @property
    def steps(self) -> int:
        return len(self.t) - 1

    @property
    def sigma_hat(self) -> Tensor:
        """EDM noise level ``sigma / alpha`` (0 at a clean end)."""
        return self.sigma / self.alpha

    def lands_clean(self, i: int) -> bool:
        """Whether step ``i`` (from point i to i+1) ends on clean data."""
        return self.clean_end and i == self.steps - 1

    def reversed(self) -> "Schedule":
        """The same points in the opposite order, from data to noise: a deterministic solver walking it
        integrates the probability-flow ODE backwards (DDIM inversion).  Needs a schedule without a
        clean end (an ODE cannot leave ``sigma = 0``)."""
        if self.clean_end:
            raise ValueError("a schedule with a clean end (sigma = 0) cannot be reversed; "
                             "build it with clean_end=False, ending at the process's t_min")
        return Schedule(self.process, self.t.flip(0), self.alpha.flip(0), self.sigma.flip(0), self.lam.flip(0), False)


def make_schedule(process: NoiseProcess, steps: int, grid: GridSpec | None = None, *,
                  clean_end: bool = True, solver: str | None = None, nfe: int | None = None,
                  **grid_options: float) -> Schedule:
    """Build the :class:`Schedule` for ``steps`` solver steps on ``grid`` (``solver`` and ``nfe`` choose
    the entry of a plan file).  A plan file entry's start, network times and options are not applied here: a
    teleported entry is refused (resolve it with :func:`fewstep.plan.make_plan`, which applies all of them)."""
    if _is_file(grid):
        entry = grid_entry(grid, process, solver, nfe, steps)
        if entry.teleport is not None:
            raise ValueError(f"the plan file's entry for {entry.solver} at nfe={entry.nfe} starts at a teleported time "
                             f"(t={entry.teleport:g}): resolve it with fewstep.make_plan (fewstep.sample applies it); "
                             f"use a built-in grid or another entry here")
    ts = make_grid(process, steps, grid, solver=solver, nfe=nfe, **grid_options)
    if not isinstance(grid, str) and steps != len(ts) - 1:
        raise ValueError(f"the explicit grid has {len(ts) - 1} steps but the solver needs {steps} for this NFE; "
                         f"pass {steps + 1} times")
    alpha, sigma, lam = process.alpha(ts), process.sigma(ts), process.lam(ts)
    if clean_end:
        ts, alpha, sigma, lam = ts.clone(), alpha.clone(), sigma.clone(), lam.clone()
        ts[-1], alpha[-1], sigma[-1], lam[-1] = math.nan, 1.0, 0.0, math.inf
    return Schedule(process, ts, alpha, sigma, lam, clean_end)


def _is_file(grid: GridSpec | None) -> bool:
    return isinstance(grid, (str, os.PathLike)) and str(grid) not in GRIDS and is_grid_file(grid)
