"""One- and few-step distillation of diffusion models, as objectives of the shared Trainer.

* ``sid`` - Score identity Distillation (Zhou et al. 2024): a one-step generator.
* ``sida`` - adversarial SiD (Zhou et al. 2025): SiD plus a discriminator head on the fake
  score's encoder, trained with real data.
* ``ect`` - Easy Consistency Tuning (Geng et al. 2024): a consistency model fine-tuned from the
  teacher, sampled in 1-2 steps.
* ``mmd`` - MMD-DDM (Aiello et al. 2023): fine-tune a model for a fixed few-step sampler with a
  maximum-mean-discrepancy loss in a feature space.

Importing this package registers the objectives (``"objective": {"kind": "sid"}`` ...).
"""

from .config import METHODS, distill_config
from ..onestep import OneStepGenerator, generate_x0, generator_time
from .ect import ECTObjective, ECTSettings, ect_r, ect_stage
from .mmd import MMDObjective, MMDSettings, mmd2_unbiased
from .sid import SiDObjective, SiDSettings, fake_score_loss, sid_generator_loss, sid_times
from .sida import SiDAObjective, SiDASettings
from .tracking import FIDTracker, plot_fid_curve

__all__ = ["METHODS", "distill_config", "OneStepGenerator", "generate_x0", "generator_time", "SiDObjective",
           "SiDSettings", "SiDAObjective", "SiDASettings", "MMDObjective", "MMDSettings", "sid_generator_loss",
           "sid_times", "fake_score_loss", "mmd2_unbiased", "ECTObjective", "ECTSettings", "ect_r", "ect_stage", "FIDTracker", "plot_fid_curve"]
