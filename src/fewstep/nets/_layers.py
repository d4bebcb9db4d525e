"""Shared building blocks: noise-level and class embeddings."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer positional embedding of a real noise level (Vaswani et al. 2017; DDPM, Ho et al. 2020)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float().reshape(-1, 1) * freqs.reshape(1, -1)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class ConditionEmbedding(nn.Module):
    """Noise level (and optional class label) -> one conditioning vector.

    ``time_scale`` multiplies the noise level before the sinusoidal embedding, so networks
    conditioned on small values (EDM's ``c_noise = log(sigma)/4``) still see varied phases.
    The class table has one extra row, the null class (label ``num_classes``), used when no
    labels are given and for classifier-free guidance (Ho & Salimans 2022).
    """

    def __init__(self, freq_dim: int, emb_dim: int, num_classes: int = 0, time_scale: float = 1.0):
        super().__init__()
        self.freq_dim, self.time_scale, self.num_classes = freq_dim, time_scale, num_classes
        self.mlp = nn.Sequential(nn.Linear(freq_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.classes = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None

    def forward(self, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        t = t.reshape(-1)
        emb = self.mlp(sinusoidal_embedding(t * self.time_scale, self.freq_dim).to(self.mlp[0].weight.dtype))
        if self.classes is not None:
            if class_labels is None:
                class_labels = torch.full((emb.shape[0],), self.num_classes, dtype=torch.long, device=emb.device)
            labels = class_labels.long().reshape(-1)
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.num_classes):
                raise ValueError(f"class labels must lie in [0, {self.num_classes}] ({self.num_classes} = no class)")
            emb = emb + self.classes(labels)
        elif class_labels is not None:
            raise ValueError("this network was built with num_classes=0 and takes no class_labels")
        return emb


def broadcast_time(t: Tensor | float, batch: int, device: torch.device) -> Tensor:
    """A noise level as a ``(batch,)`` float tensor."""
    t = torch.as_tensor(t, device=device, dtype=torch.float32)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"noise level must be a scalar or shaped ({batch},), got {tuple(t.shape)}")
    return t


def group_norm(ch: int) -> nn.GroupNorm:
    """GroupNorm with the largest of 8, 4, 2, 1 groups dividing ``ch`` (the small encoders' normalisation)."""
    return nn.GroupNorm(next(g for g in (8, 4, 2, 1) if ch % g == 0), ch)
