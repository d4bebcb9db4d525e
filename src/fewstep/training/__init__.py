"""Training: losses, objectives and the trainer (checkpoints are :mod:`fewstep.checkpoint`, data :mod:`fewstep.data`)."""

from .losses import diffusion_loss
from .trainer import Trainer, TrainingDiverged, TrainSettings

__all__ = ["Trainer", "TrainSettings", "TrainingDiverged", "diffusion_loss"]
