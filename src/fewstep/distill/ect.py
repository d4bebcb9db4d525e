"""Easy Consistency Tuning (ECT; Geng et al. 2024, "Consistency Models Made Easy", ICLR 2025).

A pretrained diffusion model is already a consistency model for the coarsest discretisation
(``r = 0``: the consistency loss is the denoising loss).  ECT fine-tunes it on the consistency
loss between ``f(x_t, t)`` and the stop-gradient ``f(x_r, r)`` of the *same* network, ``x_t = x0 + t eps``
and ``x_r = x0 + r eps`` sharing one noise draw (consistency training: real data, no ODE solve), and
shrinks ``dt = t - r`` in stages (EDM noise levels ``t, r`` = the process's ``sigma / alpha``):

* ``t``: ``ln t ~ N(P_mean, P_std^2)``, ``P_mean = -1.1``, ``P_std = 2.0`` (paper sec. 3.3 / App.);
* the mapping function (paper eq. 9): ``r / t = 1 - n(t) / q^a``, ``n(t) = 1 + k sigmoid(-b t)``,
  ``a`` the stage (``a = ceil(iteration / d)``), ``q = 2``, ``k = 8``, ``b = 1``; ``r`` clipped at 0;
  ``r = 0`` means the target is the boundary value: the paper's ``x0`` at ``sigma = 0``, here
  ``x0 + sigma_min eps`` at the process's smallest level ``sigma_min`` (``f(x, sigma_min) = x``);
* the loss: ``w(t, r) d(f(x_t, t), sg f(x_r, r))`` with ``w = 1 / (t - r)`` and the pseudo-Huber
  ``d(x, y) = sqrt(||x - y||^2 + c^2) - c`` (``c = 0``: the L2 norm, the paper's adaptive weighting
  with p = 1/2); ``weighting = "snr"`` is the ``1/t^2 + 1/sigma_data^2`` weight of the authors' later
  release.

``f`` is :func:`fewstep.consistency.consistency_x0` on the network's own data prediction, so the
boundary ``f(x, t_min) = x / alpha`` holds by construction and any prediction type is tuned alike.
The result loads as a :class:`fewstep.consistency.ConsistencyModel`: ``--nfe 1`` with any solver is its
one-step sample, ``--solver cm --nfe 2`` the paper's two-step sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch import Tensor, nn

from ..api import generate
from ..consistency import ConsistencyModel, consistency_x0
from ..data import ImageData, to_model_range
from ..parametrization import alpha_sigma
from ..training.config import check_positive
from ..training.objective import CheckpointFiles, Phase, register_objective
from ..training.losses import pseudo_huber
from .base import DistillObjective, check_one_number_section, x0_of

if TYPE_CHECKING:
    from ..training.trainer import Trainer

__all__ = ["ECTSettings", "ECTObjective", "ect_r", "ect_stage", "ect_loss_terms", "ECT_WEIGHTINGS"]

ECT_WEIGHTINGS = ("inv_dt", "snr")


def ect_stage(step: int, stage_steps: int) -> int:
    """The stage ``a = ceil(iteration / d)`` of 0-based training ``step`` (iteration ``step + 1``)."""
    return step // stage_steps + 1


def ect_r(t: Tensor, stage: int, *, q: float = 2.0, k: float = 8.0, b: float = 1.0) -> Tensor:
    """ECT's mapping function (eq. 9): ``r = max(0, t (1 - (1 + k sigmoid(-b t)) / q^stage))``."""
    n = 1 + k * torch.sigmoid(-b * t)
    return (t * (1 - n / q**stage)).clamp(min=0)


def ect_loss_terms(f_t: Tensor, f_r: Tensor, t: Tensor, r: Tensor, *, c: float = 0.0, weighting: str = "inv_dt",
                   sigma_data: float = 0.5) -> Tensor:
    """Per-sample ``w(t, r) (sqrt(||f_t - f_r||^2 + c^2) - c)`` (``t, r`` EDM noise levels, shape ``(batch,)``)."""
    dtype = torch.promote_types(f_t.dtype, torch.float32)  # at least float32 (autocast), float64 kept
    dist = pseudo_huber((f_t.to(dtype) - f_r.to(dtype)).square().flatten(1).sum(1), c)
    t, r = t.to(dist), r.to(dist)
    w = 1 / (t - r) if weighting == "inv_dt" else (t * t + sigma_data**2) / (t * sigma_data) ** 2
    return w * dist


@dataclass
class ECTSettings:
    """The ``objective`` section of ``ect``.  ``stage_steps`` (ECT's ``d``): steps per stage; 0: an eighth of
    ``training.steps`` (the paper's CIFAR-10 run halves ``dt`` 8 times)."""

    p_mean: float = -1.1
    p_std: float = 2.0
    q: float = 2.0
    k: float = 8.0
    b: float = 1.0
    stage_steps: int = 0
    huber_c: float = 0.0
    weighting: str = "inv_dt"
    fid_n: int = 1000
    fid_extractor: str = "fashion"
    fid_ref: str = ""

    def check(self) -> None:
        check_positive("objective.p_std", self.p_std)
        if not self.q > 1:
            raise ValueError(f"objective.q must be > 1 (dt shrinks by q per stage), got {self.q}")
        for name in ("k", "b", "huber_c", "stage_steps", "fid_n"):
            check_positive(f"objective.{name}", getattr(self, name), allow_zero=True)
        if self.weighting not in ECT_WEIGHTINGS:
            raise ValueError(f"unknown objective.weighting {self.weighting!r}; valid: {', '.join(ECT_WEIGHTINGS)}")



@register_objective
class ECTObjective(DistillObjective):
    """One module ``model`` (a copy of the teacher, saved as ``model``/``ema``), one phase: the ECT loss."""

    kind = "ect"
    settings_class = ECTSettings
    sections = DistillObjective.sections + ("consistency",)
    identity = DistillObjective.identity + ("consistency",)

    def __init__(self, config: Mapping[str, Any], settings: ECTSettings, data: ImageData):
        super().__init__(config, settings, data)
        self.sigma_min = float(config["consistency"]["sigma_min"])
        steps = int(config.get("training", {}).get("steps", 8))
        self.stage_steps = settings.stage_steps or max(1, steps // 8)
        self.model = self.student()
        a, s = self.process.alpha_sigma(float(self.process.t_max))
        self.sigma_max = s / a

    @classmethod
    def check_sections(cls, config: Mapping[str, Any]) -> None:
        super().check_sections(config)
        check_one_number_section(config, "consistency", "sigma_min", 0.002)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def phases(self) -> list[Phase]:
        return [Phase("model", self.loss, "ect")]

    def checkpoint_files(self, name: str) -> CheckpointFiles:
        return CheckpointFiles("model.safetensors", "ema.safetensors", "optimizer")

    def times(self, step: int, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(t, r)`` as EDM noise levels (float64): ``t`` log-normal clipped to the process's range, ``r`` from
        :func:`ect_r` at ``step``'s stage; ``r`` below ``sigma_min`` becomes 0 (the target is then the boundary)."""
        s = self.settings
        t = torch.exp(s.p_mean + s.p_std * torch.randn(n, generator=generator, dtype=torch.float64))
        t = t.clamp(self.sigma_min, self.sigma_max)
        r = ect_r(t, ect_stage(step, self.stage_steps), q=s.q, k=s.k, b=s.b)
        return t, torch.where(r < self.sigma_min, torch.zeros_like(r), r)

    def draw(self, step: int, data: ImageData, indices: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        x0 = to_model_range(data.images[indices])
        t, r = self.times(step, len(indices), generator)
        return {"x0": x0, "t": t, "r": r, "eps": torch.randn(x0.shape, generator=generator)}

    def _time(self, sigma_hat: Tensor) -> Tensor:
        return self.process.t_of_sigma_hat(sigma_hat).clamp(self.process.t_min, self.process.t_max)

    def f(self, net: Callable[..., Tensor], x0: Tensor, eps: Tensor, sigma_hat: Tensor) -> Tensor:
        """``f(x, t)`` at ``x = alpha (x0 + sigma_hat eps)``, the process time of the EDM level ``sigma_hat``."""
        t = self._time(sigma_hat)
        a, _ = alpha_sigma(self.process, x0, t)
        x = a * (x0 + sigma_hat.to(x0).reshape(-1, *[1] * (x0.ndim - 1)) * eps)
        return consistency_x0(self.process, x, t, x0_of(net, self.param, x, t), self.sigma_min)

    def loss(self, batch: dict[str, Tensor], nets: Mapping[str, nn.Module]) -> Tensor:
        """Per-sample ECT loss.  The target is ``sg f(x_r, max(r, sigma_min))``: at ``sigma_min`` the consistency
        function is its input ``x0 + sigma_min eps`` by construction (the boundary), whatever the network; the
        weight keeps ``r`` (0 there).  Both evaluations see the same dropout mask (the CPU RNG state is replayed)."""
        x0, eps, t, r = batch["x0"], batch["eps"], batch["t"], batch["r"]
        net = nets["model"]
        state = torch.get_rng_state()
        f_t = self.f(net, x0, eps, t)
        end = torch.get_rng_state()
        torch.set_rng_state(state)
        with torch.no_grad():
            f_r = self.f(net, x0, eps, r.clamp(min=self.sigma_min))
        torch.set_rng_state(end)
        s = self.settings
        return ect_loss_terms(f_t, f_r, t, r, c=s.huber_c, weighting=s.weighting, sigma_data=self.sigma_data)

    def consistency_model(self, net: nn.Module) -> ConsistencyModel:
        return ConsistencyModel(net, self.process, self.prediction, self.sigma_data, sample_shape=self.shape,
                                sigma_min=self.sigma_min)

    def tracked_sample_fn(self, trainer: "Trainer") -> Callable[[list[int]], Tensor]:
        den = self.consistency_model(trainer.emas["model"])
        return lambda seeds: generate(den, self.shape, seeds, "ddim", 1, device=trainer.device)

