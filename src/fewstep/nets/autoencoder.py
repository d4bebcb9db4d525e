"""A small convolutional autoencoder: the latent space a latent diffusion or flow model is trained in.

Latent diffusion (Rombach et al. 2022, sec. 3) trains the generative model on ``z = E(x)`` of a separately
trained autoencoder and decodes its samples with ``D``.  No pretrained autoencoder can be downloaded here, so
fewstep trains this one (``fewstep train --config fashion-autoencoder``: :mod:`fewstep.training.autoencoder`).

``encode`` maps images in [-1, 1] ``(B, C, R, R)`` to latents ``(B, latent_channels, R / 2^d, R / 2^d)``
(``d = downsamples`` stride-2 stages of GroupNorm-SiLU-conv); ``decode`` mirrors it with nearest-neighbour
upsampling.  Both are deterministic: the latent's scale is fixed afterwards (:class:`fewstep.latent.LatentSpace`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn

from ._layers import group_norm as _gn
from .upsample import UpsampleConv

__all__ = ["AutoencoderConfig", "ConvAutoencoder"]


@dataclass
class AutoencoderConfig:
    """Hyper-parameters of :class:`ConvAutoencoder`; saved as the ``autoencoder`` section of its checkpoints."""

    in_channels: int = 1
    resolution: int = 28
    channels: int = 32
    latent_channels: int = 4
    downsamples: int = 1

    def check(self) -> None:
        for name in ("in_channels", "resolution", "channels", "latent_channels", "downsamples"):
            if getattr(self, name) < 1:
                raise ValueError(f"config autoencoder.{name} must be positive, got {getattr(self, name)}")
        if self.resolution % (2 ** self.downsamples):
            raise ValueError(f"config autoencoder.resolution {self.resolution} is not divisible by 2^downsamples "
                             f"({2 ** self.downsamples}); the decoder could not restore the size")

    @property
    def latent_resolution(self) -> int:
        return self.resolution // 2 ** self.downsamples

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_resolution, self.latent_resolution)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.resolution, self.resolution)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "conv_autoencoder", **asdict(self)}


class _Residual(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(_gn(ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1), _gn(ch), nn.SiLU(),
                                  nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ConvAutoencoder(nn.Module):
    """``encode``: conv, then ``downsamples`` x (residual block, stride-2 conv doubling the width, capped at 4x),
    a residual block and a 1x1 conv to the latent; ``decode`` the mirror image with nearest upsampling."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        config.check()
        self.config = cfg = config
        widths = [cfg.channels * min(2 ** i, 4) for i in range(cfg.downsamples + 1)]
        enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)]
        for i in range(cfg.downsamples):
            enc += [_Residual(widths[i]), nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1)]
        enc += [_Residual(widths[-1]), _gn(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], cfg.latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, widths[-1], 3, padding=1), _Residual(widths[-1])]
        for i in reversed(range(cfg.downsamples)):
            # nearest 2x upsampling + 3x3 conv as one low-resolution transposed convolution; the identity keeps
            # the state-dict indices of the separate nn.Upsample this once was (checkpoints load unchanged)
            dec += [nn.Identity(), UpsampleConv(widths[i + 1], widths[i]), _Residual(widths[i])]
        dec += [_gn(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], cfg.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: Tensor) -> Tensor:
        """Latents ``(B, latent_channels, R / 2^d, R / 2^d)`` of images ``x`` in [-1, 1]."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """Images (unclamped, trained towards [-1, 1]) of latents ``z``."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction ``decode(encode(x))``."""
        return self.decode(self.encode(x))
