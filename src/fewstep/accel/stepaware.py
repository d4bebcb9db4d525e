"""Step-aware model schedules: a cheaper model for the first (high-noise) steps of a solve.

OMS-DPM (Liu et al. 2023, "OMS-DPM: Optimizing the Model Schedule for Diffusion Probabilistic
Models", sec. 3-4) and DDSM (Yang et al. 2024, "Denoising Diffusion Step-aware Models", sec. 3)
observe that the steps of a sampler do not need the same network: at high noise the posterior
mean ``E[x0 | x_t]`` is a smooth, nearly linear function of ``x_t`` and a much smaller model
predicts it as well as the large one.  :class:`StepSchedule` runs every evaluation of the first
``steps`` solver steps (all their stages) through ``small`` and the rest through the wrapped model.

The cheapest small model is a linear one.  :class:`GaussianSteps` uses the exact denoiser of the
Gaussian with the training data's mean and covariance (Wang & Vastola 2024, "The Unreasonable
Effectiveness of Gaussian Score Approximation for Diffusion Models and its Applications",
sec. 3-4: at high noise a trained network's score is close to this Gaussian's, which they use to
skip the first 15-30% of the steps).  Its posterior mean is Tweedie's formula for one component,
``mu + C (C + s^2 I)^{-1} (y - mu)`` with ``y = x_t / alpha``, ``s = sigma / alpha`` - the one
implementation in :class:`fewstep.exact.GaussianMixture` - at the cost of two ``dim x dim``
matrix products per image, no training.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from torch import Tensor

from ..context import StepContext
from ..denoisers import DenoiserBase, DenoiserWrapper
from ..parametrization import Prediction
from ..teleport import data_gaussian as compute, resolve_gaussian

__all__ = ["StepSchedule", "GaussianSteps", "gaussian_steps", "data_gaussian"]


class StepSchedule(DenoiserWrapper):
    """Evaluations of solver steps ``< steps`` go to ``small``, all others to the wrapped model.

    The decision is by step (``ctx.step``), so a step's stages use one model; outside a solver
    (no context) the wrapped model answers.  ``full_evals`` counts the wrapped model's evaluations,
    ``cached_evals`` the small model's (the names the feature caches use, so reports read alike).
    """

    method = "schedule"

    def __init__(self, inner: DenoiserBase, small: DenoiserBase | None = None, steps: int = 2):
        super().__init__(inner)
        if int(steps) != steps or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps}")
        self.steps = int(steps)
        self._small = small
        self.full_evals = 0
        self.cached_evals = 0

    @property
    def small(self) -> DenoiserBase:
        if self._small is None:
            self._small = self.build_small()
        return self._small

    def build_small(self) -> DenoiserBase:
        raise ValueError("a StepSchedule needs a small model")

    @property
    def spec(self) -> str:
        return f"{self.method}:steps={self.steps}"

    def counts(self) -> dict[str, int]:
        return {"full_evals": self.full_evals, "cached_evals": self.cached_evals}

    def predict(self, x: Tensor, t: float | Tensor, *, ctx: StepContext | None = None, **cond: Any) -> Prediction:
        if ctx is not None and ctx.step < self.steps:
            self.cached_evals += 1
            return self.small.predict(x, t, ctx=ctx, **cond)
        self.full_evals += 1
        return self.inner.predict(x, t, ctx=ctx, **cond)


@lru_cache(maxsize=4)
def data_gaussian(data: str, shape: tuple[int, ...]) -> Any:
    """:func:`fewstep.teleport.data_gaussian`, computed once per process."""
    return compute(data, shape)


class GaussianSteps(StepSchedule):
    """The first ``steps`` steps use the exact denoiser of the data's Gaussian (see the module docstring).

    ``data``: the training data (``fashion-mnist``, an ``.npz``/``.npy`` array, an image folder), read
    once per process at the first evaluation; ``None`` uses the Gaussian attached to the model
    (``<checkpoint>/gaussian.safetensors``, :mod:`fewstep.teleport`; ``bundled:fashion`` ships one).
    Unconditional models only: the Gaussian knows no labels.
    """

    method = "gaussian"

    def __init__(self, inner: DenoiserBase, steps: int = 2, data: str | None = None):
        super().__init__(inner, None, steps)
        if data is not None and (not isinstance(data, str) or not data):
            raise ValueError("gaussian: data=SPEC names the training data, e.g. data=fashion-mnist")
        self.data = data

    @property
    def spec(self) -> str:
        return f"{self.method}:steps={self.steps}" + (f",data={self.data}" if self.data else "")

    def build_small(self) -> DenoiserBase:
        shape = self.inner.sample_shape
        if shape is None:
            raise ValueError("gaussian steps need the model's sample shape; load it with fewstep.load_model")
        if self.data is None:
            return resolve_gaussian(self.inner, None).denoiser(self.inner.process)
        return data_gaussian(self.data, tuple(int(v) for v in shape)).denoiser(self.inner.process)

    def predict(self, x: Tensor, t: float | Tensor, *, ctx: StepContext | None = None, **cond: Any) -> Prediction:
        if cond and ctx is not None and ctx.step < self.steps:
            raise ValueError("gaussian steps are for unconditional sampling (the data Gaussian has no classes)")
        return super().predict(x, t, ctx=ctx, **cond)


def gaussian_steps(denoiser: DenoiserBase, steps: int = 2, data: str | None = None) -> GaussianSteps:
    """``denoiser`` whose first ``steps`` solver steps use the data Gaussian's exact denoiser."""
    return GaussianSteps(denoiser, steps, data)
