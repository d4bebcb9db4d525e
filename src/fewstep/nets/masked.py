"""MaskUNet (Wang et al. 2025, "Not All Parameters Matter: Masking Diffusion Models for Enhancing Generation
Ability", sec. 4.1, training-based): timestep- and sample-dependent binary masks over a frozen UNet's weights.

A small mask generator reads the UNet's conditioning embedding ``emb`` (time, and class where there is one)
and the global average of the input ``x_t`` (the paper's ``z' = FC(temb) + GAP(z)``), passes them through an
MLP with two ReLUs, and gives each masked layer one logit per output channel; the mask is
``m = 1[sigmoid(s / tau) > delta]`` with the straight-through estimator (the gradient of the sigmoid).  A
masked output channel has its weights zeroed, ``W' = m * W`` row-wise, so the layer computes
``m * (W x) + b = m * out + (1 - m) * b``.  Masked layers: both convolutions of every ResBlock.  The
generator's heads start at zero weights and bias ``mask_init`` (> the threshold): the masks start all ones
and the network starts exactly as the UNet it masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..context import StepContext
from ._layers import broadcast_time
from .unet import ResBlock, UNet, UNetConfig

__all__ = ["MaskUNet", "MaskUNetConfig", "MaskGenerator", "binary_mask"]


def binary_mask(logits: Tensor, tau: float, delta: float) -> Tensor:
    """``1[sigmoid(logits / tau) > delta]`` forward, the sigmoid's gradient backward (straight-through)."""
    soft = torch.sigmoid(logits / tau)
    return (soft > delta).to(soft.dtype) + (soft - soft.detach())


@dataclass
class MaskUNetConfig(UNetConfig):
    """A :class:`UNetConfig` plus the mask generator: MLP width, sigmoid temperature, threshold, initial logit."""

    mask_hidden: int = 64
    mask_tau: float = 1.0
    mask_delta: float = 0.5
    mask_init: float = 3.0

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "kind": "maskunet"}


class MaskGenerator(nn.Module):
    """``(emb, x) -> [mask of each layer (batch, channels)]``: FC(emb) + FC(GAP(x)), a 4-layer MLP with 2 ReLUs
    (the last layer is one head per masked layer)."""

    def __init__(self, emb_dim: int, in_channels: int, widths: list[int], cfg: MaskUNetConfig):
        super().__init__()
        h = cfg.mask_hidden
        self.tau, self.delta = cfg.mask_tau, cfg.mask_delta
        self.from_emb, self.from_x = nn.Linear(emb_dim, h), nn.Linear(in_channels, h)
        self.mlp = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(h, w) for w in widths)
        for head in self.heads:
            nn.init.zeros_(head.weight)
            nn.init.constant_(head.bias, cfg.mask_init)

    def logits(self, emb: Tensor, x: Tensor) -> list[Tensor]:
        z = self.mlp(self.from_emb(emb) + self.from_x(x.mean(dim=(-2, -1))))
        return [head(z) for head in self.heads]

    def forward(self, emb: Tensor, x: Tensor) -> list[Tensor]:
        return [binary_mask(s, self.tau, self.delta) for s in self.logits(emb, x)]


class MaskUNet(UNet):
    """A :class:`UNet` whose ResBlock convolutions are masked per sample by :class:`MaskGenerator`.

    Its parameter names are the UNet's plus ``masker.*``, so the UNet's weights load into it unchanged
    (``fresh_prefixes``: a warm start keeps the generator's own initialisation).  :meth:`freeze_base`
    leaves only the generator trainable.  ``masks_enabled = False`` runs the plain UNet.
    """

    fresh_prefixes = ("masker.",)

    def __init__(self, config: MaskUNetConfig):
        super().__init__(config)
        self.masked: list[nn.Conv2d] = []
        for m in self.modules():
            if isinstance(m, ResBlock) and m.hidden:
                self.masked += [m.conv1, m.conv2]
        if not self.masked:
            raise ValueError("MaskUNet needs a UNet with at least one residual branch to mask")
        self.masker = MaskGenerator(4 * config.channels, config.in_channels, [c.out_channels for c in self.masked],
                                    config)
        self._current: dict[int, Tensor] | None = None
        self.masks_enabled = True
        for conv in self.masked:
            conv.register_forward_hook(self._mask_output)

    def freeze_base(self) -> "MaskUNet":
        """Only the mask generator keeps ``requires_grad``."""
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith("masker."))
        return self

    def masks(self, x: Tensor, noise_level: Tensor | float, class_labels: Tensor | None = None) -> list[Tensor]:
        """The binary mask of each masked layer at ``(x, noise_level)``, each ``(batch, out_channels)``."""
        emb = self.embed(broadcast_time(noise_level, x.shape[0], x.device), class_labels)
        return self.masker(emb, x)

    def _mask_output(self, conv: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor:
        if self._current is None:
            return out
        m = self._current[id(conv)].to(out.dtype)[:, :, None, None]
        return m * out + (1 - m) * conv.bias[None, :, None, None]

    def forward(self, x: Tensor, noise_level: Tensor | float, class_labels: Tensor | None = None,
                ctx: StepContext | None = None) -> Tensor:
        if self.masks_enabled:
            self._current = {id(c): m for c, m in zip(self.masked, self.masks(x, noise_level, class_labels))}
        try:
            return super().forward(x, noise_level, class_labels, ctx)
        finally:
            self._current = None
