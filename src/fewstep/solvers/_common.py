"""Plumbing shared by every solver loop: per-sample noise, finiteness checks, callbacks."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..grids import Schedule

__all__ = ["Generator", "randn_like", "NonFiniteError", "step_done", "Callback"]

Generator = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[dict[str, Any]], None] | None


class NonFiniteError(FloatingPointError):
    """NaN or inf appeared in the sample during solving."""


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
    if not math.isfinite(float(x.sum())):
        t = float(schedule.t[i + 1])
        where = "clean data" if math.isnan(t) else f"t={t:.6g}"
        raise NonFiniteError(
            f"NaN or inf appeared at step {i + 1} of {schedule.steps} (from t={float(schedule.t[i]):.6g} to {where}); "
            "check the model, the grid's end points and the solver's options"
        )
    if callback is not None:
        callback({"i": i, "t": float(schedule.t[i + 1]), "x": x, "x0": x0})
