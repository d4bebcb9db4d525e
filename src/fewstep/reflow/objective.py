"""The reflow objective: train a 2-rectified flow on a teacher's (noise, endpoint) pairs.

Liu et al. 2023 ("Flow Straight and Fast", eq. 1 and sec. 2.3) fit the velocity of the straight
path between the two ends of each pair, ``X_s = (1 - s) x1 + s z``, ``u = z - x1`` (time running
from data at 0 to noise at 1, fewstep's convention).  That is the denoising loss
(:func:`fewstep.training.losses.diffusion_loss`) with the *coupled* ``(x0, eps) = (x1, z)`` instead
of independent draws: on the ``rectified_flow`` process with ``flow`` prediction the regression
target is exactly ``z - x1``.  Every Gaussian process walks the same straight lines in
``x / alpha`` against ``sigma / alpha``, so the objective works in the teacher's own process and
parametrisation too, which lets the student start from the teacher's weights; then
``time_sampling = "flow_uniform"`` and ``weighting = "flow"`` reproduce rectified flow's time
distribution and loss in that parametrisation.  A perfectly rectified model maps each ``z`` to
its ``x1`` in one Euler (= DDIM) step.

``path_weight > 0`` mixes in path distillation (:mod:`fewstep.reflow.path`, Liu et al.'s sec. 2.3 distillation
generalised to the k-step solve the model is sampled with): ``(1 - w) * reflow + w * path``; ``w = 1`` trains
the few-step solve alone, usually warm-started from a finished reflow run (``init_from``).

``dm_weight > 0`` adds distribution matching to path distillation (:mod:`fewstep.reflow.matching`): the few-step
solve of *fresh* noise judged by the teacher's and a fake score's denoisers (SiD's loss), as DMD2 pairs a regression
loss with distribution matching.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import Tensor, nn

from ..api import generate
from ..data import ImageData
from ..denoisers import Denoiser
from ..imagegrid import save_image_grid
from ..nets import build_net
from .. import solvers
from ..processes import process_from_config
from ..training.config import check_positive, check_type
from ..training.denoising import DenoisingObjective
from ..training.losses import TIME_SAMPLERS, WEIGHTINGS, diffusion_loss
from ..training.objective import CheckpointFiles, Objective, Phase, register_objective
from ..training.warmstart import warm_start
from .pairs import load_pairs
from ..training.encoder import load_encoder
from ..nets.discriminator import PatchDiscriminator
from .adversarial import discriminator_loss, generator_adversarial_loss
from .matching import DistributionMatching
from .path import PATH_METRICS, path_distance, path_plan, path_solve

if TYPE_CHECKING:
    from ..training.trainer import Trainer

__all__ = ["ReflowSettings", "ReflowObjective", "reflow_loss"]


def reflow_loss(net: Any, prediction: str, process: Any, noise: Tensor, endpoint: Tensor, t: Tensor, *,
                weighting: str = "flow", sigma_data: float = 0.5) -> Tensor:
    """Per-sample reflow loss of ``net`` on pairs ``(noise, endpoint)`` at times ``t``: the denoising loss with the
    coupled ``x0 = endpoint``, ``eps = noise`` (on ``rectified_flow`` + ``flow``: ``||u - (noise - endpoint)||^2``)."""
    return diffusion_loss(net, prediction, process, endpoint, t, noise, weighting=weighting, sigma_data=sigma_data)


@dataclass
class ReflowSettings:
    """The ``objective`` section of ``reflow``: where on the path to train, the weighting, the pairs used
    (``pairs_n``; 0 = all), the warm start, the preview sampler (Euler at ``sample_nfe``), and path
    distillation's share ``path_weight`` in [0, 1] with its plan (``path_solver`` at ``path_nfe`` over
    ``path_times``, ``steps + 1`` decreasing times ending anywhere (replaced by clean data); empty: the
    process's grid) and its distance ``path_metric`` (``l2``, ``pseudo_huber`` with ``path_huber_c``, or
    ``perceptual`` on the encoder run ``path_encoder``; :func:`fewstep.reflow.path.path_distance`)."""

    time_sampling: str = "flow_uniform"
    weighting: str = "flow"
    pairs_n: int = 0
    init_from: str = ""
    sample_solver: str = "euler"
    sample_nfe: int = 1
    path_weight: float = 0.0
    path_solver: str = "euler"
    path_nfe: int = 2
    path_times: list[float] = field(default_factory=list)
    path_metric: str = "l2"
    path_huber_c: float = 0.0
    path_encoder: str = ""
    adv_weight: float = 0.0
    adv_r1: float = 0.1
    adv_channels: int = 32
    adv_lr: float = 0.0
    adv_start_step: int = 0
    dm_weight: float = 0.0
    dm_alpha: float = 1.2
    dm_tmax_index: int = 800
    dm_fake_lr: float = 0.0
    dm_start_step: int = 0

    def check(self) -> None:
        if self.time_sampling not in TIME_SAMPLERS:
            raise ValueError(f"unknown time_sampling {self.time_sampling!r}; valid: {', '.join(TIME_SAMPLERS)}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        check_positive("objective.pairs_n", self.pairs_n, allow_zero=True)
        check_positive("objective.sample_nfe", self.sample_nfe)
        solvers.get(self.sample_solver)
        if not 0.0 <= self.path_weight <= 1.0:
            raise ValueError(f"objective.path_weight must be in [0, 1] (0: reflow only, 1: path distillation only), "
                             f"got {self.path_weight}")
        check_positive("objective.path_nfe", self.path_nfe)
        if solvers.get(self.path_solver).stochastic:
            raise ValueError(f"objective.path_solver {self.path_solver!r} is stochastic; path distillation unrolls a "
                             f"deterministic solve (e.g. euler)")
        if self.path_metric not in PATH_METRICS:
            raise ValueError(f"unknown objective.path_metric {self.path_metric!r}; valid: {', '.join(PATH_METRICS)}")
        check_positive("objective.path_huber_c", self.path_huber_c, allow_zero=True)
        if self.path_huber_c and self.path_metric != "pseudo_huber":
            raise ValueError(f"objective.path_huber_c is set but objective.path_metric is {self.path_metric!r}; set it "
                             f"to 'pseudo_huber' or drop path_huber_c")
        if (self.path_metric == "perceptual") != bool(self.path_encoder):
            raise ValueError("objective.path_metric 'perceptual' needs objective.path_encoder (a run of `fewstep "
                             "train --config fashion-encoder`), and path_encoder is used by no other metric")
        for name in ("adv_weight", "adv_r1", "adv_lr", "adv_start_step"):
            check_positive(f"objective.{name}", getattr(self, name), allow_zero=True)
        check_positive("objective.adv_channels", self.adv_channels)
        if self.adv_weight > 0 and self.path_weight == 0:
            raise ValueError("objective.adv_weight judges the few-step solve of path distillation; set path_weight > 0")
        for name in ("dm_weight", "dm_alpha", "dm_fake_lr", "dm_start_step"):
            check_positive(f"objective.{name}", getattr(self, name), allow_zero=True)
        if not 0 < self.dm_tmax_index <= 1000:
            raise ValueError(f"objective.dm_tmax_index must lie in (0, 1000], got {self.dm_tmax_index}")
        if self.dm_weight > 0 and self.path_weight == 0:
            raise ValueError("objective.dm_weight matches the few-step solve of path distillation to the teacher; set "
                             "path_weight > 0")
        if self.path_metric != "l2" and self.path_weight == 0:
            raise ValueError(f"objective.path_metric {self.path_metric!r} has no effect with path_weight 0; set "
                             f"path_weight > 0 or drop path_metric")


@register_objective
class ReflowObjective(Objective):
    """One module ``model`` (saved as ``model``/``ema``: an ordinary denoiser), one phase: :func:`reflow_loss`."""

    kind = "reflow"
    settings_class = ReflowSettings
    sections = ("teacher", "pairs", "network", "process", "prediction", "sigma_data")
    identity = ("pairs", "network", "process", "prediction")

    def __init__(self, config: Mapping[str, Any], settings: ReflowSettings, data: ImageData):
        super().__init__(config, settings, data)
        self.process = process_from_config(config["process"])
        self.prediction: str = config["prediction"]
        self.sigma_data = float(config.get("sigma_data", 0.5))
        self.noise, self.endpoint, _ = load_pairs(config["pairs"], settings.pairs_n or None)
        if len(self.noise) != len(data):
            raise ValueError(f"the trainer's data has {len(data)} items but {config['pairs']} gives {len(self.noise)} "
                             f"pairs; build the data with fewstep.reflow.pair_data")
        self.model = build_net(config["network"])
        if self.endpoint.shape[1] != config["network"].get("in_channels", 1):
            raise ValueError(f"the pairs have {self.endpoint.shape[1]} channel(s) but network.in_channels is "
                             f"{config['network'].get('in_channels', 1)}")
        if settings.init_from:
            warm_start(self.model, settings.init_from, config)
        self.path = None
        self.param = self._denoiser(self.model).param
        self.encoder = load_encoder(settings.path_encoder) if settings.path_encoder else None
        self.distance = path_distance(settings.path_metric, huber_c=settings.path_huber_c, encoder=self.encoder)
        self.discriminator = None
        if settings.adv_weight > 0:
            self.discriminator = PatchDiscriminator(int(self.endpoint.shape[1]), settings.adv_channels)
        self.matching = (DistributionMatching(config["teacher"], config, self.param, settings.dm_alpha,
                                              settings.dm_tmax_index) if settings.dm_weight > 0 else None)
        if settings.path_weight > 0:
            self.path = path_plan(self._denoiser(self.model), settings.path_solver, settings.path_nfe,
                                  settings.path_times or None)

    def _denoiser(self, net: nn.Module) -> Denoiser:
        return Denoiser(net, self.process, self.prediction, self.sigma_data)

    @classmethod
    def check_sections(cls, config: Mapping[str, Any]) -> None:
        for key in ("teacher", "pairs"):
            if key not in config:
                raise ValueError(f"a reflow config needs {key!r} (the teacher's name and the pair folder)")
            check_type(config[key], str, key)
        DenoisingObjective.check_sections(config)

    def modules(self) -> dict[str, nn.Module]:
        """``model``; with the adversarial term also its ``discriminator``, with distribution matching its
        ``fake_score`` (trained and checkpointed, never sampled)."""
        extra = {"discriminator": self.discriminator} if self.discriminator else {}
        return {"model": self.model, **extra, **({"fake_score": self.matching.fake_score} if self.matching else {})}

    def ema_modules(self) -> tuple[str, ...]:
        return ("model",)

    def optimizer_options(self, name: str) -> dict[str, Any]:
        """The discriminator: ``adv_lr`` (default the training rate) and GAN-style betas (0, 0.99); the fake score:
        ``dm_fake_lr`` (default the training rate)."""
        if name == "fake_score":
            return {"lr": self.settings.dm_fake_lr} if self.settings.dm_fake_lr else {}
        if name != "discriminator":
            return {}
        return {"betas": (0.0, 0.99), **({"lr": self.settings.adv_lr} if self.settings.adv_lr else {})}

    def frozen(self) -> dict[str, nn.Module]:
        """The perceptual path metric's ``encoder`` and distribution matching's ``teacher`` (moved with the run, never
        trained nor saved)."""
        out = {"encoder": self.encoder} if self.encoder is not None else {}
        return {**out, "teacher": self.matching.teacher} if self.matching else out

    def phases(self) -> list[Phase]:
        """With the adversarial term the discriminator's update on the current student's samples first, with
        distribution matching the fake score's; then the student's."""
        d = [Phase("discriminator", self.discriminator_loss, "d_loss")] if self.discriminator else []
        f = [Phase("fake_score", self.fake_score_loss, "fake_loss")] if self.matching else []
        return [*d, *f, Phase("model", self.loss, "loss")]

    def checkpoint_files(self, name: str) -> CheckpointFiles:
        if name in ("discriminator", "fake_score"):
            return super().checkpoint_files(name)
        return CheckpointFiles("model.safetensors", "ema.safetensors", "optimizer")

    def draw(self, step: int, data: ImageData, indices: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        t = TIME_SAMPLERS[self.settings.time_sampling](self.process, len(indices), generator)
        batch = {"noise": self.noise[indices], "endpoint": self.endpoint[indices], "t": t}
        if self.discriminator is not None:  # the teacher's endpoints of other pairs: the discriminator's real images
            batch["real"] = self.endpoint[torch.randint(len(self.endpoint), (len(indices),), generator=generator)]
            batch["adv_on"] = torch.full((len(indices),), float(step >= self.settings.adv_start_step))
        if self.matching is not None:
            batch.update(self.matching.draw(self.endpoint.shape[1:], len(indices), generator))
            batch["dm_on"] = torch.full((len(indices),), float(step >= self.settings.dm_start_step))
        return batch

    def loss(self, batch: dict[str, Tensor], nets: Mapping[str, nn.Module]) -> Tensor:
        w = self.settings.path_weight
        total = 0.0
        if w < 1:
            total = (1 - w) * reflow_loss(nets["model"], self.prediction, self.process, batch["noise"],
                                          batch["endpoint"], batch["t"], weighting=self.settings.weighting,
                                          sigma_data=self.sigma_data)
        if self.path is not None:
            out = path_solve(self._denoiser(nets["model"]), self.path, batch["noise"])
            total = total + w * self.distance(out, batch["endpoint"])
            if self.discriminator is not None:  # joins at adv_start_step, once the discriminator has warmed up
                adv = generator_adversarial_loss(nets["discriminator"], out)
                total = total + self.settings.adv_weight * batch["adv_on"].to(adv) * adv
        if self.matching is not None and bool(batch["dm_on"][0]):  # on fresh noise: where the pairs do not reach
            fresh = path_solve(self._denoiser(nets["model"]), self.path, batch["dm_noise"])
            dm = self.matching.generator_loss(nets["teacher"], nets["fake_score"], fresh, batch)
            total = total + self.settings.dm_weight * dm
        return total

    def fake_score_loss(self, batch: dict[str, Tensor], nets: Mapping[str, nn.Module]) -> Tensor:
        """The fake score's denoising loss on the current student's few-step samples of fresh noise (no gradient
        into the student)."""
        with torch.no_grad():
            fake = path_solve(self._denoiser(nets["model"]), self.path, batch["fake_noise"])
        return self.matching.fake_loss(nets["fake_score"], fake, batch)

    def discriminator_loss(self, batch: dict[str, Tensor], nets: Mapping[str, nn.Module]) -> Tensor:
        """:func:`~fewstep.reflow.adversarial.discriminator_loss` of the teacher's endpoints against the current
        student's few-step samples (no gradient into the student)."""
        with torch.no_grad():
            fake = path_solve(self._denoiser(nets["model"]), self.path, batch["noise"])
        return discriminator_loss(nets["discriminator"], batch["real"], fake, self.settings.adv_r1)

    @torch.no_grad()
    def preview(self, trainer: "Trainer", n: int = 64) -> Path:
        """64 samples of the EMA model with ``sample_solver`` at ``sample_nfe`` into ``samples/``."""
        shape = tuple(int(v) for v in self.endpoint.shape[1:])
        den = self._denoiser(trainer.emas["model"])
        x = generate(den, shape, range(n), self.settings.sample_solver, self.settings.sample_nfe,
                     device=trainer.device)
        return save_image_grid(x, trainer.out_dir / "samples" / f"step-{trainer.step:08d}.png")
