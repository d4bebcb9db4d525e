"""Distribution matching for path distillation (fewstep.reflow.matching): SiD's loss on the few-step solve."""

from __future__ import annotations

import pytest
import torch

import fewstep
from fewstep.distill.base import x0_of
from fewstep.distill.sid import sid_generator_loss, sid_loss_of_samples
from conftest import PATH_RUN_ARGS, path_run_variants, tiny_teacher
from fewstep.reflow.matching import DistributionMatching


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("teacher"), steps=2)


def _matching(teacher: str) -> DistributionMatching:
    den = fewstep.load_model(teacher)
    return DistributionMatching(teacher, den.config, den.param)


def _batch(m: DistributionMatching, n: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    return m.draw((1, 8, 8), n, torch.Generator().manual_seed(seed))


def test_sid_loss_of_samples_is_sids_loss_at_the_noised_samples(teacher):
    """The shared helper noises ``x_g`` with the process's ``alpha_t, sigma_t`` and feeds both denoisers' data
    predictions at that point to :func:`sid_generator_loss`."""
    m = _matching(teacher)
    batch = _batch(m)
    x_g = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    other = torch.nn.Module()
    other.forward = lambda x, t: 0.9 * m.teacher(x, t)  # a fake score that differs from the teacher
    t, eps = batch["dm_t"], batch["dm_eps"]
    a, s = m.param.alpha_sigma(x_g, t)
    x_t = a * x_g + s * eps
    with torch.no_grad():
        want = sid_generator_loss(x0_of(m.teacher, m.param, x_t, t), x0_of(other, m.param, x_t, t), x_g, 1.2)
        got = sid_loss_of_samples(m.teacher, other, m.param, x_g, t, eps, 1.2)
    torch.testing.assert_close(got, want)
    assert got.abs().min() > 0


def test_matching_is_silent_while_the_fake_score_is_the_teacher(teacher):
    """A fresh fake score is a copy of the teacher, so ``f_phi == f_psi`` at every point: the loss and its gradient
    into the samples are zero, until the fake score has learnt something else."""
    m = _matching(teacher)
    batch = _batch(m)
    assert m.fake_score is not m.teacher
    assert all(p.requires_grad for p in m.fake_score.parameters())
    x_g = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
    loss = m.generator_loss(m.teacher, m.fake_score, x_g, batch)
    (grad,) = torch.autograd.grad(loss.sum(), [x_g])
    assert loss.abs().max() == 0 and grad.abs().max() < 1e-7  # zero up to float32 rounding of the two backwards
    with torch.no_grad():
        for p in m.fake_score.parameters():
            p.mul_(1.1)
    x_g = x_g.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(m.generator_loss(m.teacher, m.fake_score, x_g, batch).sum(), [x_g])
    assert grad.abs().max() > 1e-4
    # the fake score's own loss: per pixel, positive, and its gradient reaches only the fake score
    fake = m.fake_loss(m.fake_score, x_g, batch)
    assert fake.shape == (6,) and (fake > 0).all()


def test_reflow_command_adds_distribution_matching_to_path_distillation(teacher, tmp_path, capsys):
    """``--dm-weight W``: a fake-score phase (logged ``fake_loss``) before the student's, the fake score saved in the
    checkpoint but never in the EMA nor the sampled model; before ``--dm-start-step`` the student's loss is the path
    loss alone (the same first-step loss as a run without the term); the settings are recorded and kept on resume."""
    from fewstep.checkpoint import read_config
    from fewstep.cli import main

    first = path_run_variants(teacher, tmp_path, {"late": ["--dm-weight", "50", "--dm-start-step", "5"],
                                                  "now": ["--dm-weight", "50", "--dm-fake-lr", "1e-2"]})
    common = ["--teacher", teacher, *PATH_RUN_ARGS]
    now, pairs = tmp_path / "now", ["--pairs-dir", str(tmp_path / "plain" / "pairs")]
    assert first["late"]["loss"] == pytest.approx(first["plain"]["loss"], rel=1e-5)  # the main loss is reported
    assert first["now"]["loss"] != pytest.approx(first["plain"]["loss"], rel=1e-6)  # the fake score moved: a signal
    assert first["now"]["losses"]["fake_loss"] > 0
    step = now / "checkpoints" / "step-00000002"
    names = {f.name for f in step.iterdir()}
    assert "fake_score.safetensors" in names and "fake_score-ema.safetensors" not in names
    assert read_config(step)["objective"]["dm_weight"] == 50.0
    assert read_config(step)["objective"]["dm_fake_lr"] == 1e-2
    fewstep.load_model(str(step))  # an ordinary denoiser
    capsys.readouterr()
    resume = ["reflow", "--out", str(now), *common[:-1], "3", *pairs, "--resume"]
    assert main([*resume, "--dm-weight", "5"]) == 1
    assert "--dm-weight (5.0; the run has 50.0)" in capsys.readouterr().err
    assert main(resume) == 0
    capsys.readouterr()
    bad = ["reflow", "--out", str(tmp_path / "bad"), *common, *pairs]
    assert main([*bad, "--path-weight", "0", "--dm-weight", "1"]) == 1
    assert "dm_weight matches the few-step solve" in capsys.readouterr().err
    assert main([*bad, "--dm-weight", "1", "--dm-tmax-index", "0"]) == 1
    assert "dm_tmax_index must lie in (0, 1000]" in capsys.readouterr().err
    assert main([*bad, "--dm-weight", "1", "--process", "rectified_flow"]) == 1
    assert "the teacher's process and prediction" in capsys.readouterr().err
