"""Denoising-difficulty curriculum (Kim, Go, Kwon & Kim, ICLR 2025, "Denoising Task Difficulty-based Curriculum
for Training Diffusion Models").

The paper finds denoising at *low* noise (early timesteps) the hard task: slower convergence and a larger
relative entropy between consecutive marginals.  It splits the time range into ``N`` clusters ``C_1`` (lowest
noise, hardest) ... ``C_N`` (highest noise, easiest) and trains easy to hard: stage 1 on ``C_N``, each later
stage adding the next harder cluster (training accumulates clusters), and after the last stage on every
time, i.e. the ordinary uniform time sampling.

Clusters are equal intervals of time (``spacing="time"``) or of log-SNR ``lambda`` (``spacing="snr"``, the
equal-SNR split).  Pacing: the paper moves to the next stage when the training loss has converged or after a
maximum patience of iterations; here each stage lasts that maximum, ``stage_steps`` optimiser steps, so the
times drawn are a function of ``(seed, step)`` alone (a loss-driven switch would make a step's batch depend
on the losses before it, which resuming and DDP could not reproduce).  With ``N`` clusters the curriculum
ends after ``(N - 1) * stage_steps`` steps; from then on the draw equals
:func:`fewstep.training.losses.sample_t_uniform` for the same generator, value for value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..processes import NoiseProcess

__all__ = ["Curriculum", "SPACINGS"]

SPACINGS = ("time", "snr")


@dataclass(frozen=True)
class Curriculum:
    """``clusters`` clusters of the time range (``spacing`` ``time`` or ``snr``), one more unlocked every
    ``stage_steps`` steps, easiest (highest noise) first."""

    clusters: int
    stage_steps: int
    spacing: str = "time"

    def __post_init__(self) -> None:
        if not isinstance(self.clusters, int) or self.clusters < 2:
            raise ValueError(f"objective.curriculum_clusters must be an integer >= 2, got {self.clusters!r}")
        if not isinstance(self.stage_steps, int) or self.stage_steps < 1:
            raise ValueError(f"objective.curriculum_stage_steps must be a positive integer (steps per stage), "
                             f"got {self.stage_steps!r}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown curriculum spacing {self.spacing!r}; valid: {', '.join(SPACINGS)}")

    @property
    def end_step(self) -> int:
        """First step at which every cluster is unlocked (uniform training from there on)."""
        return (self.clusters - 1) * self.stage_steps

    def unlocked(self, step: int) -> int:
        """How many clusters (the highest-noise ones) are trained at ``step`` (0-based)."""
        return min(self.clusters, 1 + max(step, 0) // self.stage_steps)

    def bounds(self, process: NoiseProcess) -> list[float]:
        """Cluster edges ``t_min = b_0 < b_1 < ... < b_N = t_max``; cluster ``C_k`` is ``[b_{k-1}, b_k]``."""
        lo, hi, n = float(process.t_min), float(process.t_max), self.clusters
        if self.spacing == "time":
            inner = [lo + (hi - lo) * k / n for k in range(1, n)]
        else:
            lam = process.lam(torch.tensor([lo, hi], dtype=torch.float64))
            levels = torch.linspace(float(lam[0]), float(lam[1]), n + 1, dtype=torch.float64)[1:-1]
            inner = [float(v) for v in process.t_of_lambda(levels)]
        return [lo, *inner, hi]

    def low_time(self, process: NoiseProcess, step: int) -> float:
        """The lowest time trained at ``step``: the lower edge of the hardest unlocked cluster."""
        return self.bounds(process)[self.clusters - self.unlocked(step)]

    def sample(self, process: NoiseProcess, n: int, generator: torch.Generator | None, step: int) -> Tensor:
        """Times uniform on the unlocked clusters ``[low_time(step), t_max]`` (float64, shape ``(n,)``)."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        lo = process.t_min if self.unlocked(step) == self.clusters else self.low_time(process, step)
        return lo + (process.t_max - lo) * u
