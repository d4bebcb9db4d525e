"""A UNet in the DDPM++ / ADM family (Ho et al. 2020; Song et al. 2021; Dhariwal & Nichol 2021).

Residual blocks with GroupNorm and SiLU, the conditioning vector injected as a per-channel
scale and shift (ADM's "adaptive group norm"), self-attention at chosen resolutions, skip
connections between the encoder and decoder, zero-initialised output layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..context import StepContext, tap
from ._layers import ConditionEmbedding, broadcast_time


def _norm(ch: int) -> nn.GroupNorm:
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0)
    return nn.GroupNorm(groups, ch, eps=1e-6)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GN-SiLU-conv, scale/shift from the embedding, GN-SiLU-dropout-conv, plus a skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.drop = _norm(cout), nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over the spatial positions, residual, zero-initialised output."""

    def __init__(self, ch: int, head_dim: int):
        super().__init__()
        self.heads = max(1, ch // head_dim)
        self.norm, self.qkv = _norm(ch), nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


@dataclass
class UNetConfig:
    """Hyper-parameters of :class:`UNet`; saved as JSON beside the weights."""

    in_channels: int = 1
    out_channels: int | None = None
    resolution: int = 28
    channels: int = 32
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    attn_resolutions: list[int] = field(default_factory=lambda: [7])
    head_dim: int = 32
    dropout: float = 0.0
    num_classes: int = 0
    time_scale: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "unet", **asdict(self)}


class UNet(nn.Module):
    """``net(x, noise_level, class_labels=None, ctx=None)`` -> tensor shaped like ``x`` (before ``out_channels``).

    Block taps (:func:`fewstep.context.tap`), for caches and forecasters that a sampling context
    carries: ``in`` (the input convolution), ``down.k`` and ``up.k`` (the k-th block group of the encoder
    and decoder), ``mid``, and ``deep``, everything between the first encoder group and the last decoder group (the branch
    DeepCache reuses, Ma et al. 2024, sec. 3.2): ``deep(h_after_down0) -> h_before_last_up``.
    """

    accepts_step_context = True

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        if not cfg.channel_mult:
            raise ValueError("channel_mult must list at least one level")
        out_ch = cfg.out_channels or cfg.in_channels
        emb_dim = 4 * cfg.channels
        self.embed = ConditionEmbedding(cfg.channels, emb_dim, cfg.num_classes, cfg.time_scale)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.channels, 3, padding=1)
        self.down, skips = nn.ModuleList(), [cfg.channels]
        ch, res = cfg.channels, cfg.resolution
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                blocks = [ResBlock(ch, cfg.channels * mult, emb_dim, cfg.dropout)]
                ch = cfg.channels * mult
                if res in cfg.attn_resolutions:
                    blocks.append(AttnBlock(ch, cfg.head_dim))
                self.down.append(nn.ModuleList(blocks))
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
                res = (res + 1) // 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, cfg.dropout), AttnBlock(ch, cfg.head_dim),
                                  ResBlock(ch, ch, emb_dim, cfg.dropout)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(cfg.channel_mult))):
            mult = cfg.channel_mult[level]
            for _ in range(cfg.num_res_blocks + 1):
                blocks = [ResBlock(ch + skips.pop(), cfg.channels * mult, emb_dim, cfg.dropout)]
                ch = cfg.channels * mult
                if res in cfg.attn_resolutions:
                    blocks.append(AttnBlock(ch, cfg.head_dim))
                self.up.append(nn.ModuleList(blocks))
            if level > 0:
                self.up.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, padding=1)]))
                res = res * 2
        self.norm_out = _norm(ch)
        self.conv_out = _zero(nn.Conv2d(ch, out_ch, 3, padding=1))

    def _run(self, blocks: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
        for block in blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return h

    def _deep(self, h: Tensor, emb: Tensor, ctx: StepContext | None) -> Tensor:
        """Encoder groups 1.., the middle, decoder groups ..-2: their skip connections stay inside."""
        skips = [h]
        for k in range(1, len(self.down)):
            h = tap(ctx, f"down.{k}", self._run, self.down[k], h, emb)
            skips.append(h)
        h = tap(ctx, "mid", self._run, self.mid, h, emb)
        for k in range(len(self.up) - 1):
            blocks = self.up[k]
            if isinstance(blocks[0], ResBlock):
                h = tap(ctx, f"up.{k}", self._run, blocks, torch.cat([h, skips.pop()], dim=1), emb)
            else:  # upsample to the size of the matching encoder feature map (odd sizes round-trip)
                h = blocks[0](F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest"))
        return h

    def forward(self, x: Tensor, noise_level: Tensor | float, class_labels: Tensor | None = None,
                ctx: StepContext | None = None) -> Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"UNet expects input shaped (batch, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        emb = self.embed(broadcast_time(noise_level, x.shape[0], x.device), class_labels)
        h0 = tap(ctx, "in", self.conv_in, x)
        h = tap(ctx, "down.0", self._run, self.down[0], h0, emb)
        h = tap(ctx, "deep", self._deep, h, emb, ctx)
        last = len(self.up) - 1
        h = tap(ctx, f"up.{last}", self._run, self.up[last], torch.cat([h, h0], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))
