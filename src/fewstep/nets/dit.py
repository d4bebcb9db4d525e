"""Diffusion Transformer with adaLN-Zero conditioning (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers")."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..context import StepContext, tap
from ._layers import ConditionEmbedding, broadcast_time


def _sincos_2d(dim: int, h: int, w: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding, shape ``(h*w, dim)``."""
    quarter = dim // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, dtype=torch.float32) / max(quarter, 1))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    parts = []
    for coord in (ys.reshape(-1), xs.reshape(-1)):
        args = coord[:, None] * freqs[None]
        parts += [torch.sin(args), torch.cos(args)]
    emb = torch.cat(parts, dim=1)
    return F.pad(emb, (0, dim - emb.shape[1]))


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-norm attention + MLP; shift, scale and gate of both from the conditioning (adaLN-Zero)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(hidden, width))
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        s1, sc1, g1, s2, sc2, g2 = self.ada(F.silu(c)).chunk(6, dim=1)
        h = _modulate(self.norm1(x), s1, sc1)
        x = x + g1[:, None] * self.attn(h, h, h, need_weights=False)[0]
        return x + g2[:, None] * self.mlp(_modulate(self.norm2(x), s2, sc2))


@dataclass
class DiTConfig:
    """Hyper-parameters of :class:`DiT`; saved as JSON beside the weights."""

    in_channels: int = 1
    out_channels: int | None = None
    resolution: int = 28
    patch_size: int = 2
    depth: int = 6
    width: int = 256
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    num_classes: int = 0
    time_scale: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "dit", **asdict(self)}


class DiT(nn.Module):
    """``net(x, noise_level, class_labels=None, ctx=None)`` on a ``resolution x resolution`` image.

    Block taps (:func:`fewstep.context.tap`): ``block.k``, the k-th transformer block (the features
    TaylorSeer forecasts, Liu et al. 2025).
    """

    accepts_step_context = True

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        if cfg.resolution % cfg.patch_size:
            raise ValueError(f"DiT resolution {cfg.resolution} must be a multiple of patch_size {cfg.patch_size}")
        if cfg.width % cfg.heads:
            raise ValueError(f"DiT width {cfg.width} must be a multiple of heads {cfg.heads}")
        self.grid = cfg.resolution // cfg.patch_size
        out_ch = cfg.out_channels or cfg.in_channels
        self.patch = nn.Conv2d(cfg.in_channels, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.register_buffer("pos", _sincos_2d(cfg.width, self.grid, self.grid)[None], persistent=False)
        self.embed = ConditionEmbedding(256, cfg.width, cfg.num_classes, cfg.time_scale)
        self.blocks = nn.ModuleList([DiTBlock(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth)])
        self.norm_out = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(cfg.width, 2 * cfg.width)
        self.head = nn.Linear(cfg.width, cfg.patch_size**2 * out_ch)
        for layer in (self.ada_out, self.head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, noise_level: Tensor | float, class_labels: Tensor | None = None,
                ctx: StepContext | None = None) -> Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[-2:] != (cfg.resolution, cfg.resolution):
            raise ValueError(f"DiT expects input shaped (batch, {cfg.in_channels}, {cfg.resolution}, "
                             f"{cfg.resolution}), got {tuple(x.shape)}")
        b, p, g = x.shape[0], cfg.patch_size, self.grid
        c = self.embed(broadcast_time(noise_level, b, x.device), class_labels)
        h = self.patch(x).flatten(2).transpose(1, 2) + self.pos.to(x.dtype)
        for k, block in enumerate(self.blocks):
            h = tap(ctx, f"block.{k}", block, h, c)
        shift, scale = self.ada_out(F.silu(c)).chunk(2, dim=1)
        h = self.head(_modulate(self.norm_out(h), shift, scale))  # (b, g*g, p*p*out)
        out_ch = cfg.out_channels or cfg.in_channels
        h = h.reshape(b, g, g, p, p, out_ch).permute(0, 5, 1, 3, 2, 4)
        return h.reshape(b, out_ch, g * p, g * p)
