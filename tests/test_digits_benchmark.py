"""The sklearn-digits benchmark assets (benchmarks/models, docs/diffusers.md) load through fewstep, and the
harness draws the same x_T per seed as fewstep.generate, so its diffusers and fewstep rows are paired."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch

import fewstep
from fewstep.data import load_data

ROOT = Path(__file__).parents[1]
MODELS = ROOT / "benchmarks" / "models"


def test_digits_data_splits_load_with_labels():
    train = load_data(str(MODELS / "digits16-train.npz"), resolution=16, channels=1)
    test = load_data(str(MODELS / "digits16-test.npz"), resolution=16, channels=1)
    assert (len(train), len(test)) == (1500, 297) and train.images.dtype == torch.uint8
    assert train.num_classes == test.num_classes == 10
    assert torch.bincount(test.labels).min() >= 29  # stratified split


@pytest.mark.parametrize("name, prediction", [("digits-cosine-eps", "eps"), ("digits-zsnr-v", "v")])
def test_digits_diffusers_models_load(name, prediction):
    pytest.importorskip("diffusers")
    den = fewstep.load_model(MODELS / name)
    assert den.sample_shape == (1, 16, 16) and den.prediction == prediction


def test_harness_noise_is_fewstep_generate_noise():
    script = runpy.run_path(str(ROOT / "benchmarks" / "digits_diffusers.py"))
    seeds = [5, 0, 17]
    ours = fewstep.prior_noise(fewstep.processes.VPDiscrete.cosine(), (1, 16, 16), fewstep.generators(seeds))
    assert torch.equal(script["seeded_noise"](seeds, (1, 16, 16)), ours)
