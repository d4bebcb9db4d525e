"""The feature-extractor base: any torch module mapping images in ``[-1, 1]`` to ``(batch, D)`` features.

An extractor carries a ``name`` and a ``fingerprint`` (a hash of its weights) that are saved
with reference statistics, so that statistics from different extractors are never compared.
This module holds only the base class and the hashing; the built-in extractors
(:mod:`.inception`, :mod:`.fashion_classifier`) import it, and :mod:`.extractors` picks one by name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["FeatureExtractor", "ModuleExtractor", "sha256_file", "state_dict_hash"]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def state_dict_hash(module: nn.Module) -> str:
    """Hex SHA-256 over a module's class name, parameter/buffer names, shapes and values."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        if isinstance(value, Tensor):
            v = value.detach().cpu().contiguous()
            h.update(str((tuple(v.shape), str(v.dtype))).encode())
            h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


class FeatureExtractor(nn.Module):
    """Base class: ``forward(images)`` with images ``(B, C, H, W)`` in ``[-1, 1]`` returns ``(B, D)``.

    Subclasses set ``name`` and ``num_features`` and may override :meth:`fingerprint` and
    :meth:`logits` (class probabilities for the Inception Score).
    """

    name: str = "custom"
    num_features: int
    channels: tuple[int, ...] | None = None  # image channels it takes (None: any)

    def fingerprint(self) -> str:
        return state_dict_hash(self)

    def logits(self, images: Tensor) -> Tensor:
        raise NotImplementedError(f"feature extractor {self.name!r} has no classifier head")

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")


class ModuleExtractor(FeatureExtractor):
    """Plug in any module ``images -> features``; its output is flattened to ``(B, D)``."""

    def __init__(self, module: nn.Module | Callable[[Tensor], Tensor], name: str | None = None,
                 num_features: int | None = None, sample_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.module = module
        self.name = name or f"module:{type(module).__qualname__}"
        if num_features is None:
            if sample_shape is None:
                raise ValueError("pass num_features, or sample_shape so the feature size can be probed")
            with torch.no_grad():
                num_features = int(self.forward(torch.zeros(1, *sample_shape)).shape[1])
        self.num_features = num_features

    def forward(self, images: Tensor) -> Tensor:
        out = self.module(images)
        return out.reshape(out.shape[0], -1)

    def fingerprint(self) -> str:
        if isinstance(self.module, nn.Module):
            return state_dict_hash(self.module)
        raise ValueError(f"cannot fingerprint {self.name!r}: wrap an nn.Module, or subclass FeatureExtractor "
                         f"and override fingerprint()")

