"""Distribution matching for path distillation: SiD's loss on the few-step solve of fresh noise.

Regression onto the teacher's pairs (:mod:`fewstep.reflow.path`) teaches the few-step solve the noise it was trained
on; on new noise a network of limited capacity lands near the average of the endpoints it cannot tell apart, and the
average is blurred.  DMD2 (Yin et al. 2024, "Improved Distribution Matching Distillation") pairs a regression loss
with *distribution matching*: the generator's samples ``x_g`` of fresh noise are noised to ``x_t`` and pushed along
the difference between the teacher's denoiser ``f_phi`` and a *fake score* ``f_psi`` that keeps learning the
generator's current distribution, a signal of where the generator's distribution differs from the teacher's, with no
pairs needed.  The push here is SiD's (Zhou et al. 2024, eqs. 20-22 with sec. 4's normalisation, ``alpha = 1.2``;
:func:`fewstep.distill.sid.sid_loss_of_samples`, shared with ``fewstep distill --method sid``) at SiD's noise levels,
divided by the pixels so that ``dm_weight`` compares with the per-pixel path loss.  The fake score starts as a copy of
the teacher (as in SiD and DMD) and trains in its own phase before the student's, with the EDM-weighted denoising loss
at log-normal noise levels (:func:`fewstep.distill.sid.fake_score_loss`) on the current student's samples.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..denoisers import Denoiser
from ..distill.sid import fake_score_loss, sid_loss_of_samples, sid_times
from ..latent import require_pixel_space
from ..loading import load_model
from ..parametrization import Parametrization
from ..processes import NoiseProcess
from ..training.losses import sample_t_lognormal

__all__ = ["DistributionMatching"]


class DistributionMatching:
    """The teacher's network (frozen), the fake score (a trainable copy of it) and the two losses."""

    def __init__(self, teacher: str, config: Mapping[str, Any], param: Parametrization, alpha: float = 1.2,
                 tmax_index: int = 800):
        den = load_model(teacher)
        if not isinstance(den, Denoiser) or not isinstance(den.net, nn.Module):
            raise ValueError(f"distribution matching needs the teacher {teacher} as a fewstep diffusion model "
                             f"(a checkpoint folder or bundled:...), not a one-step generator or a diffusers folder")
        require_pixel_space(den, "distribution matching")
        tcfg = den.config or {}
        if tcfg.get("process") != config["process"] or tcfg.get("prediction") != config["prediction"]:
            raise ValueError(f"distribution matching compares the student's samples under the teacher {teacher}'s "
                             f"denoiser, so the student needs the teacher's process and prediction (the student has "
                             f"{config['process']} / {config['prediction']!r}); use --process teacher")
        self.teacher = den.net
        self.fake_score = copy.deepcopy(den.net).requires_grad_(True)
        self.param, self.alpha, self.tmax_index = param, float(alpha), int(tmax_index)
        self.process: NoiseProcess = den.process
        self.prediction: str = config["prediction"]
        self.sigma_data = float(config.get("sigma_data", 0.5))

    def draw(self, shape: Sequence[int], n: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Fresh noise for each phase (the fake score's and the student's), with their times and noising draws (all
        drawn every step, so the random stream does not depend on the start step)."""
        size = (n, *shape)
        return {"fake_noise": torch.randn(size, generator=generator),
                "fake_t": sample_t_lognormal(self.process, n, generator),
                "fake_eps": torch.randn(size, generator=generator),
                "dm_noise": torch.randn(size, generator=generator),
                "dm_t": sid_times(self.process, n, generator, tmax_index=self.tmax_index),
                "dm_eps": torch.randn(size, generator=generator)}

    def fake_loss(self, fake_score: nn.Module, samples: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        """Per-sample, per-pixel EDM-weighted denoising loss of the fake score on the (detached) student samples."""
        return fake_score_loss(fake_score, self.prediction, self.process, samples, batch["fake_t"],
                               batch["fake_eps"], self.sigma_data) / samples[0].numel()

    def generator_loss(self, teacher: nn.Module, fake_score: nn.Module, samples: Tensor,
                       batch: Mapping[str, Tensor]) -> Tensor:
        """Per-sample SiD loss of the student's samples (gradient into them), divided by the pixels."""
        return sid_loss_of_samples(teacher, fake_score, self.param, samples, batch["dm_t"], batch["dm_eps"],
                                   self.alpha) / samples[0].numel()
