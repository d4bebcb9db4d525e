"""A distillation-shaped objective (two modules, two optimisers, alternating phases, EMA on one)
runs on the shared Trainer: it trains, checkpoints, and resumes exactly."""

import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from conftest import tiny_images
from fewstep.data import ImageData, to_model_range
from fewstep.training import Objective, Phase, Trainer


@dataclass
class ToySettings:
    sigma: float = 0.5


class ToyDistillation(Objective):
    """SiD-shaped: a one-step ``generator`` and a ``critic`` (fake score) fitted to its samples, updated in turn."""

    kind = "toy-distillation"
    settings_class = ToySettings

    def __init__(self, config, settings, data):
        super().__init__(config, settings, data)
        self.generator = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.SiLU(), nn.Conv2d(4, 1, 3, padding=1))
        self.critic = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.SiLU(), nn.Dropout(0.2),
                                    nn.Conv2d(4, 1, 3, padding=1))

    def modules(self):
        return {"generator": self.generator, "critic": self.critic}

    def phases(self):
        return [Phase("critic", self.critic_loss), Phase("generator", self.generator_loss)]

    def ema_modules(self):
        return ("generator",)

    def optimizer_options(self, name):
        return {"lr": 3e-3} if name == "critic" else {}

    def draw(self, step, data, indices, generator):
        x0 = to_model_range(data.images[indices])
        return {"x0": x0, "z": torch.randn(x0.shape, generator=generator),
                "eps": torch.randn(x0.shape, generator=generator)}

    def critic_loss(self, batch, nets):
        with torch.no_grad():
            fake = nets["generator"](batch["z"])
        out = nets["critic"](fake + self.settings.sigma * batch["eps"])
        return (out - fake).square().flatten(1).mean(1)

    def generator_loss(self, batch, nets):
        fake = nets["generator"](batch["z"])
        denoised = nets["critic"](fake + self.settings.sigma * batch["eps"])
        return (denoised - batch["x0"]).square().flatten(1).mean(1) + 0.1 * (fake - denoised).square().flatten(1).mean(1)


def _config(**training):
    return {"objective": {"kind": "toy-distillation", "sigma": 0.3},
            "training": {"steps": 6, "batch_size": 8, "grad_accum": 2, "lr": 1e-3, "warmup_steps": 2,
                         "log_every": 1, "checkpoint_every_seconds": 0, "ema_half_life_images": 40, **training}}


def _trainer(path, **training):
    return Trainer(_config(**training), ImageData(tiny_images()), path, progress=False, objective=ToyDistillation)


def _states(tr):
    out = {f"{k}.{n}": v.clone() for k, m in tr.modules.items() for n, v in m.state_dict().items()}
    out.update({f"ema.{n}": v.clone() for n, v in tr.emas["generator"].state_dict().items()})
    for k, opt in tr.optimizers.items():
        for i, st in opt.state_dict()["state"].items():
            out.update({f"opt.{k}.{i}.{n}": torch.as_tensor(v).clone() for n, v in st.items()})
    return out


def test_two_module_objective_trains_with_its_own_optimisers_and_ema(tmp_path):
    tr = _trainer(tmp_path / "run")
    assert set(tr.optimizers) == {"generator", "critic"} and set(tr.emas) == {"generator"}
    assert tr.optimizers["critic"].param_groups[0]["lr"] == 3e-3
    before = _states(tr)
    tr.fit(steps=2)
    after = _states(tr)
    for prefix in ("generator.", "critic.", "ema."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix
    assert [set(h) for h in tr.loss_history] == [{"critic", "generator"}] * 2
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and set(log[-1]["losses"]) == {"critic", "generator"}
    folder = tmp_path / "run" / "checkpoints" / "step-00000002"
    assert sorted(p.name for p in folder.iterdir()) == [
        "checksums.json", "config.json", "critic-optimizer.json", "critic-optimizer.safetensors", "critic.safetensors",
        "generator-ema.safetensors", "generator-optimizer.json", "generator-optimizer.safetensors",
        "generator.safetensors", "rng.safetensors"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["objective"] == {"kind": "toy-distillation", "sigma": 0.3} and cfg["step"] == 2


def test_a_phase_changes_only_its_own_module(tmp_path):
    tr = _trainer(tmp_path / "run", grad_clip=None)
    tr.accumulate_gradients(0)  # the critic phase
    assert all(p.grad is not None for p in tr.modules["critic"].parameters())
    assert all(p.grad is None for p in tr.modules["generator"].parameters())
    tr.optimizers["critic"].zero_grad(set_to_none=True)
    tr.accumulate_gradients(1)  # the generator phase: gradients pass through the critic, which keeps none
    assert all(p.grad is not None for p in tr.modules["generator"].parameters())
    assert all(p.grad is None for p in tr.modules["critic"].parameters())
    assert all(p.requires_grad for m in tr.modules.values() for p in m.parameters())


def test_interrupted_and_resumed_run_reproduces_losses_and_weights_exactly(tmp_path):
    full = _trainer(tmp_path / "full")
    full.fit()
    first = _trainer(tmp_path / "split")
    first.fit(steps=3)  # writes step-3 at its end
    first.train_step()  # step 4 done but never checkpointed, then "killed"
    history = list(first.loss_history[:3])
    del first
    second = _trainer(tmp_path / "split")
    assert second.resume() == 3
    second.fit()
    assert history + second.loss_history == full.loss_history
    a, b = _states(full), _states(second)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_objective_kind_and_phases_are_checked(tmp_path):
    cfg = _config()
    cfg["objective"]["kind"] = "denoising"
    with pytest.raises(ValueError, match="objective.kind is 'denoising'.*'toy-distillation'"):
        Trainer(cfg, ImageData(tiny_images()), tmp_path / "r", progress=False, objective=ToyDistillation)
    with pytest.raises(ValueError, match=r"unknown config key\(s\) objective\.sigmaa; valid keys in objective: sigma"):
        cfg = _config()
        cfg["objective"]["sigmaa"] = 1.0
        Trainer(cfg, ImageData(tiny_images()), tmp_path / "r", progress=False, objective=ToyDistillation)
    with pytest.raises(ValueError, match="unknown objective kind 'toy-distillation'; valid: autoencoder, classifier, denoising"):
        Trainer(_config(), ImageData(tiny_images()), tmp_path / "r", progress=False)

    class Broken(ToyDistillation):
        def phases(self):
            return [Phase("teacher", self.critic_loss)]

    with pytest.raises(ValueError, match="names module.*teacher"):
        Trainer(_config(), ImageData(tiny_images()), tmp_path / "r", progress=False, objective=Broken)
