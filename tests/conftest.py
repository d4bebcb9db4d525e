import gzip
import struct

import numpy as np
import pytest
import torch

import fewstep
from fewstep.exact import GaussianMixture
from fewstep.processes import VPDiscrete


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def gmm8() -> GaussianMixture:
    """A small 8-d low-rank mixture used across solver tests."""
    return GaussianMixture.random_low_rank(dim=8, components=3, rank=2, floor=0.05, seed=1)


@pytest.fixture(scope="session")
def ddpm_linear() -> VPDiscrete:
    return VPDiscrete.linear(1000, 1e-4, 0.02)


@pytest.fixture(scope="session")
def setup(gmm8, ddpm_linear):
    """The diffusers-agreement setting: the exact 8-d mixture's denoiser, shared noise, its eps function."""
    den = gmm8.denoiser(ddpm_linear)
    noise = torch.randn(16, 8, generator=torch.Generator().manual_seed(3))
    return den, noise, lambda x, t: den.eps(x, t)


class TinyConvNet(torch.nn.Module):
    """A random 3x3 convolution as an eps-prediction network: cheap, image-shaped output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return 0.5 * self.conv(x) + 0.5 * x


def fashion_standin() -> fewstep.Denoiser:
    """A stand-in for a 28x28 Fashion-MNIST model (declares its sample shape like a loaded checkpoint)."""
    return fewstep.Denoiser(TinyConvNet(), VPDiscrete.linear(), "eps", sample_shape=(1, 28, 28))


def seeded_noise(process, n: int, dim: int, seed: int = 0, dtype=torch.float64):
    return fewstep.prior_noise(process, (dim,), fewstep.generators(range(seed, seed + n)), dtype=dtype)



def write_idx(path, arr: np.ndarray) -> None:
    """Write an unsigned-byte idx file (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


TINY_UNET = {"kind": "unet", "in_channels": 1, "resolution": 8, "channels": 8, "channel_mult": [1, 2],
             "num_res_blocks": 1, "attn_resolutions": [4], "head_dim": 8}


def tiny_config(**training):
    return {"network": dict(TINY_UNET),
            "process": {"kind": "vp_discrete", "schedule": "linear", "num_train_timesteps": 1000,
                        "beta_start": 0.0001, "beta_end": 0.02},
            "prediction": "eps",
            "training": {"steps": 4, "batch_size": 8, "lr": 1e-3, "warmup_steps": 0, "log_every": 1,
                         "checkpoint_every_seconds": 0, "ema_half_life_images": 100, **training}}


def tiny_encoder(path, res: int = 8) -> str:
    """Train a tiny ``fashion-encoder`` (2 steps on labelled tiny images) in ``path``; the run folder.  The encoder of
    the REPA and perceptual-metric tests."""
    from fewstep.data import ImageData
    from fewstep.training.presets import get_preset
    from fewstep.training.trainer import Trainer

    cfg = get_preset("fashion-encoder")
    cfg["encoder"].update(resolution=res, channels=4, feature_dim=6)
    cfg["training"].update(steps=2, batch_size=4, checkpoint_every_seconds=0)
    data = ImageData(tiny_images(16, res=res), torch.arange(16) % 10, 10)
    Trainer(cfg, data, path, device="cpu", progress=False).fit()
    return str(path)


def tiny_images(n: int = 16, res: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.zeros(1, 1, res, res, dtype=torch.uint8)
    base[..., res // 4: 3 * res // 4, res // 4: 3 * res // 4] = 220
    noise = torch.randint(0, 30, (n, 1, res, res), generator=g, dtype=torch.uint8)
    return base + noise


def tiny_teacher(path, steps: int = 2) -> str:
    """Train a tiny v-prediction UNet on the DDPM linear schedule for ``steps`` steps in ``path``; its checkpoint.
    The teacher of the distillation, ECT and reflow tests."""
    from fewstep.data import ImageData
    from fewstep.training.trainer import Trainer

    cfg = {"network": dict(TINY_UNET), "prediction": "v", "data": {"spec": "tiny"},
           "process": {"kind": "vp_discrete", "schedule": "linear", "num_train_timesteps": 1000,
                       "beta_start": 0.0001, "beta_end": 0.02},
           "training": {"steps": steps, "batch_size": 8, "lr": 1e-3, "warmup_steps": 0, "checkpoint_every_seconds": 0}}
    Trainer(cfg, ImageData(tiny_images()), path, progress=False).fit()
    return str(path / "checkpoints" / f"step-{steps:08d}")


PATH_RUN_ARGS = ["--pairs", "8", "--nfe", "2", "--batch-size", "8", "--sample-every", "0", "--checkpoint-every", "0",
                 "--no-progress", "--path-weight", "1", "--path-times", "999,600,0", "--steps", "2"]


def path_run_variants(teacher: str, root, variants: dict) -> dict:
    """Two-step ``fewstep reflow`` path-distillation runs of ``teacher`` in ``root``: a ``plain`` one, then one per
    ``variants`` item (name -> extra flags) on the plain run's pairs; each run's first log record by name."""
    import json

    from fewstep.cli import main

    common = ["--teacher", teacher, *PATH_RUN_ARGS]
    assert main(["reflow", "--out", str(root / "plain"), *common]) == 0
    for name, extra in variants.items():
        assert main(["reflow", "--out", str(root / name), *common, "--pairs-dir", str(root / "plain" / "pairs"),
                     *extra]) == 0
    return {name: json.loads((root / name / "log.jsonl").read_text().splitlines()[0]) for name in ["plain", *variants]}
