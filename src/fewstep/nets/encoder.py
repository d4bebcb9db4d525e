"""A small convolutional image encoder whose patch features serve as the target of representation alignment.

REPA (Yu et al. 2024) aligns a diffusion network's hidden states with a frozen pretrained encoder's patch
features (DINOv2 in the paper).  No pretrained weights can be had here, so fewstep trains this encoder on the
training split of the data (``fewstep train --config fashion-encoder``: supervised classification,
:mod:`fewstep.training.encoder`) and aligns with its last feature map.

``features(x)`` maps images in [-1, 1] ``(B, C, R, R)`` to patch features ``(B, feature_dim, R/4, R/4)``
(two stride-2 stages of GroupNorm-SiLU-conv); ``forward(x)`` adds SiLU, global average pooling and a linear
head for the class logits it is trained with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import group_norm as _gn

__all__ = ["EncoderConfig", "PatchEncoder"]


@dataclass
class EncoderConfig:
    """Hyper-parameters of :class:`PatchEncoder`; saved as the ``encoder`` section of its checkpoints."""

    in_channels: int = 1
    resolution: int = 28
    channels: int = 32
    feature_dim: int = 64
    num_classes: int = 10

    def check(self) -> None:
        for name in ("in_channels", "resolution", "channels", "feature_dim", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"config encoder.{name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "patch_encoder", **asdict(self)}


class PatchEncoder(nn.Module):
    """Conv stages at R, R/2 and R/4; ``features`` is the last stage's map, ``forward`` the class logits."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = cfg = config
        c, d = cfg.channels, cfg.feature_dim

        def stage(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), _gn(cout), nn.SiLU(),
                    nn.Conv2d(cout, cout, 3, padding=1)]

        self.body = nn.Sequential(*stage(cfg.in_channels, c, 1), _gn(c), nn.SiLU(), *stage(c, 2 * c, 2),
                                  _gn(2 * c), nn.SiLU(), *stage(2 * c, d, 2))
        self.stage_ends = (3, 9, 15)  # indices in ``body`` of each stage's last convolution
        self.head = nn.Linear(d, cfg.num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Patch features ``(B, feature_dim, ceil(R/4), ceil(R/4))`` of images ``x`` in [-1, 1]."""
        return self.body(x)

    def stage_features(self, x: Tensor) -> list[Tensor]:
        """The output of each of the three stages (at R, R/2 and R/4), the last being :meth:`features`: the
        multi-scale maps a perceptual distance compares (:mod:`fewstep.training.perceptual`)."""
        out = []
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i in self.stage_ends:
                out.append(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.silu(self.features(x)).mean(dim=(2, 3)))
