"""``fewstep sample --out``: the suffix picks the format, and a bad destination fails before any sampling."""

import os

import numpy as np
import pytest
from PIL import Image

from fewstep.cli import main

BASE = ["sample", "--model", "bundled:fashion", "--nfe", "1", "--solver", "euler", "--n", "4", "--no-progress"]


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the model is loaded: the checks under test come first."""
    monkeypatch.setattr("fewstep.loading.load_model", lambda *a, **k: pytest.fail("the model was loaded"))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_grid_formats_follow_the_suffix(tmp_path):
    for name in ["g.png", "g.jpg", "g.jpeg", "g.webp", "G.PNG"]:
        assert main(BASE + ["--out", str(tmp_path / name)]) == 0
    formats = {}
    for name in ["g.png", "g.jpg", "g.jpeg", "g.webp", "G.PNG"]:
        with Image.open(tmp_path / name) as img:
            formats[name] = img.format
            assert img.size == (2 + 2 * 30, 2 + 2 * 30)
    assert formats == {"g.png": "PNG", "g.jpg": "JPEG", "g.jpeg": "JPEG", "g.webp": "WEBP", "G.PNG": "PNG"}
    png, webp = (np.asarray(Image.open(tmp_path / n).convert("L")) for n in ("g.png", "g.webp"))
    np.testing.assert_array_equal(png, webp)  # WebP is written lossless
    assert not (tmp_path / "g.jpg").is_dir()


def test_npz_and_folders(tmp_path):
    assert main(BASE + ["--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as z:
        assert z["images"].shape == (4, 28, 28, 1) and z["seeds"].tolist() == [0, 1, 2, 3]
    assert main(BASE + ["--out", str(tmp_path / "plain")]) == 0
    assert main(BASE + ["--out", str(tmp_path / "run.v2") + "/"]) == 0  # a trailing / means a folder
    (tmp_path / "existing.png").mkdir()
    assert main(BASE + ["--out", str(tmp_path / "existing.png")]) == 0  # an existing folder stays a folder
    for folder in ("plain", "run.v2", "existing.png"):
        assert sorted(p.name for p in (tmp_path / folder).glob("*.png")) == [f"{i:06d}.png" for i in range(4)]


def test_an_unknown_suffix_is_refused_with_the_choices(tmp_path, capsys, no_model):
    assert main(BASE + ["--out", str(tmp_path / "x.gif")]) == 1
    err = _one_line_error(capsys)
    assert "x.gif" in err and ".gif" in err and all(s in err for s in (".png", ".jpg", ".webp", ".npz", "folder"))
    assert list(tmp_path.iterdir()) == []


def test_a_file_in_the_way_fails_before_loading(tmp_path, capsys, no_model):
    (tmp_path / "f.txt").write_text("")
    for out in ["f.txt/sub/grid.png", "f.txt/imgs"]:
        assert main(BASE + ["--out", str(tmp_path / out)]) == 1
        err = _one_line_error(capsys)
        assert str(tmp_path / out) in err and "f.txt, which is a file" in err
    (tmp_path / "taken").write_text("")
    assert main(BASE + ["--out", str(tmp_path / "taken") + "/"]) == 1
    assert "is a file, not a folder" in _one_line_error(capsys)


def test_an_unwritable_destination_fails_before_loading(tmp_path, capsys, no_model, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(locked) else real(p, mode, **kw))
    for out in ["grid.png", "deep/er/s.npz", "imgs"]:
        assert main(BASE + ["--out", str(locked / out)]) == 1
        err = _one_line_error(capsys)
        assert f"cannot write to {locked}" in err and str(locked / out) in err
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_folder_fails_before_loading(tmp_path, capsys, no_model):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert main(BASE + ["--out", str(locked / "grid.png")]) == 1
        assert "cannot write to" in _one_line_error(capsys)
    finally:
        locked.chmod(0o700)
