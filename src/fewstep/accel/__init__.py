"""Cheaper network evaluations along a sampling trajectory: feature caching and forecasting.

Each method is a denoiser wrapper that answers the network's block taps through the sampling
context (:mod:`fewstep.context`) and keeps its cache in the per-solve ``ctx.state``:

* :func:`deepcache` - reuse the UNet's deep branch between key steps (Ma et al. 2024);
* :func:`encoder_propagation` - reuse the UNet's encoder features, run the decoder every step
  (Li et al. 2024, Faster Diffusion);
* :func:`taylorseer` - forecast block outputs by a Taylor series over full steps (Liu et al. 2025);
* :func:`gaussian_steps` - a step-aware model schedule: the first steps use the data Gaussian's
  exact denoiser instead of the network (OMS-DPM / Wang & Vastola 2024, :mod:`.stepaware`).

``apply_cache(denoiser, "taylorseer:interval=3,order=2")`` builds one from a spec string
(:mod:`.spec`).  Every wrapper counts ``full_evals`` and ``cached_evals``.
"""

from ._base import FeatureCache
from ._schedule import key_steps
from .deepcache import DeepCache, deepcache
from .encoder import EncoderPropagation, encoder_propagation
from .spec import CACHE_METHODS, CacheSpec, apply_cache, cache_options, parse_cache
from .stepaware import GaussianSteps, StepSchedule, gaussian_steps
from .taylorseer import TaylorSeer, taylorseer

__all__ = ["FeatureCache", "key_steps", "DeepCache", "deepcache", "EncoderPropagation", "encoder_propagation",
           "TaylorSeer", "taylorseer",
           "StepSchedule", "GaussianSteps", "gaussian_steps", "CACHE_METHODS", "CacheSpec", "parse_cache", "apply_cache", "cache_options"]
