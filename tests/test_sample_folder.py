"""``fewstep sample --out FOLDER``: the manifest refuses mixed settings, broken PNGs are drawn again."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config, tiny_images
from fewstep.cli import main
from fewstep.solvers import DEFAULT_SOLVER


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained run (two steps) with EMA and raw weights."""
    root = tmp_path_factory.mktemp("run")
    np.savez(root / "data.npz", images=tiny_images().numpy())
    (root / "cfg.json").write_text(json.dumps(tiny_config(steps=2)))
    assert main(["train", "--data", str(root / "data.npz"), "--config", str(root / "cfg.json"),
                 "--out", str(root / "run"), "--no-progress"]) == 0
    return root / "run"


def _sample(run_dir, out, *extra):
    return main(["sample", "--model", str(run_dir), "--nfe", "2", "--no-progress", "--batch-size", "2",
                 "--out", str(out), *extra])


def _pngs(folder):
    return sorted(p.name for p in folder.glob("*.png"))


def _pixels(path):
    with Image.open(path) as img:
        return np.asarray(img)


def test_manifest_records_the_settings(run_dir, tmp_path):
    assert _sample(run_dir, tmp_path / "imgs", "--n", "2") == 0
    manifest = json.loads((tmp_path / "imgs" / "fewstep-samples.json").read_text())
    ckpt = run_dir / "checkpoints" / "step-00000002"
    assert manifest == {"format": "fewstep-samples", "format_version": 1, "model": str(ckpt.resolve()),
                        "ema": True, "solver": DEFAULT_SOLVER, "nfe": 2, "grid": "uniform", "teleport": None, "cache": None, "precision": "fp32", "class_label": None,
                        "guidance": None, "sample_shape": [1, 8, 8], "plan": manifest["plan"], "fewstep_version": manifest["fewstep_version"]}
    # the resolved plan: start, times and where they came from
    plan = manifest["plan"]
    assert plan["solver"] == DEFAULT_SOLVER and plan["nfe"] == 2 and plan["grid"] == "uniform"
    assert plan["start"] == {"t": 999.0, "kind": "prior", "source": "process start"}
    assert len(plan["times"]) == 3 and plan["times"][0] == 999.0 and plan["times"][-1] == 0.0 and plan["clean_end"]
    import fewstep
    assert manifest["fewstep_version"] == fewstep.__version__


@pytest.mark.parametrize("extra, field", [
    (["--nfe", "3"], "nfe 2 there, 3 now"),
    (["--solver", "euler"], f'solver "{DEFAULT_SOLVER}" there, "euler" now'),
    (["--grid", "karras"], 'grid "uniform" there, "karras" now'),
    (["--class-label", "1"], "class_label null there, 1 now"),
    (["--raw"], "ema true there, false now"),
    (["--cache", "deepcache:2"], 'cache null there, "deepcache:interval=2" now'),
    (["--teleport", "1.5"], "teleport null there, 1.5 now"),
    (["--precision", "bf16"], 'precision "fp32" there, "bf16" now'),
])
def test_other_settings_are_refused_before_loading(run_dir, tmp_path, capsys, monkeypatch, extra, field):
    out = tmp_path / "imgs"
    assert _sample(run_dir, out, "--n", "2") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    monkeypatch.setattr("fewstep.loading.load_model", lambda *a, **k: pytest.fail("model loaded"))
    args = ["sample", "--model", str(run_dir), "--no-progress", "--n", "4", "--out", str(out)]
    args += ["--nfe", "2"] if "--nfe" not in extra else []
    assert main(args + extra) == 1
    err = capsys.readouterr().err
    assert field in err and "another --out" in err and "delete the folder" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing added or changed


def test_a_manifest_without_images_is_replaced(run_dir, tmp_path, monkeypatch):
    """A run that failed before its first image leaves only a manifest: other settings may then use the folder."""
    import fewstep.api

    out = tmp_path / "imgs"
    monkeypatch.setattr(fewstep.api, "generate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    assert _sample(run_dir, out, "--n", "2") == 1
    assert os.listdir(out) == ["fewstep-samples.json"]
    monkeypatch.undo()
    assert _sample(run_dir, out, "--n", "2", "--nfe", "3") == 0
    assert json.loads((out / "fewstep-samples.json").read_text())["nfe"] == 3


def test_the_default_grid_is_recorded_by_name(run_dir, tmp_path):
    out = tmp_path / "imgs"
    assert _sample(run_dir, out, "--n", "1") == 0
    assert _sample(run_dir, out, "--n", "2", "--grid", "uniform") == 0  # the same grid, named
    assert _pngs(out) == ["000000.png", "000001.png"]


def test_new_weights_are_refused(run_dir, tmp_path, capsys):
    """A run folder means its newest checkpoint: after more training the folder's images are stale."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    out = tmp_path / "imgs"
    assert _sample(run, out, "--n", "1") == 0
    assert main(["train", "--out", str(run), "--resume", "--steps", "3", "--no-progress"]) == 0
    capsys.readouterr()
    assert _sample(run, out, "--n", "2") == 1
    err = capsys.readouterr().err
    assert "model" in err and "step-00000002" in err and "step-00000003" in err
    assert _sample(run / "checkpoints" / "step-00000002", out, "--n", "2") == 0  # that checkpoint still fits


def test_pngs_without_a_manifest_are_refused(run_dir, tmp_path, capsys):
    out = tmp_path / "photos"
    out.mkdir()
    Image.new("L", (8, 8)).save(out / "holiday.png")
    assert _sample(run_dir, out, "--n", "1") == 1
    err = capsys.readouterr().err
    assert "no fewstep-samples.json, and it cannot be rebuilt: its 1 PNG file records no settings" in err
    assert "rerun it with --adopt" in err and "another --out" in err
    assert _pngs(out) == ["holiday.png"]
    # An existing folder without PNGs is fine (empty, or other files only).
    (tmp_path / "empty").mkdir()
    assert _sample(run_dir, tmp_path / "empty", "--n", "1") == 0
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("samples go here")
    assert _sample(run_dir, tmp_path / "notes", "--n", "1") == 0
    assert _pngs(tmp_path / "notes") == ["000000.png"]


def test_broken_images_are_drawn_again(run_dir, tmp_path, capsys):
    out, fresh = tmp_path / "imgs", tmp_path / "fresh"
    assert _sample(run_dir, out, "--n", "5") == 0
    assert _sample(run_dir, fresh, "--n", "5") == 0
    good = (out / "000000.png").stat().st_mtime_ns
    data = (out / "000001.png").read_bytes()
    (out / "000001.png").write_bytes(data[:len(data) // 2])  # truncated
    (out / "000002.png").write_bytes(b"")  # empty
    Image.new("L", (4, 4)).save(out / "000003.png")  # a PNG of another size
    capsys.readouterr()
    assert _sample(run_dir, out, "--n", "5") == 0
    msg = capsys.readouterr().out
    assert "2 of 5 images already" in msg and "generating the other 3 (3 broken images" in msg
    for name in _pngs(fresh):
        np.testing.assert_array_equal(_pixels(out / name), _pixels(fresh / name))
    assert (out / "000000.png").stat().st_mtime_ns == good  # a good image is never rewritten


def test_broken_images_are_counted(run_dir, tmp_path, capsys):
    out = tmp_path / "imgs"
    assert _sample(run_dir, out, "--n", "3") == 0
    (out / "000001.png").write_bytes(b"")
    capsys.readouterr()
    assert _sample(run_dir, out, "--n", "4") == 0
    msg = capsys.readouterr().out
    assert "2 of 4 images already" in msg and "generating the other 2" in msg and "1 broken image," in msg


def test_a_crash_leaves_only_whole_images_and_a_rerun_finishes(run_dir, tmp_path, monkeypatch):
    import fewstep.api

    real, calls = fewstep.api.generate, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(fewstep.api, "generate", failing)
    out = tmp_path / "imgs"
    assert _sample(run_dir, out, "--n", "4") == 1
    assert _pngs(out) == ["000000.png", "000001.png"]
    assert sorted(os.listdir(out)) == ["000000.png", "000001.png", "fewstep-samples.json"]  # no temporary files
    monkeypatch.setattr(fewstep.api, "generate", real)
    assert _sample(run_dir, out, "--n", "4") == 0
    assert _pngs(out) == [f"{i:06d}.png" for i in range(4)]


def test_each_image_records_the_manifest(run_dir, tmp_path):
    out = tmp_path / "imgs"
    assert _sample(run_dir, out, "--n", "2") == 0
    manifest = (out / "fewstep-samples.json").read_text()
    for name in _pngs(out):
        with Image.open(out / name) as img:
            assert img.text["fewstep-samples"] == manifest


def test_a_truncated_manifest_is_rebuilt_from_the_images(run_dir, tmp_path, capsys):
    out = tmp_path / "imgs"
    assert _sample(run_dir, out, "--n", "3") == 0
    manifest = (out / "fewstep-samples.json").read_text()
    (out / "000002.png").write_bytes(b"")  # one broken image: left out of the rebuild, drawn again
    kept = {n: (out / n).stat().st_mtime_ns for n in ["000000.png", "000001.png"]}
    (out / "fewstep-samples.json").write_text(manifest[: len(manifest) // 2])
    capsys.readouterr()
    assert _sample(run_dir, out, "--n", "4") == 0
    text = capsys.readouterr().out
    assert "cannot read fewstep-samples.json" in text and "rebuilt it from the settings its 2 images record" in text
    assert (out / "fewstep-samples.json").read_text() == manifest
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept  # the valid images are kept, not redrawn
    assert _pngs(out) == ["000000.png", "000001.png", "000002.png", "000003.png"]
    # rebuilt, the manifest still refuses other settings
    (out / "fewstep-samples.json").write_text("{")
    assert _sample(run_dir, out, "--n", "4", "--nfe", "3") == 1
    assert "holds images made with other settings (nfe 2 there, 3 now)" in capsys.readouterr().err


def test_images_recording_no_settings_are_kept_with_adopt(run_dir, tmp_path, capsys):
    out = tmp_path / "imgs"
    assert _sample(run_dir, out, "--n", "2") == 0
    pixels = {n: _pixels(out / n) for n in _pngs(out)}
    for name in pixels:  # as an older fewstep wrote them: no text chunk
        Image.fromarray(pixels[name]).save(out / name)
    (out / "fewstep-samples.json").write_text('{"format": "fewstep-sam')
    capsys.readouterr()
    assert _sample(run_dir, out, "--n", "3") == 1
    err = capsys.readouterr().err
    assert "cannot read fewstep-samples.json" in err and "its 2 PNG files record no settings" in err
    assert "rerun it with --adopt to keep them" in err
    assert _sample(run_dir, out, "--n", "3", "--adopt") == 0
    assert {n: _pixels(out / n) for n in pixels}.keys() == pixels.keys()
    for name, arr in pixels.items():
        assert np.array_equal(_pixels(out / name), arr)
    assert json.loads((out / "fewstep-samples.json").read_text())["nfe"] == 2
    assert _pngs(out) == ["000000.png", "000001.png", "000002.png"]
    assert _sample(run_dir, tmp_path / "grid.png", "--n", "1", "--adopt") == 1
    assert "--adopt is for --out FOLDER" in capsys.readouterr().err


def test_a_bundled_name_with_other_weights_is_refused(tmp_path, capsys):
    """A bundled name can ship new weights in a later release (bundled:fashion-fewstep did): the manifest records
    which weights drew the images; an older manifest without that record is still accepted."""
    out = tmp_path / "imgs"
    base = ["sample", "--model", "bundled:fashion-fewstep", "--nfe", "1", "--no-progress", "--out", str(out)]
    assert main([*base, "--n", "1"]) == 0
    path = out / "fewstep-samples.json"
    manifest = json.loads(path.read_text())
    assert manifest["weights"].startswith("sha256:") and len(manifest["weights"]) == 23
    path.write_text(json.dumps({**manifest, "weights": "sha256:0123456789abcdef"}))  # drawn by other weights
    capsys.readouterr()
    assert main([*base, "--n", "2"]) == 1
    assert 'weights "sha256:0123456789abcdef" there' in capsys.readouterr().err
    path.write_text(json.dumps({k: v for k, v in manifest.items() if k != "weights"}))  # an older manifest
    assert main([*base, "--n", "2"]) == 0
    assert _pngs(out) == ["000000.png", "000001.png"]
