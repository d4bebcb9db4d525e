"""One builder that composes a sampler's denoiser: compiled network, feature cache, guidance.

``sample``, ``eval``, ``bench model`` and ``restore`` (and :class:`fewstep.metrics.sampling.SolverSampleFn`)
all build their denoiser here, so every command composes the same way and in the same order:

1. the model as loaded (float, quantized or pruned: a different *network* behind the same Denoiser);
   ``precision``: ``"bf16"`` evaluates that network under bf16 autocast (:func:`fewstep.precision.set_precision`);
2. ``compile``: ``torch.compile`` behind every network (:func:`fewstep.compiling.compile_denoiser`; in place);
3. ``cache``: a feature cache or step-aware model schedule (:mod:`fewstep.accel`), which sees the network's taps;
4. ``guidance``: classifier-free or classifier guidance (:mod:`fewstep.guidance`), outermost, so that one guided
   evaluation is one evaluation of the cached model on the doubled batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Guidance", "Composed", "compose_sampler"]


@dataclass(frozen=True)
class Guidance:
    """What guidance to apply: ``method`` ``"cfg"`` or ``"classifier"``, its ``scale``, optional ``interval``
    (``"lo,hi"`` in sigma/alpha), the noise-aware ``classifier`` (for ``"classifier"``) and its ``options``."""

    method: str
    scale: float
    interval: Any = None
    classifier: Any = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Composed:
    """The composed ``denoiser`` and, when a cache was asked for, the ``cache`` wrapper inside it (whose
    ``full_evals`` / ``cached_evals`` count what the evaluations really cost)."""

    denoiser: Any
    cache: Any = None
    cache_spec: Any = None


def compose_sampler(denoiser: Any, *, compile: bool = False, cache: Any = None,
                    guidance: Guidance | None = None, precision: str = "fp32") -> Composed:
    """``denoiser``'s network at ``precision`` and compiled (both in place), behind the feature cache ``cache`` (a
    spec such as ``"deepcache:3"`` or a parsed one; None: none) and the ``guidance`` (None: none), in that order."""
    from .accel import parse_cache
    from .precision import set_precision

    set_precision(denoiser, precision)
    if compile:
        from .compiling import compile_denoiser

        compile_denoiser(denoiser)
    spec = parse_cache(cache)
    cached = spec.apply(denoiser) if spec is not None else None
    den = cached if cached is not None else denoiser
    if guidance is not None:
        from .guidance import guide

        den = guide(den, guidance.method, guidance.scale, interval=guidance.interval, classifier=guidance.classifier,
                    **guidance.options)
    return Composed(den, cached, spec)
