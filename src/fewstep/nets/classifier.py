"""A noise-aware image classifier ``p(y | x_t)`` for classifier guidance (Dhariwal & Nichol 2021, sec. 4).

The network sees the noisy image in the process-free variable ``y = x_t / alpha = x0 + sigma_hat eps``
(``sigma_hat = sigma / alpha``, the EDM noise level), scaled by ``c_in = 1 / sqrt(sigma_hat^2 +
sigma_data^2)``, and the noise level as ``log(sigma_hat) / 4`` (EDM's ``c_noise``, Karras et al.
2022, Table 1), so one classifier guides a model of any noise process.  Its body is the encoder
half of :class:`~fewstep.nets.unet.UNet` (residual blocks with the noise embedding as scale and
shift, strided downsampling), then SiLU, global average pooling and a linear head (ADM's noisy
classifier is the same construction with attention pooling).  No normalisation comes right before
the pooling: with one channel per group, GroupNorm would give every channel zero spatial mean and
leave the pooled features almost nothing to classify.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import ConditionEmbedding
from .unet import ResBlock

__all__ = ["NoisyClassifierConfig", "NoisyClassifierNet"]


@dataclass
class NoisyClassifierConfig:
    """Hyper-parameters of :class:`NoisyClassifierNet`; saved as JSON beside the weights."""

    in_channels: int = 1
    resolution: int = 28
    num_classes: int = 10
    channels: int = 32
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    dropout: float = 0.0
    sigma_data: float = 0.5
    time_scale: float = 250.0

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "noisy_classifier", **asdict(self)}

    def check(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"classifier.num_classes must be at least 2, got {self.num_classes}")
        if not self.channel_mult or self.channels < 1 or self.num_res_blocks < 1:
            raise ValueError("classifier.channels, channel_mult and num_res_blocks must be positive and non-empty")


class NoisyClassifierNet(nn.Module):
    """``net(y, sigma_hat) -> logits (batch, num_classes)`` for ``y = x0 + sigma_hat eps``."""

    def __init__(self, config: NoisyClassifierConfig):
        super().__init__()
        self.config = cfg = config
        emb_dim = 4 * cfg.channels
        self.embed = ConditionEmbedding(cfg.channels, emb_dim, 0, cfg.time_scale)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.channels, 3, padding=1)
        self.blocks = nn.ModuleList()
        ch = cfg.channels
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.blocks.append(ResBlock(ch, cfg.channels * mult, emb_dim, cfg.dropout))
                ch = cfg.channels * mult
            if level < len(cfg.channel_mult) - 1:
                self.blocks.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.head = nn.Linear(ch, cfg.num_classes)

    def forward(self, y: Tensor, sigma_hat: Tensor | float) -> Tensor:
        cfg = self.config
        if y.ndim != 4 or y.shape[1] != cfg.in_channels:
            raise ValueError(f"the classifier expects input shaped (batch, {cfg.in_channels}, H, W), got {tuple(y.shape)}")
        s = torch.as_tensor(sigma_hat, dtype=torch.float32, device=y.device)
        s = s.expand(y.shape[0]) if s.ndim == 0 else s.reshape(-1)
        c_in = (s * s + cfg.sigma_data**2).rsqrt().to(y.dtype).reshape(-1, 1, 1, 1)
        emb = self.embed(torch.log(s) / 4)
        h = self.conv_in(y * c_in)
        for block in self.blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return self.head(F.silu(h).mean(dim=(2, 3)))
