"""A perceptual distance on a frozen encoder's multi-scale features (LPIPS without learned weights).

Zhang et al. 2018 ("The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", eq. 1) compare two
images through a network's feature maps ``y^l`` at several depths: each position's channel vector is unit-normalised,
the squared differences are summed over channels and averaged over positions, and the layers are summed,

    d(x, x') = sum_l mean_(h,w) || y^l_hw / |y^l_hw| - y'^l_hw / |y'^l_hw| ||^2 .

LPIPS then learns a per-channel weight on top; the unweighted sum (their "baseline" of each network) is used here,
since nothing on this machine could fit those weights to human judgements.  Consistency distillation (Song et al.
2023) trains with LPIPS; so can path distillation (:mod:`fewstep.reflow.path`).  No ImageNet network can be
downloaded here, so the encoder is fewstep's own :class:`~fewstep.nets.encoder.PatchEncoder` trained on the
*training* split (``fewstep train --config fashion-encoder``), neither the FID feature extractor nor the classifier
that judges samples.  The pixels themselves are the first "layer" (their plain squared difference, averaged): the
normalised features are blind to a position's overall scale, the pixel term is not.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["perceptual_distance", "encoder_stages"]


def encoder_stages(encoder: nn.Module, x: Tensor) -> list[Tensor]:
    """The encoder's multi-scale maps: ``stage_features(x)`` when it has them, else its single ``features(x)``."""
    stages = getattr(encoder, "stage_features", None)
    return list(stages(x)) if callable(stages) else [encoder.features(x)]


def _unit(y: Tensor, eps: float = 1e-10) -> Tensor:
    return y / torch.sqrt(y.square().sum(dim=1, keepdim=True) + eps)


def perceptual_distance(encoder: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """Per-sample ``mean((x - target)^2) + sum_l mean_hw ||unit(y^l(x)) - unit(y^l(target))||^2``, shape
    ``(batch,)``, differentiable in ``x`` (the target's features carry no gradient).  ``x``, ``target``: images in
    [-1, 1] ``(B, C, H, W)``; ``encoder``: a module with ``features`` (and optionally ``stage_features``)."""
    dtype = torch.promote_types(x.dtype, torch.float32)  # at least float32 (bf16 under autocast)
    total = (x.to(dtype) - target.to(dtype)).square().flatten(1).mean(dim=1)
    with torch.no_grad():
        ref = encoder_stages(encoder, target)
    for y, y_ref in zip(encoder_stages(encoder, x), ref):
        diff = _unit(y.to(dtype)) - _unit(y_ref.to(dtype))
        total = total + diff.square().sum(dim=1).flatten(1).mean(dim=1)
    return total
