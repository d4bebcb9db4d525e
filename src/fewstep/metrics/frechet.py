"""The Frechet distance between Gaussians (Frechet 1957; FID, Heusel et al. 2017, eq. 6)."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

__all__ = ["frechet_distance", "frechet_distance_to_moments"]


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})`` in float64.

    When ``S1 S2`` is singular (its square root is not finite) ``eps I`` is added to both
    covariances, the standard fix; a tiny imaginary part from round-off is dropped.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"statistics differ in shape: mean {mu1.shape} vs {mu2.shape}, covariance {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in the matrix square root")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def frechet_distance_to_moments(samples: Tensor, mean: Tensor, cov: Tensor) -> float:
    """Frechet distance between the Gaussian fit of ``samples`` ``(n, d)`` and given moments."""
    x = samples.reshape(len(samples), -1).to(torch.float64)
    return frechet_distance(x.mean(0).numpy(), torch.cov(x.T).numpy(), mean.numpy(), cov.numpy())
