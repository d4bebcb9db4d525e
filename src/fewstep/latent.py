"""Latent space: a denoiser or flow trained on autoencoder latents, decoded to images at the output edge.

Latent diffusion (Rombach et al. 2022, sec. 3-4) trains the generative model on ``z = c E(x)`` of a frozen
autoencoder ``(E, D)``, with ``c`` the reciprocal of the latents' standard deviation over the training data
(their "scale factor", so that ``z`` has unit variance like the noise), and maps samples back with
``x = D(z / c)``.  In fewstep:

* a training config's ``latent`` section (``{"autoencoder": RUN}``, optionally ``"scale"``) makes the trainer
  encode the data once (:func:`encode_data`; ``scale`` fitted if absent and then recorded) and save the
  autoencoder in every checkpoint (:data:`LATENT_FILE`, its config and scale in ``config.json``'s ``latent``);
* ``load_model`` attaches it as ``latent_space`` (:mod:`fewstep.attachments`): the model's ``sample_shape`` is
  the latent's, every solver, plan and teleported start works in latent space unchanged;
* images come out through :func:`to_images` (``fewstep sample``, ``eval``, ``bench model``, training previews);
  methods that need pixels inside the solve (restoration, inversion of images) refuse a latent model by name
  (:func:`require_pixel_space`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .attachments import attached
from .checkpoint import load_tensors, read_json
from .data import ImageData, to_model_range
from .nets.autoencoder import AutoencoderConfig, ConvAutoencoder

__all__ = ["LatentSpace", "LatentData", "LATENT_FILE", "encode_images", "encode_data", "fit_scale",
           "load_latent_space", "to_images", "image_shape", "require_pixel_space", "latent_space_of"]

#: The autoencoder's weights inside a latent model's checkpoint (its config is ``config.json``'s ``latent``).
LATENT_FILE = "latent-autoencoder.safetensors"


class LatentSpace(nn.Module):
    """A frozen autoencoder and the latent scale ``c``: ``encode(x) = c E(x)``, ``decode(z) = D(z / c)``."""

    def __init__(self, autoencoder: ConvAutoencoder, scale: float, source: str = ""):
        super().__init__()
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"latent scale must be a positive finite number, got {scale}")
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.scale = float(scale)
        self.source = source

    @property
    def config(self) -> AutoencoderConfig:
        return self.autoencoder.config

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.config.latent_shape

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.config.image_shape

    def encode(self, x: Tensor) -> Tensor:
        """Scaled latents of images ``x`` in [-1, 1]."""
        return self.autoencoder.encode(x) * self.scale

    def decode(self, z: Tensor) -> Tensor:
        """Images in [-1, 1] (clamped) of scaled latents ``z``."""
        return self.autoencoder.decode(z / self.scale).clamp(-1.0, 1.0)

    def describe(self) -> dict[str, Any]:
        """The ``latent`` section of a latent model's config: source, scale and the autoencoder's network."""
        return {"autoencoder": self.source, "scale": self.scale, "network": self.config.to_dict()}


@dataclass
class LatentData(ImageData):
    """An :class:`ImageData` whose ``images`` are float latents of ``space`` (already in model space)."""

    space: LatentSpace | None = None

    def to_images(self, z: Tensor) -> Tensor:
        assert self.space is not None
        with torch.no_grad():
            return self.space.decode(z.to(next(self.space.parameters()).device)).to(z.device)


def fit_scale(latents: Tensor) -> float:
    """Rombach et al.'s scale factor: ``1 / std`` of the (unscaled) latents over the data."""
    std = float(latents.double().std())
    if not std > 0:
        raise ValueError("the autoencoder maps every image to the same latent (std 0); it is not trained")
    return 1.0 / std


@torch.no_grad()
def encode_images(autoencoder: nn.Module, images: Tensor, batch_size: int = 500, progress: bool = False) -> Tensor:
    """Unscaled latents of uint8 ``images`` ``(N, C, H, W)``, in batches (float32, CPU)."""
    out = []
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="encode", unit="batch")
    device = next(autoencoder.parameters()).device
    for i in starts:
        x = to_model_range(images[i:i + batch_size]).to(device)
        out.append(autoencoder.encode(x).float().cpu())
    return torch.cat(out)


def encode_data(data: ImageData, autoencoder: ConvAutoencoder, scale: float | None = None, source: str = "",
                progress: bool = False) -> LatentData:
    """``data`` encoded once by ``autoencoder`` with scale ``scale`` (``None``: :func:`fit_scale` of these
    latents): the training set of a latent model."""
    want = autoencoder.config.image_shape
    if tuple(data.images.shape[1:]) != want:
        raise ValueError(f"the data's images are {tuple(data.images.shape[1:])} but the autoencoder encodes {want}; "
                         f"use data of that size or an autoencoder trained on it")
    z = encode_images(autoencoder, data.images, progress=progress)
    c = fit_scale(z) if scale is None else float(scale)
    space = LatentSpace(autoencoder, c, source)
    return LatentData(images=z * c, labels=data.labels, num_classes=data.num_classes, space=space)


def space_from_section(section: Mapping[str, Any], state: Mapping[str, Tensor], where: str) -> LatentSpace:
    """The :class:`LatentSpace` of a latent model's ``latent`` config section and the autoencoder's ``state``."""
    net = section.get("network")
    if not isinstance(net, Mapping) or not isinstance(section.get("scale"), (int, float)):
        raise ValueError(f"{where}: the latent section needs the autoencoder's network and scale, got "
                         f"{sorted(section)}; the checkpoint is damaged")
    ae = ConvAutoencoder(AutoencoderConfig(**{k: v for k, v in net.items() if k != "kind"}))
    ae.load_state_dict(dict(state))
    return LatentSpace(ae, float(section["scale"]), str(section.get("autoencoder", "")))


def load_latent_space(path: Path) -> LatentSpace:
    """The attachment loader: the autoencoder saved beside a latent model (``path`` is its :data:`LATENT_FILE`;
    network and scale come from the ``latent`` section of the ``config.json`` beside it)."""
    cfg = read_json(path.parent / "config.json")
    section = cfg.get("latent") if isinstance(cfg, dict) else None
    if not isinstance(section, Mapping):
        raise ValueError(f"{path} is there but {path.parent / 'config.json'} has no latent section; the checkpoint "
                         f"is damaged")
    return space_from_section(section, load_tensors(path), str(path.parent))


def latent_space_of(denoiser: Any) -> LatentSpace | None:
    """The latent space a model samples in, or None for a pixel-space model."""
    return attached(denoiser, "latent_space")


def to_images(denoiser: Any, x: Tensor) -> Tensor:
    """Samples of ``denoiser`` as images: decoded when it is a latent model, ``x`` itself otherwise."""
    space = latent_space_of(denoiser)
    if space is None:
        return x
    device = next(space.parameters()).device
    if device != x.device:
        space.to(x.device)
    with torch.inference_mode():
        return space.decode(x).clone()


def image_shape(denoiser: Any) -> tuple[int, ...]:
    """``(C, H, W)`` of the images a model makes (its ``sample_shape``, or the decoder's for a latent model)."""
    space = latent_space_of(denoiser)
    return tuple(space.image_shape) if space is not None else tuple(denoiser.sample_shape)


def require_pixel_space(denoiser: Any, where: str) -> None:
    """Refuse a latent model in a method that works on pixels inside the solve (naming ``where``)."""
    if latent_space_of(denoiser) is not None:
        raise ValueError(f"{where} works on images inside the solve; this model samples in an autoencoder's latent "
                         f"space ({'x'.join(map(str, denoiser.sample_shape))}), which {where} does not support yet")
