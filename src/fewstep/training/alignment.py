"""Representation regularisers of a diffusion network's hidden states, read through its block taps.

* REPA (Yu et al. 2024, "Representation Alignment for Generation", eq. 8): a small MLP ``h_phi`` (the
  :class:`Projector`) maps the hidden state ``h`` of one block at every position ``n`` to the feature
  dimension of a frozen encoder, and the loss is ``-1/N sum_n cos(y_n, h_phi(h_n))`` with ``y`` the
  encoder's patch features of the clean image (:func:`repa_loss`); it is added to the denoising loss
  with weight lambda.  HASTE (Wang et al. 2025, "REPA Works Until It Doesn't") stops the alignment after a
  number of steps (``align_stop_step``).
* The dispersive loss (Wang & He 2025, "Diffuse and Disperse", the InfoNCE-L2 variant): with the
  hidden states ``z_i`` of a batch (flattened), ``log 1/B^2 sum_{i,j} exp(-D(z_i, z_j) / tau)``, where
  ``D`` is the squared distance per feature dimension ``||z_i - z_j||^2 / d`` (:func:`dispersive_loss`):
  a repulsion among the batch, no positive pairs and no encoder.

:class:`TapRecorder` answers the network's taps (:func:`fewstep.context.tap`) and keeps the named block's
output, so the networks need no change.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..context import StepContext

__all__ = ["ALIGNMENTS", "Projector", "TapRecorder", "recording_context", "feature_map", "repa_loss",
           "dispersive_loss"]

#: ``objective.align`` values.
ALIGNMENTS = ("off", "repa", "dispersive")


class Projector(nn.Module):
    """REPA's projector: a 3-layer MLP with SiLU applied at every position (1x1 convolutions)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(in_dim, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, hidden, 1), nn.SiLU(),
                                 nn.Conv2d(hidden, out_dim, 1))

    def forward(self, h: Tensor) -> Tensor:
        return self.mlp(h)


class TapRecorder:
    """A tap handler that computes every block as usual and keeps the output of the block ``name``."""

    def __init__(self, name: str):
        self.name = name
        self.value: Tensor | None = None
        self.seen: list[str] = []

    def __call__(self, ctx: StepContext, name: str, compute: Callable[..., Any], *args: Any) -> Any:
        out = compute(*args)
        self.seen.append(name)
        if name == self.name:
            self.value = out
        return out

    def get(self) -> Tensor:
        """The recorded output; a ValueError naming the network's taps if the block never ran."""
        if self.value is None:
            taps = ", ".join(dict.fromkeys(self.seen)) or "none (the network has no block taps)"
            raise ValueError(f"objective.align_tap {self.name!r} is not a block of this network; its taps: {taps}")
        return self.value


def recording_context(recorder: TapRecorder) -> StepContext:
    """A context for a training forward pass whose taps go to ``recorder`` (no schedule: not a solve)."""
    return StepContext(schedule=None, step=0, tap=recorder)  # type: ignore[arg-type]


def feature_map(h: Tensor) -> Tensor:
    """A block's output as a ``(B, C, h, w)`` map: a UNet's as it is, a DiT's tokens ``(B, N, C)`` on their square grid."""
    if h.ndim == 4:
        return h
    if h.ndim == 3:
        g = math.isqrt(h.shape[1])
        if g * g != h.shape[1]:
            raise ValueError(f"cannot place {h.shape[1]} tokens on a square grid")
        return h.transpose(1, 2).reshape(h.shape[0], h.shape[2], g, g)
    raise ValueError(f"a tapped block's output must be (B, C, h, w) or (B, N, C), got {tuple(h.shape)}")


def repa_loss(projected: Tensor, target: Tensor) -> Tensor:
    """Per-sample ``-mean_n cos(projected_n, target_n)`` over the positions ``n``, shape ``(B,)``; in [-1, 1].

    ``projected`` ``(B, D, h, w)`` is average-pooled to ``target``'s grid when the sizes differ.
    """
    if projected.shape[1] != target.shape[1]:
        raise ValueError(f"projected features have {projected.shape[1]} channels, the encoder's {target.shape[1]}")
    if projected.shape[-2:] != target.shape[-2:]:
        projected = F.adaptive_avg_pool2d(projected, target.shape[-2:])
    cos = F.cosine_similarity(projected.float(), target.float(), dim=1, eps=1e-8)
    return -cos.flatten(1).mean(dim=1)


def dispersive_loss(z: Tensor, temperature: float = 0.5) -> Tensor:
    """``log(1/B^2 sum_{i,j} exp(-||z_i - z_j||^2 / (d tau)))`` of the batch ``z`` ``(B, ...)`` flattened to ``d``
    features (Wang & He 2025, InfoNCE-L2); a scalar in ``[log(1/B), 0]``, lowest for spread-out features."""
    z = z.flatten(1).float()
    b, d = z.shape
    sq = z.square().sum(dim=1)
    dist = (sq[:, None] + sq[None, :] - 2.0 * z @ z.T).clamp(min=0.0) / d
    return torch.logsumexp((-dist / temperature).flatten(), dim=0) - 2.0 * math.log(b)
