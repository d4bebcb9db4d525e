"""Image data for reference statistics: the training loaders, in fewstep's float ``[-1, 1]`` convention.

A spec is what ``fewstep train --data`` takes (see ``fewstep.training.data.DATA_FORMS``), e.g.
``fashion-mnist:test``; images come back float32 ``(n, C, H, W)`` in ``[-1, 1]``.
"""

from __future__ import annotations

from torch import Tensor

from ..data import FASHION_MNIST_DIR, load_data, load_fashion_mnist, read_idx, to_model_range

__all__ = ["read_idx", "fashion_mnist", "load_images"]


def fashion_mnist(split: str = "test", root: str | None = None) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST ``split`` as (images in [-1, 1] shaped (n, 1, 28, 28), int64 labels)."""
    import os

    data = load_fashion_mnist(root or os.environ.get("FEWSTEP_FASHION_MNIST", FASHION_MNIST_DIR), split)
    return to_model_range(data.images), data.labels


def load_images(spec: str) -> Tensor:
    """All images named by ``spec``, float32 in ``[-1, 1]``."""
    return to_model_range(load_data(spec).images)
