"""fewstep: few-step diffusion generation, measured honestly."""

from . import grids, processes, solvers
from .api import generate, generators, prior_noise, sample
from .denoisers import (ClassifierFreeGuidance, ClipDataPrediction, Denoiser, DenoiserBase, DenoiserWrapper,
                        DynamicThresholding, NFECounter, Prediction)
from .grids import Schedule, make_grid, make_schedule
from .compiling import compile_denoiser
from .loading import load_model
from .modelinfo import model_info

__version__ = "0.1.0"

__all__ = [
    "sample", "generate", "generators", "prior_noise",
    "Denoiser", "DenoiserBase", "DenoiserWrapper", "Prediction",
    "ClassifierFreeGuidance", "DynamicThresholding", "ClipDataPrediction", "NFECounter",
    "Schedule", "make_grid", "make_schedule",
    "processes", "grids", "solvers", "load_model", "model_info", "compile_denoiser",
]
