"""What is trained and how: the :class:`Objective` interface the :class:`~fewstep.training.Trainer` drives.

The trainer owns what every objective shares (device, DDP, gradient accumulation, autocast,
clipping, warm-up, EMA, checkpoints, deterministic per-step randomness, logging).  An objective
owns its modules, its losses, the randomness each step draws, and its preview.

One training step runs the objective's :meth:`~Objective.phases` in order.  A phase is one
optimiser update of one named module: the trainer accumulates the phase's loss over the
micro-batches, clips, and steps that module's own AdamW.  Plain denoising has one phase;
a distillation such as Score identity Distillation has two (the fake-score network, then the
generator), each with its own optimiser, and keeps an EMA of the generator only.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

import torch
from torch import Tensor, nn

from ..data import ImageData

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["Objective", "Phase", "CheckpointFiles", "NoSettings", "OBJECTIVES", "register_objective"]

#: ``loss(micro_batch, nets) -> per-sample loss (batch,)``; ``nets`` maps every module name to its network.
LossFn = Callable[[dict[str, Tensor], Mapping[str, nn.Module]], Tensor]


@dataclass(frozen=True)
class Phase:
    """One optimiser update within a training step: minimise ``loss`` over ``module``'s parameters.

    During the phase only ``module`` collects gradients (other modules pass gradients through
    but keep none); ``name`` labels the loss in the log (default: the module's name).  ``also`` names
    further modules trained by the same loss and stepped by ``module``'s optimiser (one parameter group
    each), e.g. the uncertainty head of EDM2's learned loss weighting.
    """

    module: str
    loss: LossFn
    name: str = ""
    also: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.name or self.module


@dataclass(frozen=True)
class CheckpointFiles:
    """File names of one module in a checkpoint folder; ``optimizer`` is a stem (``.safetensors`` + ``.json``)."""

    weights: str
    ema: str
    optimizer: str


@dataclass
class NoSettings:
    """An objective without settings of its own."""

    def check(self) -> None:
        pass


class Objective(ABC):
    """Base class of training objectives; subclasses set ``kind`` and implement the abstract methods.

    Built by the trainer (after it seeds torch with ``training.seed``) from the full config,
    the objective's validated settings (the config's ``objective`` section, a ``settings_class``
    instance) and the data.
    """

    #: Name in configs (``"objective": {"kind": ...}``) and in :data:`OBJECTIVES`.
    kind: ClassVar[str] = ""
    #: Dataclass of the ``objective`` section (besides ``kind``); may define ``check()``.
    settings_class: ClassVar[type] = NoSettings
    #: Top-level config keys this objective reads (e.g. ``network``); validated by :meth:`check_sections`.
    sections: ClassVar[tuple[str, ...]] = ()
    #: Top-level keys a checkpoint must share with the run that resumes from it (the architecture).
    identity: ClassVar[tuple[str, ...]] = ()
    #: Whether the objective trains on an autoencoder's latents when the config has a ``latent`` section
    #: (:mod:`fewstep.latent`: the trainer hands it the encoded data set).
    latent_ok: ClassVar[bool] = False

    def __init__(self, config: Mapping[str, Any], settings: Any, data: ImageData):
        self.config = config
        self.settings = settings
        self.data = data

    @classmethod
    def check_sections(cls, config: Mapping[str, Any]) -> None:
        """Validate the top-level sections named in ``sections`` (keys and types); raise ValueError."""

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """The trained (and checkpointed) modules by name; the trainer moves them to its device."""

    def frozen(self) -> dict[str, nn.Module]:
        """Modules that are used but never trained nor saved (e.g. a teacher); moved to the device, eval mode."""
        return {}

    @abstractmethod
    def phases(self) -> list[Phase]:
        """The optimiser updates of one training step, in order; each module named gets its own AdamW."""

    def ema_modules(self) -> tuple[str, ...]:
        """Modules the trainer keeps an exponential moving average of (default: every trained one)."""
        return tuple(dict.fromkeys(p.module for p in self.phases()))

    @abstractmethod
    def draw(self, step: int, data: ImageData, indices: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """The global batch of ``step`` from the dataset ``indices``, all randomness from ``generator``.

        ``generator`` is seeded from ``(seed, step)``, so a resumed run and every DDP rank draw the
        same batch.  Every value must have the batch as its first dimension: the trainer slices it
        into per-rank micro-batches.
        """

    def preview(self, trainer: "Trainer") -> Path | None:
        """Write a preview of the current model (e.g. a sample grid) under ``trainer.out_dir``; None if none."""
        return None

    def checkpoint_files(self, name: str) -> CheckpointFiles:
        """Where module ``name`` is saved: ``<name>.safetensors``, ``<name>-ema.safetensors``, ``<name>-optimizer``."""
        return CheckpointFiles(f"{name}.safetensors", f"{name}-ema.safetensors", f"{name}-optimizer")

    def optimizer_options(self, name: str) -> dict[str, Any]:
        """AdamW options for module ``name`` overriding the training settings (``lr``, ``betas``, ``weight_decay``)."""
        return {}

    def lr_scales(self, name: str) -> dict[str, float]:
        """Learning-rate multipliers of module ``name``'s parameters by name prefix (e.g. a new layer
        trained faster than the warm-started rest); parameters no prefix matches keep 1.0."""
        return {}

    def settings_dict(self) -> dict[str, Any]:
        """The ``objective`` section saved in checkpoints."""
        return {"kind": self.kind, **dataclasses.asdict(self.settings)}


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make ``cls`` available as ``"objective": {"kind": cls.kind}`` in configs."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} has no kind")
    OBJECTIVES[cls.kind] = cls
    return cls
