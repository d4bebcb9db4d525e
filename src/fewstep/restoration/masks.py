"""Inpainting masks (1 = known pixel, 0 = missing): a centred box, random pixels, half an image."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["MASKS", "box_mask", "random_mask", "half_mask", "make_mask"]

MASKS = ("box", "random", "half")
_SIDES = ("left", "right", "top", "bottom")


def _hw(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) < 2:
        raise ValueError(f"a mask needs an image shape (..., H, W), got {tuple(shape)}")
    return int(shape[-2]), int(shape[-1])


def box_mask(shape: Sequence[int], size: int | None = None) -> Tensor:
    """A centred ``size x size`` box missing (default half the shorter side); ``(H, W)``."""
    h, w = _hw(shape)
    size = min(h, w) // 2 if size is None else int(size)
    if not 0 < size <= min(h, w):
        raise ValueError(f"box size {size} must be between 1 and {min(h, w)} for a {h}x{w} image")
    m = torch.ones(h, w)
    top, left = (h - size) // 2, (w - size) // 2
    m[top:top + size, left:left + size] = 0
    return m


def random_mask(shape: Sequence[int], fraction: float = 0.7, seed: int = 0) -> Tensor:
    """Exactly ``round(fraction * H * W)`` pixels missing, chosen by ``seed``; ``(H, W)``."""
    h, w = _hw(shape)
    if not 0 <= fraction < 1:
        raise ValueError(f"the missing fraction must be in [0, 1), got {fraction}")
    k = round(fraction * h * w)
    perm = torch.randperm(h * w, generator=torch.Generator().manual_seed(int(seed)))
    m = torch.ones(h * w)
    m[perm[:k]] = 0
    return m.reshape(h, w)


def half_mask(shape: Sequence[int], side: str = "right") -> Tensor:
    """Half of the image missing: the ``side`` half (``left``, ``right``, ``top`` or ``bottom``); ``(H, W)``."""
    h, w = _hw(shape)
    if side not in _SIDES:
        raise ValueError(f"unknown side {side!r}; valid: {', '.join(_SIDES)}")
    m = torch.ones(h, w)
    if side == "left":
        m[:, :w // 2] = 0
    elif side == "right":
        m[:, w - w // 2:] = 0
    elif side == "top":
        m[:h // 2] = 0
    else:
        m[h - h // 2:] = 0
    return m


def make_mask(kind: str, shape: Sequence[int], *, fraction: float = 0.7, seed: int = 0, size: int | None = None,
              side: str = "right") -> Tensor:
    """The mask ``kind`` (``box``, ``random`` or ``half``) for images of ``shape``."""
    if kind == "box":
        return box_mask(shape, size)
    if kind == "random":
        return random_mask(shape, fraction, seed)
    if kind == "half":
        return half_mask(shape, side)
    raise ValueError(f"unknown mask {kind!r}; valid masks: {', '.join(MASKS)}")
