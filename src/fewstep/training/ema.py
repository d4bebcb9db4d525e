"""Exponential moving average of weights, parametrised by its half-life in images (Karras et al. 2022, App. F)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(batch_images: int, images_seen: int, half_life_images: float, rampup: float | None = None) -> float:
    """Per-step decay so that a weight's influence halves every ``half_life_images`` images.

    With ``rampup`` the half-life is at most ``rampup * images_seen`` early in training (EDM's ramp-up).
    """
    half_life = half_life_images
    if rampup is not None and rampup > 0:
        half_life = min(half_life, rampup * max(images_seen, 1))
    return 0.5 ** (batch_images / max(half_life, 1e-8))


def make_ema(model: nn.Module) -> nn.Module:
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` for parameters; buffers are copied."""
    pe = list(ema.parameters())
    pm = [p.detach().to(e.dtype) for e, p in zip(pe, model.parameters())]
    torch._foreach_lerp_(pe, pm, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)
