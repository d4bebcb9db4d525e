"""Save image batches in ``[-1, 1]`` as a grid image, as single PNGs, or as an ``.npz`` (atomic writes)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._io import atomic_path

__all__ = ["to_uint8", "save_image_grid", "save_image", "save_png", "save_npz", "IMAGE_FORMATS"]

# File suffix -> Pillow format; any other suffix is written as PNG.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def to_uint8(x: Tensor) -> np.ndarray:
    """``(N, C, H, W)`` in ``[-1, 1]`` -> uint8 ``(N, H, W, C)``."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def _pil(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def save_image_grid(x: Tensor, path: str | os.PathLike, nrow: int | None = None, pad: int = 2) -> Path:
    """Tile ``x`` into a grid (``nrow`` columns, default square) and write it (format from the suffix, see
    :func:`save_image`)."""
    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = imgs[i]
    return save_image(grid, path)


def save_image(arr: np.ndarray, path: str | os.PathLike) -> Path:
    """Write one uint8 ``(H, W, C)`` image atomically: JPEG (quality 95) for ``.jpg``/``.jpeg``, lossless
    WebP for ``.webp``, else PNG."""
    path = Path(path)
    fmt = IMAGE_FORMATS.get(path.suffix.lower(), "PNG")
    img = _pil(arr)
    options: dict = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(fmt, {})
    if fmt == "JPEG" and img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **options)
    return path


def save_png(arr: np.ndarray, path: str | os.PathLike, text: dict[str, str] | None = None) -> Path:
    """Write one uint8 ``(H, W, C)`` image as PNG atomically, whatever the suffix; ``text``: PNG text chunks
    (key -> value) recorded with it."""
    path = Path(path)
    info = None
    if text:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in text.items():
            info.add_itxt(key, value)
    with atomic_path(path) as tmp:
        _pil(arr).save(tmp, format="PNG", pnginfo=info)
    return path


def save_npz(x: Tensor, path: str | os.PathLike, **extra: np.ndarray) -> Path:
    """Write ``images`` (uint8 NHWC) and any ``extra`` arrays to an ``.npz`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=to_uint8(x), **extra)
    return path
