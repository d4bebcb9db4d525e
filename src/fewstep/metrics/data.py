"""Image data for reference statistics: the training loaders, in fewstep's float ``[-1, 1]`` convention.

A spec is what ``fewstep train --data`` takes (see ``fewstep.data.DATA_FORMS``), e.g.
``fashion-mnist:test``; images come back float32 ``(n, C, H, W)`` in ``[-1, 1]``.  Folders are
checked first (:func:`folder_summary`): mixed image sizes need an explicit ``resolution`` and
mixed grayscale/RGB files are refused, rather than taking the first file's as everyone's.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import FASHION_MNIST_DIR, IMAGE_SUFFIXES, load_data, load_fashion_mnist, read_idx, to_model_range

__all__ = ["read_idx", "fashion_mnist", "load_images", "folder_summary", "FolderSummary", "check_channels"]

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def fashion_mnist(split: str = "test", root: str | None = None) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST ``split`` as (images in [-1, 1] shaped (n, 1, 28, 28), int64 labels)."""
    data = load_fashion_mnist(root or os.environ.get("FEWSTEP_FASHION_MNIST", FASHION_MNIST_DIR), split)
    return to_model_range(data.images), data.labels


@dataclass
class FolderSummary:
    """How many image files of each size (``(width, height)``) and channel count a folder holds."""

    sizes: Counter
    channels: Counter

    def describe_sizes(self) -> str:
        return ", ".join(f"{w}x{h} ({k} file{'s' if k != 1 else ''})" for (w, h), k in self.sizes.most_common())

    def describe_channels(self) -> str:
        names = {1: "grayscale", 3: "RGB"}
        return ", ".join(f"{names[c]} ({k} file{'s' if k != 1 else ''})" for c, k in self.channels.most_common())


def folder_summary(root: str | Path) -> FolderSummary:
    """Sizes and channel counts of the image files under ``root`` (headers only; unreadable files are skipped)."""
    from PIL import Image, UnidentifiedImageError

    sizes: Counter = Counter()
    channels: Counter = Counter()
    for path in sorted(Path(root).rglob("*")):
        if not (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES):
            continue
        try:
            with Image.open(path) as img:
                sizes[img.size] += 1
                channels[1 if img.mode in GRAY_MODES else 3] += 1
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            continue  # the loader skips it and warns
    return FolderSummary(sizes, channels)


def _folder_settings(root: Path, resolution: int | None) -> tuple[int, int]:
    """``(resolution, channels)`` to load a folder with, or a clear error for mixed contents."""
    summary = folder_summary(root)
    if not summary.sizes:
        raise ValueError(f"no readable images found in {root} (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    if len(summary.channels) > 1:
        raise ValueError(f"channel mismatch in {root}: found {summary.describe_channels()}; convert them all to "
                         f"one mode (grayscale or RGB) first")
    if resolution is None:
        if len(summary.sizes) > 1:
            raise ValueError(f"{root} holds images of several sizes: found sizes {summary.describe_sizes()}; pass "
                             f"--resolution N to resize (and centre-crop) every image to N x N explicitly")
        resolution = min(next(iter(summary.sizes)))
    return resolution, next(iter(summary.channels))


def _resize(images: Tensor, resolution: int) -> Tensor:
    """uint8 ``(n, C, H, W)`` resized (bicubic, antialiased) and centre-cropped to ``resolution``."""
    h, w = images.shape[-2:]
    if (h, w) == (resolution, resolution):
        return images
    scale = resolution / min(h, w)
    size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
    x = F.interpolate(images.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return x[..., top:top + resolution, left:left + resolution].round().clamp(0, 255).to(torch.uint8)


def load_images(spec: str, resolution: int | None = None) -> Tensor:
    """All images named by ``spec``, float32 in ``[-1, 1]``; ``resolution`` resizes them all to it."""
    path = Path(spec)
    if path.is_dir():
        res, channels = _folder_settings(path, resolution)
        return to_model_range(load_data(spec, res, channels).images)
    images = load_data(spec).images
    return to_model_range(_resize(images, resolution) if resolution else images)


def check_channels(images: Tensor, spec: str, extractor) -> None:
    """Refuse images whose channel count the extractor does not take, with what to do instead."""
    accepted = getattr(extractor, "channels", None)
    c = int(images.shape[1])
    if accepted and c not in accepted:
        want = " or ".join(str(a) for a in accepted)
        raise ValueError(f"channel mismatch: {spec} holds {c}-channel images but the {extractor.name} extractor takes "
                         f"{want}-channel images; convert the images, or choose another --extractor "
                         f"(inception takes grayscale and RGB)")
