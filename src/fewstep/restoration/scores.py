"""Per-image quality of restored images against the ground truth: PSNR and SSIM."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from ..metrics.solution_error import per_sample_rmse, psnr
from ..metrics.ssim import ssim

__all__ = ["image_scores", "summarize_scores"]


def image_scores(restored: Tensor, truth: Tensor) -> dict[str, np.ndarray]:
    """``psnr`` (data range 2 on ``[-1, 1]``, :mod:`fewstep.metrics.solution_error`) and ``ssim`` (on the images
    mapped to ``[0, 1]``, data range 1, :func:`fewstep.metrics.ssim.ssim`) per image, both clamped to ``[-1, 1]``."""
    r01 = (restored.detach().double().cpu().clamp(-1, 1) + 1) / 2
    t01 = (truth.detach().double().cpu().clamp(-1, 1) + 1) / 2
    return {"psnr": psnr(per_sample_rmse(restored, truth).numpy()), "ssim": ssim(r01, t01, 1.0).numpy()}


def summarize_scores(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean and standard error of each per-image score."""
    out: dict[str, float] = {}
    for key, v in scores.items():
        v = np.asarray(v, dtype=np.float64)
        out[key] = float(v.mean())
        out[f"{key}_se"] = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    return out
