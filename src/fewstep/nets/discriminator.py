"""A small patch discriminator for adversarial distillation of few-step generators.

A PatchGAN-style critic (Isola et al. 2017): a few strided convolutions and one logit per patch of the input,
so the loss judges local texture and shape at every position rather than one global decision.  Used by path
distillation's adversarial term (:mod:`fewstep.reflow.adversarial`), where it tells the teacher's endpoints from the
student's few-step samples.  No normalisation layers: the R1 penalty (Mescheder et al. 2018) keeps it smooth.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["PatchDiscriminator"]


class PatchDiscriminator(nn.Module):
    """``(B, C, R, R)`` images in [-1, 1] -> ``(B, R/4 * R/4)`` patch logits: conv3x3, two stride-2 conv4x4 stages
    (``channels``, ``2 channels``, ``4 channels``), LeakyReLU(0.2), and a 3x3 conv to one logit per position."""

    def __init__(self, in_channels: int = 1, channels: int = 32):
        super().__init__()
        if in_channels < 1 or channels < 1:
            raise ValueError(f"a discriminator needs positive in_channels and channels, got {in_channels}, {channels}")
        c = channels
        act = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        self.body = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1), act(),
                                  nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), act(),
                                  nn.Conv2d(2 * c, 4 * c, 4, stride=2, padding=1), act(),
                                  nn.Conv2d(4 * c, 1, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x).flatten(1)
