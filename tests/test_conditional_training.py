"""Label dropout (classifier-free guidance training) and warm starts from a trained model."""

import json

import pytest
import torch

import fewstep

from conftest import tiny_config, tiny_images
from fewstep.checkpoint import latest_checkpoint
from fewstep.data import ImageData
from fewstep.loading import load_model
from fewstep.training.trainer import Trainer


def _labelled(n=64):
    return ImageData(tiny_images(n), torch.arange(n) % 3, 3)


def _cond_config(**objective):
    cfg = tiny_config(steps=2)
    cfg["network"]["num_classes"] = 3
    cfg["objective"] = {"use_labels": True, **objective}
    return cfg


def test_label_dropout_replaces_that_fraction_of_labels_by_the_null_class(tmp_path):
    tr = Trainer(_cond_config(label_dropout=0.25), _labelled(), tmp_path / "r", progress=False)
    data = _labelled()
    g = torch.Generator().manual_seed(0)
    labels = torch.cat([tr.objective.draw(0, data, torch.arange(64), g)["labels"] for _ in range(40)])
    null = (labels == 3).float().mean().item()
    assert abs(null - 0.25) < 0.03
    kept = labels[labels != 3]
    assert kept.max() <= 2 and len(kept) > 0


def test_label_dropout_needs_labels_and_a_valid_probability(tmp_path):
    with pytest.raises(ValueError, match="label_dropout"):
        Trainer(_cond_config(label_dropout=1.5), _labelled(), tmp_path / "a", progress=False)
    cfg = _cond_config()
    with pytest.raises(ValueError, match="no labels"):
        Trainer(cfg, ImageData(tiny_images()), tmp_path / "b", progress=False)
    cfg["network"]["num_classes"] = 2
    with pytest.raises(ValueError, match="num_classes"):
        Trainer(cfg, _labelled(), tmp_path / "c", progress=False)


def test_warm_start_from_an_unconditional_model_starts_at_its_denoiser(tmp_path):
    Trainer(tiny_config(steps=3), ImageData(tiny_images()), tmp_path / "uncond", progress=False).fit()
    source = latest_checkpoint(tmp_path / "uncond")
    tr = Trainer(_cond_config(init_from=str(source), label_dropout=0.1), _labelled(), tmp_path / "cond",
                 progress=False)
    uncond = next(load_model(source).networks())
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([10.0, 200.0, 500.0, 900.0])
    with torch.no_grad():
        want = uncond(x, t)
        for label in (0, 2, 3):
            got = tr.model(x, t, class_labels=torch.full((4,), label))
            torch.testing.assert_close(got, want)


def test_warm_start_refuses_another_architecture_or_process(tmp_path):
    Trainer(tiny_config(steps=1), ImageData(tiny_images()), tmp_path / "uncond", progress=False).fit()
    source = str(latest_checkpoint(tmp_path / "uncond"))
    cfg = _cond_config(init_from=source)
    cfg["network"]["channels"] = 16
    with pytest.raises(ValueError, match="architecture"):
        Trainer(cfg, _labelled(), tmp_path / "a", progress=False)
    cfg = _cond_config(init_from=source)
    cfg["prediction"] = "v"
    with pytest.raises(ValueError, match="prediction"):
        Trainer(cfg, _labelled(), tmp_path / "b", progress=False)


def test_class_lr_scale_gives_the_class_table_its_own_learning_rate(tmp_path):
    tr = Trainer(_cond_config(class_lr_scale=20.0), _labelled(), tmp_path / "r", progress=False)
    tr.fit()
    groups = tr.optimizers["model"].param_groups
    table = tr.model.embed.classes.weight
    scaled = [g for g in groups if any(p is table for p in g["params"])]
    rest = [g for g in groups if not any(p is table for p in g["params"])]
    assert len(scaled) == 1 and len(scaled[0]["params"]) == 1 and len(rest) == 1
    assert scaled[0]["lr"] == pytest.approx(20.0 * rest[0]["lr"]) and rest[0]["lr"] > 0


@pytest.mark.parametrize("name, previous, step, conditional", [
    ("bundled:fashion-cond", "bundled:fashion-cond-523", 523, True),
    ("bundled:fashion-cond", "bundled:fashion-cond-3500", 3500, True),
    ("bundled:fashion", "bundled:fashion-v1", 5111, False),
])
def test_previous_bundled_models_stay_loadable_under_their_own_names(name, previous, step, conditional):
    """A retrained bundled model ships under the old name; the one older figures were measured on loads beside it
    under a versioned name, with its data Gaussians; the two are different networks of the same architecture."""
    new, old = fewstep.load_model(name), fewstep.load_model(previous)
    assert old.config["step"] == step and new.config["step"] == 8000
    assert new.config["network"] == old.config["network"] and old.data_gaussian is not None
    assert (getattr(old, "class_gaussians", None) is not None) == conditional
    cond = {"cond": {"class_labels": torch.tensor([3, 7])}} if conditional else {}
    a = fewstep.generate(new, (1, 28, 28), [0, 1], "unipc", 2, **cond)
    b = fewstep.generate(old, (1, 28, 28), [0, 1], "unipc", 2, **cond)
    assert not torch.allclose(a, b, atol=1e-3)


def test_bundled_models_record_a_portable_data_spec():
    """A shipped config names its training data as any machine resolves it (`fashion-mnist`), not the folder of
    the machine that trained it (a GPU run's copy once leaked into two shipped configs; `fewstep prune` and
    others default to this spec)."""
    from fewstep.bundled import BUNDLED, resolve_bundled

    for name in BUNDLED:
        spec = json.loads((resolve_bundled(name) / "config.json").read_text())["data"]["spec"]
        if spec.startswith("fashion-mnist"):
            assert spec == "fashion-mnist", (name, spec)
