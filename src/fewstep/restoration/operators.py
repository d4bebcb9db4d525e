"""Measurement operators ``y = A(x)``: inpainting masks, super-resolution by average pooling, denoising.

An operator is a plain callable on image batches ``(B, C, H, W)``; DPS and RED-diff accept any
differentiable callable.  The built-in ones also give ``pinv(y)``, the Moore-Penrose pseudo-inverse
(an image to start from and to show a measurement), and ``check(shape)``, which refuses an image
shape they do not fit with a one-line error.  A measurement is ``y = A(x) + sigma_y * n``
(:func:`measure`), with per-sample seeded noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..solvers._common import Generator, randn_like

__all__ = ["Operator", "Inpaint", "SuperResolution", "Identity", "inpaint", "super_resolution", "denoise",
           "measure", "TASKS"]

#: The tasks ``fewstep restore --task`` knows.
TASKS = ("inpaint", "sr", "denoise")

Operator = Callable[[Tensor], Tensor]
"""Any ``A(x) -> y`` on ``(B, C, H, W)`` batches; DPS and RED-diff differentiate through it."""


def _image_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3:
        raise ValueError(f"expected an image shape (C, H, W) or a batch shape (B, C, H, W), got {shape}")
    return shape  # type: ignore[return-value]


@dataclass(frozen=True)
class Inpaint:
    """``A(x) = mask * x``: keep the pixels where ``mask`` is 1, zero the others (an orthogonal projection,
    so ``A^T = A^+ = A``).  ``mask`` is ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)`` of 0/1 values."""

    mask: Tensor
    name: str = "inpaint"

    def __post_init__(self) -> None:
        m = torch.as_tensor(self.mask)
        if m.ndim not in (2, 3, 4):
            raise ValueError(f"an inpainting mask must be (H, W), (C, H, W) or (B, C, H, W), got shape {tuple(m.shape)}")
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("an inpainting mask must hold only 0 (missing) and 1 (known) values")
        object.__setattr__(self, "mask", m.float())

    def check(self, shape: Sequence[int]) -> None:
        """Refuse images the mask does not fit (the mask's ``(H, W)`` and channels must match or broadcast)."""
        full = tuple(int(s) for s in shape)
        c, h, w = _image_shape(full)
        m = self.mask
        if tuple(m.shape[-2:]) != (h, w):
            raise ValueError(f"mask shape {tuple(m.shape)} does not fit images of shape {(c, h, w)}: the mask must be "
                             f"{h}x{w}; make it for this resolution")
        if m.ndim >= 3 and m.shape[-3] not in (1, c):
            raise ValueError(f"mask has {m.shape[-3]} channels but the images have {c}; give 1 or {c}")
        if m.ndim == 4 and len(full) == 4 and m.shape[0] not in (1, full[0]):
            raise ValueError(f"a per-image mask holds {m.shape[0]} masks for a batch of {full[0]}; give one per image")

    def _mask_for(self, x: Tensor) -> Tensor:
        self.check(x.shape)
        m = self.mask.to(device=x.device, dtype=x.dtype)
        return m if m.ndim == 4 else m.reshape((1,) * (4 - m.ndim) + tuple(m.shape))

    def __call__(self, x: Tensor) -> Tensor:
        return self._mask_for(x) * x

    def pinv(self, y: Tensor) -> Tensor:
        return self._mask_for(y) * y

    def known(self, x: Tensor) -> Tensor:
        """The mask broadcast to ``x`` (1 where the pixel is measured)."""
        return self._mask_for(x).expand_as(x)


@dataclass(frozen=True)
class SuperResolution:
    """``A(x) = avgpool_f(x)``: the mean of each ``f x f`` block.  ``A A^T = I / f^2``, so the pseudo-inverse
    ``A^+ = f^2 A^T`` is nearest-neighbour upsampling."""

    factor: int
    name: str = "sr"

    def __post_init__(self) -> None:
        if not isinstance(self.factor, int) or self.factor < 1:
            raise ValueError(f"the super-resolution factor must be a positive integer, got {self.factor!r}")

    def check(self, shape: Sequence[int]) -> None:
        _, h, w = _image_shape(shape)
        if h % self.factor or w % self.factor:
            raise ValueError(f"super-resolution factor {self.factor} does not divide the resolution {h}x{w}; "
                             f"choose a factor that divides both sides (e.g. 2 for 28x28)")

    def __call__(self, x: Tensor) -> Tensor:
        self.check(x.shape)
        return F.avg_pool2d(x, self.factor)

    def pinv(self, y: Tensor) -> Tensor:
        return F.interpolate(y, scale_factor=self.factor, mode="nearest")


@dataclass(frozen=True)
class Identity:
    """``A(x) = x``: denoising (the measurement noise ``sigma_y`` is the degradation)."""

    name: str = "denoise"

    def check(self, shape: Sequence[int]) -> None:
        _image_shape(shape)

    def __call__(self, x: Tensor) -> Tensor:
        return x

    def pinv(self, y: Tensor) -> Tensor:
        return y


def inpaint(mask: Tensor) -> Inpaint:
    """The inpainting operator of ``mask`` (1 = known pixel); masks from :mod:`fewstep.restoration.masks`."""
    return Inpaint(mask)


def super_resolution(factor: int = 2) -> SuperResolution:
    """``factor``-times downsampling by average pooling."""
    return SuperResolution(factor)


def denoise() -> Identity:
    """The identity operator: denoising."""
    return Identity()


def measure(operator: Operator, x: Tensor, sigma_y: float = 0.0, generator: Generator = None) -> Tensor:
    """``y = A(x) + sigma_y n`` with ``n`` drawn per sample from ``generator`` (one per image: batch-independent)."""
    if sigma_y < 0:
        raise ValueError(f"the measurement noise sigma_y must be >= 0, got {sigma_y}")
    check = getattr(operator, "check", None)
    if check is not None:
        check(x.shape)
    y = operator(x)
    if sigma_y > 0:
        y = y + sigma_y * randn_like(y, generator)
    if isinstance(operator, Inpaint):
        y = operator(y)  # the missing pixels carry no measurement, not even noise
    return y
