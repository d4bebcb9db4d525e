"""Improved precision and recall (Kynkaanniemi et al. 2019, sec. 2).

Each set's manifold is the union of balls around its points, with radius the distance to the
point's ``k``-th nearest neighbour in the same set.  Precision: the fraction of generated
samples inside the real manifold; recall: the fraction of real samples inside the generated one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["knn_radii", "manifold_fraction", "precision_recall"]


def _f64(x: np.ndarray | Tensor) -> Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def knn_radii(x: np.ndarray | Tensor, k: int = 3, batch: int = 1024) -> Tensor:
    """Distance from each point to its ``k``-th nearest other point."""
    x = _f64(x)
    if len(x) <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} points, got {len(x)}")
    out = []
    for i in range(0, len(x), batch):
        d = torch.cdist(x[i:i + batch], x)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the smallest is the point itself
    return torch.cat(out)


def manifold_fraction(query: np.ndarray | Tensor, ref: np.ndarray | Tensor, radii: Tensor, batch: int = 1024) -> float:
    """Fraction of ``query`` points within ``radii[j]`` of some ``ref[j]``."""
    query, ref = _f64(query), _f64(ref)
    inside = [(torch.cdist(query[i:i + batch], ref) <= radii[None]).any(1) for i in range(0, len(query), batch)]
    return float(torch.cat(inside).double().mean())


def precision_recall(real: np.ndarray | Tensor, fake: np.ndarray | Tensor, k: int = 3) -> tuple[float, float]:
    """``(precision, recall)`` of ``fake`` against ``real`` features (paper default ``k = 3``)."""
    real, fake = _f64(real), _f64(fake)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision/recall need two (n, d) feature sets of equal d, got {tuple(real.shape)} and "
                         f"{tuple(fake.shape)}")
    precision = manifold_fraction(fake, real, knn_radii(real, k))
    recall = manifold_fraction(real, fake, knn_radii(fake, k))
    return precision, recall
