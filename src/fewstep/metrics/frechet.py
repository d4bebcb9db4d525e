"""The Frechet distance between Gaussians (Frechet 1957; FID, Heusel et al. 2017, eq. 6)."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

__all__ = ["frechet_distance", "frechet_distance_to_moments", "paired_fd_difference"]


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


def paired_fd_difference(features_a: Tensor, features_b: Tensor, ref_mean: Tensor, ref_cov: Tensor, *,
                         resamples: int = 500, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """``FD(a) - FD(b)`` to reference moments and its paired bootstrap interval ``(difference, low, high)``.

    Row ``i`` of ``features_a`` and of ``features_b`` come from the same seed (two samplers or two models from
    the same initial noise); each resample draws seed indices with replacement and takes *both* rows of each,
    so the interval is of the difference, far narrower than the two FDs' own intervals (Efron & Tibshirani
    1993, ch. 13, the percentile interval).
    """
    if features_a.shape != features_b.shape or features_a.ndim != 2:
        raise ValueError(f"paired features must be two (n, d) arrays of one shape, got {tuple(features_a.shape)} "
                         f"and {tuple(features_b.shape)}")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"resamples must be positive and level in (0, 1), got {resamples}, {level}")
    fa, fb = features_a.to(torch.float64), features_b.to(torch.float64)
    mu_r, cov_r = torch.as_tensor(ref_mean, dtype=torch.float64), torch.as_tensor(ref_cov, dtype=torch.float64)

    def fd(f: Tensor) -> float:
        return frechet_distance_to_moments(f, mu_r, cov_r)

    n = len(fa)
    g = torch.Generator().manual_seed(seed)
    diffs = []
    for _ in range(resamples):
        idx = torch.randint(0, n, (n,), generator=g)
        diffs.append(fd(fa[idx]) - fd(fb[idx]))
    tail = (1 - level) / 2
    lo, hi = np.quantile(np.asarray(diffs), [tail, 1 - tail])
    return fd(fa) - fd(fb), float(lo), float(hi)
