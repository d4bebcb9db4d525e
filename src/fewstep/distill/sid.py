"""Score identity Distillation (SiD; Zhou et al. 2024, "Score identity Distillation: Exponentially
Fast Distillation of Pretrained Diffusion Models for One-Step Generation").

Three networks share the teacher's architecture: the teacher ``f_phi`` (frozen), the one-step
generator ``G_theta`` and the fake score ``f_psi`` (both initialised from the teacher).  Each
step has two phases:

1. fake score: the denoising loss of ``f_psi`` on generator samples ``x_g`` (no gradient into
   the generator), EDM's log-normal noise levels and weighting (Karras et al. 2022, eq. 8);
2. generator: with ``x_t = x_g + sigma eps`` (EDM units) at ``sigma`` from the rho = 7 grid,
   ``t`` uniform on the first ``tmax_index`` of 1000 steps counted from ``sigma_min``,

   ``L_theta = [(1 - alpha) ||f_phi - f_psi||^2 + (f_phi - f_psi)^T (f_psi - x_g)] / mean|x_g - f_phi|``

   (paper eqs. 20-22 with the normalisation of sec. 4, ``alpha = 1.2``; the gradient flows through
   both score networks into ``x_g``, the normaliser is a constant).

Everything is written in data predictions ``x0`` obtained through the process's
:mod:`~fewstep.parametrization`, so teachers of every prediction type are distilled alike; EDM's
``sigma`` is the process's ``sigma / alpha``, mapped to process time by ``t_of_sigma_hat``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch import Tensor, nn

from ..api import generate
from ..checkpoint import latest_checkpoint, load_tensors
from ..data import ImageData, to_model_range
from ..loading import load_model
from ..parametrization import Parametrization
from ..onestep import DEFAULT_SIGMA_INIT, OneStepGenerator, generate_x0, generator_time
from ..processes import NoiseProcess
from ..training.config import check_positive
from ..training.losses import diffusion_loss, sample_t_lognormal
from ..training.objective import CheckpointFiles, Phase, register_objective
from .base import DistillObjective, check_one_number_section, x0_of

if TYPE_CHECKING:
    from ..training.trainer import Trainer

__all__ = ["SiDSettings", "SiDObjective", "sid_times", "sid_generator_loss", "sid_loss_of_samples",
           "fake_score_loss"]


def sid_times(process: NoiseProcess, n: int, generator: torch.Generator | None = None, *, tmax_index: int = 800,
              sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """SiD's generator noise levels as process times (float64, ``(n,)``).

    ``u ~ U[0, tmax_index / 1000]`` and ``sigma = (sigma_max^(1/rho) + (1 - u) (sigma_min^(1/rho) -
    sigma_max^(1/rho)))^rho``: the EDM grid (Karras et al. 2022, eq. 5) read from ``sigma_min``,
    cut at step ``tmax_index`` of 1000 (SiD sec. 4); clipped to the process's range.
    """
    u = torch.rand(n, generator=generator, dtype=torch.float64) * (tmax_index / 1000.0)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigma = (hi + (1 - u) * (lo - hi)) ** rho
    return process.t_of_sigma_hat(sigma).clamp(process.t_min, process.t_max)


def sid_generator_loss(f_phi: Tensor, f_psi: Tensor, x_g: Tensor, alpha: float = 1.2) -> Tensor:
    """Per-sample SiD generator loss (sum over pixels), normalised by ``mean|x_g - f_phi|`` (no gradient).

    ``(f_phi - f_psi)^T ((f_phi - x_g) - alpha (f_phi - f_psi))``, which equals
    ``(1 - alpha) ||f_phi - f_psi||^2 + (f_phi - f_psi)^T (f_psi - x_g)``.
    """
    diff = f_phi - f_psi
    with torch.no_grad():
        w = (x_g - f_phi).abs().flatten(1).mean(1).clamp(min=1e-5)
    return (diff * ((f_phi - x_g) - alpha * diff)).flatten(1).sum(1) / w


def sid_loss_of_samples(teacher: Callable[..., Tensor], fake_score: Callable[..., Tensor], param: Parametrization,
                        x_g: Tensor, t: Tensor, eps: Tensor, alpha: float = 1.2) -> Tensor:
    """Per-sample SiD generator loss of samples ``x_g`` (gradient flows into ``x_g``): noised to ``x_t = alpha_t x_g +
    sigma_t eps`` at times ``t``, the data predictions of ``teacher`` (``f_phi``) and ``fake_score`` (``f_psi``) there,
    then :func:`sid_generator_loss`."""
    a, s = param.alpha_sigma(x_g, t)
    x_t = a * x_g + s * eps
    f_phi = x0_of(teacher, param, x_t, t)
    f_psi = x0_of(fake_score, param, x_t, t)
    return sid_generator_loss(f_phi.float(), f_psi.float(), x_g.float(), alpha)


def fake_score_loss(net: Callable[..., Tensor], prediction: str, process: NoiseProcess, x_g: Tensor, t: Tensor,
                    eps: Tensor, sigma_data: float = 0.5) -> Tensor:
    """Per-sample EDM-weighted denoising loss on the (detached) generator samples, summed over pixels as SiD does."""
    per_pixel = diffusion_loss(net, prediction, process, x_g.detach(), t, eps, weighting="edm", sigma_data=sigma_data)
    return per_pixel * x_g[0].numel()


@dataclass
class SiDSettings:
    """The ``objective`` section of ``sid`` (defaults: the paper's)."""

    alpha: float = 1.2
    tmax_index: int = 800
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    p_mean: float = -1.2
    p_std: float = 1.2
    fake_lr: float | None = None  # None: training.lr (SiD uses the same rate for both)
    init_from: str = ""  # a SiD run or checkpoint to start generator and fake score from ("" = the teacher)
    fid_n: int = 1000
    fid_extractor: str = "fashion"
    fid_ref: str = ""

    def check(self) -> None:
        check_positive("objective.alpha", self.alpha, allow_zero=True)
        if not 0 < self.tmax_index <= 1000:
            raise ValueError(f"objective.tmax_index must lie in (0, 1000], got {self.tmax_index}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"objective needs 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        for name in ("rho", "p_std", "fake_lr"):
            check_positive(f"objective.{name}", getattr(self, name))
        check_positive("objective.fid_n", self.fid_n, allow_zero=True)



@register_objective
class SiDObjective(DistillObjective):
    """Modules ``generator`` (saved as ``model``/``ema``, so the checkpoint loads as a one-step model) and
    ``fake_score``; phases fake score, then generator; EMA of the generator only."""

    kind = "sid"
    settings_class = SiDSettings
    sections = DistillObjective.sections + ("generator",)
    identity = DistillObjective.identity + ("generator",)

    def __init__(self, config: Mapping[str, Any], settings: SiDSettings, data: ImageData):
        super().__init__(config, settings, data)
        self.sigma_init = float(config["generator"]["sigma_init"])
        self.t_init = generator_time(self.process, self.sigma_init)
        self.generator = self.student()
        self.fake_score = self.make_fake_score()
        if settings.init_from:
            self.init_from(settings.init_from)

    @classmethod
    def check_sections(cls, config: Mapping[str, Any]) -> None:
        super().check_sections(config)
        check_one_number_section(config, "generator", "sigma_init", DEFAULT_SIGMA_INIT)

    def make_fake_score(self) -> nn.Module:
        return self.student()

    def init_from(self, source: str) -> None:
        """Start from a SiD run: its EMA generator, and its fake score where the checkpoint holds one."""
        den = load_model(source)
        if not isinstance(den, OneStepGenerator):
            raise ValueError(f"init_from {source} is not a one-step generator (a `fewstep distill --method sid` run)")
        self.generator.load_state_dict(den.net.state_dict())
        folder = Path(source)
        if (folder / "checkpoints").is_dir() and not (folder / "config.json").exists():
            folder = latest_checkpoint(folder) or folder
        fake = folder / "fake_score.safetensors"
        if fake.exists():
            state = load_tensors(fake)
            target = getattr(self.fake_score, "net", self.fake_score)
            target.load_state_dict(state if not any(k.startswith("net.") for k in state)
                                   else {k[4:]: v for k, v in state.items() if k.startswith("net.")})

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "fake_score": self.fake_score}

    def phases(self) -> list[Phase]:
        return [Phase("fake_score", self.fake_loss), Phase("generator", self.generator_loss)]

    def ema_modules(self) -> tuple[str, ...]:
        return ("generator",)

    def checkpoint_files(self, name: str) -> CheckpointFiles:
        if name == "generator":
            return CheckpointFiles("model.safetensors", "ema.safetensors", "optimizer")
        return super().checkpoint_files(name)

    def optimizer_options(self, name: str) -> dict[str, Any]:
        return {"lr": self.settings.fake_lr} if name == "fake_score" and self.settings.fake_lr else {}

    def draw(self, step: int, data: ImageData, indices: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Real images (SiDA's discriminator uses them), one generator noise ``z`` per phase (as SiD draws
        afresh for each update), the fake score's log-normal times and the generator's SiD times."""
        s, n = self.settings, len(indices)
        x0 = to_model_range(data.images[indices])
        shape = x0.shape
        out = {"x0": x0, "z_fake": torch.randn(shape, generator=generator),
               "t_fake": sample_t_lognormal(self.process, n, generator, p_mean=s.p_mean, p_std=s.p_std),
               "eps_fake": torch.randn(shape, generator=generator),
               "z_gen": torch.randn(shape, generator=generator),
               "t_gen": sid_times(self.process, n, generator, tmax_index=s.tmax_index, sigma_min=s.sigma_min,
                                  sigma_max=s.sigma_max, rho=s.rho),
               "eps_gen": torch.randn(shape, generator=generator)}
        return out

    def generate(self, net: nn.Module, z: Tensor) -> Tensor:
        return generate_x0(net, self.param, z, self.t_init)

    def fake_loss(self, batch: dict[str, Tensor], nets: Mapping[str, nn.Module]) -> Tensor:
        """Phase 1: ``f_psi`` learns to denoise the generator's current samples."""
        with torch.no_grad():
            x_g = self.generate(nets["generator"], batch["z_fake"])
        return fake_score_loss(nets["fake_score"], self.prediction, self.process, x_g, batch["t_fake"],
                               batch["eps_fake"], self.sigma_data)

    def noisy(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        a, s = self.param.alpha_sigma(x0, t)
        return a * x0 + s * eps

    def generator_loss(self, batch: dict[str, Tensor], nets: Mapping[str, nn.Module]) -> Tensor:
        """Phase 2: the SiD loss of fresh generator samples through teacher and fake score."""
        x_g = self.generate(nets["generator"], batch["z_gen"])
        return sid_loss_of_samples(nets["teacher"], nets["fake_score"], self.param, x_g, batch["t_gen"],
                                   batch["eps_gen"], self.settings.alpha)

    def one_step(self, net: nn.Module) -> OneStepGenerator:
        return OneStepGenerator(net, self.process, self.prediction, self.sigma_data, self.sigma_init,
                                sample_shape=self.shape)

    def tracked_sample_fn(self, trainer: "Trainer") -> Callable[[list[int]], Tensor]:
        den = self.one_step(trainer.emas["generator"])
        return lambda seeds: generate(den, self.shape, seeds, "ddim", 1, device=trainer.device)
