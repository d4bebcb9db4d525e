"""The ``classifier`` objective: a noise-aware classifier ``p(y | x_t)`` for classifier guidance.

Cross-entropy of :class:`~fewstep.nets.classifier.NoisyClassifierNet` on
``y = x0 + sigma_hat eps`` at times drawn from ``process`` (Dhariwal & Nichol 2021, sec. 4.1:
"we train a classifier p(y | x_t, t) on noisy images").  The process only sets the distribution
of noise levels seen in training (``time_sampling``); the network sees ``sigma_hat = sigma/alpha``,
so it guides a model of any process.  Checkpoints hold ``classifier.safetensors``,
``classifier-ema.safetensors`` and the optimizer; :func:`fewstep.guidance.load_classifier` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import ImageData
from ..nets.classifier import NoisyClassifierConfig, NoisyClassifierNet
from ..processes import process_from_config
from .config import check_positive, check_process, section_config
from .losses import TIME_SAMPLERS, draw_noising
from .objective import Objective, Phase, register_objective

__all__ = ["ClassifierObjective", "ClassifierSettings"]


@dataclass
class ClassifierSettings:
    """The ``objective`` section of a ``classifier`` config."""

    time_sampling: str = "uniform"
    p_mean: float = -1.2
    p_std: float = 1.2
    hflip: bool = False

    def check(self) -> None:
        if self.time_sampling not in TIME_SAMPLERS:
            raise ValueError(f"unknown time_sampling {self.time_sampling!r}; valid: {', '.join(TIME_SAMPLERS)}")
        check_positive("objective.p_std", self.p_std)


def classifier_config(section: Mapping[str, Any], path: str = "classifier") -> NoisyClassifierConfig:
    """The checked :class:`NoisyClassifierConfig` of a config's ``classifier`` section (``kind`` optional)."""
    return section_config(NoisyClassifierConfig, section, path, "noisy_classifier")


@register_objective
class ClassifierObjective(Objective):
    """One module ``classifier``, one phase: cross-entropy on noisy images."""

    kind = "classifier"
    settings_class = ClassifierSettings
    sections = ("classifier", "process")
    identity = ("classifier",)

    def __init__(self, config: Mapping[str, Any], settings: ClassifierSettings, data: ImageData):
        super().__init__(config, settings, data)
        self.process = process_from_config(config["process"])
        cfg = classifier_config(config["classifier"])
        if data.labels is None:
            raise ValueError("the classifier objective needs labelled data (fashion-mnist, or a .npz with 'labels')")
        if data.images.shape[1] != cfg.in_channels:
            raise ValueError(f"the data has {data.images.shape[1]} channel(s) but classifier.in_channels is "
                             f"{cfg.in_channels}; set classifier.in_channels to {data.images.shape[1]}")
        if cfg.num_classes < data.num_classes:
            raise ValueError(f"the data has {data.num_classes} classes but classifier.num_classes is "
                             f"{cfg.num_classes}; set classifier.num_classes to {data.num_classes}")
        self.net = NoisyClassifierNet(cfg)

    @classmethod
    def check_sections(cls, config: Mapping[str, Any]) -> None:
        for key in cls.sections:
            if key not in config:
                raise ValueError(f"a classifier training config needs {key!r} (classifier, process, data, training)")
        classifier_config(config["classifier"])
        check_process(config["process"])

    def modules(self) -> dict[str, nn.Module]:
        return {"classifier": self.net}

    def phases(self) -> list[Phase]:
        return [Phase("classifier", self.loss, "loss")]

    def draw(self, step: int, data: ImageData, indices: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Images in [-1, 1], noise levels ``sigma_hat`` of times drawn from the process, noise, labels."""
        s = self.settings
        x0, t, eps = draw_noising(self.process, data.images[indices], generator, hflip=s.hflip,
                                  time_sampling=s.time_sampling, p_mean=s.p_mean, p_std=s.p_std)
        sigma_hat = torch.exp(-self.process.lam(t)).float()
        assert data.labels is not None
        return {"x0": x0, "sigma_hat": sigma_hat, "eps": eps, "labels": data.labels[indices].clone()}

    def loss(self, batch: dict[str, Tensor], nets: Mapping[str, nn.Module]) -> Tensor:
        """Per-sample cross-entropy ``-log p(label | x0 + sigma_hat eps)``."""
        s = batch["sigma_hat"]
        y = batch["x0"] + s.reshape(-1, 1, 1, 1) * batch["eps"]
        logits = nets["classifier"](y, s)
        return F.cross_entropy(logits.float(), batch["labels"], reduction="none")
