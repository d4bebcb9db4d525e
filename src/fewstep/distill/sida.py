"""Adversarial Score identity Distillation (SiDA; Zhou et al. 2025, "Adversarial Score identity
Distillation: Rapidly Surpassing the Teacher in One Step").

SiD plus a GAN term whose discriminator shares the fake score network's encoder: a small head
reads the encoder's output (the UNet's ``mid`` block, reached through a
:func:`fewstep.context.tap` handler, so no copy of the network's code) at the noisy input.

* fake-score phase: SiD's denoising loss on generator samples plus the discriminator loss
  ``lambda(sigma) [BCE(D(x_real + n), 1) + BCE(D(x_g + n), 0)] / 2`` with real and generated
  images noised by the same ``sigma`` and ``n`` (EDM weighting ``lambda``), weighted ``adv_weight_d``;
* generator phase: ``sid_weight_g * L_SiD + adv_weight_g * BCE(D(x_g + n), 1) * d / mean|x_g - f_phi|``
  at SiD's noise level (``d`` pixels, so both terms are per-sample sums), the paper's ``0.5 / 0.5``.

``init_from`` a SiD run starts generator and fake score from it (SiD^2A in the paper); the
discriminator head starts fresh either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..context import StepContext
from ..training.losses import weight_edm
from ..training.objective import register_objective
from .base import x0_of
from .sid import SiDObjective, SiDSettings, sid_generator_loss

__all__ = ["SiDASettings", "SiDAObjective", "ScoreWithHead"]


class _Stop(Exception):
    """Raised by the tap handler once the encoder features are in hand (the decoder is not needed)."""

    def __init__(self, value: Tensor):
        self.value = value


class ScoreWithHead(nn.Module):
    """A score network and a discriminator head on one of its block taps (``feature_tap``).

    ``forward(x, t, mode=...)``: ``"score"`` the network's output, ``"both"`` ``(output, logits)``,
    ``"logits"`` the logits only (the decoder is skipped).  One module, so DDP and checkpoints see it whole.
    """

    def __init__(self, net: nn.Module, feature_tap: str, probe: tuple[Tensor, Tensor]):
        super().__init__()
        if not getattr(net, "accepts_step_context", False):
            raise ValueError("SiDA needs a fewstep network with block taps (the UNet or DiT) for its discriminator")
        self.net, self.feature_tap = net, feature_tap
        with torch.no_grad():
            feat = self._features(*probe)
        c = feat.shape[1]
        self.head = nn.Sequential(nn.GroupNorm(min(32, c), c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(c, 1, 1))

    def _run(self, x: Tensor, t: Tensor, stop: bool, **cond: Any) -> tuple[Tensor | None, Tensor]:
        found: list[Tensor] = []

        def handler(ctx, name, compute, *args):
            out = compute(*args)
            if name == self.feature_tap:
                found.append(out)
                if stop:
                    raise _Stop(out)
            return out

        ctx = StepContext(None, 0, tap=handler)  # type: ignore[arg-type]
        try:
            out = self.net(x, t, ctx=ctx, **cond)
        except _Stop as s:
            return None, s.value
        if not found:
            raise ValueError(f"the network has no block tap {self.feature_tap!r} (UNet: mid, deep, down.k ...)")
        return out, found[0]

    def _features(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        return self._run(x, t, True, **cond)[1]

    def forward(self, x: Tensor, t: Tensor, mode: str = "score", **cond: Any):
        if mode == "score":
            return self.net(x, t, **cond)
        if mode == "logits":
            return self.head(self._features(x, t, **cond))
        out, feat = self._run(x, t, False, **cond)
        return out, self.head(feat)


@dataclass
class SiDASettings(SiDSettings):
    """SiD's settings plus the adversarial weights (paper: 1 for D, 0.5 / 0.5 for the generator)."""

    adv_weight_d: float = 1.0
    adv_weight_g: float = 0.5
    sid_weight_g: float = 0.5
    feature_tap: str = "mid"
    generator_start_images: int = 100_000  # the generator is held still while fake score and head warm up
    adv_start_images: int = 200_000  # the GAN term joins the generator loss (before: the SiD loss alone)


@register_objective
class SiDAObjective(SiDObjective):
    """SiD with the fake score's encoder doubling as a discriminator against real data."""

    kind = "sida"
    settings_class = SiDASettings

    def make_fake_score(self) -> nn.Module:
        c, r = self.shape[0], self.shape[-1]
        probe = (torch.zeros(1, c, r, r), torch.zeros(1))
        return ScoreWithHead(self.student(), self.settings.feature_tap, probe)

    def _with_logits(self, net: nn.Module, x_t: Tensor, t: Tensor, mode: str = "both"):
        x_in, t_in = self.param.net_input(x_t, t)
        return net(x_in, t_in, mode=mode)

    def fake_loss(self, batch: dict[str, Tensor], nets: Mapping[str, nn.Module]) -> Tensor:
        s = self.settings
        with torch.no_grad():
            x_g = self.generate(nets["generator"], batch["z_fake"])
        t, eps = batch["t_fake"], batch["eps_fake"]
        x_t = self.noisy(x_g, t, eps)
        out, logit_fake = self._with_logits(nets["fake_score"], x_t, t)
        x0_hat = self.param.prediction(x_t, t, out).x0
        lam = weight_edm("x0", self.process, t, sigma_data=self.sigma_data).to(x0_hat.dtype)
        denoise = lam * (x0_hat.float() - x_g.float()).square().flatten(1).sum(1)
        logit_real = self._with_logits(nets["fake_score"], self.noisy(batch["x0"], t, eps), t, "logits")
        d_loss = (F.softplus(-logit_real.float()).flatten(1).mean(1) + F.softplus(logit_fake.float()).flatten(1).mean(1)) / 2
        return denoise + s.adv_weight_d * lam * d_loss

    def draw(self, step: int, data, indices: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        out = super().draw(step, data, indices, generator)
        out["images_seen"] = torch.full((len(indices),), float(step * len(indices)), dtype=torch.float64)
        return out

    def generator_loss(self, batch: dict[str, Tensor], nets: Mapping[str, nn.Module]) -> Tensor:
        """``sid_weight_g L_SiD + adv_weight_g L_GAN`` once ``adv_start_images`` images are seen (the SiD loss
        alone before), times 0 before ``generator_start_images`` (Adam with beta1 = 0 then leaves the generator
        still), as the authors' training loop schedules them."""
        s = self.settings
        seen = float(batch["images_seen"][0])
        x_g = self.generate(nets["generator"], batch["z_gen"])
        t = batch["t_gen"]
        x_t = self.noisy(x_g, t, batch["eps_gen"])
        f_phi = x0_of(nets["teacher"], self.param, x_t, t)
        out, logits = self._with_logits(nets["fake_score"], x_t, t)
        f_psi = self.param.prediction(x_t, t, out).x0
        sid = sid_generator_loss(f_phi.float(), f_psi.float(), x_g.float(), s.alpha)
        with torch.no_grad():
            w = (x_g - f_phi).abs().flatten(1).mean(1).clamp(min=1e-5)
        gan = F.softplus(-logits.float().clamp(-10, 10)).flatten(1).mean(1) * x_g[0].numel() / w
        loss = s.sid_weight_g * sid + s.adv_weight_g * gan if seen >= s.adv_start_images else sid
        return loss if seen >= s.generator_start_images else 0.0 * loss
