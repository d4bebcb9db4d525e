"""fewstep solvers inside a real diffusers pipeline (``FewstepScheduler``), built from a small local UNet."""

import pytest
import torch

import fewstep
from fewstep.processes import VPDiscrete

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMPipeline, UNet2DModel  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

from fewstep.diffusers_scheduler import FewstepScheduler  # noqa: E402


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    net = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                      block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()
    for p in net.parameters():  # the default init is near zero at the output: make the network matter
        torch.nn.init.normal_(p, std=0.05)
    return net


def direct(unet, solver, nfe, prediction, seed, **options):
    """What fewstep itself samples from the pipeline's initial noise."""
    process = VPDiscrete.linear(1000, 1e-4, 0.02)
    x_T = randn_tensor((2, 1, 8, 8), generator=torch.Generator().manual_seed(seed))
    den = fewstep.Denoiser(unet, process, prediction)
    return fewstep.sample(den, x_T, solver, nfe, generator=torch.Generator().manual_seed(seed), **options)


@pytest.mark.parametrize("solver,nfe", [("dpm++2m", 6), ("heun", 7), ("dpm2", 6), ("unipc", 5), ("pndm", 9),
                                        ("ddim", 4)])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_pipeline_runs_the_solver_exactly(unet, solver, nfe, prediction):
    scheduler = FewstepScheduler(solver=solver, prediction_type=prediction)
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    calls = []
    hook = unet.register_forward_hook(lambda m, i, o: calls.append(float(i[1])))
    try:
        out = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=nfe,
                   output_type="pt").images
    finally:
        hook.remove()
    assert len(calls) == nfe, "one network evaluation per planned timestep"
    ours = direct(unet, solver, nfe, {"epsilon": "eps", "v_prediction": "v"}[prediction], 3)
    expected = (ours / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(torch.tensor(calls), scheduler.timesteps.double().float())


def test_stochastic_solver_uses_the_pipeline_generator(unet):
    pipe = DDPMPipeline(unet=unet, scheduler=FewstepScheduler(solver="dpm++2m_sde"))
    pipe.set_progress_bar_config(disable=True)
    run = lambda: pipe(batch_size=2, generator=torch.Generator().manual_seed(5), num_inference_steps=6,  # noqa: E731
                       output_type="pt").images
    a, b = run(), run()
    assert torch.equal(a, b)
    # the pipeline draws x_T and then the solver's noise from the same generator, as fewstep does here
    g = torch.Generator().manual_seed(5)
    x_T = randn_tensor((2, 1, 8, 8), generator=g)
    den = fewstep.Denoiser(unet, VPDiscrete.linear(), "eps")
    ours = fewstep.sample(den, x_T, "dpm++2m_sde", 6, generator=g)
    torch.testing.assert_close(a, (ours / 2 + 0.5).clamp(0, 1), rtol=1e-5, atol=1e-5)


def test_from_config_and_clear_errors(unet):
    base = diffusers.DDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction")
    sched = FewstepScheduler.from_config(base.config, solver="unipc")
    assert sched.config.solver == "unipc" and sched.prediction == "v"
    assert sched.process.config()["schedule"] == "scaled_linear"
    with pytest.raises(ValueError, match="fixed-NFE"):
        FewstepScheduler(solver="dpm_adaptive")
    with pytest.raises(ValueError, match="no option 'etaa'"):
        FewstepScheduler(solver="ddim", solver_options={"etaa": 1.0})
    with pytest.raises(ValueError, match="set_timesteps"):
        FewstepScheduler().step(torch.zeros(1, 1, 8, 8), 0, torch.zeros(1, 1, 8, 8))
    sched = FewstepScheduler(solver="ddim")
    sched.set_timesteps(3)
    assert len(sched.timesteps) == 3 and float(sched.timesteps[0]) == 999.0


def test_abandoned_solve_is_restarted_cleanly(unet):
    sched = FewstepScheduler(solver="dpm++2m")
    x = torch.randn(1, 1, 8, 8)
    sched.set_timesteps(5)
    with torch.no_grad():
        sched.step(unet(x, sched.timesteps[0]).sample, sched.timesteps[0], x)
    sched.set_timesteps(5)  # a new solve: the old worker is stopped, the new one starts from the new sample
    pipe = DDPMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=5, output_type="pt").images
    torch.testing.assert_close(out, (direct(unet, "dpm++2m", 5, "eps", 3) / 2 + 0.5).clamp(0, 1), rtol=1e-5, atol=1e-5)
