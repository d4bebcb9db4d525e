"""Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic kernel.

``k(x, y) = (x.y / d + 1)^3``; the estimate is averaged over random subsets (mean and standard
deviation reported), in float64.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["polynomial_mmd2", "kernel_inception_distance"]


def polynomial_mmd2(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) between sets ``x`` ``(m, d)`` and ``y`` ``(n, d)``."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    m, n, d = len(x), len(y), x.shape[1]
    if m < 2 or n < 2:
        raise ValueError("the unbiased MMD needs at least 2 samples in each set")
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID: mean and (population) standard deviation of the MMD^2 over ``subsets`` random subsets.

    ``subset_size`` is capped at the smaller set's size; each subset is drawn without replacement.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"KID needs two (n, d) feature sets of equal d, got {real.shape} and {fake.shape}")
    size = min(subset_size, len(real), len(fake))
    rng = np.random.default_rng(seed)
    scores = [polynomial_mmd2(real[rng.choice(len(real), size, replace=False)],
                              fake[rng.choice(len(fake), size, replace=False)]) for _ in range(subsets)]
    return float(np.mean(scores)), float(np.std(scores))
