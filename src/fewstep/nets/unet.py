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
from .upsample import UpsampleConv


def _norm(ch: int, groups: int | None = None) -> nn.GroupNorm:
    groups = groups or next(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0)
    return nn.GroupNorm(groups, ch, eps=1e-6)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GN-SiLU-conv, scale/shift from the embedding, GN-SiLU-dropout-conv, plus a skip.

    ``hidden`` (default ``cout``) is the width between the two convolutions and ``groups`` the group count
    of the GroupNorm there (default as for any width); structured pruning narrows them
    (:mod:`fewstep.pruning`).  ``hidden=0`` removes the residual branch: the block is its skip path.
    """

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, hidden: int | None = None,
                 groups: int | None = None):
        super().__init__()
        hidden = cout if hidden is None else hidden
        self.hidden = hidden
        if hidden:
            self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, hidden, 3, padding=1)
            self.emb = nn.Linear(emb_dim, 2 * hidden)
            self.norm2, self.drop = _norm(hidden, groups), nn.Dropout(dropout)
            self.conv2 = _zero(nn.Conv2d(hidden, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if not self.hidden:
            return self.skip(x)
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
    #: Structured pruning (:mod:`fewstep.pruning`): the hidden width of each ResBlock in build order (down,
    #: mid, up; 0 removes its residual branch), its GroupNorm group count, and the attention blocks (by index
    #: in build order) replaced by the identity.  Empty: the unpruned network.
    res_hidden: list[int] = field(default_factory=list)
    res_groups: list[int] = field(default_factory=list)
    attn_removed: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": "unet", **asdict(self)}
        for key in ("res_hidden", "res_groups", "attn_removed"):  # unpruned configs stay as they always were
            if not d[key]:
                del d[key]
        return d


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
        self._n_res = self._n_attn = 0
        self.down, skips = nn.ModuleList(), [cfg.channels]
        ch, res = cfg.channels, cfg.resolution
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                blocks = [self._res(ch, cfg.channels * mult, emb_dim)]
                ch = cfg.channels * mult
                if res in cfg.attn_resolutions:
                    blocks.append(self._attn(ch))
                self.down.append(nn.ModuleList(blocks))
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
                res = (res + 1) // 2
        self.mid = nn.ModuleList([self._res(ch, ch, emb_dim), self._attn(ch), self._res(ch, ch, emb_dim)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(cfg.channel_mult))):
            mult = cfg.channel_mult[level]
            for _ in range(cfg.num_res_blocks + 1):
                blocks = [self._res(ch + skips.pop(), cfg.channels * mult, emb_dim)]
                ch = cfg.channels * mult
                if res in cfg.attn_resolutions:
                    blocks.append(self._attn(ch))
                self.up.append(nn.ModuleList(blocks))
            if level > 0:
                self.up.append(nn.ModuleList([UpsampleConv(ch, ch)]))
                res = res * 2
        self.norm_out = _norm(ch)
        self.conv_out = _zero(nn.Conv2d(ch, out_ch, 3, padding=1))
        self._check_pruning()

    def _res(self, cin: int, cout: int, emb_dim: int) -> ResBlock:
        """The next ResBlock in build order, with its pruned width where the config records one."""
        cfg, i = self.config, self._n_res
        self._n_res += 1
        hidden = cfg.res_hidden[i] if i < len(cfg.res_hidden) else None
        groups = cfg.res_groups[i] if i < len(cfg.res_groups) else None
        if hidden is not None and (hidden < 0 or (hidden and groups is not None and (groups < 1 or hidden % groups))):
            raise ValueError(f"res_hidden[{i}] = {hidden} with res_groups[{i}] = {groups}: the width must be 0 or a "
                             f"positive multiple of the group count")
        return ResBlock(cin, cout, emb_dim, cfg.dropout, hidden, groups)

    def _attn(self, ch: int) -> nn.Module:
        """The next attention block in build order, or the identity where the config removes it."""
        i = self._n_attn
        self._n_attn += 1
        return nn.Identity() if i in self.config.attn_removed else AttnBlock(ch, self.config.head_dim)

    def _check_pruning(self) -> None:
        cfg = self.config
        for key, n in (("res_hidden", self._n_res), ("res_groups", self._n_res)):
            if getattr(cfg, key) and len(getattr(cfg, key)) != n:
                raise ValueError(f"{key} lists {len(getattr(cfg, key))} widths but the network has {n} ResBlocks")
        bad = [i for i in cfg.attn_removed if not 0 <= i < self._n_attn]
        if bad:
            raise ValueError(f"attn_removed {bad}: the network has {self._n_attn} attention blocks (0..{self._n_attn - 1})")

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
                up, size = blocks[0], tuple(skips[-1].shape[-2:])
                h = up(h, size) if isinstance(up, UpsampleConv) else up(F.interpolate(h, size=size, mode="nearest"))
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
