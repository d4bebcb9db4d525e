"""Resume robustness: damaged checkpoints, torn log lines, stale temporaries, stale logs, older configs."""

import json

import numpy as np
import pytest
import torch

from conftest import tiny_config, tiny_images
from fewstep.checkpoint import CheckpointDamaged, list_checkpoints
from fewstep.cli import main
from fewstep.data import ImageData
from fewstep.training.trainer import Trainer
from fewstep.training.denoising import DenoisingSettings


def _trainer(path, **training):
    cfg = tiny_config(**{"checkpoint_every_steps": 1, "keep_checkpoints": 3, **training})
    return Trainer(cfg, ImageData(tiny_images()), path, progress=False)


def _steps(run):
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture
def reference(tmp_path):
    """The losses and weights of an uninterrupted 4-step run."""
    tr = _trainer(tmp_path / "full")
    losses = tr.fit()
    return losses, {k: v.clone() for k, v in tr.model.state_dict().items()}


def _damage_data(path, fill=b"\xff"):
    """Overwrite the last 64 bytes of a safetensors file's tensor data, keeping its header valid (NaN in float32)."""
    data = bytearray(path.read_bytes())
    data[-64:] = fill * 64
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate-weights", "garbage-config", "truncate-config", "garbage-optimizer",
                                    "missing-ema", "corrupt-weights-data", "corrupt-optimizer-data",
                                    "nan-weights-without-checksums"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, reference, damage):
    run = tmp_path / "run"
    _trainer(run).fit(steps=3)
    newest = run / "checkpoints" / "step-00000003"
    if damage == "truncate-weights":
        data = (newest / "model.safetensors").read_bytes()
        (newest / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "garbage-config":
        (newest / "config.json").write_bytes(b"\x00\xff garbage")
    elif damage == "truncate-config":
        text = (newest / "config.json").read_text()
        (newest / "config.json").write_text(text[: len(text) // 2])
    elif damage == "garbage-optimizer":
        (newest / "optimizer.safetensors").write_bytes(b"not a safetensors file")
    elif damage == "corrupt-weights-data":
        _damage_data(newest / "model.safetensors")
    elif damage == "corrupt-optimizer-data":
        _damage_data(newest / "optimizer.safetensors", b"\x01")  # finite values: only the checksum can tell
    elif damage == "nan-weights-without-checksums":  # a checkpoint written before checksums were recorded
        (newest / "checksums.json").unlink()
        _damage_data(newest / "ema.safetensors")
    else:
        (newest / "ema.safetensors").unlink()
    tr = _trainer(run)
    why = {"corrupt-weights-data": r"model.safetensors does not match the sha256",
           "corrupt-optimizer-data": r"optimizer.safetensors does not match the sha256",
           "nan-weights-without-checksums": r"ema.safetensors holds NaN"}.get(damage, "")
    with pytest.warns(RuntimeWarning, match=r"skipped the damaged checkpoint .*step-00000003.*" + why
                      + r".*resuming from .*step-00000002"):
        assert tr.resume() == 2
    assert (run / "checkpoints" / "step-00000003.damaged").is_dir()
    rest = tr.fit()
    losses, weights = reference
    assert rest == losses[2:]
    for k, v in tr.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002", "step-00000003", "step-00000004"]


def test_no_intact_checkpoint_is_one_clear_error_naming_the_files(tmp_path):
    run = tmp_path / "run"
    _trainer(run, keep_checkpoints=2).fit(steps=2)
    for folder in list_checkpoints(run):
        (folder / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointDamaged) as err:
        _trainer(run).resume()
    msg = str(err.value)
    assert "no intact checkpoint" in msg
    assert "step-00000001/model.safetensors" in msg and "step-00000002/model.safetensors" in msg


def test_cli_resume_skips_a_damaged_checkpoint_and_errors_cleanly_when_none_is_left(tmp_path, capsys):
    np.savez(tmp_path / "data.npz", images=tiny_images().numpy())
    (tmp_path / "cfg.json").write_text(json.dumps(tiny_config(steps=2, checkpoint_every_steps=1)))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "data.npz"), "--config", str(tmp_path / "cfg.json"),
                 "--out", str(run), "--no-progress"]) == 0
    (run / "checkpoints" / "step-00000002" / "config.json").write_text('{"format": "fewstep-chec')
    with pytest.warns(RuntimeWarning, match="step-00000002"):
        assert main(["train", "--out", str(run), "--resume", "--steps", "3", "--no-progress"]) == 0
    assert "resumed from step 1" in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002", "step-00000003"]
    for folder in list_checkpoints(run):
        (folder / "config.json").write_text("{")
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "no intact checkpoint" in err and "step-00000003/config.json" in err and "Traceback" not in err


def test_a_torn_last_log_line_is_skipped(tmp_path):
    run = tmp_path / "run"
    _trainer(run).fit(steps=2)
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.1')  # killed mid-write
    tr = _trainer(run)
    tr.resume()
    with pytest.warns(RuntimeWarning, match="skipped 1 unreadable line"):
        tr.fit()
    assert _steps(run) == [1, 2, 3, 4]


def test_temporary_folders_of_a_killed_checkpoint_write_are_removed(tmp_path):
    run = tmp_path / "run"
    _trainer(run).fit(steps=1)
    stale = run / "checkpoints" / ".step-00000002.k3j2_1.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    with pytest.warns(RuntimeWarning, match="cut short"):
        tr = _trainer(run)
    assert not stale.exists()
    assert tr.resume() == 1


def test_a_fresh_run_starts_a_fresh_log(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in range(1, 11)))
    _trainer(run).fit(steps=2)
    assert _steps(run) == [1, 2]


def test_a_checkpoint_in_the_older_config_layout_resumes(tmp_path, reference):
    """Before objectives, weighting/hflip/... sat under training and there was no objective section."""
    run = tmp_path / "run"
    _trainer(run).fit(steps=2)
    path = run / "checkpoints" / "step-00000002" / "config.json"
    cfg = json.loads(path.read_text())
    objective = cfg.pop("objective")
    objective.pop("kind")
    for key in DenoisingSettings.objective_only:  # newer than that layout: never under training
        objective.pop(key)
    cfg["training"].update(objective)
    path.write_text(json.dumps(cfg))
    tr = Trainer({k: v for k, v in cfg.items()}, ImageData(tiny_images()), run, progress=False)
    assert tr.resume() == 2
    assert tr.fit() == reference[0][2:]
    new = json.loads((run / "checkpoints" / "step-00000004" / "config.json").read_text())
    assert new["objective"]["kind"] == "denoising" and "weighting" not in new["training"]
