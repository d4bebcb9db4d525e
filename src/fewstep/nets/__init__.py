"""Denoising networks that see only ``(x, noise_level, class_labels)``; built from a JSON config."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from .coords import COORD_CHANNELS, CoordinateInput
from .dit import DiT, DiTConfig
from .masked import MaskUNet, MaskUNetConfig
from .unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig", "DiT", "DiTConfig", "MaskUNet", "MaskUNetConfig", "CoordinateInput", "build_net",
           "net_config", "NET_KINDS", "WRAPPER_KEYS"]

NET_KINDS = {"unet": (UNet, UNetConfig), "dit": (DiT, DiTConfig), "maskunet": (MaskUNet, MaskUNetConfig)}

#: Keys of a network config that wrap the network rather than set its hyper-parameters, and their types:
#: ``coordinates`` adds Patch Diffusion's two coordinate channels (:class:`~fewstep.nets.coords.CoordinateInput`).
WRAPPER_KEYS: dict[str, type] = {"coordinates": bool}


def build_net(config: dict[str, Any]) -> nn.Module:
    """Build a network from ``{"kind": "unet"|"dit", ...hyper-parameters}`` (as :func:`net_config` writes).

    ``"coordinates": true`` wraps it in :class:`~fewstep.nets.coords.CoordinateInput` (the inner network takes
    ``in_channels + 2`` channels and returns ``out_channels or in_channels``).
    """
    if not isinstance(config, dict):
        raise TypeError(f"a network config must be a dict, got {type(config).__name__}")
    cfg = dict(config)
    coordinates = cfg.pop("coordinates", False)
    kind = cfg.pop("kind", None)
    if kind not in NET_KINDS:
        raise ValueError(f"unknown network kind {kind!r}; valid: {', '.join(NET_KINDS)}")
    cls, cfg_cls = NET_KINDS[kind]
    known = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown {kind} setting(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(sorted(known | set(WRAPPER_KEYS)))}")
    if not coordinates:
        return cls(cfg_cls(**cfg))
    c = cfg.get("in_channels", 1)
    inner = cls(cfg_cls(**{**cfg, "in_channels": c + COORD_CHANNELS, "out_channels": cfg.get("out_channels") or c}))
    return CoordinateInput(inner, {"kind": kind, **dataclasses.asdict(cfg_cls(**cfg))})


def net_config(net: nn.Module) -> dict[str, Any]:
    """The JSON-serialisable config that rebuilds ``net`` with :func:`build_net`."""
    cfg = getattr(net, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        raise TypeError(f"{type(net).__name__} is not a fewstep network (no .config.to_dict())")
    return cfg.to_dict()
