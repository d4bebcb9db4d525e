"""Tuned sampling plans inside diffusers pipelines: ``FewstepScheduler.from_plan`` in ``DDPMPipeline`` and in a
conditional latent pipeline with classifier-free guidance (``StableDiffusionPipeline`` from tiny random parts)."""

import json

import pytest
import torch

import fewstep
from fewstep.grids import make_grid
from fewstep.grids.files import GridEntry, write_grid_file
from fewstep.processes import VPDiscrete
from fewstep.teleport import teleported_start

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMPipeline, UNet2DModel  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

from fewstep.diffusers_scheduler import FewstepScheduler  # noqa: E402
from fewstep.exact import GaussianMixture  # noqa: E402


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    net = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                      block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net


def _gaussian(dim: int, seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(dim, 4, generator=g, dtype=torch.float64))[0]
    return GaussianMixture(0.1 * torch.randn(1, dim, generator=g, dtype=torch.float64), basis[None],
                           torch.tensor([[0.5, 0.3, 0.2, 0.1]], dtype=torch.float64), floor=0.2)


def _tuned_file(tmp_path, process, teleport=None):
    """A plan file with a DC-Solver entry carrying TimeTuner network times and ratios (and a teleported start)."""
    times = make_grid(process, 5, "logsnr", t_max=teleport).tolist()
    net = [t * 0.97 for t in times[:-1]]
    entry = GridEntry("dc_solver", 5, 5, times, "timetuner", net_times=net,
                      options={"ratios": [1.0, 1.1, 0.9, 1.2, 1.05]}, teleport=teleport)
    return write_grid_file(tmp_path / "plan.json", process, [entry])


def _run(pipe, nfe, seed=3, **kw):
    calls = []
    hook = pipe.unet.register_forward_hook(lambda m, i, o: calls.append(float(i[1])))
    try:
        out = pipe(generator=torch.Generator().manual_seed(seed), num_inference_steps=nfe, **kw).images
    finally:
        hook.remove()
    return out, calls


def test_ddpm_pipeline_runs_a_tuned_plan_exactly(tmp_path, unet):
    process = VPDiscrete.linear(1000, 1e-4, 0.02)
    den = fewstep.Denoiser(unet, process, "eps")
    plan = fewstep.make_plan(den, "dc_solver", 5, str(_tuned_file(tmp_path, process)))
    assert plan.net_times is not None and "ratios" in plan.options
    pipe = DDPMPipeline(unet=unet, scheduler=FewstepScheduler.from_plan(plan))
    pipe.set_progress_bar_config(disable=True)
    out, calls = _run(pipe, 5, batch_size=2, output_type="pt")
    assert len(calls) == 5, "exactly NFE network calls"
    assert calls[:1] == [pytest.approx(plan.net_times[0], rel=1e-6)], "the network sees the tuned network times"
    x_T = randn_tensor((2, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    ours = fewstep.sample(den, x_T, plan)
    torch.testing.assert_close(out, (ours / 2 + 0.5).clamp(0, 1), rtol=1e-5, atol=1e-5)
    # the stored plan survives save_pretrained / from_pretrained, and fixes the NFE
    pipe.scheduler.save_pretrained(tmp_path / "sched")
    back = FewstepScheduler.from_pretrained(tmp_path / "sched")
    assert back.plan.to_dict() == plan.to_dict()
    pipe2 = DDPMPipeline(unet=unet, scheduler=back)
    pipe2.set_progress_bar_config(disable=True)
    torch.testing.assert_close(_run(pipe2, 5, batch_size=2, output_type="pt")[0], out)
    with pytest.raises(ValueError, match="num_inference_steps=5"):
        pipe2(num_inference_steps=6, output_type="pt")


def test_ddpm_pipeline_refuses_a_teleported_plan(tmp_path, unet):
    process = VPDiscrete.linear(1000, 1e-4, 0.02)
    den = fewstep.Denoiser(unet, process, "eps")
    den.data_gaussian = _gaussian(64)
    plan = fewstep.make_plan(den, "dc_solver", 5, str(_tuned_file(tmp_path, process, teleport=700.0)))
    assert plan.start.teleported and plan.start.t == 700.0
    with pytest.raises(ValueError, match="data Gaussian"):
        FewstepScheduler.from_plan(plan)
    pipe = DDPMPipeline(unet=unet, scheduler=FewstepScheduler.from_plan(plan, gaussian=den.data_gaussian))
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="did not call scheduler.scale_model_input"):
        pipe(num_inference_steps=5, output_type="pt")


def _tiny_stable_diffusion(tmp_path):
    transformers = pytest.importorskip("transformers")
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=2, norm_num_groups=4).eval()
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.05)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                        norm_num_groups=4, sample_size=16).eval()
    words = ["a", "cat", "dog"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{w + "</w>": i + 2 for i, w in enumerate(words)}}
    for c in "acdgot":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"),
                                           model_max_length=8)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_stable_diffusion_pipeline_with_cfg_runs_a_teleported_plan(tmp_path):
    pipe = _tiny_stable_diffusion(tmp_path)
    process = VPDiscrete.scaled_linear(1000, 0.00085, 0.012)
    den = fewstep.Denoiser(pipe.unet, process, "eps")
    den.data_gaussian = _gaussian(4 * 8 * 8, seed=1)
    plan = fewstep.make_plan(den, "dc_solver", 5, str(_tuned_file(tmp_path, process, teleport=800.0)))
    pipe.scheduler = FewstepScheduler.from_plan(plan, pipe.scheduler.config, gaussian=den.data_gaussian)
    latents, calls = _run(pipe, 5, prompt=["a cat", "a dog"], guidance_scale=3.0, output_type="latent", height=16,
                          width=16)
    assert len(calls) == 5, "one batched (cond + uncond) network call per planned evaluation"
    # fewstep itself: the same x_T, teleported by the data Gaussian, then the plan's solve with CFG on the text
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(["a cat", "a dog"], "cpu", 1, True)
    x_T = randn_tensor((2, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    x_start = teleported_start(den, x_T, 800.0)
    from_start = fewstep.make_plan(den, "dc_solver", 5, plan.times, **plan.options)
    cfg = fewstep.ClassifierFreeGuidance(fewstep.plan.SamplingPlan.bind(plan, den), 3.0,
                                         {"encoder_hidden_states": uncond})
    ours = fewstep.sample(cfg, x_start, from_start, cond={"encoder_hidden_states": cond})
    torch.testing.assert_close(latents, ours, rtol=1e-4, atol=1e-4)
