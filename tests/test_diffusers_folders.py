"""Whole diffusers folders: a tiny random Stable-Diffusion-like pipeline (latent, text-conditioned
UNet2DConditionModel), an EDM-style folder, a learned-variance folder, and ``fewstep info`` on them."""

from __future__ import annotations

import json

import pytest
import torch

import fewstep
from fewstep.cli import main

diffusers = pytest.importorskip("diffusers")


def _randomize(net):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():  # the default init is near zero at the output: make the network matter
            p.normal_(0, 0.05)
    return net.eval()


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """unet/ + scheduler/ + model_index.json, Stable Diffusion 1.x's scheduler config (PNDM, scaled_linear)."""
    root = tmp_path_factory.mktemp("sd")
    unet = _randomize(diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, norm_num_groups=4, attention_head_dim=2))
    unet.save_pretrained(root / "unet", safe_serialization=True)
    diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                            steps_offset=1, set_alpha_to_one=False).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                       "unet": ["diffusers", "UNet2DConditionModel"],
                                                       "scheduler": ["diffusers", "PNDMScheduler"]}))
    return root, unet


def test_stable_diffusion_like_folder_samples_latents_with_text_conditioning(sd_folder):
    root, unet = sd_folder
    den = fewstep.load_model(root)
    assert den.sample_shape == (4, 8, 8) and den.prediction == "eps" and den.process.t_start == 999.0
    assert "encoder_hidden_states" in den.config["unet"]["conditioning"]
    assert {"steps_offset", "skip_prk_steps", "set_alpha_to_one"} <= set(den.config["scheduler"]["ignored"])
    x = fewstep.prior_noise(den.process, (4, 8, 8), fewstep.generators(range(2)))
    with pytest.raises(ValueError, match=r"needs cond=\{'encoder_hidden_states'"):
        fewstep.sample(den, x, "ddim", 4)
    text = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(1))
    ours = fewstep.sample(den, x, "ddim", 4, cond={"encoder_hidden_states": text})
    # diffusers' DDIM (trailing spacing starts at t_max, like fewstep) on the same UNet, noise and text
    sched = diffusers.DDIMScheduler.from_config(diffusers.PNDMScheduler.from_pretrained(root / "scheduler").config,
                                                timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
    sched.set_timesteps(4)
    theirs = x
    with torch.no_grad():
        for t in sched.timesteps:
            theirs = sched.step(unet(theirs, t, encoder_hidden_states=text).sample, t, theirs).prev_sample
    grid = [float(t) for t in sched.timesteps] + [0.0]
    torch.testing.assert_close(fewstep.sample(den, x, "ddim", 4, grid, cond={"encoder_hidden_states": text}),
                               theirs, atol=1e-5, rtol=1e-4)
    assert ours.shape == (2, 4, 8, 8)


def test_edm_style_folder_matches_diffusers_edm_euler(tmp_path):
    unet = _randomize(diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                            block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                            up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4))
    unet.save_pretrained(tmp_path, safe_serialization=True)
    diffusers.EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5).save_pretrained(tmp_path)
    den = fewstep.load_model(tmp_path)
    assert den.prediction == "edm" and type(den.process).__name__ == "EDM" and den.process.t_start == 80.0
    steps = 6
    grid = fewstep.make_grid(den.process, steps)  # Karras rho = 7, EDM's default
    sched = diffusers.EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5)
    # diffusers' "sigmas" are the Karras ramp u in [0, 1]: fewstep's first `steps` grid points; it appends sigma = 0,
    # as fewstep's clean end replaces the last point
    sched.set_timesteps(sigmas=torch.linspace(0, 1, steps + 1, dtype=torch.float64)[:-1])
    torch.testing.assert_close(sched.sigmas[:-1].double(), grid[:-1], rtol=1e-6, atol=0)
    x = fewstep.prior_noise(den.process, (1, 8, 8), fewstep.generators(range(2)))
    theirs = x
    with torch.no_grad():
        for t in sched.timesteps:
            theirs = sched.step(unet(sched.scale_model_input(theirs, t), t).sample, t, theirs).prev_sample
    ours = fewstep.sample(den, x, "euler", steps, grid)
    torch.testing.assert_close(ours, theirs, atol=1e-4 * float(theirs.abs().max()), rtol=1e-4)


def test_learned_variance_folder_and_info(tmp_path, capsys):
    unet = _randomize(diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=2, layers_per_block=1,
                                            block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                            up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4))
    unet.save_pretrained(tmp_path, safe_serialization=True)
    diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range").save_pretrained(tmp_path)
    den = fewstep.load_model(tmp_path)
    x = fewstep.prior_noise(den.process, (1, 8, 8), fewstep.generators(range(2)))
    with torch.no_grad():
        assert torch.allclose(den.eps(x, 500.0), unet(x, 500).sample[:, :1], atol=1e-6)
    for solver in ("dpm++2m", "ddpm"):  # ODE solvers use the mean channels; ddpm also the variance
        assert torch.isfinite(fewstep.sample(den, x, solver, 5, generator=torch.Generator().manual_seed(0))).all()
    clipped = fewstep.sample(fewstep.load_model(tmp_path, clipping="config"), x, "dpm++2m", 3)
    assert float(clipped.abs().max()) <= 1.0 < float(fewstep.sample(den, x, "dpm++2m", 3).abs().max())
    assert main(["sample", "--model", str(tmp_path), "--nfe", "2", "--n", "2", "--clipping", "config",
                 "--out", str(tmp_path / "s.npz"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["info", "--model", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "t_start=967" in out and "learned variance (learned_range)" in out
    assert "honoured  variance_type" in out and "mapped    clip_sample" in out and "ignored   timestep_spacing" in out
    assert main(["info", "--model", str(tmp_path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["t_start"] == 967.0 and record["prediction"] == "eps" and "lambda(999) = -9.92" in record["start_reason"]
    # a config fewstep cannot honour: one line naming the key
    cfg = json.loads((tmp_path / "scheduler_config.json").read_text())
    (tmp_path / "scheduler_config.json").write_text(json.dumps({**cfg, "beta_schedule": "laplace"}))
    assert main(["info", "--model", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "beta_schedule='laplace' is not supported; valid: linear" in err and "Traceback" not in err


def test_info_of_the_bundled_model():
    info = fewstep.model_info("bundled:fashion")
    assert info.kind == "fewstep checkpoint" and info.t_start == info.t_max == 999.0
    assert "data_gaussian" in info.attached and "grids" in info.attached and info.scheduler is None
    # each version ships the plans tuned on its own network
    assert "grids" in fewstep.model_info("bundled:fashion-v1").attached
