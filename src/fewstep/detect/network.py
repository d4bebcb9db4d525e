"""The untrained feature network of multiLID: a small ResNet with random (seeded) weights.

Lorenz et al. (2023) read multiLID features from the layers of an *untrained* ResNet-18; a network this size is
plenty for 28 x 28 images.  Weights are drawn from a seed (Kaiming-normal convolutions, no normalisation
layers) and stored with the detector, so a detector reads the same features on any machine.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LIDNet", "LAYER_NAMES"]

LAYER_NAMES = ("pixels", "stem", "block1", "block2", "block3")


class _Block(nn.Module):
    """A basic residual block: two 3x3 convolutions, a 1x1 projection when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.skip = nn.Conv2d(c_in, c_out, 1, stride) if (stride != 1 or c_in != c_out) else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(torch.relu(self.conv1(x)))
        return torch.relu(h + self.skip(x)) / 2 ** 0.5


class LIDNet(nn.Module):
    """``forward(x) -> {layer: activations (n, D)}`` for each of :data:`LAYER_NAMES` (``pixels`` is the input)."""

    def __init__(self, channels: int, width: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.stem = nn.Conv2d(channels, width, 3, 1, 1)
        self.block1 = _Block(width, width, 1)
        self.block2 = _Block(width, 2 * width, 2)
        self.block3 = _Block(2 * width, 4 * width, 2)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                    m.bias.zero_()
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {"pixels": x}
        h = torch.relu(self.stem(x))
        out["stem"] = h
        for name in ("block1", "block2", "block3"):
            h = getattr(self, name)(h)
            out[name] = h
        return {k: v.flatten(1) for k, v in out.items()}
