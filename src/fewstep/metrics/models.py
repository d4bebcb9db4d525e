"""Resolving what to evaluate: the model, its sample shape and the reference statistics."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..denoisers import DenoiserBase
from ..loading import load_model
from .fashion_classifier import asset_dir
from .features import FeatureExtractor
from .stats import FeatureStats

__all__ = ["load_denoiser", "sample_shape", "reference_stats", "reference_id", "SHIPPED_STATS"]

SHIPPED_STATS = {"fashion-classifier-v1": "fashion_test_stats.npz"}


def load_denoiser(model: Any, device: Any = None) -> Any:
    """A denoiser object as is, or a model name/path through ``fewstep.loading.load_model``; its
    networks (``denoiser.networks()``, through any wrappers) are moved to ``device`` and put in eval mode."""
    if isinstance(model, str):
        model = load_model(model)

    if not isinstance(model, DenoiserBase):
        raise TypeError(f"expected a model path or a fewstep denoiser, got {type(model).__name__}")
    for net in model.networks():
        if device is not None:
            net.to(device)
        net.eval()
    return model


def sample_shape(denoiser: Any, override: Sequence[int] | None = None) -> tuple[int, ...]:
    """``(C, H, W)``: ``override`` (``--shape``), else the shape the denoiser declares (``sample_shape``)."""
    if override:
        return tuple(int(v) for v in override)
    shape = getattr(denoiser, "sample_shape", None)
    if shape:
        return tuple(int(v) for v in shape)
    raise ValueError("the model does not declare its sample shape; pass --shape C,H,W (e.g. --shape 1,28,28)")


def reference_stats(ref: str | Path | None, extractor: FeatureExtractor) -> FeatureStats:
    """Load ``ref``, or the statistics shipped for ``extractor`` (Fashion-MNIST test set) when ``ref`` is None."""
    if ref:
        stats = FeatureStats.load(ref)
    elif extractor.name in SHIPPED_STATS:
        stats = FeatureStats.load(asset_dir() / SHIPPED_STATS[extractor.name])
    else:
        raise ValueError(f"no reference statistics ship for extractor {extractor.name!r}; make them with "
                         f"`fewstep stats --data ... --extractor ... --out ref.npz` and pass --ref ref.npz")
    probe = FeatureStats.like(extractor)
    probe.check_compatible(stats)
    return stats


def reference_id(stats: FeatureStats) -> str:
    """A short hash of reference statistics' contents (n, mean, covariance, kept features), whatever the file's name."""
    h = hashlib.sha256(f"{stats.extractor}:{stats.fingerprint}:{stats.n}".encode())
    for a in (stats.mu, stats.sigma, stats.features):
        h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]
