"""Local intrinsic dimensionality (LID) from nearest-neighbour distances.

The maximum-likelihood estimator of Levina & Bickel (2004), as used for adversarial detection by Ma et al.
(2018, eq. 4): with ``r_1 <= ... <= r_k`` the distances from a point to its ``k`` nearest neighbours in a
reference set,

    LID = ( 1/(k-1) * sum_{i<k} log(r_k / r_i) )^{-1}

(Ma et al. divide by ``k`` and include the zero term ``i = k``: their estimate is ``(k-1)/k`` times this one).
multiLID (Lorenz et al. 2022, "Unfolding local growth rate estimates") keeps the ``k`` terms ``log(r_k / r_i)``
unaveraged as a feature vector: :func:`lid_terms`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["knn_distances", "lid_terms", "lid_mle"]

#: Distances below this are clamped, so that a duplicate of a reference point gives finite terms.
MIN_DISTANCE = 1e-12


def knn_distances(points: Tensor, reference: Tensor, k: int, *, exclude_self: bool = False) -> Tensor:
    """Sorted Euclidean distances ``(n, k)`` from each row of ``points`` ``(n, D)`` to its ``k`` nearest rows of
    ``reference`` ``(m, D)``, in float64.  ``exclude_self`` drops each point's zero distance to itself (when
    ``points`` is ``reference``)."""
    if points.ndim != 2 or reference.ndim != 2 or points.shape[1] != reference.shape[1]:
        raise ValueError(f"points {tuple(points.shape)} and reference {tuple(reference.shape)} must be (n, D) and "
                         f"(m, D) with the same D")
    available = reference.shape[0] - (1 if exclude_self else 0)
    if not 2 <= k <= available:
        raise ValueError(f"k = {k} neighbours needs 2 <= k <= {available} (the reference set has "
                         f"{reference.shape[0]} points{', less the point itself' if exclude_self else ''})")
    p, r = points.double(), reference.double()
    # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b, in float64; clamped at 0 against rounding
    sq = (p.square().sum(1, keepdim=True) + r.square().sum(1)[None] - 2 * p @ r.T).clamp_min(0)
    if exclude_self:
        if points.shape[0] != reference.shape[0]:
            raise ValueError("exclude_self needs points to be the reference set itself")
        sq.fill_diagonal_(float("inf"))
    return sq.topk(k, dim=1, largest=False).values.sqrt()


def lid_terms(distances: Tensor) -> Tensor:
    """multiLID's unfolded terms ``log(r_k / r_i)``, ``i = 1..k`` (the last is 0), from sorted distances
    ``(n, k)``."""
    d = distances.clamp_min(MIN_DISTANCE)
    return torch.log(d[:, -1:] / d)


def lid_mle(distances: Tensor) -> Tensor:
    """Levina-Bickel maximum-likelihood LID ``(n,)`` from sorted distances ``(n, k)`` (module docstring)."""
    k = distances.shape[1]
    if k < 2:
        raise ValueError("the LID estimate needs at least k = 2 neighbours")
    return (k - 1) / lid_terms(distances)[:, :-1].sum(1).clamp_min(MIN_DISTANCE)
