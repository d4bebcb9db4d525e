"""Strict training configs: every section refuses unknown keys and values of the wrong type.

A typo ("traning", "resolutoin") or a string where a number belongs is a :class:`ValueError`
naming the key path and what is valid, never a silent fall-back to the defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from typing import Any, Iterable, Mapping, TypeVar

from .. import processes as P
from ..nets import NET_KINDS, WRAPPER_KEYS

__all__ = ["CHECKPOINT_KEYS", "check_keys", "check_type", "settings_from_dict", "check_network", "check_process",
           "check_data", "check_latent", "check_positive", "check_non_negative"]

#: Keys a checkpoint's ``config.json`` adds to the training config; accepted (and ignored) at the top level.
CHECKPOINT_KEYS = ("format", "format_version", "step", "images_seen", "provenance")

DATA_FIELDS: dict[str, Any] = {"spec": str | None, "resolution": int, "channels": int}

#: The ``latent`` section (:mod:`fewstep.latent`): the autoencoder run, its scale (fitted when absent) and, in
#: checkpoints, the autoencoder's network.
LATENT_FIELDS: dict[str, Any] = {"autoencoder": str, "scale": float | None, "network": dict}

T = TypeVar("T")


def check_keys(section: Any, valid: Iterable[str], path: str) -> None:
    """Refuse a ``section`` that is not a dict or holds keys outside ``valid``."""
    if not isinstance(section, Mapping):
        raise ValueError(f"config {path} must be a JSON object, got {_show(section)}")
    valid = sorted(valid)
    unknown = sorted(str(k) for k in section if k not in valid)
    if unknown:
        names = ", ".join(f"{path}.{k}" if path else k for k in unknown)
        close = {k: difflib.get_close_matches(k, valid, n=1) for k in unknown}
        hint = "".join(f"; did you mean {m[0]!r} for {k!r}?" for k, m in close.items() if m)
        raise ValueError(f"unknown config key(s) {names}; valid keys{' in ' + path if path else ''}: "
                         f"{', '.join(valid)}{hint}")


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if origin is list:
        args = typing.get_args(annotation)
        return f"a list of {_describe(args[0])}" if args else "a list"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _matches(value: Any, annotation: Any) -> bool:
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(annotation))
    if origin is list:
        args = typing.get_args(annotation)
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value) if args else isinstance(value, list)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:  # JSON writes 5.0 as 5 at times: ints are valid floats
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # an annotation this checker does not know (e.g. a Tensor): leave it to the consumer


def check_type(value: Any, annotation: Any, path: str) -> None:
    """Refuse ``value`` unless it is of the JSON type ``annotation`` describes (bool is not an int)."""
    if not _matches(value, annotation):
        raise ValueError(f"config {path} must be {_describe(annotation)}, got {_show(value)}")


def settings_from_dict(cls: type[T], cfg: Any, path: str, exclude: Iterable[str] = ()) -> T:
    """Build the dataclass ``cls`` from ``cfg``: unknown keys and wrongly typed values are refused."""
    fields = {f.name for f in dataclasses.fields(cls)} - set(exclude)  # type: ignore[arg-type]
    check_keys(cfg, fields, path)
    hints = typing.get_type_hints(cls)
    for key, value in cfg.items():
        check_type(value, hints[key], f"{path}.{key}")
    return cls(**cfg)


def section_config(cls: type[T], section: Any, path: str, kind: str) -> T:
    """The checked ``cls`` of a network section such as ``classifier`` or ``encoder``: a JSON object whose
    optional ``kind`` must be ``kind``, its other keys strict (:func:`settings_from_dict`), then ``cls.check()``."""
    if not isinstance(section, Mapping):
        raise ValueError(f"config {path} must be a JSON object, got {section!r}")
    if section.get("kind", kind) != kind:
        raise ValueError(f"config {path}.kind must be {kind}, got {section['kind']!r}")
    cfg = settings_from_dict(cls, {k: v for k, v in section.items() if k != "kind"}, path)
    cfg.check()
    return cfg


def check_positive(path: str, value: float | int | None, *, allow_zero: bool = False) -> None:
    """Refuse a value below zero (or at zero unless ``allow_zero``); None passes."""
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"config {path} must be {'non-negative' if allow_zero else 'positive'}, got {value}")


def check_non_negative(path: str, value: float | int | None) -> None:
    check_positive(path, value, allow_zero=True)


def check_network(cfg: Any, path: str = "network") -> None:
    """Keys and types of a :func:`fewstep.nets.build_net` config."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"config {path} must be a JSON object, got {_show(cfg)}")
    kind = cfg.get("kind")
    if kind not in NET_KINDS:
        raise ValueError(f"config {path}.kind must be one of {', '.join(NET_KINDS)}, got {kind!r}")
    for key, annotation in WRAPPER_KEYS.items():
        if key in cfg:
            check_type(cfg[key], annotation, f"{path}.{key}")
    wrapper_free = {k: v for k, v in cfg.items() if k != "kind" and k not in WRAPPER_KEYS}
    try:
        settings_from_dict(NET_KINDS[kind][1], wrapper_free, path)
    except ValueError as err:  # name the wrapper keys among the valid ones
        if "unknown config key" in str(err):
            raise ValueError(f"{err}; also valid: {', '.join(f'{path}.{k}' for k in WRAPPER_KEYS)}") from None
        raise


def _parameters(fn: Any, skip: Iterable[str] = ()) -> dict[str, Any]:
    sig = inspect.signature(fn, eval_str=True)
    return {name: p.annotation for name, p in sig.parameters.items()
            if name not in ("self", "cls", *skip) and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _process_fields(cfg: Mapping[str, Any], path: str) -> dict[str, Any]:
    kind = cfg.get("kind")
    if kind == "vp_discrete":
        factories = {"linear": P.VPDiscrete.linear, "scaled_linear": P.VPDiscrete.scaled_linear,
                     "cosine": P.VPDiscrete.cosine}
        schedule = cfg.get("schedule")
        if schedule == "custom":
            return {"schedule": str, "betas": list[float]}
        if schedule not in factories:
            raise ValueError(f"config {path}.schedule must be one of {', '.join(factories)}, custom; got {schedule!r}")
        return {"schedule": str, **_parameters(factories[schedule])}
    kinds = P._KINDS
    if kind not in kinds:
        raise ValueError(f"config {path}.kind must be one of vp_discrete, {', '.join(kinds)}; got {kind!r}")
    return _parameters(kinds[kind].__init__)


def check_process(cfg: Any, path: str = "process") -> None:
    """Keys and types of a :func:`fewstep.processes.process_from_config` config."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"config {path} must be a JSON object, got {_show(cfg)}")
    fields = _process_fields(cfg, path)
    check_keys(cfg, ["kind", *fields], path)
    for key, value in cfg.items():
        if key != "kind":
            check_type(value, fields[key], f"{path}.{key}")


def check_latent(cfg: Any, path: str = "latent") -> None:
    """The ``latent`` section: ``autoencoder`` (a run of the autoencoder objective), optional ``scale`` > 0."""
    check_keys(cfg, LATENT_FIELDS, path)
    for key, value in cfg.items():
        check_type(value, LATENT_FIELDS[key], f"{path}.{key}")
    if not cfg.get("autoencoder"):
        raise ValueError(f"config {path}.autoencoder is required: a run of `fewstep train --config fashion-autoencoder`")
    if cfg.get("scale") is not None:
        check_positive(f"{path}.scale", cfg["scale"])


def check_data(cfg: Any, path: str = "data") -> None:
    """The ``data`` section: ``spec`` (what ``--data`` takes), ``resolution``, ``channels``."""
    check_keys(cfg, DATA_FIELDS, path)
    for key, value in cfg.items():
        check_type(value, DATA_FIELDS[key], f"{path}.{key}")
    for key in ("resolution", "channels"):
        if key in cfg:
            check_positive(f"{path}.{key}", cfg[key])
