"""The built-in feature extractors by name: ``inception``, ``fashion`` and ``auto``.

The registry sits apart from :mod:`.features` (the base class), which the concrete extractors
import, so that no module imports one that imports it back.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .fashion_classifier import load_fashion_extractor
from .features import FeatureExtractor
from .inception import InceptionExtractor, find_inception_weights

__all__ = ["get_extractor", "EXTRACTORS"]

EXTRACTORS = ("auto", "fashion", "inception")


def get_extractor(name: "str | FeatureExtractor" = "auto", inception: str | Path | None = None,
                  device: str | torch.device = "cpu") -> FeatureExtractor:
    """A built-in extractor by name (a :class:`FeatureExtractor` instance is passed through).

    ``auto`` uses Inception when its weights are found (``inception`` argument, ``$FEWSTEP_INCEPTION``
    or the torch hub cache) and the shipped Fashion-MNIST classifier otherwise.
    """
    if isinstance(name, FeatureExtractor):
        return name.to(device).eval()
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of {', '.join(EXTRACTORS)}")
    if name == "auto":
        name = "inception" if find_inception_weights(inception, required=False) else "fashion"
    ext: FeatureExtractor
    if name == "inception":
        ext = InceptionExtractor(find_inception_weights(inception, required=True))
    else:
        ext = load_fashion_extractor()
    return ext.to(device).eval()
