"""The denoising objective: train ``network`` as a ``prediction``-type denoiser of ``process``.

The loss is :func:`fewstep.training.losses.diffusion_loss`; its checkpoints keep the historical
file names (``model``, ``ema``, ``optimizer``) that :func:`fewstep.load_model` and
``bundled:fashion`` use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import torch
from torch import Tensor, nn

from ..api import generate
from ..data import ImageData
from ..denoisers import PREDICTION_TYPES, Denoiser
from ..imagegrid import save_image_grid
from ..nets import build_net
from ..processes import process_from_config
from .config import check_network, check_positive, check_process, check_type
from .alignment import ALIGNMENTS, Projector, TapRecorder, dispersive_loss, feature_map, recording_context, repa_loss
from .curriculum import SPACINGS, Curriculum
from .losses import TIME_SAMPLERS, WEIGHTINGS, diffusion_loss, draw_noising
from .objective import CheckpointFiles, Objective, Phase, register_objective
from .patches import PatchSchedule, crop_patches
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
    #: Patch Diffusion (Wang et al. 2023): the fraction ``p`` of steps on full images (1: ordinary training).
    patch_full_fraction: float = 1.0
    #: The smaller patch sizes ([]: the paper's R // 2 and R // 4) and their weights ([]: 3 : 2, or equal).
    patch_sizes: list[int] = field(default_factory=list)
    patch_weights: list[float] = field(default_factory=list)
    #: Cut (R // s)^2 patches of size s from each image (as many pixels per step as full images).
    patch_batch_scale: bool = True
    #: Representation regulariser: "off", "repa" (align with align_encoder) or "dispersive" (no encoder).
    align: str = "off"
    align_weight: float = 0.5
    #: The network's block tap whose output is regularised (UNet: in, down.k, mid, up.k; DiT: block.k).
    align_tap: str = "mid"
    align_encoder: str = ""
    #: HASTE: no alignment from this step on (0: never stop).
    align_stop_step: int = 0
    align_temperature: float = 0.5
    align_projector_dim: int = 256
    #: Knowledge distillation: a trained model (anything ``load_model`` reads) whose predictions replace the data's
    #: targets, with weight ``teacher_weight`` (1: the teacher's only; the rest on the data).
    teacher: str = ""
    teacher_weight: float = 1.0
    #: Keys newer than the ``training`` section's legacy objective settings: accepted under ``objective`` only.
    objective_only: ClassVar[tuple[str, ...]] = (
        "patch_full_fraction", "patch_sizes", "patch_weights", "patch_batch_scale", "align", "align_weight",
        "align_tap", "align_encoder", "align_stop_step", "align_temperature", "align_projector_dim", "teacher",
        "teacher_weight")

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

        if not 0.0 <= self.patch_full_fraction <= 1.0:
            raise ValueError(f"objective.patch_full_fraction must lie in [0, 1], got {self.patch_full_fraction}")
        if (self.patch_sizes or self.patch_weights) and self.patch_full_fraction == 1.0:
            raise ValueError("objective.patch_sizes / patch_weights need objective.patch_full_fraction below 1 "
                             "(the fraction of full-size steps); at 1 every step is full size")
        if self.align not in ALIGNMENTS:
            raise ValueError(f"unknown objective.align {self.align!r}; valid: {', '.join(ALIGNMENTS)}")
        check_positive("objective.align_weight", self.align_weight, allow_zero=True)
        check_positive("objective.align_temperature", self.align_temperature)
        check_positive("objective.align_projector_dim", self.align_projector_dim)
        check_positive("objective.align_stop_step", self.align_stop_step, allow_zero=True)
        if self.align == "repa" and not self.align_encoder:
            raise ValueError("objective.align 'repa' needs objective.align_encoder (a run of `fewstep train --config "
                             "fashion-encoder`)")
        if self.align_encoder and self.align != "repa":
            raise ValueError(f"objective.align_encoder is set but objective.align is {self.align!r}; set align to 'repa'")
        if self.align != "off" and self.patch_full_fraction < 1.0:
            raise ValueError("objective.align with Patch Diffusion (patch_full_fraction < 1) is not supported: "
                             "the aligned features are those of full images")
        if not 0.0 < self.teacher_weight <= 1.0:
            raise ValueError(f"objective.teacher_weight must lie in (0, 1], got {self.teacher_weight}")
        if self.teacher and self.patch_full_fraction < 1.0:
            raise ValueError("objective.teacher with Patch Diffusion (patch_full_fraction < 1) is not supported: "
                             "the teacher predicts full images")
        if self.curriculum != "none" and self.patch_full_fraction < 1.0:
            raise ValueError("objective.curriculum with Patch Diffusion (patch_full_fraction < 1) is not supported")

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
    latent_ok = True

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
        self.patches: PatchSchedule | None = None
        if settings.patch_full_fraction < 1.0:
            if not config["network"].get("coordinates", False):
                raise ValueError("Patch Diffusion (objective.patch_full_fraction < 1) needs the coordinate channels: "
                                 "set network.coordinates to true")
            res = int(data.images.shape[-1])
            if data.images.shape[-2] != res:
                raise ValueError(f"Patch Diffusion needs square images, got {tuple(data.images.shape[-2:])}")
            self.patches = PatchSchedule.paper(res, settings.patch_full_fraction, settings.patch_sizes,
                                               settings.patch_weights, settings.patch_batch_scale)
        self.encoder: nn.Module | None = None
        self.projector: nn.Module | None = None
        self._stash: dict[tuple[float, ...], tuple[Tensor, Tensor]] = {}
        if settings.align != "off":
            self._setup_alignment(data)
        if settings.init_from:
            from .warmstart import warm_start
            warm_start(self.model, settings.init_from, config)
        self.teacher: Denoiser | None = None
        if settings.teacher:
            from .warmstart import load_teacher
            self.teacher = load_teacher(settings.teacher, config)
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

    def _setup_alignment(self, data: ImageData) -> None:
        """Check the tap on a dry run of the network; for REPA load the encoder and size the projector."""
        s = self.settings
        if not getattr(self.model, "accepts_step_context", False):
            raise ValueError("objective.align reads a block tap, and this network takes no step context")
        x = torch.zeros(1, *data.images.shape[1:])
        rec = TapRecorder(s.align_tap)
        with torch.no_grad():
            self.model(x, torch.zeros(1), ctx=recording_context(rec))
        channels = feature_map(rec.get()).shape[1]
        if s.align == "repa":
            from .encoder import load_encoder
            self.encoder = load_encoder(s.align_encoder)
            with torch.no_grad():
                dim = self.encoder.features(x).shape[1]
            self.projector = Projector(channels, s.align_projector_dim, dim)

    def modules(self) -> dict[str, nn.Module]:
        """``model``; with ``uncertainty_weighting`` EDM2's ``uncertainty`` head, with REPA the ``projector`` (both
        trained and saved, never sampled)."""
        extra = {"uncertainty": self.uncertainty} if self.uncertainty is not None else {}
        return {"model": self.model, **extra, **({"projector": self.projector} if self.projector is not None else {})}

    def frozen(self) -> dict[str, nn.Module]:
        """REPA's ``encoder`` and the distillation ``teacher``'s network (moved with the run, never trained)."""
        out: dict[str, nn.Module] = {"encoder": self.encoder} if self.encoder is not None else {}
        return {**out, "teacher": self.teacher.net} if self.teacher is not None else out

    def phases(self) -> list[Phase]:
        """The denoising loss (plus lambda times the alignment); with REPA then the projector's own update on
        the same hidden states."""
        main = [Phase("model", self.loss, "loss", also=("uncertainty",) if self.uncertainty is not None else ())]
        return main + [Phase("projector", self.projector_loss, "align")] if self.projector is not None else main

    def ema_modules(self) -> tuple[str, ...]:
        return ("model",)

    def lr_scales(self, name: str) -> dict[str, float]:
        """``class_lr_scale`` on the class table: a table added to a warm-started network starts at zero
        and its gradient is weak (class information matters only at high noise), so it learns faster."""
        return {"embed.classes.": self.settings.class_lr_scale} if self.settings.class_lr_scale != 1.0 else {}

    def checkpoint_files(self, name: str) -> CheckpointFiles:
        """The historical names for ``model``; REPA's projector gets ``projector*.safetensors``."""
        if name != "model":
            return super().checkpoint_files(name)
        return CheckpointFiles("model.safetensors", "ema.safetensors", "optimizer")

    def draw(self, step: int, data: ImageData, indices: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Images in [-1, 1] (flipped at random with ``hflip``), times, noise, and labels with ``use_labels``.

        With ``label_dropout`` p, each label is replaced by the null class ``num_classes`` with
        probability p, so one network learns the conditional and the unconditional denoiser
        (classifier-free guidance, Ho & Salimans 2022, section 3.2).

        With Patch Diffusion, one patch size is then drawn for the step (:class:`PatchSchedule`): at full
        size the batch is exactly the ordinary one (the network appends the full coordinate grid); at a
        smaller size ``s``, ``k`` patches per image are cut from ``x0`` with their coordinates and drawn
        their own times and noise: ``x0``, ``eps`` and ``coords`` are ``(B, k, C, s, s)``, ``t`` ``(B, k)``.
        """
        s = self.settings
        x0, t, eps = draw_noising(self.process, data.images[indices], generator, hflip=s.hflip,
                                  time_sampling=s.time_sampling, p_mean=s.p_mean, p_std=s.p_std,
                                  curriculum=self.curriculum, step=step)
        out = {"x0": x0, "t": t, "eps": eps}
        if self.patches is not None:
            size = self.patches.draw_size(generator)
            if size != self.patches.resolution:
                k = self.patches.patches_per_image(size)
                x0, coords = crop_patches(x0, size, k, generator)
                t = TIME_SAMPLERS[s.time_sampling](self.process, x0.shape[0] * k, generator, p_mean=s.p_mean,
                                                   p_std=s.p_std).reshape(x0.shape[0], k)
                out = {"x0": x0, "t": t, "eps": torch.randn(x0.shape, generator=generator), "coords": coords}
        if s.align != "off":  # HASTE: the alignment's weight is lambda until align_stop_step, then 0
            on = not s.align_stop_step or step < s.align_stop_step
            out["align_weight"] = torch.full((len(indices),), s.align_weight if on else 0.0)
        if s.use_labels and data.labels is not None:
            labels = data.labels[indices].clone()
            if s.label_dropout:
                drop = torch.rand(len(indices), generator=generator) < s.label_dropout
                labels[drop] = self.num_classes
            out["labels"] = labels
        return out

    def loss(self, batch: dict[str, Tensor], nets: Mapping[str, nn.Module]) -> Tensor:
        """Per-sample :func:`~fewstep.training.losses.diffusion_loss` of ``nets["model"]`` (of a batch of
        patches: the mean over each image's patches)."""
        s = self.settings
        x0, t, eps = batch["x0"], batch["t"], batch["eps"]
        b, k = x0.shape[0], (x0.shape[1] if x0.ndim == 5 else 1)
        cond: dict[str, Any] = {}
        if "labels" in batch:
            cond["class_labels"] = batch["labels"].repeat_interleave(k)
        if "coords" in batch:
            cond["coords"] = batch["coords"].flatten(0, 1)
        if k > 1 or x0.ndim == 5:
            x0, t, eps = x0.flatten(0, 1), t.flatten(0, 1), eps.flatten(0, 1)
        weight = batch.get("align_weight")
        rec = None
        if weight is not None and bool((weight > 0).any()):
            rec = TapRecorder(s.align_tap)
            cond["ctx"] = recording_context(rec)
        if self.teacher is not None:
            x0, eps = self._teacher_targets(x0, t, eps, cond)
        loss = diffusion_loss(nets["model"], self.prediction, self.process, x0, t, eps, weighting=s.weighting,
                              cond=cond or None, sigma_data=self.sigma_data, gamma=s.min_snr_gamma)
        if "uncertainty" in nets:  # EDM2: divided by exp(u(sigma)) plus u(sigma)
            log_sigma = (-self.process.lam(t.double().cpu())).clamp(-40.0, 40.0).to(loss.device)
            loss = uncertainty_loss(loss, nets["uncertainty"](log_sigma))
        loss = loss.reshape(b, k).mean(dim=1)
        if rec is None:
            return loss
        h = feature_map(rec.get())
        if s.align == "dispersive":
            return loss + weight * dispersive_loss(h, s.align_temperature)
        with torch.no_grad():
            target = nets["encoder"].features(x0)
        if len(self._stash) > 64:  # left by an interrupted step
            self._stash.clear()
        self._stash[self._key(batch)] = (h.detach(), target)
        return loss + weight * repa_loss(nets["projector"](h), target)

    @torch.no_grad()
    def _teacher_targets(self, x0: Tensor, t: Tensor, eps: Tensor, cond: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """The pair ``(x0', eps')`` whose noising is the same ``x_t``, mixing the teacher's predictions at ``x_t``
        with weight ``w = teacher_weight`` into the data's: ``x0' = w x0_T + (1 - w) x0`` (and ``eps'`` alike).

        Every parametrisation's target is linear in ``(x0, eps)`` at fixed ``x_t``, and a squared error to a
        mixed target equals the mixture of the squared errors up to a constant, so this is ``w`` times the
        output distillation loss (as in BK-SDM, Kim et al. 2023) plus ``1 - w`` times the data loss, with one
        forward pass of the student.
        """
        teacher = self.teacher  # its network is frozen() and moved in place with the run
        a, s = teacher.param.alpha_sigma(x0, t)
        x_t = a * x0 + s * eps
        extra = {k: v for k, v in cond.items() if k == "class_labels"}
        pred = teacher.predict(x_t, t.double(), **extra)
        w = self.settings.teacher_weight
        return w * pred.x0.to(x0.dtype) + (1 - w) * x0, w * pred.eps.to(eps.dtype) + (1 - w) * eps

    @staticmethod
    def _key(batch: dict[str, Tensor]) -> tuple[float, ...]:
        t = batch["t"].double()
        return (float(t.sum()), float(t.flatten()[0]), float(t.numel()))

    def projector_loss(self, batch: dict[str, Tensor], nets: Mapping[str, nn.Module]) -> Tensor:
        """REPA's alignment loss as a function of the projector, on the hidden states the model phase stashed
        for this micro-batch (recomputed if it did not); zero (and no alignment) after ``align_stop_step``."""
        weight = batch["align_weight"]
        proj = nets["projector"]
        if not bool((weight > 0).any()):
            return sum(p.sum() for p in proj.parameters()) * 0.0 + torch.zeros_like(weight)
        h, target = self._stash.pop(self._key(batch), (None, None))
        if h is None:
            with torch.no_grad():
                rec = TapRecorder(self.settings.align_tap)
                param_cond = {"ctx": recording_context(rec)}
                if "labels" in batch:
                    param_cond["class_labels"] = batch["labels"]
                diffusion_loss(nets["model"], self.prediction, self.process, batch["x0"], batch["t"], batch["eps"],
                               cond=param_cond, sigma_data=self.sigma_data)
                h, target = feature_map(rec.get()), nets["encoder"].features(batch["x0"])
        return (weight > 0).to(h.dtype) * repa_loss(proj(h), target)

    @torch.no_grad()
    def preview(self, trainer: "Trainer", n: int = 64) -> Path:
        """Sample ``n`` images from the EMA model (DPM-Solver++(2M), ``sample_nfe`` steps) into ``samples/``."""
        c, r = int(self.data.images.shape[1]), int(self.data.images.shape[-1])
        den = Denoiser(trainer.emas["model"], self.process, self.prediction, self.sigma_data)
        cond = None
        if self.settings.use_labels and self.num_classes:
            cond = {"class_labels": torch.arange(n, device=trainer.device) % self.num_classes}
        x = generate(den, (c, r, r), range(n), "dpm++2m", self.settings.sample_nfe, device=trainer.device, cond=cond)
        return save_image_grid(self.data.to_images(x), trainer.out_dir / "samples" / f"step-{trainer.step:08d}.png")
