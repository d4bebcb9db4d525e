"""``fewstep train`` of a noisy classifier and ``fewstep sample --guidance`` end to end on tiny models."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import TINY_UNET, tiny_config
from fewstep import generate, load_model
from fewstep.cli import main
from fewstep.data import load_data
from fewstep.guidance import ClassifierFreeGuidance, ClassifierGuidance, calibrate, load_classifier, save_calibration
from fewstep.imagegrid import to_uint8
from fewstep.training import Trainer

TINY_CLASSIFIER = {"kind": "noisy_classifier", "in_channels": 1, "resolution": 8, "num_classes": 3, "channels": 8,
                   "channel_mult": [1, 2], "num_res_blocks": 1}


def _labelled_images(n=48, res=8, seed=0):
    """Three classes: dark, a bright square, bright vertical stripes (plus noise)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    img = torch.randint(0, 30, (n, 1, res, res), generator=g).to(torch.uint8)
    img[labels == 1, :, 2:6, 2:6] += 200
    img[labels == 2, :, :, ::2] += 200
    return img, labels


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("guide")
    images, labels = _labelled_images()
    np.savez(root / "data.npz", images=images.numpy(), labels=labels.numpy())
    cond = tiny_config(steps=2)
    cond["network"] = {**TINY_UNET, "num_classes": 3}
    cond["objective"] = {"kind": "denoising", "use_labels": True, "label_dropout": 0.2}
    clf = {"classifier": TINY_CLASSIFIER, "process": cond["process"],
           "objective": {"kind": "classifier", "time_sampling": "lognormal"},
           "training": {"steps": 30, "batch_size": 16, "lr": 3e-3, "warmup_steps": 0, "log_every": 1,
                        "checkpoint_every_seconds": 1e9, "ema_half_life_images": 50}}
    for name, cfg in [("cond", cond), ("clf", clf), ("plain", tiny_config(steps=1))]:
        (root / f"{name}.json").write_text(json.dumps(cfg))
        assert main(["train", "--data", str(root / "data.npz"), "--config", str(root / f"{name}.json"),
                     "--out", str(root / name), "--no-progress"]) == 0
    # a class-conditional model trained without label dropout (only its config matters: an untrained checkpoint)
    nodrop = {**cond, "objective": {"kind": "denoising", "use_labels": True}}
    Trainer(nodrop, load_data(str(root / "data.npz"), 8, 1), root / "nodrop", progress=False).save()
    return root


def test_classifier_objective_learns_and_loads(runs):
    log = [json.loads(line) for line in (runs / "clf" / "log.jsonl").read_text().splitlines()]
    assert np.mean([r["loss"] for r in log[-5:]]) < 0.5 * np.mean([r["loss"] for r in log[:5]])
    clf = load_classifier(runs / "clf")
    images, labels = _labelled_images(n=30, seed=1)
    x0 = images.float() / 127.5 - 1
    acc = (clf.logits(x0 + 0.05 * torch.randn_like(x0), 0.05).argmax(1) == labels).float().mean()
    assert acc > 0.9
    with pytest.raises(ValueError, match="not a classifier checkpoint"):
        load_classifier(runs / "cond")


def _npz(path):
    return np.load(path)["images"]


def test_sample_cfg_matches_the_library(runs):
    base = ["sample", "--model", str(runs / "cond"), "--nfe", "3", "--n", "5", "--no-progress"]
    assert main(base + ["--class", "all", "--guidance", "cfg", "--guidance-scale", "2.5", "--guidance-interval",
                        "0.5,inf", "--batch-size", "2", "--out", str(runs / "cfg.npz")]) == 0
    den = load_model(runs / "cond")
    guided = ClassifierFreeGuidance(den, 2.5, {"class_labels": 3}, (0.5, math.inf))
    labels = torch.tensor([0, 1, 2, 0, 1])
    want = to_uint8(generate(guided, (1, 8, 8), range(5), nfe=3, cond={"class_labels": labels}))
    assert np.array_equal(_npz(runs / "cfg.npz"), want)
    # scale 1 is the conditional model
    assert main(base + ["--class", "all", "--guidance", "cfg", "--guidance-scale", "1", "--out", str(runs / "c1.npz")]) == 0
    assert main(base + ["--class", "all", "--out", str(runs / "c.npz")]) == 0
    assert np.array_equal(_npz(runs / "c1.npz"), _npz(runs / "c.npz"))


def test_sample_classifier_guidance_with_calibration_matches_the_library(runs):
    clf = load_classifier(runs / "clf")
    images, labels = _labelled_images(n=30, seed=2)
    calibrated, rows = calibrate(clf, images.float() / 127.5 - 1, labels, [0.5, 2.0])
    save_calibration(runs / "cal.json", rows)
    assert main(["sample", "--model", str(runs / "plain"), "--nfe", "3", "--n", "4", "--no-progress", "--class", "2,0",
                 "--guidance", "classifier", "--guidance-scale", "3", "--classifier", str(runs / "clf"),
                 "--calibration", str(runs / "cal.json"), "--out", str(runs / "clf.npz")]) == 0
    guided = ClassifierGuidance(load_model(runs / "plain"), calibrated, 3.0)
    want = to_uint8(generate(guided, (1, 8, 8), range(4), nfe=3, cond={"class_labels": torch.tensor([2, 0, 2, 0])}))
    assert np.array_equal(_npz(runs / "clf.npz"), want)


@pytest.mark.parametrize("args, message", [
    (["--model", "{plain}", "--class", "1", "--guidance", "cfg", "--guidance-scale", "2"], "unconditional"),
    (["--model", "{nodrop}", "--class", "1", "--guidance", "cfg", "--guidance-scale", "2"], "without label dropout"),
    (["--model", "{cond}", "--class", "7", "--guidance", "cfg", "--guidance-scale", "2"], "class 7 is out of range"),
    (["--model", "{plain}", "--class", "1"], "unconditional"),
    (["--model", "{cond}", "--class", "1", "--guidance", "cfg"], "needs --guidance-scale"),
    (["--model", "{cond}", "--guidance", "cfg", "--guidance-scale", "2"], "needs --class"),
    (["--model", "{cond}", "--class", "1", "--guidance-scale", "2"], "needs --guidance cfg"),
    (["--model", "{cond}", "--class", "1", "--guidance", "classifier", "--guidance-scale", "2"], "needs --classifier"),
    (["--model", "{cond}", "--class", "1", "--guidance", "classifier", "--guidance-scale", "2", "--classifier",
      "{cond}"], "not a classifier checkpoint"),
    (["--model", "{cond}", "--class", "x", "--guidance", "cfg", "--guidance-scale", "2"], "give a class number"),
    (["--model", "{cond}", "--class", "1", "--guidance", "cfg", "--guidance-scale", "2", "--guidance-interval", "3"],
     "two noise levels"),
])
def test_guidance_errors_are_one_line_messages(runs, capsys, args, message):
    args = [a.format(**{k: str(runs / k) for k in ("plain", "nodrop", "cond")}) for a in args]
    assert main(["sample", "--nfe", "2", "--n", "2", "--no-progress", "--out", str(runs / "e.npz")] + args) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_the_bundled_noise_aware_classifier_loads_by_name():
    from fewstep.guidance.loading import load_classifier
    clf = load_classifier("bundled:fashion-noisy-classifier")
    assert clf.num_classes == 10
    logits = clf.logits(torch.zeros(2, 1, 28, 28), torch.tensor([0.1, 5.0]))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="unknown bundled classifier"):
        load_classifier("bundled:nope")
