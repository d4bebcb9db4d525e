"""Training: the trainer, objectives (what is trained) and losses.

Checkpoint folders are :mod:`fewstep.checkpoint`; image data is :mod:`fewstep.data`.
"""

from .autoencoder import AutoencoderObjective, AutoencoderSettings, load_autoencoder
from .classifier import ClassifierObjective, ClassifierSettings
from .denoising import DenoisingObjective, DenoisingSettings
from .encoder import EncoderObjective, EncoderSettings, load_encoder
from .losses import diffusion_loss
from .masking import MaskingObjective
from .objective import OBJECTIVES, CheckpointFiles, Objective, Phase, register_objective
from .settings import TrainSettings, resolve_config
from .trainer import Trainer, TrainingDiverged

__all__ = ["Trainer", "TrainSettings", "TrainingDiverged", "Objective", "Phase", "CheckpointFiles", "OBJECTIVES",
           "register_objective", "resolve_config", "DenoisingObjective", "DenoisingSettings", "diffusion_loss",
           "ClassifierObjective", "ClassifierSettings", "MaskingObjective", "EncoderObjective", "EncoderSettings",
           "load_encoder", "AutoencoderObjective", "AutoencoderSettings", "load_autoencoder"]
