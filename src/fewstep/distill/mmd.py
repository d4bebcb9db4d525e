"""MMD fine-tuning for a fixed few-step sampler (MMD-DDM; Aiello et al. 2023, "Fast Inference in
Denoising Diffusion Models via MMD Finetuning").

The model (initialised from the teacher) is sampled with a fixed solver at a fixed small NFE,
with autograd through every step (``fewstep.sample(..., grad=True)``), and trained to minimise
the squared maximum mean discrepancy between its samples and real images in a feature space
(paper eq. 5, the unbiased estimator of Gretton et al. 2012, eq. 3).

Features: the paper uses Inception; here they come from the frozen *teacher's own* encoder
(the UNet's ``mid`` block tap, mean- and std-pooled over space) at a small noise level
``feature_sigma`` (EDM units), so the feature space is not the one FID is measured in (the
``fashion`` classifier).  Kernel: KID's cubic polynomial ``k(x, y) = (x.y / d + 1)^3``
(Binkowski et al. 2018), or a Gaussian with the median-heuristic bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch import Tensor, nn

from .. import solvers
from ..api import generate, sample
from ..context import StepContext
from ..data import ImageData, to_model_range
from ..denoisers import Denoiser
from ..training.config import check_positive
from ..training.objective import CheckpointFiles, Phase, register_objective
from .base import DistillObjective

if TYPE_CHECKING:
    from ..training.trainer import Trainer

__all__ = ["MMDSettings", "MMDObjective", "mmd2_unbiased", "KERNELS"]


def _poly3(a: Tensor, b: Tensor) -> Tensor:
    return (a @ b.T / a.shape[1] + 1) ** 3


def _rbf(a: Tensor, b: Tensor, bandwidth: Tensor) -> Tensor:
    return torch.exp(-torch.cdist(a, b).square() / (2 * bandwidth**2))


KERNELS = ("poly3", "rbf")


def mmd2_unbiased(x: Tensor, y: Tensor, kernel: str = "poly3") -> Tensor:
    """Unbiased ``MMD^2`` between samples ``x (n, d)`` and ``y (m, d)`` (Gretton et al. 2012, eq. 3)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown MMD kernel {kernel!r}; valid: {', '.join(KERNELS)}")
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"MMD needs at least 2 samples on each side, got {n} and {m}")
    if kernel == "poly3":
        kxx, kyy, kxy = _poly3(x, x), _poly3(y, y), _poly3(x, y)
    else:
        with torch.no_grad():
            bw = torch.cdist(torch.cat([x, y]), torch.cat([x, y])).median().clamp(min=1e-6)
        kxx, kyy, kxy = _rbf(x, x, bw), _rbf(y, y, bw), _rbf(x, y, bw)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return sxx + syy - 2 * kxy.mean()


@dataclass
class MMDSettings:
    """The ``objective`` section of ``mmd``: the fixed sampler, the kernel, the feature noise level."""

    solver: str = "ddim"
    nfe: int = 4
    kernel: str = "poly3"
    feature_tap: str = "mid"
    feature_sigma: float = 0.1
    fid_n: int = 1000
    fid_extractor: str = "fashion"
    fid_ref: str = ""

    def check(self) -> None:
        spec = solvers.get(self.solver)
        if self.nfe < spec.min_nfe:
            raise ValueError(f"objective.nfe {self.nfe} is below {self.solver}'s minimum {spec.min_nfe}")
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown objective.kernel {self.kernel!r}; valid: {', '.join(KERNELS)}")
        check_positive("objective.feature_sigma", self.feature_sigma)
        check_positive("objective.fid_n", self.fid_n, allow_zero=True)


@register_objective
class MMDObjective(DistillObjective):
    """One module ``model`` (saved as ``model``/``ema``: a denoiser like any other, meant for ``solver`` at ``nfe``)."""

    kind = "mmd"
    settings_class = MMDSettings

    def __init__(self, config: Mapping[str, Any], settings: MMDSettings, data: ImageData):
        super().__init__(config, settings, data)
        self.model = self.student()
        self.t_feature = float(self.process.t_of_sigma_hat(torch.tensor(settings.feature_sigma, dtype=torch.float64))
                               .clamp(self.process.t_min, self.process.t_max))

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def phases(self) -> list[Phase]:
        return [Phase("model", self.loss, "mmd2")]

    def checkpoint_files(self, name: str) -> CheckpointFiles:
        return CheckpointFiles("model.safetensors", "ema.safetensors", "optimizer")

    def draw(self, step: int, data: ImageData, indices: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        x0 = to_model_range(data.images[indices])
        return {"x0": x0, "z": torch.randn(x0.shape, generator=generator),
                "eps_real": torch.randn(x0.shape, generator=generator),
                "eps_fake": torch.randn(x0.shape, generator=generator)}

    def features(self, x0: Tensor, eps: Tensor) -> Tensor:
        """Mean- and std-pooled ``feature_tap`` activations of the frozen teacher at ``x0`` noised to ``feature_sigma``."""
        t = torch.full((x0.shape[0],), self.t_feature, dtype=torch.float64, device=x0.device)
        a, s = self.param.alpha_sigma(x0, t)
        x_in, t_in = self.param.net_input(a * x0 + s * eps, t)
        found: list[Tensor] = []

        def handler(ctx, name, compute, *args):
            out = compute(*args)
            if name == self.settings.feature_tap:
                found.append(out)
            return out

        self.teacher(x_in, t_in, ctx=StepContext(None, 0, tap=handler))  # type: ignore[arg-type]
        if not found:
            raise ValueError(f"the teacher has no block tap {self.settings.feature_tap!r}")
        h = found[0].float().flatten(2)
        return torch.cat([h.mean(2), h.std(2)], dim=1)

    def sample(self, net: Callable[..., Tensor], z: Tensor, grad: bool) -> Tensor:
        den = Denoiser(net, self.process, self.prediction, self.sigma_data)
        return sample(den, self.process.prior_std * z, self.settings.solver, self.settings.nfe, grad=grad)

    def loss(self, batch: dict[str, Tensor], nets: Mapping[str, nn.Module]) -> Tensor:
        """``MMD^2`` of the micro-batch (the same value for every sample, so its mean is the MMD^2)."""
        fake = self.sample(nets["model"], batch["z"], grad=True)
        with torch.no_grad():
            f_real = self.features(batch["x0"], batch["eps_real"])
        f_fake = self.features(fake, batch["eps_fake"])
        return mmd2_unbiased(f_fake, f_real, self.settings.kernel).expand(len(fake))

    def tracked_sample_fn(self, trainer: "Trainer") -> Callable[[list[int]], Tensor]:
        den = Denoiser(trainer.emas["model"], self.process, self.prediction, self.sigma_data)
        s = self.settings
        return lambda seeds: generate(den, self.shape, seeds, s.solver, s.nfe, device=trainer.device)
