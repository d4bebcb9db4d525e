"""Learning-rate schedules (``training.lr_schedule``): the factor's closed forms, the optimiser's rate
during a run, and bad settings refused by name."""

import json
import math

import pytest
import torch

from fewstep.data import ImageData
from fewstep.training.settings import TrainSettings, lr_factor, resolve_config
from fewstep.training.trainer import Trainer

from conftest import tiny_config, tiny_images


def _settings(**kw) -> TrainSettings:
    s = TrainSettings(**kw)
    s.check()
    return s


def test_constant_schedule_is_the_linear_warm_up_then_one():
    s = _settings(steps=100, warmup_steps=10)
    assert [lr_factor(k, s) for k in (0, 4, 9, 10, 99)] == pytest.approx([0.1, 0.5, 1.0, 1.0, 1.0])


def test_cosine_reaches_the_final_fraction_at_the_last_step():
    s = _settings(steps=110, warmup_steps=10, lr_schedule="cosine", lr_final_fraction=0.2)
    assert lr_factor(9, s) == pytest.approx(1.0)
    assert lr_factor(10, s) == pytest.approx(1.0)                   # decay starts after warm-up
    assert lr_factor(60, s) == pytest.approx(0.2 + 0.8 * 0.5)       # half-way: cos(pi/2) = 0
    assert lr_factor(85, s) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(0.75 * math.pi)))
    assert lr_factor(110, s) == pytest.approx(0.2)
    assert lr_factor(500, s) == pytest.approx(0.2)                  # past the end: stays at the floor
    values = [lr_factor(k, s) for k in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_inverse_sqrt_is_edm2s_decay():
    s = _settings(steps=1000, warmup_steps=0, lr_schedule="inverse_sqrt", lr_ref_steps=50)
    assert lr_factor(10, s) == 1.0 and lr_factor(50, s) == 1.0
    assert lr_factor(200, s) == pytest.approx(0.5)
    assert lr_factor(450, s) == pytest.approx(1 / 3)


@pytest.mark.parametrize("training, message", [
    ({"lr_schedule": "linear"}, r"lr_schedule must be one of constant, cosine, inverse_sqrt, got 'linear'"),
    ({"lr_schedule": "inverse_sqrt"}, r"needs training\.lr_ref_steps >= 1"),
    ({"lr_final_fraction": 1.5}, r"lr_final_fraction must be in \[0, 1\]"),
])
def test_bad_schedules_are_refused_by_name(training, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(tiny_config(**training))


def test_the_optimiser_follows_the_schedule(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(steps=6, warmup_steps=2, lr=1e-3, lr_schedule="cosine", lr_final_fraction=0.1)
    trainer = Trainer(cfg, ImageData(tiny_images()), tmp_path, progress=False)
    trainer.fit()
    logged = [json.loads(line) for line in open(tmp_path / "log.jsonl") if '"lr"' in line]
    s = trainer.settings
    assert [r["lr"] for r in logged] == pytest.approx([1e-3 * lr_factor(r["step"] - 1, s) for r in logged])
    assert logged[-1]["lr"] == pytest.approx(1e-3 * lr_factor(5, s)) and logged[-1]["lr"] < 1e-3
    (optimiser,) = trainer.optimizers.values()                      # the rate the last step actually used
    assert optimiser.param_groups[0]["lr"] == pytest.approx(1e-3 * lr_factor(5, s))
