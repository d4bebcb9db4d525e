"""Training configs: :class:`TrainSettings` (what every objective shares) and :func:`resolve_config`,
which checks a whole config strictly and splits it between the trainer and the objective."""

from __future__ import annotations

import copy
import math
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from .config import (CHECKPOINT_KEYS, check_data, check_latent, check_keys, check_non_negative, check_positive, check_type,
                     settings_from_dict)
from .denoising import DenoisingObjective
from .objective import OBJECTIVES, Objective
from .posthoc_ema import check_sigma_rel

__all__ = ["LR_SCHEDULES", "TrainSettings", "lr_factor", "resolve_config"]

LR_SCHEDULES = ("constant", "cosine", "inverse_sqrt")


def lr_factor(step: int, settings: "TrainSettings") -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    Linear warm-up over ``warmup_steps``, then ``lr_schedule``:
    ``constant``; ``cosine`` (Loshchilov & Hutter 2017) from 1 at the end of warm-up to
    ``lr_final_fraction`` at ``steps``; ``inverse_sqrt`` (EDM2, Karras et al. 2024, eq. 16 with
    t_ref = ``lr_ref_steps``): ``1 / sqrt(max(step / lr_ref_steps, 1))``.
    """
    s = settings
    warm = min(1.0, (step + 1) / s.warmup_steps) if s.warmup_steps > 0 else 1.0
    if s.lr_schedule == "cosine":
        span = max(s.steps - s.warmup_steps, 1)
        progress = min(max(step - s.warmup_steps, 0) / span, 1.0)
        f = s.lr_final_fraction
        return warm * (f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    if s.lr_schedule == "inverse_sqrt":
        return warm / math.sqrt(max(step / s.lr_ref_steps, 1.0))
    return warm


@dataclass
class TrainSettings:
    """Settings every objective shares, saved in every checkpoint's ``config.json`` under ``training``."""

    steps: int = 1000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 100
    lr_schedule: str = "constant"
    lr_final_fraction: float = 0.0
    lr_ref_steps: int = 0
    grad_clip: float | None = 1.0
    ema_half_life_images: float = 50_000.0
    ema_rampup: float | None = 0.05
    posthoc_ema_sigma_rels: list[float] = field(default_factory=list)
    posthoc_ema_snapshot_every: int = 0
    seed: int = 0
    precision: str = "auto"
    checkpoint_every_steps: int = 0
    checkpoint_every_seconds: float = 300.0
    keep_checkpoints: int = 2
    sample_every_steps: int = 0
    log_every: int = 10

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "TrainSettings":
        """Strict: unknown keys and wrongly typed values are ValueErrors naming ``training.<key>``."""
        return settings_from_dict(cls, cfg, "training")

    def check(self) -> None:
        if self.batch_size < 1 or self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be a positive multiple of grad_accum ({self.grad_accum})")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"config training.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                             f"got {self.lr_schedule!r}")
        if not 0 <= self.lr_final_fraction <= 1:
            raise ValueError(f"config training.lr_final_fraction must be in [0, 1], got {self.lr_final_fraction}")
        if self.lr_schedule == "inverse_sqrt" and self.lr_ref_steps < 1:
            raise ValueError("config training.lr_schedule 'inverse_sqrt' needs training.lr_ref_steps >= 1 "
                             "(the step where the decay starts, EDM2's t_ref in batches)")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"config training.adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        for name in ("steps", "lr", "ema_half_life_images", "log_every"):
            check_positive(f"training.{name}", getattr(self, name))
        for name in ("weight_decay", "warmup_steps", "lr_ref_steps", "grad_clip", "ema_rampup", "seed", "checkpoint_every_steps",
                     "checkpoint_every_seconds", "keep_checkpoints", "sample_every_steps"):
            check_non_negative(f"training.{name}", getattr(self, name))
        for rel in self.posthoc_ema_sigma_rels:
            check_sigma_rel(rel, "config training.posthoc_ema_sigma_rels entries")
        if len(set(self.posthoc_ema_sigma_rels)) != len(self.posthoc_ema_sigma_rels):
            raise ValueError(f"config training.posthoc_ema_sigma_rels repeats a value: {self.posthoc_ema_sigma_rels}")
        check_non_negative("training.posthoc_ema_snapshot_every", self.posthoc_ema_snapshot_every)
        if self.posthoc_ema_sigma_rels and not self.posthoc_ema_snapshot_every:
            raise ValueError("config training.posthoc_ema_sigma_rels needs training.posthoc_ema_snapshot_every "
                             "(steps between snapshots, e.g. a tenth of the run)")


def resolve_config(config: Mapping[str, Any], objective: type[Objective] | None = None
                   ) -> tuple[dict[str, Any], type[Objective], TrainSettings, Any]:
    """Check a training config strictly and split it: ``(config, objective class, settings, objective settings)``.

    Older configs keep the objective's settings (``weighting``, ``hflip`` ...) under ``training``;
    they are moved to the ``objective`` section.  The returned config is the normalised copy
    saved in checkpoints.
    """
    config = copy.deepcopy(dict(config))
    section = config.get("objective", {})
    if not isinstance(section, dict):
        raise ValueError(f"config objective must be a JSON object with a kind, got {section!r}")
    kind = section.get("kind", objective.kind if objective else DenoisingObjective.kind)
    if objective is None:
        if kind not in OBJECTIVES:
            raise ValueError(f"unknown objective kind {kind!r}; valid: {', '.join(OBJECTIVES)}")
        objective = OBJECTIVES[kind]
    elif kind != objective.kind:
        raise ValueError(f"config objective.kind is {kind!r} but the trainer was given {objective.kind!r}")
    check_keys(config, {"training", "data", "objective", "latent", *CHECKPOINT_KEYS, *objective.sections}, "")
    if "latent" in config:
        if not objective.latent_ok:
            raise ValueError(f"config latent: the {objective.kind} objective trains on images, not on an autoencoder's "
                             f"latents; remove the latent section")
        check_latent(config["latent"])
    training = config.get("training", {})
    legacy = [f.name for f in dataclasses.fields(objective.settings_class)
              if f.name not in getattr(objective.settings_class, "objective_only", ())]
    check_keys(training, {f.name for f in dataclasses.fields(TrainSettings)} | set(legacy), "training")
    section = {k: v for k, v in section.items() if k != "kind"}
    hints = typing.get_type_hints(objective.settings_class)
    for key in legacy:
        if key in training and key not in {f.name for f in dataclasses.fields(TrainSettings)}:
            check_type(training[key], hints[key], f"training.{key}")
            if key in section and section[key] != training[key]:
                raise ValueError(f"config sets {key} both in training and in objective; keep objective.{key} only")
            section[key] = training.pop(key)
    settings = TrainSettings.from_dict(training)
    settings.check()
    obj_settings = settings_from_dict(objective.settings_class, section, "objective")
    if hasattr(obj_settings, "check"):
        obj_settings.check()
    check_data(config.get("data", {}))
    objective.check_sections(config)
    config["training"] = dataclasses.asdict(settings)
    config["objective"] = {"kind": objective.kind, **dataclasses.asdict(obj_settings)}
    if "sigma_data" in objective.sections:
        config.setdefault("sigma_data", 0.5)
    for key in CHECKPOINT_KEYS:
        config.pop(key, None)
    return config, objective, settings, obj_settings
