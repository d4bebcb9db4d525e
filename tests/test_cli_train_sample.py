import json

import numpy as np
import pytest

from conftest import tiny_config, tiny_images
from fewstep.cli import main


@pytest.fixture
def tiny_run(tmp_path):
    np.savez(tmp_path / "data.npz", images=tiny_images().numpy())
    cfg = tiny_config(steps=2)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    rc = main(["train", "--data", str(tmp_path / "data.npz"), "--config", str(tmp_path / "cfg.json"),
               "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 0
    return tmp_path


def test_train_then_resume_then_sample_formats(tiny_run, capsys):
    run = tiny_run / "run"
    assert (run / "checkpoints" / "step-00000002" / "ema.safetensors").exists()
    assert main(["train", "--out", str(run), "--resume", "--steps", "3", "--no-progress"]) == 0
    assert "resumed from step 2" in capsys.readouterr().out
    assert (run / "checkpoints" / "step-00000003").is_dir()
    # A new run into a folder with checkpoints needs --resume.
    assert main(["train", "--data", str(tiny_run / "data.npz"), "--config", str(tiny_run / "cfg.json"),
                 "--out", str(run), "--no-progress"]) == 1
    assert "--resume" in capsys.readouterr().err
    base = ["sample", "--model", str(run), "--nfe", "2", "--seed", "5", "--no-progress"]
    assert main(base + ["--n", "4", "--out", str(tiny_run / "g.png")]) == 0
    from PIL import Image
    assert Image.open(tiny_run / "g.png").size == (2 + 2 * 10, 2 + 2 * 10)
    assert main(base + ["--n", "3", "--out", str(tiny_run / "s.npz")]) == 0
    z = np.load(tiny_run / "s.npz")
    assert z["images"].shape == (3, 8, 8, 1) and z["seeds"].tolist() == [5, 6, 7]


def test_sample_into_a_folder_resumes_and_never_overwrites(tiny_run, capsys):
    out = tiny_run / "imgs"
    base = ["sample", "--model", str(tiny_run / "run"), "--nfe", "2", "--no-progress", "--batch-size", "2",
            "--out", str(out)]
    assert main(base + ["--n", "3"]) == 0
    first = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.png")}
    assert sorted(first) == ["000000.png", "000001.png", "000002.png"]
    assert main(base + ["--n", "5"]) == 0
    assert "3 of 5 images already" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:06d}.png" for i in range(5)]
    # A finished image is never rewritten.
    assert {name: (out / name).stat().st_mtime_ns for name in first} == {n: v[0] for n, v in first.items()}
    # Same seed -> same image, whatever the batch: seed 2 generated alone equals the folder's.
    assert main(["sample", "--model", str(tiny_run / "run"), "--nfe", "2", "--no-progress", "--seed", "2",
                 "--n", "1", "--out", str(tiny_run / "one")]) == 0
    assert (tiny_run / "one" / "000002.png").read_bytes() == first["000002.png"][1]


def test_cli_errors_are_messages(tmp_path, capsys):
    assert main(["sample", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["train", "--data", "fashion-mnist", "--config", "nope", "--out", str(tmp_path / "r")]) == 1
    assert "preset" in capsys.readouterr().err
