"""The restoration methods by name, with their papers, options and NFE plans."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ..options import OptionSpec
from .dps import dps
from .reddiff import reddiff
from .repaint import repaint, repaint_nfe

__all__ = ["MethodSpec", "METHODS", "get_method"]


@dataclass(frozen=True)
class MethodSpec(OptionSpec):
    """A method: its function, paper, whether it only inpaints, whether its schedule lands on clean data, and
    whether it differentiates through the network.  Its options and their check are
    :class:`~fewstep.options.OptionSpec`'s."""

    paper: str
    inpaint_only: bool
    clean_end: bool
    backprop: bool

    kind: ClassVar[str] = "restoration method"

    def plan(self, nfe: int, options: dict[str, Any]) -> tuple[int, int]:
        """``(steps, nfe_used)``: the grid steps that spend at most ``nfe`` evaluations, and what they spend."""
        if nfe < 1:
            raise ValueError(f"nfe must be positive, got {nfe}")
        if self.name == "repaint":
            jump, resample = int(options.get("jump", 1)), int(options.get("resample", 1))
            steps = max((s for s in range(1, nfe + 1) if repaint_nfe(s, jump, resample) <= nfe), default=1)
            return steps, repaint_nfe(steps, jump, resample)
        if self.clean_end:
            return nfe, nfe
        if nfe < 2:
            raise ValueError(f"{self.name} evaluates the network at each of its grid points; it needs nfe >= 2")
        return nfe - 1, nfe

    def check_task(self, operator: Any) -> None:
        if self.inpaint_only and not hasattr(operator, "known"):
            task = getattr(operator, "name", type(operator).__name__)
            raise ValueError(f"{self.name} only inpaints (it replaces the known pixels) and cannot do {task}; "
                             f"use dps or reddiff for {task}")


METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("repaint", repaint, "Lugmayr et al. 2022, RePaint: Inpainting using Denoising Diffusion "
               "Probabilistic Models, Algorithm 1", inpaint_only=True, clean_end=True, backprop=False,
               ranges={"jump": (1, math.inf, True, False), "resample": (1, math.inf, True, False)}),
    MethodSpec("dps", dps, "Chung et al. 2023, Diffusion Posterior Sampling for General Noisy Inverse Problems, "
               "Algorithm 1", inpaint_only=False, clean_end=True, backprop=True, ranges={"zeta": (0, math.inf, True, False)}),
    MethodSpec("reddiff", reddiff, "Mardani et al. 2023, A Variational Perspective on Solving Inverse Problems "
               "with Diffusion Models, Algorithm 1", inpaint_only=False, clean_end=False, backprop=False,
               ranges={"lam": (0, math.inf, True, False), "lr": (0, math.inf, False, False)}),
)}


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown restoration method {name!r}; valid: {', '.join(METHODS)}") from None
