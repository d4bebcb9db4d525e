"""Coordinate channels on a network's input (Patch Diffusion, Wang et al. 2023, sec. 3.3).

A Patch Diffusion network sees, besides the (noisy) image, two channels holding each pixel's position
in the *full* image: row and column, each normalised to [-1, 1] (``linspace(-1, 1, R)``).  A patch
cut at ``(top, left)`` carries the matching slice of the full image's coordinates, so the network
learns a score conditioned on where the patch lies; at sampling time the whole image is denoised with
the full coordinate grid.

:class:`CoordinateInput` is an input-side wrapper around any network of :mod:`fewstep.nets` (its
inner network takes ``in_channels + 2`` channels): given ``coords`` (training on patches) it appends
them, without them it appends the full grid of the input's own size (sampling), so every solver and
denoiser works unchanged.  ``network.coordinates: true`` in a config builds it
(:func:`fewstep.nets.build_net`); the config keeps ``in_channels`` as the data's channels.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from ..context import StepContext

__all__ = ["COORD_CHANNELS", "image_coordinates", "CoordinateInput"]

#: Channels the coordinates add: row, column.
COORD_CHANNELS = 2


def image_coordinates(height: int, width: int, *, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``(2, height, width)`` coordinate grid of a full image: channel 0 the row, channel 1 the column,
    each ``linspace(-1, 1, n)`` (the first pixel at -1, the last at +1)."""
    rows = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    cols = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    return torch.stack([rows[:, None].expand(height, width), cols[None, :].expand(height, width)])


class _WrappedConfig(SimpleNamespace):
    """The wrapper's config: the inner network's, with the data's ``in_channels`` and ``coordinates: true``."""

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class CoordinateInput(nn.Module):
    """``net(x, noise_level, class_labels=None, ctx=None, coords=None)``: ``inner`` on ``cat([x, coords])``.

    ``coords`` is ``(batch, 2, H, W)`` (a patch's slice of the full image's grid); None appends
    :func:`image_coordinates` of ``x``'s own size, what sampling at full size needs.
    """

    accepts_step_context = True

    def __init__(self, inner: nn.Module, config: dict[str, Any]):
        super().__init__()
        self.net = inner
        self.config = _WrappedConfig(**{**config, "coordinates": True})

    def forward(self, x: Tensor, noise_level: Tensor | float, class_labels: Tensor | None = None,
                ctx: StepContext | None = None, coords: Tensor | None = None) -> Tensor:
        b, _, h, w = x.shape
        if coords is None:
            coords = image_coordinates(h, w, device=x.device, dtype=x.dtype).expand(b, COORD_CHANNELS, h, w)
        elif coords.shape != (b, COORD_CHANNELS, h, w):
            raise ValueError(f"coords must be shaped {(b, COORD_CHANNELS, h, w)} for input {tuple(x.shape)}, "
                             f"got {tuple(coords.shape)}")
        return self.net(torch.cat([x, coords.to(x.dtype)], dim=1), noise_level, class_labels, ctx=ctx)
