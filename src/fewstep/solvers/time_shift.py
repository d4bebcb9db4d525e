"""The Time-Shift sampler (Li et al. 2024, Alleviating Exposure Bias in Diffusion Models through Sampling with
Shifted Time Steps, ICLR; TS-DDIM/TS-DDPM, Algorithms 1-2) as a wrapper of the denoiser, usable by any solver.

After a step lands on the planned time ``t_i`` above the cutoff, each sample's measured variance ``v = Var(x)``
(over its elements) picks the time the network is evaluated at, within a window around ``t_i``:

    t_s = argmin_{tau in [t_i - w/2, t_i + w/2]} | v - (alpha(tau)^2 v0 + sigma(tau)^2) |

The paper's criterion is ``|v - (1 - abar_tau)|``: ``v0 = 0`` (``data_var="ignore"``), with ``1 - abar = sigma^2``
for a VP process.  ``v0`` may instead be the variance of the sample's last data prediction (``"predicted"``) or a
number.  Only the network's time changes: the solver keeps its coefficients on the planned grid, so multistep
history stays on shared grid points and every solver is reused unchanged (with DDIM this is the paper's TS-DDIM:
``x_{i+1} = alpha_{i+1} x0(x, t_s) + sigma_{i+1} eps(x, t_s)``).  ``window`` and ``cutoff`` are fractions of the
process's time range ``t_max - t_min``.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import Tensor

from ..context import StepContext
from ..denoisers import DenoiserBase, DenoiserWrapper, Prediction
from ..processes import NoiseProcess
from .registry import SolverSpec, register, specs

__all__ = ["TimeShift", "shifted_times", "TS_BASES", "DEFAULT_WINDOW", "DEFAULT_CUTOFF", "DEFAULT_DATA_VAR"]

#: Defaults chosen by measurement (docs/solvers.md, "Time-Shift sampler").
DEFAULT_WINDOW = 0.05
DEFAULT_CUTOFF = 0.6
DEFAULT_DATA_VAR: str | float = "ignore"
_CANDIDATES = 257  # times tried per window: the argmin's resolution is window / 256


def shifted_times(process: NoiseProcess, x: Tensor, t: float, window: float, data_var: float | Tensor = 0.0) -> Tensor:
    """Per sample, the time in ``[t - window/2, t + window/2]`` (clipped to the process's range) whose marginal
    variance ``alpha^2 data_var + sigma^2`` is closest to the sample's variance; float64, shape ``(batch,)``."""
    v = x.reshape(x.shape[0], -1).to(torch.float64).var(dim=1)
    lo, hi = max(t - window / 2, process.t_min), min(t + window / 2, process.t_max)
    cand = torch.linspace(lo, hi, _CANDIDATES, dtype=torch.float64, device=x.device)
    a2, s2 = process.alpha(cand).to(x.device) ** 2, process.sigma(cand).to(x.device) ** 2
    v0 = torch.as_tensor(data_var, dtype=torch.float64, device=x.device).reshape(-1, 1)
    marginal = a2.reshape(1, -1) * v0 + s2.reshape(1, -1)
    return cand[(marginal - v.reshape(-1, 1)).abs().argmin(dim=1)]


class TimeShift(DenoiserWrapper):
    """Evaluate the inner denoiser at each sample's variance-matched time (see the module docstring).

    Shifts only a step's main evaluation (stage 0) after the first step, while the planned time lies above
    ``cutoff``; everything else passes through unchanged, so ``window=0`` is the inner denoiser exactly.
    Per-trajectory data (the last data prediction's variance) lives in the solve's ``ctx.state``.
    """

    def __init__(self, inner: DenoiserBase, window: float = DEFAULT_WINDOW, cutoff: float = DEFAULT_CUTOFF,
                 data_var: str | float = DEFAULT_DATA_VAR):
        super().__init__(inner)
        if not (window >= 0 and 0 <= cutoff <= 1):
            raise ValueError(f"time shift: window must be >= 0 and cutoff in [0, 1] (fractions of the time range), "
                             f"got window={window}, cutoff={cutoff}")
        if not (isinstance(data_var, (int, float)) or data_var in ("ignore", "predicted")):
            raise ValueError(f"time shift: data_var must be 'ignore', 'predicted' or a number, got {data_var!r}")
        self.window, self.cutoff, self.data_var = float(window), float(cutoff), data_var

    def predict(self, x: Tensor, t: float | Tensor, *, ctx: StepContext | None = None, **cond: Any) -> Prediction:
        if self._shifts(t, ctx):
            proc = self.process
            span = proc.t_max - proc.t_min
            v0 = ctx.state.get("ts_x0_var", 0.0) if self.data_var == "predicted" else (
                0.0 if self.data_var == "ignore" else float(self.data_var))
            t = shifted_times(proc, x, float(t), self.window * span, v0)
        p = self.inner.predict(x, t, ctx=ctx, **cond)
        if ctx is not None and ctx.stage == 0 and self.data_var == "predicted":
            ctx.state["ts_x0_var"] = p.x0.reshape(x.shape[0], -1).to(torch.float64).var(dim=1)
        return p

    def _shifts(self, t: float | Tensor, ctx: StepContext | None) -> bool:
        if ctx is None or ctx.stage != 0 or ctx.step == 0 or self.window == 0 or isinstance(t, Tensor):
            return False
        proc = self.process
        return (float(t) - proc.t_min) / (proc.t_max - proc.t_min) > self.cutoff


def _time_shifted(spec: SolverSpec):
    """``ts-<name>``: ``spec``'s solver run on the :class:`TimeShift`-wrapped denoiser, with its options plus
    ``window``, ``cutoff`` and ``data_var``."""
    base = spec.fn

    def solve(denoiser: DenoiserBase, x: Tensor, schedule, *, window: float = DEFAULT_WINDOW,
              cutoff: float = DEFAULT_CUTOFF, data_var: str | float = DEFAULT_DATA_VAR, **options: Any) -> Tensor:
        return base(TimeShift(denoiser, window, cutoff, data_var), x, schedule, **options)

    sig = inspect.signature(base)
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d)
             for n, d in (("window", DEFAULT_WINDOW), ("cutoff", DEFAULT_CUTOFF), ("data_var", DEFAULT_DATA_VAR))]
    solve.__signature__ = sig.replace(parameters=list(sig.parameters.values()) + extra)  # type: ignore[attr-defined]
    solve.__name__ = solve.__qualname__ = f"ts_{base.__name__}"
    solve.__doc__ = f"{spec.name} with the Time-Shift sampler (Li et al. 2024): see fewstep.solvers.time_shift."
    return solve


#: The solvers given a registered ``ts-`` form: the paper's DDIM and DDPM and the best one-evaluation-per-step
#: solvers.  ``TimeShift`` wraps any denoiser, so any other solver can use it directly.  Multi-stage solvers are left
#: out (their intermediate points lie between grid points), and so is DC-Solver (its ratios are searched unshifted).
TS_BASES = ("ddim", "ddpm", "dpm++2m", "unipc", "ipndm")


def _register_all() -> None:
    """Register ``ts-<name>`` for each of :data:`TS_BASES`."""
    for spec in specs():
        if spec.name in TS_BASES:
            register(f"ts-{spec.name}", order=spec.order, stochastic=spec.stochastic, nfe_per_step=1,
                     min_nfe=spec.min_nfe, plan=spec.plan, aliases=tuple(f"ts-{a}" for a in spec.aliases),
                     ranges={**spec.ranges, "window": (0, 1), "cutoff": (0, 1), "data_var": (0, math.inf, True, False)},
                     paper=f"Li et al. 2024, Time-Shift sampler (TS-DPM) around {spec.name}")(_time_shifted(spec))


_register_all()
