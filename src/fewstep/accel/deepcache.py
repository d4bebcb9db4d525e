"""DeepCache (Ma et al. 2024, "DeepCache: Accelerating Diffusion Models for Free", sec. 3.2-3.3).

A UNet's high-level features change slowly along the sampling trajectory.  On a key step the
network runs fully and the output of its deep branch is cached; on the other steps only the
shallow branch runs and the deep branch's output is taken from the cache (sec. 3.2, eq. 5):
``out = U_1(concat(cached deep feature, D_1 skip))``.  Key steps are every ``interval``-th step
(the paper's uniform 1:N strategy) or, with ``nonuniform=True``, denser around ``center``
(non-uniform 1:N, sec. 3.3).

fewstep's UNet taps ``deep`` (everything between its first encoder group ``down.0`` and its last
decoder group): a cached evaluation returns the cached ``deep`` feature.  ``down.0``'s output feeds
only the deep branch, so a cached evaluation skips it too (the cached value stands in): what runs
is the input convolution, the last decoder group and the output head.
"""

from __future__ import annotations

from typing import Any, Callable

from ..context import StepContext
from ..denoisers import DenoiserBase
from ._base import Evaluation, FeatureCache

__all__ = ["DeepCache", "deepcache"]


class DeepCache(FeatureCache):
    """Reuse the UNet's ``deep`` feature between key steps (see the module docstring)."""

    method = "deepcache"

    def __init__(self, inner: DenoiserBase, interval: int = 3, *, nonuniform: bool = False, center: float = 0.45,
                 power: float = 1.4):
        super().__init__(inner, interval, nonuniform=nonuniform, center=center, power=power)

    def handle(self, ev: Evaluation, ctx: StepContext, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        if name not in ("deep", "down.0"):
            return ev.compute(ctx, name, fn, *args)
        if ev.full or name not in ev.cache:
            ev.cache[name] = ev.compute(ctx, name, fn, *args)
        return ev.cache[name]

    def check(self, cache: dict[str, Any]) -> None:
        if "deep" not in cache:
            raise ValueError("deepcache needs a network with a 'deep' block tap (fewstep's UNet has one); "
                             "this network has none: use taylorseer for a DiT")


def deepcache(denoiser: DenoiserBase, interval: int = 3, *, nonuniform: bool = False, center: float = 0.45,
              power: float = 1.4) -> DeepCache:
    """``denoiser`` with DeepCache: full UNet every ``interval`` steps, shallow branch in between."""
    return DeepCache(denoiser, interval, nonuniform=nonuniform, center=center, power=power)
