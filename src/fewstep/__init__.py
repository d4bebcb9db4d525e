"""fewstep: few-step diffusion generation, measured honestly."""

from . import grids, processes, solvers
from .api import generate, generators, prior_noise, sample
from .plan import SamplingPlan, Start, make_plan
from .denoisers import (ClassifierFreeGuidance, ClipDataPrediction, Denoiser, DenoiserBase, DenoiserWrapper,
                        DynamicThresholding, NFECounter, Prediction)
from .grids import Schedule, make_grid, make_schedule
from .compiling import compile_denoiser
from .precision import set_precision
from .loading import load_model
from .modelinfo import model_info
from .tuning.tune import tune

from ._version import __version__  # noqa: F401 - the package version

__all__ = [
    "sample", "generate", "generators", "prior_noise", "make_plan", "SamplingPlan", "Start",
    "Denoiser", "DenoiserBase", "DenoiserWrapper", "Prediction",
    "ClassifierFreeGuidance", "DynamicThresholding", "ClipDataPrediction", "NFECounter",
    "Schedule", "make_grid", "make_schedule",
    "processes", "grids", "solvers", "load_model", "model_info", "compile_denoiser", "set_precision", "tune",
]
