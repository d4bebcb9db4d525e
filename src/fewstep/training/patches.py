"""Patch Diffusion's training batches (Wang et al. 2023, "Patch Diffusion: Faster and More Data-Efficient
Training of Diffusion Models", sec. 3).

* :class:`PatchSchedule` - the stochastic patch-size schedule (sec. 3.2): each training step draws one
  patch size for the whole batch, the full resolution ``R`` with probability ``p`` and otherwise one of
  the smaller sizes (the paper's ``R/2`` and ``R/4`` with weights 3/5 and 2/5 of the rest).
* :func:`crop_patches` - random patches of a batch with their coordinate channels (sec. 3.3): the slice
  of the full image's grid (:func:`fewstep.nets.coords.image_coordinates`) under each patch.

With ``batch_scale`` a step at patch size ``s`` cuts ``(R // s)^2`` patches from each image (each at its
own random place), so every step sees about as many pixels as a full-size one and a batch's cost hardly
depends on the size drawn; without it, one patch per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..nets.coords import image_coordinates

__all__ = ["PatchSchedule", "crop_patches", "PAPER_WEIGHTS"]

#: The paper's weights of the sizes ``R // 2`` and ``R // 4`` among the non-full patches.
PAPER_WEIGHTS = (3.0, 2.0)


@dataclass(frozen=True)
class PatchSchedule:
    """Patch sizes ``sizes`` drawn with probabilities ``probs`` (the full ``resolution`` among them)."""

    resolution: int
    sizes: tuple[int, ...]
    probs: tuple[float, ...]
    batch_scale: bool = True

    @classmethod
    def paper(cls, resolution: int, full_fraction: float, sizes: list[int] | tuple[int, ...] = (),
              weights: list[float] | tuple[float, ...] = (), batch_scale: bool = True) -> "PatchSchedule":
        """Full size with probability ``full_fraction`` (the paper's ``p``), the rest split over ``sizes``
        (default ``R // 2, R // 4``) in proportion to ``weights`` (default the paper's 3 : 2; equal weights
        for sizes given without weights)."""
        if not 0.0 <= full_fraction <= 1.0:
            raise ValueError(f"objective.patch_full_fraction must lie in [0, 1], got {full_fraction}")
        given = bool(sizes)
        sizes = tuple(int(s) for s in sizes) if given else (resolution // 2, resolution // 4)
        if weights and len(weights) != len(sizes):
            raise ValueError(f"objective.patch_weights has {len(weights)} entries but there are {len(sizes)} patch "
                             f"sizes ({', '.join(map(str, sizes))}); give one weight per size")
        weights = tuple(float(w) for w in weights) if weights else (PAPER_WEIGHTS if not given
                                                                    else (1.0,) * len(sizes))
        bad = [s for s in sizes if not 1 <= s < resolution]
        if bad:
            raise ValueError(f"objective.patch_sizes must lie in [1, {resolution - 1}] (below the resolution "
                             f"{resolution}, which patch_full_fraction covers), got {bad}")
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"objective.patch_sizes lists a size twice: {list(sizes)}")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"objective.patch_weights must be non-negative with a positive sum, got {list(weights)}")
        rest = 1.0 - full_fraction
        total = sum(weights)
        return cls(resolution, (resolution, *sizes), (full_fraction, *(rest * w / total for w in weights)),
                   batch_scale)

    def draw_size(self, generator: torch.Generator) -> int:
        """One patch size, drawn with ``probs`` from one uniform number of ``generator``."""
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        acc = 0.0
        for size, p in zip(self.sizes, self.probs):
            acc += p
            if u < acc:
                return size
        return next(s for s, p in zip(reversed(self.sizes), reversed(self.probs)) if p > 0)

    def patches_per_image(self, size: int) -> int:
        """``(R // size)^2`` with ``batch_scale`` (as many pixels per step as a full image), else 1."""
        return (self.resolution // size) ** 2 if self.batch_scale else 1


def crop_patches(images: Tensor, size: int, per_image: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``per_image`` random ``size x size`` patches of each image of ``images`` ``(B, C, H, W)``, and their coordinates.

    Returns ``(patches, coords)`` shaped ``(B, per_image, C, size, size)`` and ``(B, per_image, 2, size, size)``:
    each patch's top-left corner is uniform over the ``(H - size + 1) x (W - size + 1)`` places (rows, then
    columns drawn from ``generator``), ``coords`` the matching slice of :func:`image_coordinates` ``(H, W)``.
    """
    b, c, h, w = images.shape
    if not 1 <= size <= min(h, w):
        raise ValueError(f"patch size {size} does not fit images of {h}x{w}")
    top = torch.randint(0, h - size + 1, (b, per_image), generator=generator)
    left = torch.randint(0, w - size + 1, (b, per_image), generator=generator)
    offsets = torch.arange(size)
    rows, cols = top[..., None] + offsets, left[..., None] + offsets  # (B, k, s)
    full = torch.cat([images, image_coordinates(h, w, dtype=images.dtype).expand(b, 2, h, w)], dim=1)
    full = full[:, None].expand(b, per_image, c + 2, h, w)
    picked = full.gather(3, rows[:, :, None, :, None].expand(b, per_image, c + 2, size, w))
    picked = picked.gather(4, cols[:, :, None, None, :].expand(b, per_image, c + 2, size, size))
    return picked[:, :, :c], picked[:, :, c:]
