"""Training: the trainer, objectives (what is trained) and losses.

Checkpoint folders are :mod:`fewstep.checkpoint`; image data is :mod:`fewstep.data`.
"""

from .denoising import DenoisingObjective, DenoisingSettings
from .losses import diffusion_loss
from .objective import OBJECTIVES, CheckpointFiles, Objective, Phase, register_objective
from .trainer import Trainer, TrainingDiverged, TrainSettings

__all__ = ["Trainer", "TrainSettings", "TrainingDiverged", "Objective", "Phase", "CheckpointFiles", "OBJECTIVES",
           "register_objective", "DenoisingObjective", "DenoisingSettings", "diffusion_loss"]
