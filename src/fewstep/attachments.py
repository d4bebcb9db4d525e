"""Declared attachments: data that travels with a model, saved next to its checkpoint by the feature that owns it.

A model is more than its network: DPM-Solver-v3's empirical statistics (``ems/``), the training data's Gaussian
and its per-class Gaussians (``gaussian.safetensors``, for a teleported start) and tuned sampling plans
(``plans.json``; bundled models ship theirs as ``grids.json``) belong to it.  Each is declared here once: its
attribute name, the file it lives in beside the checkpoint and the owner's loader (a ``"module:function"``
reference, so that loading a model imports a feature only when its file is there).  :func:`attach_from` is what
``load_model`` runs; :func:`attach` refuses undeclared names; :func:`attached` finds an attachment through any
chain of wrappers (``.inner``), so a cached, guided or counted denoiser still has its model's data.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .denoisers import find_attached

__all__ = ["Attachment", "ATTACHMENTS", "attach", "attached", "attach_from", "declared"]


@dataclass(frozen=True)
class Attachment:
    """``name``: the attribute; ``files``: where it lives beside a checkpoint (the first that exists is used);
    ``loader``: ``"module:function"`` taking that path and returning the object (or None: nothing to attach)."""

    name: str
    files: tuple[str, ...]
    loader: str
    what: str

    def load(self, folder: Path) -> Any:
        path = next((folder / f for f in self.files if (folder / f).exists()), None)
        if path is None:
            return None
        module, function = self.loader.split(":")
        load: Callable[[Path], Any] = getattr(importlib.import_module(module), function)
        return load(path)


ATTACHMENTS: tuple[Attachment, ...] = (
    Attachment("ems", ("ems/ems.json",), "fewstep.solvers.dpm_v3.stats:load_ems_file",
               "DPM-Solver-v3's empirical model statistics (`fewstep ems`)"),
    Attachment("data_gaussian", ("gaussian.safetensors",), "fewstep.teleport:load_gaussian",
               "the training data's Gaussian, for teleported starts (`fewstep gaussian`)"),
    Attachment("class_gaussians", ("gaussian.safetensors",), "fewstep.teleport:load_class_gaussians",
               "one data Gaussian per class (`fewstep gaussian --per-class`)"),
    Attachment("latent_space", ("latent-autoencoder.safetensors",), "fewstep.latent:load_latent_space",
               "the autoencoder a latent model samples in, decoding its samples to images (docs/training.md)"),
    Attachment("plan_file", ("plans.json", "grids.json"), "fewstep.attachments:_path",
               "tuned sampling plans (`fewstep tune`), used with grid='tuned' / --plan tuned"),
)


def _path(path: Path) -> Path:
    return path


def declared() -> dict[str, Attachment]:
    return {a.name: a for a in ATTACHMENTS}


def attach(denoiser: Any, name: str, value: Any) -> Any:
    """Attach ``value`` to ``denoiser`` as the declared attachment ``name``; returns the denoiser."""
    if name not in declared():
        raise ValueError(f"{name!r} is not a declared model attachment; declared: {', '.join(declared())}")
    setattr(denoiser, name, value)
    return denoiser


def attached(denoiser: Any, name: str) -> Any:
    """The attachment ``name`` of ``denoiser`` or of a denoiser it wraps, or None."""
    if name not in declared():
        raise ValueError(f"{name!r} is not a declared model attachment; declared: {', '.join(declared())}")

    return find_attached(denoiser, name)


def attach_from(denoiser: Any, folder: str | Path) -> list[str]:
    """Attach every declared attachment found beside the checkpoint ``folder``; returns the names attached."""
    folder = Path(folder)
    names = []
    for a in ATTACHMENTS:
        value = a.load(folder)
        if value is not None:
            attach(denoiser, a.name, value)
            names.append(a.name)
    return names
