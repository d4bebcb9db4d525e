"""Resolving what to evaluate: the model, its sample shape, the extractor and the reference statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from .fashion_classifier import asset_dir
from .features import FeatureExtractor
from .stats import FeatureStats

__all__ = ["load_denoiser", "sample_shape", "reference_stats", "SHIPPED_STATS"]

SHIPPED_STATS = {"fashion-classifier-v1": "fashion_test_stats.npz"}
KNOWN_SHAPES = {"bundled:fashion": (1, 28, 28)}


def load_denoiser(model: Any, device: Any = None):
    """A denoiser object as is, or a model name/path through ``fewstep.load_model``; its network
    (found through wrappers' ``inner``) is moved to ``device`` and put in eval mode."""
    if isinstance(model, str):
        import fewstep

        load_model = getattr(fewstep, "load_model", None)
        if load_model is None:
            try:
                from ..loading import load_model  # type: ignore[import-not-found,no-redef]
            except ImportError as err:  # pragma: no cover - until the loading module is merged
                raise RuntimeError(f"cannot load {model!r}: this fewstep has no fewstep.load_model") from err
        model = load_model(model)
    inner = model
    while inner is not None:
        net = getattr(inner, "net", None)
        if isinstance(net, torch.nn.Module):
            if device is not None:
                net.to(device)
            net.eval()
        inner = getattr(inner, "inner", None)
    return model


def sample_shape(denoiser: Any, model: Any = None, override: Sequence[int] | None = None) -> tuple[int, ...]:
    """``(C, H, W)``: ``override``, else the denoiser's ``sample_shape``, else a known model's."""
    if override:
        return tuple(int(v) for v in override)
    for attr in ("sample_shape", "shape"):
        shape = getattr(denoiser, attr, None)
        if shape:
            return tuple(int(v) for v in shape)
    if isinstance(model, str) and model in KNOWN_SHAPES:
        return KNOWN_SHAPES[model]
    raise ValueError("cannot tell the model's sample shape; pass --shape C,H,W (e.g. --shape 1,28,28)")


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
