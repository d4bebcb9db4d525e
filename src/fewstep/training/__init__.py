"""Training: losses, data, the trainer and checkpoint folders."""

from .checkpoint import latest_checkpoint, save_checkpoint
from .data import ImageData, load_data
from .losses import diffusion_loss
from .trainer import Trainer, TrainingDiverged, TrainSettings

__all__ = ["Trainer", "TrainSettings", "TrainingDiverged", "ImageData", "load_data", "diffusion_loss",
           "save_checkpoint", "latest_checkpoint"]
