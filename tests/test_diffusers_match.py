"""Agreement with diffusers' schedulers under matched configuration (same model, same noise).

Matched configuration: DDPM linear betas, ``timestep_spacing="trailing"`` (which starts at
t_max like every fewstep grid), the final step onto sigma = 0 (fewstep's ``clean_end``), and
fewstep given the same times as an explicit grid.
"""

import pytest
import torch

import fewstep

from diffusers_driver import BETAS, run_scheduler, trailing_times

diffusers = pytest.importorskip("diffusers")





def _compare(ours, theirs):
    # float32 tolerance: diffusers keeps its sigmas in float32; fewstep's own float32 and float64
    # runs differ by up to ~3e-5 of the sample scale on 4-step Heun, where the trajectory is most sensitive.
    scale = float(theirs.abs().max())
    assert torch.allclose(ours, theirs, atol=5e-5 * scale, rtol=1e-4), float((ours - theirs).abs().max())


@pytest.mark.parametrize("steps", [5, 10])
def test_ddim(setup, steps):
    den, noise, eps_fn = setup
    s = diffusers.DDIMScheduler(**BETAS, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
    theirs = run_scheduler(s, eps_fn, noise, steps)
    ours = fewstep.sample(den, noise, "ddim", steps, trailing_times(1000, steps))
    _compare(ours, theirs)


@pytest.mark.parametrize("steps", [5, 10])
def test_euler(setup, steps):
    den, noise, eps_fn = setup
    s = diffusers.EulerDiscreteScheduler(**BETAS, timestep_spacing="trailing")
    theirs = run_scheduler(s, eps_fn, noise, steps)
    ours = fewstep.sample(den, noise, "euler", steps, trailing_times(1000, steps))
    _compare(ours, theirs)


@pytest.mark.parametrize("steps", [4, 8])
def test_heun(setup, steps):
    den, noise, eps_fn = setup
    s = diffusers.HeunDiscreteScheduler(**BETAS, timestep_spacing="trailing")
    theirs = run_scheduler(s, eps_fn, noise, steps)
    # diffusers' Heun spends 2 evaluations per step except the last (Euler onto sigma = 0).
    ours = fewstep.sample(den, noise, "heun", 2 * steps - 1, trailing_times(1000, steps))
    _compare(ours, theirs)


@pytest.mark.parametrize("steps", [5, 10, 20])
def test_dpmpp_2m(setup, steps):
    den, noise, eps_fn = setup
    s = diffusers.DPMSolverMultistepScheduler(**BETAS, timestep_spacing="trailing", algorithm_type="dpmsolver++",
                                              solver_order=2, final_sigmas_type="zero", lower_order_final=True)
    theirs = run_scheduler(s, eps_fn, noise, steps)
    ours = fewstep.sample(den, noise, "dpm++2m", steps, trailing_times(1000, steps))
    _compare(ours, theirs)
