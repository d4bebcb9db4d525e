"""TaylorSeer (Liu et al. 2025, "From Reusing to Forecasting: Accelerating Diffusion Models with
TaylorSeers", sec. 3.2-3.3).

Instead of reusing a block's output from the last full step, forecast it by a truncated Taylor
series in the step index around the last full step ``p0`` (eq. 8):

    F(p) ~= sum_{i=0}^{m} d_i (p - p0)^i / i!,

with the derivatives estimated by finite differences over the full steps (eq. 6-7), updated at
each full step at ``p`` from the previous one at ``p'``:

    d_0 = F(p),    d_{i+1} = (d_i(p) - d_i(p')) / (p - p').

With full steps every ``N`` steps this is the paper's ``Delta^i F / N^i``; dividing by the actual
spacing also serves non-uniform key steps and stage evaluations (a Heun correction sits at
``i + 1``, a DPM-Solver midpoint between steps: see ``_base._position``).  The paper works in the
step index, and so does this: a grid's times are not evenly spaced, its steps are.  Order 0 is
plain reuse; until a trajectory has seen ``m + 1`` full steps the order is what they allow.

What is forecast: ``taps`` (default ``("deep", "block.*")``): the UNet's ``deep`` feature (the
branch DeepCache reuses) or every DiT block.  A DiT block is residual (``h + attn + mlp``): its
*increment* ``block(h) - h`` is forecast and added to the current input, as the paper forecasts
the attention and MLP outputs, so the current ``x_t`` still flows through the residual stream.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Callable, Sequence

from ..context import StepContext
from ..denoisers import DenoiserBase
from ._base import Evaluation, FeatureCache

__all__ = ["TaylorSeer", "taylorseer", "taylor_update", "taylor_forecast"]


def taylor_update(previous: tuple[float, list[Any]] | None, position: float, value: Any,
                  order: int) -> tuple[float, list[Any]]:
    """The derivative estimates ``[d_0, .., d_m]`` after a full evaluation at ``position`` (eq. 6-7)."""
    if previous is None:
        return position, [value]
    p_prev, d_prev = previous
    dp = position - p_prev
    if abs(dp) < 1e-9:  # two full evaluations at one position (interval 1 with a two-stage solver)
        return position, [value, *d_prev[1:]]
    d = [value]
    for i in range(min(order, len(d_prev))):
        d.append((d[i] - d_prev[i]) / dp)
    return position, d


def taylor_forecast(derivs: tuple[float, list[Any]], position: float) -> Any:
    """``sum_i d_i (position - p0)^i / i!`` (eq. 8)."""
    p0, d = derivs
    k = position - p0
    out = d[0]
    for i in range(1, len(d)):
        out = out + d[i] * (k ** i / math.factorial(i))
    return out


class TaylorSeer(FeatureCache):
    """Forecast the tapped blocks' outputs between full steps by a Taylor series of order ``order``."""

    method = "taylorseer"

    def __init__(self, inner: DenoiserBase, interval: int = 3, order: int = 1, taps: Sequence[str] = ("deep", "block.*"),
                 *, nonuniform: bool = False, center: float = 0.45, power: float = 1.4):
        super().__init__(inner, interval, nonuniform=nonuniform, center=center, power=power)
        if int(order) != order or not 0 <= order <= 4:
            raise ValueError(f"taylorseer order must be an integer from 0 to 4, got {order}")
        self.order = int(order)
        self.taps = tuple(taps) if not isinstance(taps, str) else tuple(taps.split("+"))
        if not self.taps:
            raise ValueError("taylorseer needs at least one tap name to forecast, e.g. taps=('deep',)")

    @property
    def options(self) -> dict[str, Any]:
        return {"interval": self.interval, "order": self.order, "taps": "+".join(self.taps),
                **{k: v for k, v in super().options.items() if k != "interval"}}

    def _forecasts(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.taps)

    def handle(self, ev: Evaluation, ctx: StepContext, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        if name == "down.0" and self._forecasts("deep"):  # only the deep branch reads it (see deepcache)
            if ev.full or name not in ev.cache:
                ev.cache[name] = ev.compute(ctx, name, fn, *args)
            return ev.cache[name]
        if not self._forecasts(name):
            return ev.compute(ctx, name, fn, *args)
        residual = name.startswith("block.")
        key = ("taylor", name)
        if ev.full or key not in ev.cache:
            out = ev.compute(ctx, name, fn, *args)
            value = out - args[0] if residual else out
            ev.cache[key] = taylor_update(ev.cache.get(key), ev.position, value, self.order)
            return out
        forecast = taylor_forecast(ev.cache[key], ev.position)
        return args[0] + forecast if residual else forecast

    def check(self, cache: dict[str, Any]) -> None:
        if not any(isinstance(k, tuple) and k[0] == "taylor" for k in cache):
            raise ValueError(f"taylorseer found none of the block taps {list(self.taps)} in this network "
                             f"(fewstep's UNet taps 'deep', 'mid', 'down.k', 'up.k'; its DiT 'block.k')")


def taylorseer(denoiser: DenoiserBase, interval: int = 3, order: int = 1, taps: Sequence[str] = ("deep", "block.*"),
               *, nonuniform: bool = False, center: float = 0.45, power: float = 1.4) -> TaylorSeer:
    """``denoiser`` with TaylorSeer: full network every ``interval`` steps, Taylor forecasts of ``taps`` between."""
    return TaylorSeer(denoiser, interval, order, taps, nonuniform=nonuniform, center=center, power=power)
