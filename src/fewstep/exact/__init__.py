"""Exact models (closed-form denoisers) for tests and benchmarks."""

from ._base import ExactDenoiser, ExactModel
from .conditional import ClassConditionalMixture, ExactClassifier, ExactConditionalDenoiser
from .empirical import EmpiricalData
from .gmm import GaussianMixture
from .reference import reference_solution

__all__ = ["ExactModel", "ExactDenoiser", "GaussianMixture", "EmpiricalData", "reference_solution",
           "ClassConditionalMixture", "ExactConditionalDenoiser", "ExactClassifier"]
