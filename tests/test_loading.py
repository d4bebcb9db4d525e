import json

import pytest
import torch

from conftest import tiny_config, tiny_images
from fewstep import load_model
from fewstep.checkpoint import FORMAT_VERSION
from fewstep.data import ImageData
from fewstep.training.trainer import Trainer


@pytest.fixture
def checkpoint(tmp_path):
    tr = Trainer(tiny_config(), ImageData(tiny_images()), tmp_path / "run", progress=False)
    tr.fit(steps=2)
    return tr, tmp_path / "run" / "checkpoints" / "step-00000002"


def test_checkpoint_loads_ema_weights_by_default(checkpoint, tmp_path):
    tr, folder = checkpoint
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 700.0], dtype=torch.float64)
    den = load_model(folder)
    assert den.sample_shape == (1, 8, 8) and den.prediction == "eps" and not den.net.training
    with torch.no_grad():
        assert torch.allclose(den.eps(x, t), tr.ema(x, t.float()), atol=1e-6)
        raw = load_model(folder, ema=False)
        assert torch.allclose(raw.eps(x, t), tr.model.eval()(x, t.float()), atol=1e-6)
        # A run folder resolves to its newest checkpoint.
        assert torch.allclose(load_model(tmp_path / "run").eps(x, t), den.eps(x, t))


def test_bad_checkpoints_are_clear_errors(checkpoint, tmp_path):
    _, folder = checkpoint
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "nope")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["network"]["channels"] = 16
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config does not match the weights.*wrong shape"):
        load_model(folder)
    cfg["format_version"] = FORMAT_VERSION + 1
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="newer fewstep"):
        load_model(folder)
    cfg["format_version"] = FORMAT_VERSION
    cfg["network"]["channels"] = 8
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "ema.safetensors").unlink()
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        load_model(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_model(folder)
    with pytest.raises(ValueError, match="unknown bundled model"):
        load_model("bundled:cats")


def test_bundled_fashion_model_loads():
    den = load_model("bundled:fashion")
    assert den.sample_shape == (1, 28, 28)
    n = sum(p.numel() for p in den.net.parameters())
    assert 5e5 < n < 4e6
    with torch.no_grad():
        eps = den.eps(torch.randn(2, 1, 28, 28), 500.0)
    assert eps.shape == (2, 1, 28, 28) and torch.isfinite(eps).all()


def _tiny_diffusers(folder, prediction_type="epsilon"):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    unet.save_pretrained(folder, safe_serialization=True)
    diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                            prediction_type=prediction_type).save_pretrained(folder)
    return unet.eval()


def test_diffusers_adapter_gives_the_wrapped_unets_eps(tmp_path):
    unet = _tiny_diffusers(tmp_path / "ddpm")
    den = load_model(tmp_path / "ddpm")
    assert den.sample_shape == (1, 8, 8) and den.prediction == "eps"
    assert den.process.config()["schedule"] == "cosine"
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        for t in (3, 250, 999):
            assert torch.allclose(den.eps(x, float(t)), unet(x, t).sample, atol=1e-5)


def test_diffusers_v_prediction_and_missing_pieces(tmp_path):
    _tiny_diffusers(tmp_path / "v", "v_prediction")
    assert load_model(tmp_path / "v").prediction == "v"
    (tmp_path / "v" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="only safetensors"):
        load_model(tmp_path / "v")
    _tiny_diffusers(tmp_path / "nosched")
    (tmp_path / "nosched" / "scheduler_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no scheduler_config.json"):
        load_model(tmp_path / "nosched")


def test_diffusers_pipeline_layout(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    unet = _tiny_diffusers(tmp_path / "pipe" / "unet")
    (tmp_path / "pipe" / "unet" / "scheduler_config.json").rename(tmp_path / "sched.json")
    (tmp_path / "pipe" / "scheduler").mkdir()
    (tmp_path / "sched.json").rename(tmp_path / "pipe" / "scheduler" / "scheduler_config.json")
    den = load_model(tmp_path / "pipe")
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(den.eps(x, 500.0), unet(x, 500).sample, atol=1e-5)
    assert diffusers is not None
