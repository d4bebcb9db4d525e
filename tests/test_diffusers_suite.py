"""Agreement of the solver suite with diffusers' schedulers under matched configuration.

Matched configuration as in ``test_diffusers_match``: DDPM linear betas, ``timestep_spacing="trailing"``, the
last step onto sigma = 0, fewstep given the same times as an explicit grid.  Intentional differences are asserted.
"""

import pytest
import torch

import fewstep
from fewstep import solvers
from fewstep.exact import GaussianMixture
from fewstep.grids import make_schedule

from diffusers_driver import BETAS, run_scheduler, trailing_times

diffusers = pytest.importorskip("diffusers")





def _close(ours, theirs):
    scale = float(theirs.abs().max())
    return torch.allclose(ours, theirs, atol=5e-5 * scale, rtol=1e-4), float((ours - theirs).abs().max())


def _assert_close(ours, theirs):
    ok, err = _close(ours, theirs)
    assert ok, err


@pytest.mark.parametrize("steps", [6, 10])
def test_dpmpp_3m(setup, steps):
    """diffusers' 3M weights the second difference by half its Taylor term: ``half_d2`` reproduces it."""
    den, noise, eps_fn = setup
    s = diffusers.DPMSolverMultistepScheduler(**BETAS, timestep_spacing="trailing", algorithm_type="dpmsolver++",
                                              solver_order=3, final_sigmas_type="zero", lower_order_final=True)
    theirs = run_scheduler(s, eps_fn, noise, steps)
    grid = trailing_times(1000, steps)
    _assert_close(fewstep.sample(den, noise, "dpm++3m", steps, grid, half_d2=True), theirs)
    assert not _close(fewstep.sample(den, noise, "dpm++3m", steps, grid), theirs)[0]


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [2, 3])
def test_unipc(setup, variant, order):
    den, noise, eps_fn = setup
    steps = 8
    s = diffusers.UniPCMultistepScheduler(**BETAS, timestep_spacing="trailing", solver_order=order, solver_type=variant,
                                          final_sigmas_type="sigma_min", lower_order_final=True)
    # final_sigmas_type="zero" gives NaN with bh1 in diffusers (B(h) = -inf); compare on the t = 0 end instead.
    theirs = run_scheduler(s, eps_fn, noise, steps)
    ours = fewstep.sample(den, noise, "unipc", steps, trailing_times(1000, steps), order=order, variant=variant,
                          clean_end=False)
    _assert_close(ours, theirs)


def test_unipc_noise_prediction(setup):
    den, noise, eps_fn = setup
    s = diffusers.UniPCMultistepScheduler(**BETAS, timestep_spacing="trailing", solver_order=2, predict_x0=False,
                                          final_sigmas_type="sigma_min")
    theirs = run_scheduler(s, eps_fn, noise, 8)
    _assert_close(fewstep.sample(den, noise, "unipc", 8, trailing_times(1000, 8), prediction="noise",
                                 clean_end=False), theirs)


@pytest.mark.parametrize("order", [2, 3])
def test_deis_log_rho(setup, order):
    """diffusers implements the log-rho AB of DEIS: fewstep's ``basis="lam"``; the default tAB differs."""
    den, noise, eps_fn = setup
    steps = 8
    s = diffusers.DEISMultistepScheduler(**BETAS, timestep_spacing="trailing", solver_order=order)
    theirs = run_scheduler(s, eps_fn, noise, steps)
    grid = trailing_times(1000, steps)
    # diffusers' DEIS ends at sigma(t = 0), not on clean data.
    _assert_close(fewstep.sample(den, noise, "deis", steps, grid, order=order, basis="lam", clean_end=False), theirs)


def test_lms(setup):
    den, noise, eps_fn = setup
    s = diffusers.LMSDiscreteScheduler(**BETAS, timestep_spacing="trailing")
    theirs = run_scheduler(s, eps_fn, noise, 10)
    _assert_close(fewstep.sample(den, noise, "lms", 10, trailing_times(1000, 10)), theirs)


def _pndm_times(steps):
    return [float(t) for t in range(1000 - 1000 // steps, -1, -(1000 // steps))] + [0.0]


def test_plms(setup):
    """diffusers' PNDM with ``skip_prk_steps`` is PLMS with the pseudo improved-Euler first step (steps + 1 NFE)."""
    den, noise, eps_fn = setup
    steps = 10
    s = diffusers.PNDMScheduler(**BETAS, skip_prk_steps=True, set_alpha_to_one=True, timestep_spacing="leading",
                                steps_offset=1)
    theirs = run_scheduler(s, eps_fn, noise, steps)
    grid = [901.0 - 100 * k for k in range(10)] + [0.0]  # leading + offset 1: 901, ..., 1, then clean
    # Intentional difference: fewstep's default makes the step onto sigma = 0 a DDIM step; diffusers
    # extrapolates eps there. lower_order_final=False reproduces diffusers.
    ours = fewstep.sample(den, noise, "plms", steps + 1, grid, lower_order_final=False)
    assert not torch.allclose(fewstep.sample(den, noise, "plms", steps + 1, grid), theirs, atol=1e-3)
    _assert_close(ours, theirs)


def test_pndm(setup):
    """F-PNDM: 3 pseudo Runge-Kutta steps (12 NFE) then PLMS; diffusers' midpoints are t - ratio//2."""
    den, noise, eps_fn = setup
    steps = 10
    s = diffusers.PNDMScheduler(**BETAS, skip_prk_steps=False, set_alpha_to_one=True, timestep_spacing="leading",
                                steps_offset=1)
    theirs = run_scheduler(s, eps_fn, noise, steps)
    grid = [901.0 - 100 * k for k in range(10)] + [0.0]
    ours = fewstep.sample(den, noise, "pndm", steps + 9, grid, lower_order_final=False)
    _assert_close(ours, theirs)



def test_dpm_solver_singlestep_2(setup):
    """diffusers' singlestep order 2 (noise prediction) spans two grid intervals and uses the grid point
    between them as the intermediate point (``intermediate="grid"``).  It has no trailing spacing option,
    so both get the trailing times explicitly; noise prediction cannot end at sigma = 0 in diffusers, so
    both end at t = 0 (``final_sigmas_type="sigma_min"``, ``clean_end=False``)."""
    den, noise, eps_fn = setup
    steps = 10
    times = trailing_times(1000, steps)
    s = diffusers.DPMSolverSinglestepScheduler(**BETAS, algorithm_type="dpmsolver", solver_order=2,
                                               lower_order_final=True, final_sigmas_type="sigma_min")
    s.set_timesteps(timesteps=[int(t) for t in times[:-1]])
    x = noise * s.init_noise_sigma
    for t in s.timesteps:
        x = s.step(eps_fn(s.scale_model_input(x, t), float(t)), t, x).prev_sample
    sched = make_schedule(den.process, steps, times, clean_end=False)
    ours = solvers.get("dpm2").fn(den, noise, sched, intermediate="grid", orders=[2] * 4 + [1, 1])
    _assert_close(ours, x)


def test_dpmpp_2m_sde_shared_noise(setup, monkeypatch):
    """Same Brownian increments: diffusers' ``randn_tensor`` replays fewstep's draws."""
    den, noise, eps_fn = setup
    steps = 8
    draws = [torch.randn(16, 8, generator=torch.Generator().manual_seed(100 + k)) for k in range(steps)]
    import diffusers.schedulers.scheduling_dpmsolver_multistep as mod
    queue = list(draws)
    monkeypatch.setattr(mod, "randn_tensor", lambda *a, **k: queue.pop(0))
    s = diffusers.DPMSolverMultistepScheduler(**BETAS, timestep_spacing="trailing", algorithm_type="sde-dpmsolver++",
                                              solver_order=2, final_sigmas_type="zero")
    theirs = run_scheduler(s, eps_fn, noise, steps)

    class Replay(torch.Generator):
        pass

    replay = list(draws)
    import fewstep.solvers.dpmpp as ours_mod
    monkeypatch.setattr(ours_mod, "randn_like", lambda x, g: replay.pop(0).to(x.dtype))
    ours = fewstep.sample(den, noise, "dpm++2m_sde", steps, trailing_times(1000, steps))
    _assert_close(ours, theirs)


def test_dpmpp_3m_sde_differs_from_diffusers_which_stalls(ddpm_linear):
    """Intentional difference: diffusers' 3M SDE does not converge in distribution, fewstep's does.

    With matched noise the two differ by O(1) (the step's third-order coefficients differ), so the
    comparison is made where the answer is known: the Frechet distance to the exact mixture at 40 NFE.
    fewstep's 3M SDE reaches the finite-sample floor; diffusers' stalls well above it (0.015 vs 0.0006).
    """
    from fewstep.metrics import frechet_distance_to_moments

    gmm = GaussianMixture.random_low_rank(dim=4, components=2, rank=2, floor=0.1, seed=2)
    den = gmm.denoiser(ddpm_linear)
    noise = fewstep.prior_noise(ddpm_linear, (4,), fewstep.generators(range(3000)))
    s = diffusers.DPMSolverMultistepScheduler(**BETAS, timestep_spacing="trailing", algorithm_type="sde-dpmsolver++",
                                              solver_order=3, final_sigmas_type="zero")
    theirs = run_scheduler(s, lambda x, t: den.eps(x, t), noise, 40, generator=torch.Generator().manual_seed(0))
    ours = fewstep.sample(den, noise, "dpm++3m_sde", 40, "logsnr", generator=fewstep.generators(range(3000, 6000)))
    floor = sum(frechet_distance_to_moments(gmm.sample(3000, torch.Generator().manual_seed(k)), gmm.mean, gmm.covariance)
                for k in range(5)) / 5
    fd_ours = frechet_distance_to_moments(ours, gmm.mean, gmm.covariance)
    fd_theirs = frechet_distance_to_moments(theirs, gmm.mean, gmm.covariance)
    assert fd_ours < 2 * floor < fd_theirs / 5, (fd_ours, fd_theirs, floor)
