"""Denoising MCMC (Kim & Ye 2022): Langevin-Gibbs chains on (data, noise level), then a short ODE solve from
each chain state (docs/dmcmc.md)."""

from .chain import draw_levels, gibbs_step, run_chain
from .estimator import load_estimator, save_estimator, train_level_classifier
from .levels import NoiseLevels
from .posterior import ExactLevelPosterior, LevelClassifier, LevelPosterior, NetworkLevelPosterior, restrict_levels
from .sampler import DMCMCConfig, dmcmc_generate

__all__ = ["NoiseLevels", "LevelPosterior", "ExactLevelPosterior", "NetworkLevelPosterior", "LevelClassifier", "restrict_levels",
           "gibbs_step", "run_chain", "draw_levels", "DMCMCConfig", "dmcmc_generate",
           "train_level_classifier", "save_estimator", "load_estimator"]
