import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_idx
from fewstep.data import load_array, load_data, load_fashion_mnist, load_image_folder, read_idx


def test_fashion_mnist_from_idx_gz(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(5, dtype=np.uint8))
    data = load_fashion_mnist(tmp_path)
    assert data.images.shape == (5, 1, 28, 28) and data.images.dtype == torch.uint8
    assert np.array_equal(data.images[:, 0].numpy(), imgs)
    assert data.labels.tolist() == [0, 1, 2, 3, 4] and data.num_classes == 10
    assert len(load_data(f"fashion-mnist:{tmp_path}", 28, 1)) == 5


def test_idx_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(bad, np.zeros((4, 3, 3), np.uint8))
    raw = __import__("gzip").decompress(bad.read_bytes())
    bad.write_bytes(__import__("gzip").compress(raw[:-5]))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(bad)
    (tmp_path / "junk.idx").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "junk.idx")


def test_image_folder_resizes_crops_and_skips_corrupt_files(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("L", (10, 30), 128).save(tmp_path / "sub" / "b.jpg")
    Image.new("RGBA", (16, 16), (0, 0, 255, 255)).save(tmp_path / "c.webp")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        data = load_image_folder(tmp_path, resolution=8, channels=3)
    assert data.images.shape == (3, 3, 8, 8)
    assert data.images[0, 0].float().mean() > 250 and data.images[0, 1].float().mean() < 5  # red stays red
    with pytest.warns(UserWarning):
        gray = load_image_folder(tmp_path, resolution=8, channels=1)
    assert gray.images.shape == (3, 1, 8, 8)


def test_empty_folder_and_wrong_channels_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no readable images"):
        load_image_folder(tmp_path, 8, 3)
    np.save(tmp_path / "rgb.npy", np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="3 channel.*expects 1"):
        load_data(str(tmp_path / "rgb.npy"), 8, 1)
    np.save(tmp_path / "empty.npy", np.zeros((0, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        load_data(str(tmp_path / "empty.npy"), 8, 1)
    with pytest.raises(FileNotFoundError, match="not found; pass fashion-mnist"):
        load_data(str(tmp_path / "missing"), 8, 1)


def test_npz_layouts_and_float_ranges(tmp_path):
    x = np.random.default_rng(0).random((6, 2, 2)).astype(np.float32)  # [0, 1] floats, (N, H, W)
    np.savez(tmp_path / "d.npz", images=x * 2 - 1, labels=np.arange(6))  # stored in [-1, 1]
    data = load_array(tmp_path / "d.npz")
    assert data.images.shape == (6, 1, 2, 2) and data.labels.tolist() == list(range(6))
    assert np.allclose(data.images[:, 0].numpy(), np.round(x * 255), atol=1)
    np.save(tmp_path / "nchw.npy", np.zeros((3, 3, 5, 5), np.uint8))
    assert load_array(tmp_path / "nchw.npy").images.shape == (3, 3, 5, 5)
    np.save(tmp_path / "bad.npy", np.zeros((3, 5), np.uint8))
    with pytest.raises(ValueError, match="images must be"):
        load_array(tmp_path / "bad.npy")
