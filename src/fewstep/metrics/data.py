"""Reading image data sets for reference statistics: IDX files, arrays and image folders.

Every loader returns float32 images shaped ``(n, C, H, W)`` in ``[-1, 1]``, fewstep's data
convention.  ``fashion-mnist:train`` / ``fashion-mnist:test`` name the IDX files of
Fashion-MNIST (Xiao et al. 2017) in ``$FEWSTEP_FASHION_MNIST`` or ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["read_idx", "fashion_mnist", "load_images", "to_signed"]

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number); expected e.g. t10k-images-idx3-ubyte.gz")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {dims}, found {arr.size} values")
    return arr.reshape(dims)


def to_signed(images: np.ndarray | Tensor) -> Tensor:
    """uint8 ``[0, 255]`` or float ``[0, 1]``/``[-1, 1]`` images to float32 ``[-1, 1]``, ``(n, C, H, W)``."""
    x = torch.as_tensor(np.array(images))  # a copy: IDX buffers are read-only
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"images must be (n, H, W) or (n, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)  # channels-last arrays
    if x.dtype == torch.uint8:
        return x.float().div(127.5).sub(1.0)
    x = x.float()
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0.0 and hi <= 1.0:
        return x * 2 - 1
    if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(f"float images must lie in [0, 1] or [-1, 1], found values in [{lo:.3g}, {hi:.3g}]")
    return x.clamp(-1, 1)


def fashion_mnist(split: str = "test", root: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST ``split`` as (images in [-1, 1] shaped (n, 1, 28, 28), int64 labels)."""
    if split not in FASHION_FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    root = Path(root or os.environ.get("FEWSTEP_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
    img_file, lab_file = (root / name for name in FASHION_FILES[split])
    if not img_file.exists():
        raise FileNotFoundError(f"Fashion-MNIST file {img_file} not found; put the IDX .gz files in a folder "
                                f"and set FEWSTEP_FASHION_MNIST to it")
    return to_signed(read_idx(img_file)), torch.as_tensor(read_idx(lab_file).astype(np.int64))


def _load_folder(folder: Path) -> Tensor:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) in folder {folder}")
    arrays = [np.asarray(Image.open(p)) for p in files]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"images in {folder} differ in size or mode; resize them to one shape first")
    return to_signed(np.stack(arrays))


def load_images(spec: str) -> Tensor:
    """Images named by ``spec``: ``fashion-mnist:SPLIT``, an IDX file, a ``.npy``/``.npz`` array or a folder."""
    if spec.startswith("fashion-mnist:"):
        return fashion_mnist(spec.split(":", 1)[1])[0]
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"data {spec!r} not found; pass fashion-mnist:test, an IDX file, a .npy/.npz "
                                f"array of images or a folder of PNG/JPEG images")
    if path.is_dir():
        return _load_folder(path)
    if path.suffix == ".npy":
        return to_signed(np.load(path))
    if path.suffix == ".npz":
        with np.load(path) as z:
            keys = [k for k in ("images", "x", "arr_0") if k in z]
            if not keys:
                raise ValueError(f"{path} holds arrays {list(z.keys())}; name the image array 'images'")
            return to_signed(z[keys[0]])
    if "idx" in path.name:
        return to_signed(read_idx(path))
    raise ValueError(f"cannot read {path}: use an IDX file, a .npy/.npz array or a folder of images")
