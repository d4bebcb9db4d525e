"""The denoising objective: train ``network`` as a ``prediction``-type denoiser of ``process``.

The loss is :func:`fewstep.training.losses.diffusion_loss`; its checkpoints keep the historical
file names (``model``, ``ema``, ``optimizer``) that :func:`fewstep.load_model` and
``bundled:fashion`` use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import Tensor, nn

from ..api import generate
from ..data import ImageData
from ..denoisers import PREDICTION_TYPES, Denoiser
from ..imagegrid import save_image_grid
from ..nets import build_net
from ..processes import process_from_config
from .config import check_network, check_positive, check_process, check_type
from .curriculum import SPACINGS, Curriculum
from .losses import TIME_SAMPLERS, WEIGHTINGS, diffusion_loss, draw_noising
from .objective import CheckpointFiles, Objective, Phase, register_objective
from .uncertainty import UncertaintyHead, uncertainty_loss

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["DenoisingObjective", "DenoisingSettings"]


@dataclass
class DenoisingSettings:
    """The ``objective`` section of a denoising config (older configs keep these under ``training``)."""

    time_sampling: str = "uniform"
    weighting: str = "uniform"
    min_snr_gamma: float = 5.0
    p_mean: float = -1.2
    p_std: float = 1.2
    hflip: bool = False
    use_labels: bool = False
    label_dropout: float = 0.0
    sample_nfe: int = 20
    init_from: str = ""
    class_lr_scale: float = 1.0
    uncertainty_weighting: bool = False
    curriculum: str = "none"
    curriculum_clusters: int = 10
    curriculum_stage_steps: int = 0

    def check(self) -> None:
        if self.time_sampling not in TIME_SAMPLERS:
            raise ValueError(f"unknown time_sampling {self.time_sampling!r}; valid: {', '.join(TIME_SAMPLERS)}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        check_positive("objective.min_snr_gamma", self.min_snr_gamma)
        check_positive("objective.p_std", self.p_std)
        check_positive("objective.sample_nfe", self.sample_nfe)
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"objective.label_dropout must lie in [0, 1), got {self.label_dropout}")
        check_positive("objective.class_lr_scale", self.class_lr_scale)
        if self.label_dropout and not self.use_labels:
            raise ValueError("objective.label_dropout needs objective.use_labels = true")
        if self.curriculum not in ("none", *SPACINGS):
            raise ValueError(f"unknown objective.curriculum {self.curriculum!r}; valid: none, {', '.join(SPACINGS)}")
        if self.curriculum != "none":
            if self.time_sampling != "uniform":
                raise ValueError(f"objective.curriculum draws times uniformly on the unlocked clusters; it needs "
                                 f"time_sampling 'uniform', got {self.time_sampling!r}")
            self.make_curriculum()

    def make_curriculum(self) -> Curriculum | None:
        """The :class:`~fewstep.training.curriculum.Curriculum` of these settings, None without one."""
        if self.curriculum == "none":
            return None
        return Curriculum(self.curriculum_clusters, self.curriculum_stage_steps, self.curriculum)


@register_objective
class DenoisingObjective(Objective):
    """One module ``model`` (built from ``network``), one phase: the weighted denoising loss."""

    kind = "denoising"
    settings_class = DenoisingSettings
    sections = ("network", "process", "prediction", "sigma_data")
    identity = ("network", "process", "prediction")

    def __init__(self, config: Mapping[str, Any], settings: DenoisingSettings, data: ImageData):
        super().__init__(config, settings, data)
        self.process = process_from_config(config["process"])
        self.prediction: str = config["prediction"]
        self.sigma_data = float(config.get("sigma_data", 0.5))
        self.model = build_net(config["network"])
        self.uncertainty = UncertaintyHead() if settings.uncertainty_weighting else None
        self.curriculum = settings.make_curriculum()
        want = config["network"].get("in_channels", 1)
        if data.images.shape[1] != want:
            raise ValueError(f"the data has {data.images.shape[1]} channel(s) but the network's in_channels is "
                             f"{want}; set network.in_channels to {data.images.shape[1]}")
        self.num_classes = int(config["network"].get("num_classes", 0))
        if settings.init_from:
            from .warmstart import warm_start
            warm_start(self.model, settings.init_from, config)
        if settings.use_labels:
            if data.labels is None:
                raise ValueError("objective.use_labels is set but the data has no labels (fashion-mnist and .npz "
                                 "files with a 'labels' array have them)")
            if self.num_classes < data.num_classes:
                raise ValueError(f"the data has {data.num_classes} classes but network.num_classes is "
                                 f"{self.num_classes}; set network.num_classes to {data.num_classes}")

    @classmethod
    def check_sections(cls, config: Mapping[str, Any]) -> None:
        for key in ("network", "process", "prediction"):
            if key not in config:
                raise ValueError(f"training config is missing {key!r} (needs network, process, prediction, training)")
        check_network(config["network"])
        check_process(config["process"])
        if config["prediction"] not in PREDICTION_TYPES:
            raise ValueError(f"config prediction must be one of {', '.join(PREDICTION_TYPES)}, "
                             f"got {config['prediction']!r}")
        if "sigma_data" in config:
            check_type(config["sigma_data"], float, "sigma_data")
            check_positive("sigma_data", config["sigma_data"])

    def modules(self) -> dict[str, nn.Module]:
        """``model``, and with ``uncertainty_weighting`` EDM2's ``uncertainty`` head (trained, saved, never sampled)."""
        return {"model": self.model, **({"uncertainty": self.uncertainty} if self.uncertainty is not None else {})}

    def phases(self) -> list[Phase]:
        return [Phase("model", self.loss, "loss", also=("uncertainty",) if self.uncertainty is not None else ())]

    def lr_scales(self, name: str) -> dict[str, float]:
        """``class_lr_scale`` on the class table: a table added to a warm-started network starts at zero
        and its gradient is weak (class information matters only at high noise), so it learns faster."""
        return {"embed.classes.": self.settings.class_lr_scale} if self.settings.class_lr_scale != 1.0 else {}

    def checkpoint_files(self, name: str) -> CheckpointFiles:
        if name != "model":
            return super().checkpoint_files(name)
        return CheckpointFiles("model.safetensors", "ema.safetensors", "optimizer")

    def draw(self, step: int, data: ImageData, indices: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Images in [-1, 1] (flipped at random with ``hflip``), times, noise, and labels with ``use_labels``.

        With ``label_dropout`` p, each label is replaced by the null class ``num_classes`` with
        probability p, so one network learns the conditional and the unconditional denoiser
        (classifier-free guidance, Ho & Salimans 2022, section 3.2).
        """
        s = self.settings
        x0, t, eps = draw_noising(self.process, data.images[indices], generator, hflip=s.hflip,
                                  time_sampling=s.time_sampling, p_mean=s.p_mean, p_std=s.p_std,
                                  curriculum=self.curriculum, step=step)
        out = {"x0": x0, "t": t, "eps": eps}
        if s.use_labels and data.labels is not None:
            labels = data.labels[indices].clone()
            if s.label_dropout:
                drop = torch.rand(len(indices), generator=generator) < s.label_dropout
                labels[drop] = self.num_classes
            out["labels"] = labels
        return out

    def loss(self, batch: dict[str, Tensor], nets: Mapping[str, nn.Module]) -> Tensor:
        """Per-sample :func:`~fewstep.training.losses.diffusion_loss` of ``nets["model"]``; with
        ``uncertainty_weighting`` divided by ``exp(u(sigma))`` plus ``u(sigma)`` (EDM2)."""
        s = self.settings
        cond = {"class_labels": batch["labels"]} if "labels" in batch else None
        loss = diffusion_loss(nets["model"], self.prediction, self.process, batch["x0"], batch["t"], batch["eps"],
                              weighting=s.weighting, cond=cond, sigma_data=self.sigma_data, gamma=s.min_snr_gamma)
        if "uncertainty" not in nets:
            return loss
        log_sigma = (-self.process.lam(batch["t"].double().cpu())).clamp(-40.0, 40.0).to(loss.device)
        return uncertainty_loss(loss, nets["uncertainty"](log_sigma))

    @torch.no_grad()
    def preview(self, trainer: "Trainer", n: int = 64) -> Path:
        """Sample ``n`` images from the EMA model (DPM-Solver++(2M), ``sample_nfe`` steps) into ``samples/``."""
        c, r = int(self.data.images.shape[1]), int(self.data.images.shape[-1])
        den = Denoiser(trainer.emas["model"], self.process, self.prediction, self.sigma_data)
        cond = None
        if self.settings.use_labels and self.num_classes:
            cond = {"class_labels": torch.arange(n, device=trainer.device) % self.num_classes}
        x = generate(den, (c, r, r), range(n), "dpm++2m", self.settings.sample_nfe, device=trainer.device, cond=cond)
        return save_image_grid(x, trainer.out_dir / "samples" / f"step-{trainer.step:08d}.png")
