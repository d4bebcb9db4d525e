"""The ``autoencoder`` objective and :func:`load_autoencoder`: the latent space of latent diffusion and flow models.

Latent diffusion (Rombach et al. 2022) trains a generative model on the latents of a separately trained
autoencoder.  This objective trains :class:`~fewstep.nets.autoencoder.ConvAutoencoder` on the training split
(``fewstep train --config fashion-autoencoder --out runs/autoencoder``), per sample

    ``|| D(E(x) + s n) - x ||^2 / dim(x) + latent_weight ||E(x)||^2 / dim(z)``,

with ``n ~ N(0, I)`` and ``s = latent_noise`` times the batch's latent RMS (no gradient through ``s``): the
noise keeps the decoder smooth around the training latents, which a generative model only approximates, and
the small penalty keeps the latents' scale from drifting (a deterministic stand-in for the paper's KL term).
A denoising run then names the result in its ``latent`` section (:mod:`fewstep.latent`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..checkpoint import checkpoint_folder, load_tensors, read_config
from ..data import ImageData, random_hflip, to_model_range
from ..nets.autoencoder import AutoencoderConfig, ConvAutoencoder
from .config import check_non_negative, section_config
from .objective import Objective, Phase, register_objective

__all__ = ["AutoencoderObjective", "AutoencoderSettings", "autoencoder_config", "load_autoencoder"]


@dataclass
class AutoencoderSettings:
    """The ``objective`` section of an ``autoencoder`` config."""

    hflip: bool = True
    latent_noise: float = 0.1
    latent_weight: float = 1e-4

    def check(self) -> None:
        check_non_negative("objective.latent_noise", self.latent_noise)
        check_non_negative("objective.latent_weight", self.latent_weight)


def autoencoder_config(section: Any, path: str = "autoencoder") -> AutoencoderConfig:
    """The checked :class:`AutoencoderConfig` of a config's ``autoencoder`` section (``kind`` optional)."""
    return section_config(AutoencoderConfig, section, path, "conv_autoencoder")


@register_objective
class AutoencoderObjective(Objective):
    """One module ``autoencoder``, one phase: the reconstruction loss above on clean training images."""

    kind = "autoencoder"
    settings_class = AutoencoderSettings
    sections = ("autoencoder",)
    identity = ("autoencoder",)

    def __init__(self, config: Mapping[str, Any], settings: AutoencoderSettings, data: ImageData):
        super().__init__(config, settings, data)
        cfg = autoencoder_config(config["autoencoder"])
        if tuple(data.images.shape[1:]) != cfg.image_shape:
            raise ValueError(f"the data's images are {tuple(data.images.shape[1:])} but the autoencoder is built for "
                             f"{cfg.image_shape}; set autoencoder.in_channels and autoencoder.resolution to match")
        self.autoencoder = ConvAutoencoder(cfg)

    @classmethod
    def check_sections(cls, config: Mapping[str, Any]) -> None:
        if "autoencoder" not in config:
            raise ValueError("an autoencoder config needs an 'autoencoder' section (see the fashion-autoencoder preset)")
        autoencoder_config(config["autoencoder"])

    def modules(self) -> dict[str, nn.Module]:
        return {"autoencoder": self.autoencoder}

    def phases(self) -> list[Phase]:
        return [Phase("autoencoder", self.loss, "loss")]

    def draw(self, step: int, data: ImageData, indices: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        x = to_model_range(data.images[indices])
        if self.settings.hflip:
            x = random_hflip(x, generator)
        noise = torch.randn((len(x), *self.autoencoder.config.latent_shape), generator=generator)
        return {"x": x, "noise": noise}

    def loss(self, batch: dict[str, Tensor], nets: Mapping[str, nn.Module]) -> Tensor:
        """Per-sample reconstruction error of the noised latents plus the latent penalty (module docstring)."""
        ae = nets["autoencoder"]
        x, noise = batch["x"], batch["noise"]
        z = ae.encode(x)
        s = self.settings
        rms = z.detach().pow(2).mean().sqrt()
        recon = ae.decode(z + s.latent_noise * rms * noise)
        return (recon - x).pow(2).flatten(1).mean(1) + s.latent_weight * z.pow(2).flatten(1).mean(1)


def load_autoencoder(spec: str | Path, device: torch.device | str = "cpu") -> ConvAutoencoder:
    """A frozen autoencoder (eval mode, no gradients, its EMA weights) from a run or checkpoint folder of the
    ``autoencoder`` objective."""
    folder = Path(spec)
    if not folder.is_dir():
        raise FileNotFoundError(f"autoencoder {spec} not found: give a run or checkpoint folder of "
                                f"`fewstep train --config fashion-autoencoder`")
    folder = checkpoint_folder(folder)
    cfg = read_config(folder)
    if "autoencoder" not in cfg:
        raise ValueError(f"{folder} is not an autoencoder checkpoint (no 'autoencoder' section in its config.json); "
                         f"train one with `fewstep train --config fashion-autoencoder`")
    ae = ConvAutoencoder(autoencoder_config(cfg["autoencoder"]))
    weights = folder / "autoencoder-ema.safetensors"
    ae.load_state_dict(load_tensors(weights if weights.exists() else folder / "autoencoder.safetensors"))
    return ae.to(device).eval().requires_grad_(False)
