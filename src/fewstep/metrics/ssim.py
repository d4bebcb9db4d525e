"""Structural similarity (SSIM; Wang, Bovik, Sheikh & Simoncelli 2004, eq. 13 with the Gaussian window of sec. III.C).

For each position of an ``11 x 11`` Gaussian window (``sigma = 1.5``, weights summing to 1) placed wholly
inside the image ("valid" positions, as the authors' reference implementation), with weighted means
``mu``, variances ``s^2`` and covariance ``s_xy``:

    SSIM = (2 mu_x mu_y + C1) (2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1) (s_x^2 + s_y^2 + C2)),
    C1 = (K1 L)^2, C2 = (K2 L)^2, K1 = 0.01, K2 = 0.03, L the data range,

averaged over positions (and channels) per image.  torchmetrics' ``structural_similarity_index_measure``
reflect-pads the images by 5 pixels and averages over every pixel instead; on reflect-padded inputs
this function gives its values (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ssim", "gaussian_window"]


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64) -> Tensor:
    """The separable ``size x size`` Gaussian window, normalised to sum to 1."""
    u = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-u**2 / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, *, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Per-image SSIM of batches ``(B, C, H, W)`` in float64: shape ``(B,)``.

    ``data_range`` is ``L`` (1 for images in ``[0, 1]``; fewstep's ``[-1, 1]`` images are mapped to ``[0, 1]``
    first by :func:`fewstep.restoration.scores.image_scores`).  Images must be at least ``window`` pixels wide.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) batches of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < window:
        raise ValueError(f"ssim's {window}x{window} window does not fit {x.shape[-2]}x{x.shape[-1]} images")
    c = x.shape[1]
    w = gaussian_window(window, sigma).to(x.device)[None, None].expand(c, 1, window, window)
    x, y = x.detach().to(torch.float64), y.detach().to(torch.float64)
    mean = lambda z: F.conv2d(z, w, groups=c)  # noqa: E731
    mx, my = mean(x), mean(y)
    sxx, syy, sxy = mean(x * x) - mx**2, mean(y * y) - my**2, mean(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)
