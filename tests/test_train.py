import json
import math

import pytest
import torch

from conftest import tiny_config, tiny_images
from fewstep import checkpoint as ckpt_mod
from fewstep.training import denoising as denoising_mod
from fewstep.checkpoint import latest_checkpoint, list_checkpoints, read_config
from fewstep.data import ImageData
from fewstep.training.trainer import Trainer, TrainingDiverged


def _trainer(tmp_path, name="run", **training):
    return Trainer(tiny_config(**training), ImageData(tiny_images()), tmp_path / name, progress=False)


def test_a_few_steps_reduce_the_loss(tmp_path):
    tr = _trainer(tmp_path, steps=40, lr=3e-3, batch_size=16, time_sampling="lognormal", weighting="min_snr")
    # Evaluate the same fixed batches before and after training.
    batches = [tr.batch(s) for s in range(3)]

    def eval_loss():
        from fewstep.training.losses import diffusion_loss
        with torch.no_grad():
            return sum(float(diffusion_loss(tr.model, "eps", tr.objective.process, b["x0"], b["t"], b["eps"]).mean())
                       for b in batches)

    before = eval_loss()
    losses = tr.fit()
    assert len(losses) == 40
    assert eval_loss() < 0.7 * before
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 40 and log[-1]["images_per_s"] > 0


def test_kill_and_resume_gives_the_same_losses(tmp_path):
    full = _trainer(tmp_path, "full", steps=6, grad_accum=2, hflip=True).fit()
    first = _trainer(tmp_path, "split", steps=6, grad_accum=2, hflip=True)
    part = first.fit(steps=3)
    first.save()
    first.train_step()  # step 4 is done and logged but never checkpointed...
    first._log({"step": 4, "loss": part[-1]})
    del first  # ...then "killed"
    second = _trainer(tmp_path, "split", steps=6, grad_accum=2, hflip=True)
    assert second.resume() == 3
    rest = second.fit()
    assert part + rest == full
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_grad_accumulation_equals_the_full_batch(tmp_path):
    a = _trainer(tmp_path, "a", grad_clip=None)
    b = _trainer(tmp_path, "b", grad_clip=None, grad_accum=4)
    a.fit(steps=1), b.fit(steps=1)
    assert a.accumulate_gradients() == pytest.approx(b.accumulate_gradients(), rel=1e-6)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.allclose(pa.grad, pb.grad, rtol=1e-4, atol=1e-7)


def test_checkpoint_is_atomic_under_a_failed_write(tmp_path, monkeypatch):
    tr = _trainer(tmp_path)
    tr.fit(steps=2)
    good = tr.save()
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    tr.train_step()  # step 3, not yet saved
    real_save = ckpt_mod.save_file
    calls = []

    def failing(tensors, filename, *a, **k):
        calls.append(filename)
        if len(calls) == 2:  # die while writing ema.safetensors
            raise OSError("disk full (injected)")
        return real_save(tensors, filename, *a, **k)

    monkeypatch.setattr(ckpt_mod, "save_file", failing)
    with pytest.raises(OSError, match="injected"):
        tr.save()
    assert latest_checkpoint(tmp_path / "run") == good
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == [good.name]  # no temp folder left
    assert read_config(good)["step"] == 2


def test_old_checkpoints_are_pruned(tmp_path):
    tr = _trainer(tmp_path, keep_checkpoints=2, checkpoint_every_steps=1)
    tr.fit(steps=4)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000003", "step-00000004"]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    tr = _trainer(tmp_path, checkpoint_every_steps=1)
    tr.fit(steps=2)
    real = denoising_mod.diffusion_loss
    monkeypatch.setattr(denoising_mod, "diffusion_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 2.*step-00000002 is kept\. Lower"):
        tr.fit(steps=4)
    assert latest_checkpoint(tmp_path / "run").name == "step-00000002"
    # diverging on the first step after a resume points at the checkpoint, not at --resume (which would loop)
    again = _trainer(tmp_path, checkpoint_every_steps=1)
    assert again.resume() == 2
    with pytest.raises(TrainingDiverged, match=r"first step after resuming from .*step-00000002, so that checkpoint "
                                               r"may be damaged: move it aside"):
        again.fit(steps=4)


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key\(s\) training\.stepz; valid keys in training: .*batch_size"):
        _trainer(tmp_path, stepz=3)
    with pytest.raises(ValueError, match="multiple of grad_accum"):
        _trainer(tmp_path, batch_size=6, grad_accum=4)
    with pytest.raises(ValueError, match="in_channels"):
        Trainer(tiny_config(), ImageData(torch.zeros(4, 3, 8, 8, dtype=torch.uint8)), tmp_path / "x", progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _trainer(tmp_path, "empty").resume()


def test_resume_rejects_a_different_network(tmp_path):
    tr = _trainer(tmp_path)
    tr.fit(steps=1)
    tr.save()
    cfg = tiny_config()
    cfg["network"]["channels"] = 16
    other = Trainer(cfg, ImageData(tiny_images()), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="network differs"):
        other.resume()


@pytest.mark.parametrize("network,process,prediction,training", [
    ({"kind": "dit", "in_channels": 1, "resolution": 8, "patch_size": 2, "depth": 1, "width": 16, "heads": 2,
      "num_classes": 3}, {"kind": "edm"}, "edm",
     {"time_sampling": "lognormal", "weighting": "edm", "use_labels": True}),
    (None, {"kind": "rectified_flow"}, "flow", {"weighting": "min_snr", "precision": "bf16"}),
    (None, {"kind": "vp_cosine"}, "v", {"grad_accum": 2, "hflip": True}),
])
def test_every_network_process_and_prediction_trains(tmp_path, network, process, prediction, training):
    cfg = tiny_config(**training)
    cfg["process"], cfg["prediction"] = process, prediction
    if network:
        cfg["network"] = network
    labels = torch.arange(16) % 3
    tr = Trainer(cfg, ImageData(tiny_images(), labels, 3), tmp_path / "run", progress=False)
    losses = tr.fit(steps=2)
    assert len(losses) == 2 and all(map(math.isfinite, losses))
    from fewstep import load_model
    den = load_model(tmp_path / "run")
    assert den.prediction == prediction and den.sample_shape == (1, 8, 8)
