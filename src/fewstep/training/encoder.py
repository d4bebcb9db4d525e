"""The ``encoder`` objective and :func:`load_encoder`: the frozen encoder representation alignment aligns with.

REPA (Yu et al. 2024) needs a pretrained encoder's patch features.  Here one is trained on the training
split with labels (cross-entropy of :class:`~fewstep.nets.encoder.PatchEncoder`, left-right flips):
``fewstep train --config fashion-encoder --out runs/encoder``.  It is neither the FID feature extractor nor the
shipped classifier that judges samples, and never sees the test split.

Encoders are pluggable: ``objective.align_encoder`` is a run or checkpoint folder of this objective, or
``NAME:ARG`` for a loader registered in :data:`ENCODER_LOADERS` (``ARG -> nn.Module`` with a ``features(x)``
method mapping images in [-1, 1] ``(B, C, H, W)`` to patch features ``(B, D, h, w)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import checkpoint_folder, load_tensors, read_config
from ..data import ImageData, random_hflip, to_model_range
from ..nets.encoder import EncoderConfig, PatchEncoder
from .config import section_config
from .objective import Objective, Phase, register_objective

__all__ = ["EncoderObjective", "EncoderSettings", "encoder_config", "load_encoder", "ENCODER_LOADERS"]

#: ``NAME -> loader(ARG)`` for ``align_encoder = "NAME:ARG"``; the loader returns a module with ``features(x)``.
ENCODER_LOADERS: dict[str, Callable[[str], nn.Module]] = {}


@dataclass
class EncoderSettings:
    """The ``objective`` section of an ``encoder`` config."""

    hflip: bool = True

    def check(self) -> None:
        pass


def encoder_config(section: Any, path: str = "encoder") -> EncoderConfig:
    """The checked :class:`EncoderConfig` of a config's ``encoder`` section (``kind`` optional)."""
    return section_config(EncoderConfig, section, path, "patch_encoder")


@register_objective
class EncoderObjective(Objective):
    """One module ``encoder``, one phase: cross-entropy of the class logits on clean training images."""

    kind = "encoder"
    settings_class = EncoderSettings
    sections = ("encoder",)
    identity = ("encoder",)

    def __init__(self, config: Mapping[str, Any], settings: EncoderSettings, data: ImageData):
        super().__init__(config, settings, data)
        cfg = encoder_config(config["encoder"])
        if data.labels is None:
            raise ValueError("the encoder objective trains on labels; the data has none (fashion-mnist and .npz files "
                             "with a 'labels' array have them)")
        if data.images.shape[1] != cfg.in_channels:
            raise ValueError(f"the data has {data.images.shape[1]} channel(s) but encoder.in_channels is "
                             f"{cfg.in_channels}; set encoder.in_channels to {data.images.shape[1]}")
        if data.num_classes > cfg.num_classes:
            raise ValueError(f"the data has {data.num_classes} classes but encoder.num_classes is {cfg.num_classes}")
        self.encoder = PatchEncoder(cfg)

    @classmethod
    def check_sections(cls, config: Mapping[str, Any]) -> None:
        if "encoder" not in config:
            raise ValueError("an encoder config needs an 'encoder' section (see the fashion-encoder preset)")
        encoder_config(config["encoder"])

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder}

    def phases(self) -> list[Phase]:
        return [Phase("encoder", self.loss, "loss")]

    def draw(self, step: int, data: ImageData, indices: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        x = to_model_range(data.images[indices])
        if self.settings.hflip:
            x = random_hflip(x, generator)
        assert data.labels is not None
        return {"x": x, "labels": data.labels[indices]}

    def loss(self, batch: dict[str, Tensor], nets: Mapping[str, nn.Module]) -> Tensor:
        return F.cross_entropy(nets["encoder"](batch["x"]), batch["labels"], reduction="none")


def load_encoder(spec: str, device: torch.device | str = "cpu") -> nn.Module:
    """A frozen encoder (eval mode, no gradients) from a folder of the ``encoder`` objective (its EMA weights)
    or ``NAME:ARG`` of :data:`ENCODER_LOADERS`."""
    name, _, arg = spec.partition(":")
    if arg and name in ENCODER_LOADERS:
        enc = ENCODER_LOADERS[name](arg)
    else:
        folder = Path(spec)
        if not folder.is_dir():
            known = f"; registered loaders: {', '.join(ENCODER_LOADERS)}" if ENCODER_LOADERS else ""
            raise FileNotFoundError(f"encoder {spec} not found: give a run of `fewstep train --config fashion-encoder`"
                                    f"{known}")
        folder = checkpoint_folder(folder)
        cfg = read_config(folder)
        if "encoder" not in cfg:
            raise ValueError(f"{folder} is not an encoder checkpoint (no 'encoder' section in its config.json); "
                             f"train one with `fewstep train --config fashion-encoder`")
        enc = PatchEncoder(encoder_config(cfg["encoder"]))
        weights = folder / "encoder-ema.safetensors"
        enc.load_state_dict(load_tensors(weights if weights.exists() else folder / "encoder.safetensors"))
    if not callable(getattr(enc, "features", None)):
        raise ValueError(f"encoder {spec} has no features(x) method giving patch features")
    return enc.to(device).eval().requires_grad_(False)
