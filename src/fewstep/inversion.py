"""Inversion of real images: DDIM (probability-flow ODE) inversion and edit-friendly DDPM inversion.

**DDIM inversion** (Song, Meng & Ermon 2021, sec. 4.3; Dhariwal & Nichol 2021, app. F) integrates the
probability-flow ODE ``dx/dt = f(x, t)`` from the data end ``t_min`` up to ``t_max``: the image is taken
as ``x`` at ``t_min`` and a deterministic solver walks the *reversed* schedule
(:meth:`fewstep.grids.Schedule.reversed`), so every fixed-NFE deterministic solver whose maths holds for
negative step sizes inverts without a line of its own.  Reconstruction samples forward from the inverted
noise with the same solver and grid, ending at ``t_min`` (no clean end); with an exact ODE solve the round
trip is the identity, and its error falls with the solver's order as the NFE grows.

**Edit-friendly DDPM inversion** (Huberman-Spiegelglas, Kulikov & Michaeli, CVPR 2024, sec. 3, eq. 5-6)
draws every ``x_{t_i} = alpha_i x0 + sigma_i eps_i`` *independently* from ``q(x_t | x0)`` and solves the
DDPM posterior step ``x_{i+1} = mu_i(x_i) + c_i z_i`` for the noise maps
``z_i = (x_{i+1} - mu_i(x_i)) / c_i``, where ``mu_i(x) = alpha_{i+1} x0_hat + sqrt(sigma_{i+1}^2 - c_i^2)
eps_hat`` is the DDIM eq. 12 mean with ``eta = 1`` and ``c_i = sigma_{i+1} sqrt(1 - e^{-2 h_i})`` (DDIM
eq. 16).  Running the sampler with these ``z_i`` from ``x_{t_0}`` reproduces the trajectory, hence the
image, to float precision; running it with another condition (class) edits the image, optionally from
step ``skip`` on (the paper's ``T_skip``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from .api import generators, make_plan, plan_solve, sample
from .context import bind
from .denoisers import DenoiserBase
from .grids import GridSpec, Schedule
from .solvers import available, get
from .solvers._common import Callback, Cond, Generator, randn_like, step_done
from .solvers.ddim import ddim_mean, ddim_step
from .latent import require_pixel_space

__all__ = ["ddim_invert", "ddim_reconstruct", "invertible_solvers", "check_invertible", "EditFriendly", "edit_friendly_invert",
           "edit_friendly_sample"]

#: Deterministic fixed-NFE solvers that cannot walk a reversed schedule, and why.
NOT_INVERTIBLE = {
    "dpm_v3": "its empirical model statistics and corrector are fitted to forward sampling "
              "(without statistics it is multistep DPM-Solver++: use dpm++2m or dpm++3m)",
    "dc_solver": "its compensation ratios are searched for forward sampling (without ratios it is unipc: use that)",
    "lms": "its Adams steps in sigma are unstable backwards at few steps, where sigma grows by large factors "
           "(RMSE 3e3 at 8 steps on a Gaussian)",
}
_NOT_ODE = "the Time-Shift sampler corrects the exposure bias of sampling, it is no ODE solver"


def _refusal(name: str) -> str | None:
    """Why solver ``name`` cannot invert, or ``None`` when it can."""
    spec = get(name)
    if spec.stochastic:
        return "it is stochastic (an SDE sampler has no deterministic inverse; use method edit-friendly)"
    if not spec.fixed_nfe:
        return "its step sizes adapt to a tolerance, so no fixed grid can be reversed"
    if spec.name.startswith("ts-"):
        return _NOT_ODE
    return NOT_INVERTIBLE.get(spec.name)


def invertible_solvers() -> list[str]:
    """The solvers that DDIM inversion accepts: deterministic, fixed-NFE, valid for negative steps."""
    return [name for name in available() if _refusal(name) is None]


def check_invertible(name: str) -> None:
    """Refuse a solver that cannot invert, naming those that can."""
    why = _refusal(name)
    if why is not None:
        raise ValueError(f"solver {get(name).name!r} cannot run the ODE backwards for DDIM inversion: {why}; "
                         f"solvers that can: {', '.join(invertible_solvers())}")


def _check_images(denoiser: DenoiserBase, x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    require_pixel_space(denoiser, "inversion")
    shape = denoiser.sample_shape
    if x.ndim < 2 or (shape is not None and tuple(x.shape[1:]) != tuple(shape)):
        want = "(batch, " + ", ".join(map(str, shape)) + ")" if shape is not None else "(batch, ...)"
        raise ValueError(f"{what} has shape {tuple(x.shape)} but the model takes {want}; "
                         f"resize the images or convert their channels to match")


def ddim_invert(denoiser: DenoiserBase, x0: Tensor, solver: str = "ddim", nfe: int = 50,
                grid: GridSpec | None = None, *, cond: Cond = None, callback: Callback = None,
                grad: bool = False, **options: Any) -> Tensor:
    """The noise ``x_T`` at ``t_max`` whose probability-flow ODE solution is ``x0`` (taken as ``x`` at ``t_min``).

    Runs ``solver`` with exactly ``nfe`` evaluations on the reversed grid of ``sample(..., clean_end=False)``
    (same ``grid`` and options), so :func:`ddim_reconstruct` with the same arguments walks the very same points
    back.  Refuses stochastic and adaptive solvers, naming those that can invert.
    """
    check_invertible(solver)
    _check_images(denoiser, x0, "x0")
    spec, schedule, den, kwargs = plan_solve(denoiser, solver, nfe, grid, clean_end=False, where="inversion", **options)
    back = schedule.reversed()
    if grad:
        return spec.fn(den, x0, back, callback=callback, cond=cond, **kwargs)
    with torch.inference_mode():
        x = spec.fn(den, x0, back, callback=callback, cond=cond, **kwargs)
    return x.clone()


def ddim_reconstruct(denoiser: DenoiserBase, x_T: Tensor, solver: str = "ddim", nfe: int = 50,
                     grid: GridSpec | None = None, *, cond: Cond = None, **options: Any) -> Tensor:
    """Sample from inverted noise back to ``t_min`` with the solver and grid of :func:`ddim_invert`.

    Pass the class used for inversion in ``cond`` to reconstruct, another class to edit.
    """
    check_invertible(solver)
    _check_images(denoiser, x_T, "x_T")
    return sample(denoiser, x_T, solver, nfe, grid, cond=cond, clean_end=False, **options)


# --- edit-friendly DDPM inversion ----------------------------------------------------------------------------------

@dataclass
class EditFriendly:
    """The result of :func:`edit_friendly_invert`.

    ``xs[i]`` is the sampled ``x`` at ``schedule.t[i]`` (``xs[-1]`` the image itself), ``zs[i]`` the noise map of
    step ``i`` (from ``t[i]`` to ``t[i+1]``), ``cond`` the conditioning they were computed with.
    """

    xs: Tensor
    zs: Tensor
    schedule: Schedule
    cond: Cond = None

    @property
    def steps(self) -> int:
        return self.schedule.steps


def edit_friendly_invert(denoiser: DenoiserBase, x0: Tensor, nfe: int = 50, grid: GridSpec | None = None, *,
                         cond: Cond = None, generator: Generator = None,
                         seeds: Sequence[int] | None = None) -> EditFriendly:
    """Edit-friendly DDPM inversion of images ``x0`` (Huberman-Spiegelglas et al. 2024, Alg. 1).

    ``nfe`` steps on ``grid`` ending at ``t_min`` (where the image stands, as in DDIM inversion); the noisy
    ``x_{t_i}`` are drawn independently with ``generator`` (or per-sample ``seeds``, so that a sample's maps
    do not depend on its batch).  Costs ``nfe`` evaluations.
    """
    _check_images(denoiser, x0, "x0")
    if seeds is not None:
        if generator is not None:
            raise ValueError("pass either generator or seeds, not both")
        generator = generators(seeds, x0.device)
    plan = make_plan(denoiser, "ddpm", nfe, grid, clean_end=False).require("edit-friendly inversion", net_times=False)
    schedule, steps = plan.schedule(denoiser.process), plan.steps
    a, s = schedule.alpha.tolist(), schedule.sigma.tolist()
    # Alg. 1 line 2: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps_t, eps_t independent; the last point is x0 itself.
    xs = [a[i] * x0 + s[i] * randn_like(x0, generator) for i in range(steps)] + [x0]
    model = bind(denoiser, schedule, cond)
    zs = []
    with torch.inference_mode():
        for i in range(steps):
            p = model.predict(xs[i], float(schedule.t[i]), i)
            mu, c = ddim_mean(p, schedule, i, 1.0)  # the DDPM posterior step's mean and noise scale
            zs.append((xs[i + 1] - mu) / c)  # Alg. 1 line 5
    return EditFriendly(torch.stack(xs).clone(), torch.stack(zs).clone(), schedule, cond)


def edit_friendly_sample(denoiser: DenoiserBase, inversion: EditFriendly, *, cond: Cond | str = "same",
                         skip: int = 0, callback: Callback = None) -> Tensor:
    """Run the DDPM sampler with the inversion's noise maps (Huberman-Spiegelglas et al. 2024, eq. 6).

    From ``xs[skip]`` through the remaining ``steps - skip`` steps: with the inversion's own ``cond`` ("same")
    this reconstructs the image to float precision; with another ``cond`` (e.g. another class) it edits it,
    keeping the structure the noise maps carry.  ``skip`` is the paper's ``T_skip`` in steps.
    """
    n = inversion.steps
    if not isinstance(skip, int) or not 0 <= skip < n:
        raise ValueError(f"skip must be an integer step in [0, {n - 1}] for an inversion of {n} steps, got {skip!r}")
    if isinstance(cond, str):
        if cond != "same":
            raise ValueError(f"cond must be a dict of conditioning keywords, None or 'same', got {cond!r}")
        cond = inversion.cond
    schedule = inversion.schedule
    model = bind(denoiser, schedule, cond)
    x = inversion.xs[skip]
    with torch.inference_mode():
        for i in range(skip, n):
            p = model.predict(x, float(schedule.t[i]), i)
            x = ddim_step(p, schedule, i, 1.0, noise=inversion.zs[i])
            step_done(i, schedule, x, p.x0, callback)
    return x.clone()
