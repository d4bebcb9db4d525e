"""Per-sample error of generated images to reference images of the same seeds: RMSE and PSNR.

Both images are clamped to the model range ``[-1, 1]`` (what a stored image keeps) and compared
in float64, without 8-bit quantisation (its own error, ``1 / (127.5 sqrt 12) = 0.0023`` RMSE,
would hide the differences between accurate solvers).  For sample ``i`` with ``P`` pixel values

    RMSE_i = sqrt( (1/P) sum_p (clamp(x_ip) - clamp(r_ip))^2 )
    PSNR_i = 20 log10( 2 / RMSE_i )            (data range 2; +inf when RMSE_i = 0)

and a set of ``n`` samples is summarised by the mean, median and standard error
(``std / sqrt(n)``, ``ddof = 1``) of ``RMSE_i`` and the mean and standard error of ``PSNR_i``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["DATA_RANGE", "per_sample_rmse", "psnr", "summarize_errors"]

DATA_RANGE = 2.0
"""The width of the model range ``[-1, 1]``: the peak signal of PSNR."""


def per_sample_rmse(images: Tensor, reference: Tensor, clamp: bool = True) -> Tensor:
    """``RMSE_i`` over all pixel values of each sample, both sides clamped to ``[-1, 1]`` (``clamp=False``: not
    clamped, for samples that are not images, e.g. an exact mixture's vectors): float64 ``(B,)``."""
    if images.shape != reference.shape:
        raise ValueError(f"images {tuple(images.shape)} and reference images {tuple(reference.shape)} differ in "
                         f"shape; the reference must hold one image per seed, shaped like the samples")
    x = images.detach().to("cpu", torch.float64)
    r = reference.detach().to("cpu", torch.float64)
    if clamp:
        x, r = x.clamp(-1, 1), r.clamp(-1, 1)
    return (x - r).pow(2).flatten(1).mean(1).sqrt()


def psnr(rmse: np.ndarray | Tensor | float, data_range: float = DATA_RANGE) -> np.ndarray:
    """``20 log10(data_range / rmse)`` elementwise (``+inf`` where ``rmse == 0``)."""
    r = np.asarray(rmse, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 20.0 * np.log10(data_range / r)


def summarize_errors(rmse: np.ndarray) -> dict[str, float]:
    """``rmse`` (mean of ``RMSE_i``), ``rmse_median``, ``rmse_se``, ``psnr`` (mean of ``PSNR_i``) and ``psnr_se``."""
    r = np.asarray(rmse, dtype=np.float64).reshape(-1)
    if r.size == 0:
        raise ValueError("no per-sample errors to summarise")
    p = psnr(r)

    def se(v: np.ndarray) -> float:
        if v.size < 2 or not np.all(np.isfinite(v)):
            return math.nan
        return float(v.std(ddof=1) / math.sqrt(v.size))

    return {"rmse": float(r.mean()), "rmse_median": float(np.median(r)), "rmse_se": se(r),
            "psnr": float(p.mean()), "psnr_se": se(p)}
