"""Image data loading for ``fewstep stats``: IDX, arrays, folders, value ranges."""

import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from fewstep.metrics.data import load_images, read_idx


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def test_idx_gz_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    with gzip.open(tmp_path / "x-idx3-ubyte.gz", "wb") as f:
        f.write(_idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), arr)
    x = load_images(str(tmp_path / "x-idx3-ubyte.gz"))
    assert x.shape == (2, 1, 3, 4) and x.dtype == torch.float32
    assert float(x[0, 0, 0, 0]) == -1.0
    (tmp_path / "bad-idx").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="bad magic number"):
        read_idx(tmp_path / "bad-idx")


def test_arrays_folders_and_ranges(tmp_path):
    imgs = (np.random.default_rng(0).random((3, 5, 5)) * 255).astype(np.uint8)
    for i, a in enumerate(imgs):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    folder = load_images(str(tmp_path))
    np.savez(tmp_path / "a.npz", images=imgs)
    torch.testing.assert_close(folder, load_images(str(tmp_path / "a.npz")))
    np.save(tmp_path / "f.npy", imgs.astype(np.float32) / 255)
    torch.testing.assert_close(load_images(str(tmp_path / "f.npy")), folder)
    np.save(tmp_path / "last.npy", np.zeros((2, 4, 4, 3), np.uint8))
    assert load_images(str(tmp_path / "last.npy")).shape == (2, 3, 4, 4)  # channels-last
    np.save(tmp_path / "big.npy", np.full((1, 4, 4), 3.0))
    with pytest.raises(ValueError, match=r"\[0, 1\] or \[-1, 1\]"):
        load_images(str(tmp_path / "big.npy"))
    with pytest.raises(FileNotFoundError, match="not found; pass fashion-mnist"):
        load_images(str(tmp_path / "missing.npy"))
