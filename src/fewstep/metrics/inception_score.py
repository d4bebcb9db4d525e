"""Inception Score (Salimans et al. 2016): ``exp E_x KL(p(y|x) || p(y))`` over ``splits`` splits."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["inception_score"]


def inception_score(logits: np.ndarray | torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Mean and standard deviation over splits, in float64, from ``(n, classes)`` logits."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if logits.ndim != 2 or len(logits) < splits:
        raise ValueError(f"need (n, classes) logits with n >= splits={splits}, got {tuple(logits.shape)}")
    logp = torch.log_softmax(logits, 1)
    scores = []
    for part in torch.tensor_split(logp, splits):
        log_marginal = torch.logsumexp(part, 0) - np.log(len(part))
        kl = (part.exp() * (part - log_marginal)).sum(1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))
