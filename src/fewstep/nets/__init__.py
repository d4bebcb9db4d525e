"""Denoising networks that see only ``(x, noise_level, class_labels)``; built from a JSON config."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from .dit import DiT, DiTConfig
from .masked import MaskUNet, MaskUNetConfig
from .unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig", "DiT", "DiTConfig", "MaskUNet", "MaskUNetConfig", "build_net", "net_config", "NET_KINDS"]

NET_KINDS = {"unet": (UNet, UNetConfig), "dit": (DiT, DiTConfig), "maskunet": (MaskUNet, MaskUNetConfig)}


def build_net(config: dict[str, Any]) -> nn.Module:
    """Build a network from ``{"kind": "unet"|"dit", ...hyper-parameters}`` (as :func:`net_config` writes)."""
    if not isinstance(config, dict):
        raise TypeError(f"a network config must be a dict, got {type(config).__name__}")
    cfg = dict(config)
    kind = cfg.pop("kind", None)
    if kind not in NET_KINDS:
        raise ValueError(f"unknown network kind {kind!r}; valid: {', '.join(NET_KINDS)}")
    cls, cfg_cls = NET_KINDS[kind]
    known = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown {kind} setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    return cls(cfg_cls(**cfg))


def net_config(net: nn.Module) -> dict[str, Any]:
    """The JSON-serialisable config that rebuilds ``net`` with :func:`build_net`."""
    cfg = getattr(net, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        raise TypeError(f"{type(net).__name__} is not a fewstep network (no .config.to_dict())")
    return cfg.to_dict()
