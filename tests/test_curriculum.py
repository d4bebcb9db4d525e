"""The denoising-difficulty curriculum (Kim et al., ICLR 2025): clusters, pacing easy (high noise) to hard, a
draw that depends only on (seed, step), and the uniform draw after the curriculum."""

import pytest
import torch

from conftest import tiny_config, tiny_images
from fewstep.data import ImageData
from fewstep.processes import process_from_config
from fewstep.training.curriculum import Curriculum
from fewstep.training.losses import draw_noising, sample_t_uniform
from fewstep.training.trainer import Trainer

PROCESS = process_from_config(tiny_config()["process"])


def test_clusters_are_equal_in_time_or_in_log_snr():
    time = Curriculum(4, 10, "time").bounds(PROCESS)
    assert time[0] == PROCESS.t_min and time[-1] == PROCESS.t_max
    assert torch.allclose(torch.tensor(time, dtype=torch.float64).diff(), torch.full((4,), (PROCESS.t_max - PROCESS.t_min) / 4,
                                                                 dtype=torch.float64))
    snr = Curriculum(5, 10, "snr").bounds(PROCESS)
    lam = PROCESS.lam(torch.tensor(snr, dtype=torch.float64))
    assert torch.allclose(lam.diff(), lam.diff()[0].expand(5), rtol=1e-6)
    assert bool((torch.tensor(snr).diff() > 0).all())


@pytest.mark.parametrize("spacing", ["time", "snr"])
def test_draws_only_from_the_unlocked_clusters_easiest_first(spacing):
    cur = Curriculum(5, 10, spacing)
    edges = cur.bounds(PROCESS)
    assert cur.end_step == 40
    for step in range(0, 60, 3):
        k = min(5, 1 + step // 10)  # clusters unlocked: the k highest-noise ones
        assert cur.unlocked(step) == k
        t = cur.sample(PROCESS, 4000, torch.Generator().manual_seed(step), step)
        assert float(t.min()) >= edges[5 - k] and float(t.max()) <= PROCESS.t_max
        # every unlocked cluster is drawn (uniform in time on the unlocked range)
        counts = torch.histc(t.float(), bins=k, min=edges[5 - k], max=PROCESS.t_max) if spacing == "time" else \
            torch.tensor([((t >= a) & (t <= b)).sum() for a, b in zip(edges[5 - k:-1], edges[6 - k:])])
        assert bool((counts > 0).all()), (step, counts)


def test_after_the_curriculum_the_draw_is_the_uniform_one():
    cur = Curriculum(5, 10, "snr")
    for step in (cur.end_step, cur.end_step + 123):
        got = cur.sample(PROCESS, 64, torch.Generator().manual_seed(7), step)
        want = sample_t_uniform(PROCESS, 64, torch.Generator().manual_seed(7))
        assert torch.equal(got, want)
    images = tiny_images()
    a = draw_noising(PROCESS, images, torch.Generator().manual_seed(3), curriculum=cur, step=cur.end_step)
    b = draw_noising(PROCESS, images, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    before = draw_noising(PROCESS, images, torch.Generator().manual_seed(3), curriculum=cur, step=0)
    assert float(before[1].min()) >= cur.bounds(PROCESS)[4]


def test_trainer_draw_depends_on_seed_and_step_only(tmp_path):
    cfg = dict(curriculum="time", curriculum_clusters=4, curriculum_stage_steps=2)
    a = Trainer(tiny_config(**cfg), ImageData(tiny_images()), tmp_path / "a", progress=False)
    b = Trainer(tiny_config(**cfg), ImageData(tiny_images()), tmp_path / "b", progress=False)
    lows = []
    for step in (5, 0, 3, 9):  # any order, any trainer: the same batch
        ta, tb = a.batch(step)["t"], b.batch(step)["t"]
        assert torch.equal(ta, tb)
        lows.append(float(ta.min()))
    edges = Curriculum(4, 2, "time").bounds(a.objective.process)
    assert lows[1] >= edges[3] and lows[2] >= edges[2]  # step 0: one cluster; step 3: two
    plain = Trainer(tiny_config(), ImageData(tiny_images()), tmp_path / "c", progress=False)
    assert torch.equal(a.batch(6)["t"], plain.batch(6)["t"])  # step 6 = end: uniform
    assert not torch.equal(a.batch(0)["t"], plain.batch(0)["t"])


@pytest.mark.parametrize("objective, match", [
    ({"curriculum": "easy"}, "unknown objective.curriculum 'easy'; valid: none, time, snr"),
    ({"curriculum": "time"}, "curriculum_stage_steps must be a positive integer"),
    ({"curriculum": "time", "curriculum_stage_steps": 5, "curriculum_clusters": 1}, "curriculum_clusters must be"),
    ({"curriculum": "time", "curriculum_stage_steps": 5, "time_sampling": "lognormal"}, "needs time_sampling 'uniform'"),
    ({"curriculum": "time", "curriculum_stage_steps": 2.5}, "curriculum_stage_steps must be int"),
])
def test_settings_are_checked(tmp_path, objective, match):
    with pytest.raises(ValueError, match=match):
        Trainer({**tiny_config(), "objective": {"kind": "denoising", **objective}}, ImageData(tiny_images()),
                tmp_path / "r", progress=False)
