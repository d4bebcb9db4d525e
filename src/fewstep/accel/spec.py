"""Cache spec strings: ``"deepcache:3"``, ``"encoder:interval=2"``, ``"taylorseer:interval=4,order=2"``,
``"gaussian:steps=3"`` (a step-aware model schedule, :mod:`.stepaware`).

``METHOD[:OPTIONS]`` where OPTIONS is ``value`` (the first option: ``interval``, or ``steps``) or comma-separated
``name=value`` pairs; list values join with ``+`` (``taps=deep+mid``).  ``none`` means no cache.
A spec is parsed once, checked against the method's options, and applied with :func:`apply_cache`.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any

from ..denoisers import DenoiserBase
from ._base import FeatureCache
from .deepcache import DeepCache
from .encoder import EncoderPropagation
from .stepaware import GaussianSteps, StepSchedule
from .taylorseer import TaylorSeer

__all__ = ["CACHE_METHODS", "CacheSpec", "parse_cache", "apply_cache", "cache_options"]

CACHE_METHODS: dict[str, type[FeatureCache] | type[StepSchedule]] = {
    "deepcache": DeepCache, "encoder": EncoderPropagation, "taylorseer": TaylorSeer, "gaussian": GaussianSteps}


def cache_options(method: str) -> dict[str, Any]:
    """The options of a caching method and their defaults."""
    sig = inspect.signature(CACHE_METHODS[method].__init__)
    return {name: p.default for name, p in sig.parameters.items() if name not in ("self", "inner")}


def _listing(method: str) -> str:
    return ", ".join(f"{k}={_show(v)}" for k, v in cache_options(method).items())


def _valid() -> str:
    return "; ".join(f"{m} ({_listing(m)})" for m in CACHE_METHODS)


def _hint(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _show(v: Any) -> str:
    return "+".join(v) if isinstance(v, (tuple, list)) else str(v)


def _convert(method: str, name: str, text: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, (tuple, list)):
            return tuple(v for v in text.split("+") if v)
    except ValueError:
        pass
    else:
        return text
    raise ValueError(f"cache spec: {method} option {name}={text!r} is not a valid {type(default).__name__} "
                     f"(default {_show(default)})")


@dataclass(frozen=True)
class CacheSpec:
    """A parsed cache spec: ``method`` and its ``options`` (only those given)."""

    method: str
    options: dict[str, Any] = field(default_factory=dict)

    def apply(self, denoiser: DenoiserBase) -> FeatureCache | StepSchedule:
        return CACHE_METHODS[self.method](denoiser, **self.options)

    def __str__(self) -> str:
        opts = ",".join(f"{k}={_show(v)}" for k, v in self.options.items())
        return f"{self.method}:{opts}" if opts else self.method


def parse_cache(spec: str | CacheSpec | None) -> CacheSpec | None:
    """Parse ``"method[:options]"`` (None, "" or "none": no cache); one clear error lists what is valid."""
    if spec is None or isinstance(spec, CacheSpec):
        return spec
    text = spec.strip()
    if text.lower() in ("", "none", "off"):
        return None
    method, _, rest = text.partition(":")
    method = method.strip().lower()
    if method not in CACHE_METHODS:
        raise ValueError(f"cache spec {spec!r}: unknown method {method!r}{_hint(method, CACHE_METHODS)}; "
                         f"valid methods and options: {_valid()}")
    defaults = cache_options(method)
    options: dict[str, Any] = {}
    for i, part in enumerate(p.strip() for p in rest.split(",") if p.strip()):
        name, eq, value = part.partition("=")
        if not eq:
            if i > 0:
                raise ValueError(f"cache spec {spec!r}: {part!r} needs a name (name=value); "
                                 f"valid options: {_listing(method)}")
            name, value = next(iter(defaults)), part
        name = name.strip()
        if name not in defaults:
            raise ValueError(f"cache spec {spec!r}: {method} has no option {name!r}{_hint(name, defaults)}; "
                             f"valid options: {_listing(method)}")
        options[name] = _convert(method, name, value.strip(), defaults[name])
    parsed = CacheSpec(method, options)
    try:
        parsed.apply(_Probe())  # option values are checked now, not at the first sample
    except ValueError as err:
        raise ValueError(f"cache spec {spec!r}: {err}") from None
    return parsed


class _Probe(DenoiserBase):
    """A stand-in denoiser that lets a spec's options be validated without a model."""


def apply_cache(denoiser: DenoiserBase, spec: str | CacheSpec | None) -> DenoiserBase:
    """``denoiser`` wrapped by the cache that ``spec`` names (unchanged for None / "none")."""
    parsed = parse_cache(spec)
    return denoiser if parsed is None else parsed.apply(denoiser)
