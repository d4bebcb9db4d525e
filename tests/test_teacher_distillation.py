"""Output distillation from a teacher in the denoising objective (``objective.teacher``): the targets are the
teacher's predictions at the same ``x_t``, mixed with the data's by ``teacher_weight``."""

import pytest
import torch

from conftest import tiny_config, tiny_images, tiny_teacher
from fewstep.data import ImageData
from fewstep.training.trainer import Trainer


def _student(tmp_path, teacher: str, **objective):
    cfg = tiny_config(steps=2)
    cfg["prediction"] = "v"
    cfg["objective"] = {"init_from": teacher, "teacher": teacher, **objective}
    return Trainer(cfg, ImageData(tiny_images()), tmp_path / "student", progress=False)


def _loss_and_grad(trainer, batch):
    model = trainer.modules["model"]
    model.zero_grad()
    nets = {"model": model, "teacher": trainer.objective.frozen().get("teacher")}
    loss = trainer.objective.loss(batch, nets).mean()
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("teacher"), steps=3)


def test_a_student_equal_to_its_teacher_has_zero_distillation_loss(tmp_path, teacher):
    tr = _student(tmp_path, teacher)
    batch = tr.objective.draw(0, tr.data, torch.arange(8), torch.Generator().manual_seed(0))
    kd, _ = _loss_and_grad(tr, batch)
    teacher_net = tr.objective.teacher.net
    tr.objective.teacher = None
    data, _ = _loss_and_grad(tr, batch)
    assert kd < 1e-10 < data
    assert not any(p.requires_grad for p in teacher_net.parameters())


def test_the_mixed_target_is_the_mixture_of_the_two_losses(tmp_path, teacher):
    """grad of the loss at weight w = w grad(distillation loss) + (1 - w) grad(data loss): the squared error to a
    mixed target differs from the mixture of squared errors by a constant only."""
    tr = _student(tmp_path, teacher, teacher_weight=0.3)
    with torch.no_grad():                       # a student that differs from its teacher
        for p in tr.modules["model"].parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = tr.objective.draw(0, tr.data, torch.arange(8), torch.Generator().manual_seed(1))
    _, mixed = _loss_and_grad(tr, batch)
    tr.objective.settings.teacher_weight = 1.0
    _, kd = _loss_and_grad(tr, batch)
    keep, tr.objective.teacher = tr.objective.teacher, None
    _, data = _loss_and_grad(tr, batch)
    for gm, gk, gd in zip(mixed, kd, data):
        torch.testing.assert_close(gm, 0.3 * gk + 0.7 * gd, rtol=1e-4, atol=1e-7)
    assert keep is not None


def test_a_short_distillation_run_trains_and_bad_settings_are_refused(tmp_path, teacher):
    tr = _student(tmp_path, teacher)
    tr.fit()
    assert tr.step == 2
    with pytest.raises(ValueError, match=r"teacher_weight must lie in \(0, 1\]"):
        _student(tmp_path / "w", teacher, teacher_weight=0.0)
    cfg = tiny_config(steps=1)
    cfg["prediction"] = "v"
    cfg["process"] = {"kind": "vp_cosine"}
    cfg["objective"] = {"teacher": teacher}
    with pytest.raises(ValueError, match=r"teacher .*its process .* differs from this run's .* distil from a teacher"):
        Trainer(cfg, ImageData(tiny_images()), tmp_path / "p", progress=False)
