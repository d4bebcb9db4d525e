"""Image data sets held in memory as ``uint8`` tensors ``(N, C, H, W)``.

Sources: a folder of images (anything Pillow reads; resized and centre-cropped), a ``.npz`` /
``.npy`` array, and Fashion-MNIST's idx ``.gz`` files (Xiao et al. 2017).
"""

from __future__ import annotations

import gzip
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["ImageData", "read_idx", "load_fashion_mnist", "load_image_folder", "load_array", "load_data",
           "FASHION_MNIST_DIR", "IMAGE_SUFFIXES", "to_model_range", "random_hflip"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass
class ImageData:
    """``images``: uint8 ``(N, C, H, W)`` (or float latents already in model space: :class:`fewstep.latent.LatentData`);
    ``labels``: int64 ``(N,)`` or None."""

    images: Tensor
    labels: Tensor | None = None
    num_classes: int = 0

    def __len__(self) -> int:
        return self.images.shape[0]

    def to_images(self, x: Tensor) -> Tensor:
        """Model-space samples as images in [-1, 1]: ``x`` itself (a latent data set decodes them)."""
        return x


def random_hflip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Each image of ``x`` ``(B, C, H, W)`` flipped left-right with probability 1/2 (one draw per image from
    ``generator``): the training augmentation of every objective that flips."""
    flip = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def to_model_range(images: Tensor) -> Tensor:
    """uint8 ``[0, 255]`` -> float32 ``[-1, 1]``; float tensors (latents) are already in model space."""
    if images.is_floating_point():
        return images.float()
    return images.float() / 127.5 - 1.0


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (LeCun's MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read idx file {path}: {err}; is it a complete idx(.gz) file?") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {dims}, found {data.size} values")
    return data.reshape(dims)


def load_fashion_mnist(root: str | os.PathLike = FASHION_MNIST_DIR, split: str = "train") -> ImageData:
    """Fashion-MNIST from ``{split}-images-idx3-ubyte.gz`` and labels (split ``train`` or ``t10k``)."""
    root = Path(root)
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; valid: train, test")
    img_path = root / f"{prefix}-images-idx3-ubyte.gz"
    if not img_path.exists():
        raise FileNotFoundError(f"{img_path} not found; install Debian's dataset-fashion-mnist package "
                                f"or pass --data fashion-mnist:/folder/with/idx/files")
    images = read_idx(img_path)
    if images.ndim != 3:
        raise ValueError(f"{img_path} holds shape {images.shape}, expected (N, H, W)")
    lab_path = root / f"{prefix}-labels-idx1-ubyte.gz"
    labels = torch.from_numpy(read_idx(lab_path).astype(np.int64)) if lab_path.exists() else None
    return ImageData(torch.from_numpy(images.copy())[:, None], labels, 10 if labels is not None else 0)


def _resize_crop(img, resolution: int):
    from PIL import Image

    w, h = img.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def load_image_folder(root: str | os.PathLike, resolution: int, channels: int = 3) -> ImageData:
    """Every image under ``root`` (recursively), resized and centre-cropped to ``resolution``.

    Unreadable files are skipped and counted in one warning.  ``channels`` is 1 (grayscale) or 3 (RGB).
    """
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    files = sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    out, bad = [], []
    for path in files:
        try:
            with Image.open(path) as img:
                img = img.convert("L" if channels == 1 else "RGB")
                arr = np.asarray(_resize_crop(img, resolution), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            bad.append(path.name)
            continue
        out.append(arr.reshape(resolution, resolution, channels))
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable or corrupt image file(s) in {root} (e.g. {bad[0]})", stacklevel=2)
    if not out:
        raise ValueError(f"no readable images found in {root} (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    return ImageData(torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous())


def load_array(path: str | os.PathLike, channels: int | None = None) -> ImageData:
    """Images from ``.npy`` or ``.npz`` (key ``images`` / ``x`` / the first array; optional ``labels``).

    Accepts ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` with C in {1, 3}; uint8, or floats in
    ``[0, 1]`` or ``[-1, 1]``.  Arrays are loaded with ``allow_pickle=False``.
    """
    path = Path(path)
    arr, labels_arr = _read_arrays(path)
    labels = None if labels_arr is None else torch.from_numpy(labels_arr.astype(np.int64)).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{path} holds no images (its array has shape {arr.shape})")
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"{path}: images must be (N,H,W), (N,H,W,C) or (N,C,H,W) with C in {{1,3}}, got {arr.shape}")
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        lo = arr.min() if arr.size else 0.0
        hi = arr.max() if arr.size else 0.0
        if lo < -1 - 1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"{path}: float images must lie in [0, 1] or [-1, 1], found values in [{lo:.3g}, {hi:.3g}]")
        arr = (arr + 1) / 2 if lo < 0 else arr
        arr = np.clip(np.round(arr * 255), 0, 255).astype(np.uint8)
    if channels is not None and arr.shape[1] != channels:
        raise ValueError(f"{path} has {arr.shape[1]} channel(s) but {channels} were asked for; "
                         f"set the network's in_channels to {arr.shape[1]}")
    if labels is not None and len(labels) != len(arr):
        raise ValueError(f"{path}: {len(labels)} labels for {len(arr)} images")
    images = torch.from_numpy(np.ascontiguousarray(arr))
    return ImageData(images, labels, int(labels.max()) + 1 if labels is not None and len(labels) else 0)


_NPY_MAGIC, _ZIP_MAGICS = b"\x93NUMPY", (b"PK\x03\x04", b"PK\x05\x06")


def _read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(images, labels or None)`` of an ``.npy`` / ``.npz`` file; an empty, truncated, corrupt or foreign file
    raises one :class:`ValueError` naming it and what is wrong (never a zip or EOF traceback)."""
    import zipfile
    import zlib

    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as err:
        raise ValueError(f"cannot read array file {path}: {err.strerror or err}") from None
    if not head:
        raise ValueError(f"{path} is empty (0 bytes); was it written completely?")
    if not head.startswith(_NPY_MAGIC) and not head.startswith(_ZIP_MAGICS):
        raise ValueError(f"{path} is not a NumPy array file: it starts with neither the .npy nor the .npz (zip) "
                         f"signature; give a file written by numpy.save or numpy.savez")
    kind = "npy" if head.startswith(_NPY_MAGIC) else "npz"
    damaged = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
    what = "a complete .npz (zip) archive" if kind == "npz" else "a complete .npy array"
    try:
        loaded = np.load(path, allow_pickle=False)
    except damaged as err:
        raise ValueError(_pickled(path, err) or f"{path} is damaged: not {what} ({_why(err)}); was it written "
                         f"completely?") from None
    if kind == "npy":
        return loaded, None
    with loaded:
        keys = list(loaded.keys())
        if not keys:
            raise ValueError(f"{path} holds no arrays")
        key = next((k for k in ("images", "x", "arr_0") if k in keys), keys[0])
        out = []
        for name in [key] + (["labels"] if "labels" in keys else []):
            try:
                out.append(loaded[name])
            except damaged as err:
                raise ValueError(_pickled(path, err) or f"{path} is damaged: its array {name!r} cannot be read "
                                 f"({_why(err)}); was it written completely?") from None
    return out[0], out[1] if len(out) > 1 else None


def _why(err: BaseException) -> str:
    return str(err).strip() or type(err).__name__


def _pickled(path: Path, err: BaseException) -> str | None:
    """The message for numpy's refusal of object (pickled) arrays, else None."""
    if isinstance(err, ValueError) and "allow_pickle" in str(err):
        return f"{path} holds pickled Python objects, which fewstep never loads; save plain numeric arrays"
    return None


def _fashion_spec(spec: str) -> tuple[str, str]:
    """``fashion-mnist[:train|:test|:DIR]`` -> (folder, split); the folder defaults to
    ``$FEWSTEP_FASHION_MNIST`` or Debian's ``/usr/share/datasets/fashion-mnist``."""
    rest = spec.partition(":")[2]
    root = os.environ.get("FEWSTEP_FASHION_MNIST", FASHION_MNIST_DIR)
    if rest in ("train", "test", "t10k"):
        return root, rest
    return (rest or root), "train"


DATA_FORMS = "fashion-mnist[:train|:test|:DIR], an idx(.gz) file, a .npz/.npy array or a folder of images"


def load_data(spec: str, resolution: int | None = None, channels: int | None = None) -> ImageData:
    """Resolve a data spec (:data:`DATA_FORMS`) into uint8 images.

    ``resolution`` and ``channels`` are what the network expects: a folder is resized and
    centre-cropped to ``resolution`` (``None``: the first image's shorter side) and converted to
    ``channels`` (``None``: grayscale or RGB as the first image is); other sources must already match, or the error says what to set.
    """
    path = Path(spec)
    if spec == "fashion-mnist" or spec.startswith("fashion-mnist:"):
        root, split = _fashion_spec(spec)
        data = load_fashion_mnist(root, split)
    elif not path.exists():
        raise FileNotFoundError(f"data {spec!r} not found; pass {DATA_FORMS}")
    elif path.suffix in (".npz", ".npy"):
        data = load_array(path)
    elif path.is_dir():
        if resolution is None or channels is None:  # as stored: from the first image
            from PIL import Image

            first = next((p for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES), None)
            if first is None:
                raise ValueError(f"no images found in {path} (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
            with Image.open(first) as img:
                resolution = resolution or min(img.size)
                channels = channels or (1 if img.mode in ("1", "L", "I", "I;16", "F") else 3)
        data = load_image_folder(path, resolution, channels)
    elif "idx" in path.name:
        images = read_idx(path)
        data = ImageData(torch.from_numpy(images.copy())[:, None] if images.ndim == 3 else torch.from_numpy(images.copy()))
    else:
        raise ValueError(f"cannot read {spec!r}; pass {DATA_FORMS}")
    if len(data) == 0:
        raise ValueError(f"data set {spec!r} is empty")
    if channels is not None and data.images.shape[1] != channels:
        raise ValueError(f"data set {spec!r} has {data.images.shape[1]} channel(s) but the network expects "
                         f"{channels}; set in_channels to {data.images.shape[1]}")
    if resolution is not None and tuple(data.images.shape[-2:]) != (resolution, resolution):
        raise ValueError(f"data set {spec!r} images are {tuple(data.images.shape[-2:])}, the network expects "
                         f"{resolution}x{resolution}; set the network's resolution to match")
    return data
