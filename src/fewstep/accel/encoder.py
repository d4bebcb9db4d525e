"""Encoder propagation (Li et al. 2024, "Faster Diffusion: Rethinking the Role of the Encoder for
Diffusion Model Inference", sec. 3.2-3.3).

A UNet's encoder features change little between adjacent steps while its decoder features change
a lot.  On a key step the whole UNet runs and the encoder's outputs are cached: the input
convolution, every encoder group (the skip connections) and the middle block (the decoder's
input), as the paper's reference code does.  On the other steps the encoder is skipped: the
decoder runs on the cached features with the current noise level's embedding (sec. 3.2, fig. 4c).
Key steps are uniform (every ``interval``-th step) or, with ``nonuniform=True``, denser at the
start (``center=0``; the paper's non-uniform key steps, sec. 3.3).

Not implemented: the paper's parallel decoding of several non-key steps in one batch (a solver
needs each step's output before the next step's input) and its prior noise injection (a change
of the sampler, not of the network).

fewstep's UNet taps: ``in`` (the input convolution), ``down.k``, ``mid`` are the encoder; ``up.k``
(inside ``deep``) and the last decoder group run every step.
"""

from __future__ import annotations

from typing import Any, Callable

from ..context import StepContext
from ..denoisers import DenoiserBase
from ._base import Evaluation, FeatureCache

__all__ = ["EncoderPropagation", "encoder_propagation", "is_encoder_tap"]


def is_encoder_tap(name: str) -> bool:
    """Whether a UNet tap belongs to the encoder side that encoder propagation reuses."""
    return name in ("in", "mid") or name.startswith("down.")


class EncoderPropagation(FeatureCache):
    """Reuse the UNet's encoder features between key steps; the decoder runs every step."""

    method = "encoder"

    def __init__(self, inner: DenoiserBase, interval: int = 2, *, nonuniform: bool = False, center: float = 0.0,
                 power: float = 1.4):
        super().__init__(inner, interval, nonuniform=nonuniform, center=center, power=power)

    def handle(self, ev: Evaluation, ctx: StepContext, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        if not is_encoder_tap(name):
            return ev.compute(ctx, name, fn, *args)
        if ev.full or name not in ev.cache:
            ev.cache[name] = ev.compute(ctx, name, fn, *args)
        return ev.cache[name]

    def check(self, cache: dict[str, Any]) -> None:
        if not {"in", "mid"} <= set(cache):
            raise ValueError("encoder propagation needs a UNet with 'in', 'down.k' and 'mid' block taps "
                             "(fewstep's UNet has them); this network has none")


def encoder_propagation(denoiser: DenoiserBase, interval: int = 2, *, nonuniform: bool = False, center: float = 0.0,
                        power: float = 1.4) -> EncoderPropagation:
    """``denoiser`` with Faster Diffusion's encoder propagation: encoder every ``interval`` steps, decoder always."""
    return EncoderPropagation(denoiser, interval, nonuniform=nonuniform, center=center, power=power)
