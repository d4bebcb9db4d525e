"""Plumbing shared by every solver loop: per-sample noise, finiteness checks, callbacks."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..grids import Schedule

__all__ = ["Generator", "Cond", "randn_like", "NonFiniteError", "DivergedError", "step_done", "Callback", "multistep_order", "two_stage_plan"]

Generator = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[dict[str, Any]], None] | None
#: Conditioning passed to every network call (e.g. ``{"class_labels": labels}``).
Cond = dict[str, Any] | None


class NonFiniteError(FloatingPointError):
    """NaN or inf appeared in the sample during solving."""


class DivergedError(ValueError):
    """A sampler produced NaN or infinite samples (what evaluation and the near-exact reference report)."""


def randn_like(x: Tensor, generator: Generator = None) -> Tensor:
    """Standard normal noise shaped like ``x``.

    With a list of generators (one per sample) sample ``i`` draws only from ``generator[i]``,
    so its noise does not depend on the batch it is in.
    """
    if generator is None:
        return torch.randn_like(x)
    if isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
    gens = list(generator)
    if len(gens) != x.shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {x.shape[0]}; pass one per sample")
    return torch.stack([
        torch.randn(x.shape[1:], generator=g, device=g.device, dtype=x.dtype) for g in gens
    ]).to(x.device)


def step_done(i: int, schedule: Schedule, x: Tensor, x0: Tensor | None, callback: Callback) -> None:
    """Stop with the step and time if ``x`` went non-finite; then call ``callback``.

    One reduction (the sum is NaN or inf exactly when an element is, or when values have grown
    past ~1e33, a divergence too) is several times cheaper than an element-wise ``isfinite``.
    """
    if not math.isfinite(float(x.detach().sum())):
        t = float(schedule.t[i + 1])
        where = "clean data" if math.isnan(t) else f"t={t:.6g}"
        raise NonFiniteError(
            f"NaN or inf appeared at step {i + 1} of {schedule.steps} (from t={float(schedule.t[i]):.6g} to {where}); "
            "check the model, the grid's end points and the solver's options"
        )
    if callback is not None:
        callback({"i": i, "t": float(schedule.t[i + 1]), "x": x, "x0": x0})


def multistep_order(i: int, schedule: Schedule, order: int, *, lower_order_final: bool = True,
                    final_rule: str = "dpm") -> int:
    """The order of step ``i`` of a multistep solver: warm-up, then ``order``, then the final steps.

    Warm-up: step ``i`` has ``i`` past values, so at most order ``i + 1`` (every multistep paper).  A step onto
    clean data (``h = inf``) is first order: higher terms are degenerate there.  ``lower_order_final`` (DPM-Solver++
    and diffusers): ``final_rule="dpm"`` lowers the last two steps to orders 1 and 2 on grids of fewer than 15
    steps; ``"unipc"`` caps step ``i`` at ``steps - i`` (UniPC's reference code).
    """
    n = schedule.steps
    o = min(order, i + 1)
    if schedule.lands_clean(i):
        return 1
    if lower_order_final:
        if final_rule == "unipc":
            o = min(o, n - i)
        elif n < 15:
            o = min(o, 1 if i == n - 1 else 2 if i == n - 2 else o)
    return o


def two_stage_plan(key: str) -> Callable[[int, bool], tuple[int, dict[str, Any]]]:
    """Plan for solvers whose steps cost 2 evaluations (1 for first-order steps); a clean last step is first order.

    ``steps = nfe // 2 + 1`` (clean end) or ``ceil(nfe / 2)``; the first ``nfe - steps`` steps are two-stage.
    """

    def plan(nfe: int, clean_end: bool) -> tuple[int, dict[str, Any]]:
        steps = nfe // 2 + 1 if clean_end else (nfe + 1) // 2
        return steps, {key: nfe - steps}

    return plan
