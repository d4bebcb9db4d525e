"""Latent space (Rombach et al. 2022): the autoencoder objective, the latent scale, a latent flow model trained,
saved, loaded and decoded at the image edge, and the image-space methods that refuse a latent model."""

import copy
import json

import pytest
import torch

from conftest import tiny_images
from fewstep import generate, load_model
from fewstep.checkpoint import export_ema, latest_checkpoint
from fewstep.cli import main
from fewstep.data import ImageData, to_model_range
from fewstep.latent import LATENT_FILE, encode_data, fit_scale, image_shape, latent_space_of, to_images
from fewstep.nets.autoencoder import AutoencoderConfig, ConvAutoencoder
from fewstep.training import Trainer, load_autoencoder, resolve_config
from fewstep.training.presets import get_preset

AE = {"kind": "conv_autoencoder", "in_channels": 1, "resolution": 8, "channels": 8, "latent_channels": 2,
      "downsamples": 1}
TRAIN = {"steps": 3, "batch_size": 8, "lr": 1e-3, "warmup_steps": 0, "checkpoint_every_seconds": 0,
         "ema_half_life_images": 100, "log_every": 1}


def ae_config(**objective):
    return {"autoencoder": dict(AE), "data": {"spec": "tiny"},
            "objective": {"kind": "autoencoder", **objective}, "training": dict(TRAIN)}


def latent_flow_config(ae_run, **objective):
    return {"network": {"kind": "unet", "in_channels": 2, "resolution": 4, "channels": 8, "channel_mult": [1, 2],
                        "num_res_blocks": 1, "attn_resolutions": [2], "head_dim": 8},
            "process": {"kind": "rectified_flow"}, "prediction": "flow", "data": {"spec": "tiny"},
            "latent": {"autoencoder": str(ae_run)},
            "objective": {"kind": "denoising", **objective}, "training": dict(TRAIN)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An autoencoder run and a latent flow run on it (3 steps each, 8x8 images, 2x4x4 latents)."""
    root = tmp_path_factory.mktemp("latent")
    data = ImageData(tiny_images())
    Trainer(ae_config(), data, root / "ae", progress=False).fit()
    trainer = Trainer(latent_flow_config(root / "ae"), data, root / "flow", progress=False)
    trainer.fit()
    return root, data, trainer


def test_autoencoder_shapes_and_config_checks():
    ae = ConvAutoencoder(AutoencoderConfig(**{k: v for k, v in AE.items() if k != "kind"}))
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert ae.encode(x).shape == (3, 2, 4, 4) and ae(x).shape == x.shape
    deep = ConvAutoencoder(AutoencoderConfig(resolution=28, downsamples=2, latent_channels=3))
    assert deep.encode(torch.zeros(1, 1, 28, 28)).shape == (1, 3, 7, 7)
    with pytest.raises(ValueError, match="not divisible by 2\\^downsamples"):
        AutoencoderConfig(resolution=28, downsamples=3).check()
    with pytest.raises(ValueError, match="latent_channels must be positive"):
        AutoencoderConfig(latent_channels=0).check()


def test_autoencoder_loss_is_the_reconstruction_error_plus_the_latent_penalty():
    from fewstep.training.autoencoder import AutoencoderObjective, AutoencoderSettings

    data = ImageData(tiny_images(4))
    obj = AutoencoderObjective(ae_config(), AutoencoderSettings(hflip=False, latent_noise=0.0, latent_weight=0.5),
                               data)
    batch = obj.draw(0, data, torch.arange(4), torch.Generator().manual_seed(0))
    x = to_model_range(data.images)
    assert torch.equal(batch["x"], x)
    ae = obj.autoencoder
    z = ae.encode(x)
    want = (ae(x) - x).pow(2).flatten(1).mean(1) + 0.5 * z.pow(2).flatten(1).mean(1)
    assert torch.allclose(obj.loss(batch, {"autoencoder": ae}), want, atol=1e-6)
    noisy = AutoencoderObjective(ae_config(), AutoencoderSettings(hflip=False, latent_noise=0.5, latent_weight=0.0),
                                 data)
    noisy.autoencoder.load_state_dict(ae.state_dict())
    rms = z.detach().pow(2).mean().sqrt()
    want = (ae.decode(z + 0.5 * rms * batch["noise"]) - x).pow(2).flatten(1).mean(1)
    assert torch.allclose(noisy.loss(batch, {"autoencoder": ae}), want, atol=1e-6)


def test_autoencoder_training_lowers_the_reconstruction_error(tmp_path):
    data = ImageData(tiny_images(32))
    cfg = ae_config(latent_noise=0.0)
    cfg["training"].update(steps=60, lr=3e-3)
    trainer = Trainer(cfg, data, tmp_path / "ae", progress=False)
    x = to_model_range(data.images)
    with torch.no_grad():
        before = float((trainer.modules["autoencoder"](x) - x).pow(2).mean())
    trainer.fit()
    with torch.no_grad():
        after = float((trainer.modules["autoencoder"](x) - x).pow(2).mean())
    assert after < 0.2 * before


def test_encode_data_fits_the_scale_to_unit_variance():
    ae = ConvAutoencoder(AutoencoderConfig(resolution=8, channels=8, latent_channels=2))
    data = ImageData(tiny_images(16), labels=torch.arange(16) % 3, num_classes=3)
    latent = encode_data(data, ae)
    assert latent.images.shape == (16, 2, 4, 4) and latent.images.dtype == torch.float32
    assert float(latent.images.double().std()) == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(latent.labels, data.labels) and latent.num_classes == 3
    with torch.no_grad():
        raw = ae.encode(to_model_range(data.images))
        assert latent.space.scale == pytest.approx(fit_scale(raw))
        # decoding the scaled latents is the autoencoder's reconstruction: the scale cancels
        assert torch.allclose(latent.to_images(latent.images), ae(to_model_range(data.images)).clamp(-1, 1), atol=1e-5)
    fixed = encode_data(data, ae, scale=2.0)
    assert torch.allclose(fixed.images, raw * 2.0, atol=1e-6)
    with pytest.raises(ValueError, match="the autoencoder encodes"):
        encode_data(ImageData(tiny_images(4, res=16)), ae)


def test_a_latent_run_trains_on_latents_and_saves_its_autoencoder(runs):
    root, data, trainer = runs
    assert trainer.data.images.shape == (16, 2, 4, 4)
    ckpt = latest_checkpoint(root / "flow")
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["latent"]["network"] == AE and cfg["latent"]["autoencoder"] == str(root / "ae")
    assert cfg["latent"]["scale"] == pytest.approx(trainer.data.space.scale)
    assert cfg["data"]["resolution"] == 8 and cfg["data"]["channels"] == 1  # the images', not the latents'
    saved = load_autoencoder(root / "ae")
    from fewstep.checkpoint import load_tensors

    state = load_tensors(ckpt / LATENT_FILE)
    assert all(torch.equal(state[k], v) for k, v in saved.state_dict().items())


def test_a_latent_model_samples_latents_and_decodes_them_at_the_edge(runs):
    root, _, trainer = runs
    den = load_model(root / "flow")
    space = latent_space_of(den)
    assert space is not None and tuple(den.sample_shape) == (2, 4, 4) and image_shape(den) == (1, 8, 8)
    assert space.scale == pytest.approx(trainer.data.space.scale)
    z = generate(den, den.sample_shape, [3, 4, 5], "euler", 2)
    images = to_images(den, z)
    assert images.shape == (3, 1, 8, 8) and float(images.abs().max()) <= 1.0
    with torch.no_grad():
        assert torch.allclose(images, space.autoencoder.decode(z / space.scale).clamp(-1, 1), atol=1e-6)
    alone = to_images(den, generate(den, den.sample_shape, [4], "euler", 2))  # the same seed in another batch
    assert torch.allclose(alone[0], images[1], atol=1e-5)
    pixel = torch.zeros(2, 1, 8, 8)
    assert to_images(object(), pixel) is pixel  # a pixel model's samples are its images
    # the sample functions of eval and bench decode too
    from fewstep.metrics.sampling import solver_sample_fn

    fn = solver_sample_fn(den, den.sample_shape, "euler", 2)
    assert torch.allclose(fn([3, 4, 5]), images, atol=1e-6)
    from fewstep.modelinfo import model_info

    assert "1x8x8 <-> 2x4x4 latents" in model_info(den).attached["latent_space"]


def test_an_exported_latent_model_keeps_its_autoencoder(runs, tmp_path):
    root, _, _ = runs
    out = export_ema(latest_checkpoint(root / "flow"), tmp_path / "export")
    assert (out / LATENT_FILE).exists()
    den = load_model(out)
    assert image_shape(den) == (1, 8, 8)


def test_a_resumed_latent_run_needs_the_same_autoencoder(runs, tmp_path):
    root, data, _ = runs
    run = tmp_path / "flow"
    Trainer(latent_flow_config(root / "ae"), data, run, progress=False).fit(2)
    saved = json.loads((latest_checkpoint(run) / "config.json").read_text())
    resumed = Trainer(saved, data, run, progress=False)
    assert resumed.resume() == 2 and resumed.data.space.scale == pytest.approx(saved["latent"]["scale"])
    other = tmp_path / "ae2"
    cfg = ae_config()
    cfg["autoencoder"]["channels"] = 4
    Trainer(cfg, data, other, progress=False).fit(1)
    moved = copy.deepcopy(saved)
    moved["latent"]["autoencoder"] = str(other)
    with pytest.raises(ValueError, match="latent.network differs"):
        Trainer(moved, data, run, progress=False)


def test_latent_configs_are_checked(runs):
    root, data, _ = runs
    cfg = latent_flow_config(root / "ae")
    cfg["latent"]["scal"] = 1.0
    with pytest.raises(ValueError, match="did you mean 'scale'"):
        resolve_config(cfg)
    cfg = latent_flow_config(root / "ae")
    cfg["latent"]["scale"] = -1.0
    with pytest.raises(ValueError, match="latent.scale must be positive"):
        resolve_config(cfg)
    enc = get_preset("fashion-encoder")
    enc["latent"] = {"autoencoder": str(root / "ae")}
    with pytest.raises(ValueError, match="the encoder objective trains on images"):
        resolve_config(enc)
    with pytest.raises(ValueError, match="objective.hflip"):
        Trainer(latent_flow_config(root / "ae", hflip=True), data, root / "x", progress=False)
    with pytest.raises(FileNotFoundError, match="fashion-autoencoder"):
        Trainer(latent_flow_config(root / "missing"), data, root / "y", progress=False)
    with pytest.raises(ValueError, match="not an autoencoder checkpoint"):
        load_autoencoder(root / "flow")


def test_image_space_methods_refuse_a_latent_model_by_name(runs):
    root, _, _ = runs
    den = load_model(root / "flow")
    from fewstep.inversion import ddim_invert
    from fewstep.restoration import operators, restore

    with pytest.raises(ValueError, match="inversion works on images"):
        ddim_invert(den, torch.zeros(1, 2, 4, 4))
    y = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="restoration works on images"):
        restore(den, y, operators.denoise(), [0])
    from fewstep.distill.base import load_teacher

    with pytest.raises(ValueError, match="distillation .* works on images"):
        load_teacher(str(root / "flow"))


def test_cli_samples_and_fits_the_gaussian_of_a_latent_model(runs, tmp_path):
    root, data, _ = runs
    import numpy as np

    np.savez(tmp_path / "tiny.npz", images=data.images.numpy())
    model = latest_checkpoint(root / "flow")
    assert main(["sample", "--model", str(model), "--nfe", "2", "--solver", "euler", "--n", "3", "--no-progress",
                 "--out", str(tmp_path / "s.npz")]) == 0
    images = np.load(tmp_path / "s.npz")["images"]
    assert images.shape == (3, 8, 8, 1)  # decoded images (NHWC uint8), not 2x4x4 latents
    out = tmp_path / "g.safetensors"
    assert main(["gaussian", "--model", str(model), "--data", str(tmp_path / "tiny.npz"), "--rank", "32", "--out", str(out)]) == 0
    from fewstep.teleport import load_gaussian

    g = load_gaussian(out)
    assert g.means.shape[-1] == 2 * 4 * 4  # in the latent space, where the model teleports
    latents = encode_data(data, latent_space_of(load_model(model)).autoencoder,
                          latent_space_of(load_model(model)).scale).images
    assert torch.allclose(g.means[0].float(), latents.reshape(16, -1).mean(0), atol=1e-4)
    z = generate(load_model(model), (2, 4, 4), [0, 1], "euler", 2, teleport=0.5, gaussian=g)
    assert z.shape == (2, 2, 4, 4)
