"""Checks and builders shared by the library and ``fewstep sample``: class labels, guided denoisers."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..denoisers import ClassifierFreeGuidance, DenoiserBase, GuidanceInterval, wrapper_chain
from ..latent import require_pixel_space
from .classifier import ClassifierGuidance, NoisyClassifier

__all__ = ["num_classes", "class_labels", "class_cycle", "guide", "GUIDANCE_METHODS"]

GUIDANCE_METHODS = ("cfg", "classifier")


def num_classes(denoiser: DenoiserBase) -> int:
    """The number of classes a denoiser is conditioned on (0 for an unconditional model), read through wrappers."""
    for den in wrapper_chain(denoiser):
        n = getattr(den, "num_classes", None)
        if n is not None:
            return int(n)
        cfg = getattr(den, "config", None)
        if isinstance(cfg, dict) and isinstance(cfg.get("network"), dict):
            return int(cfg["network"].get("num_classes", 0))
    return 0


def class_cycle(spec: int | Sequence[int] | str, classes: int) -> list[int]:
    """The classes ``spec`` names, in order: a class, a list, ``"all"`` or text ``"3"``/``"0,2"``; checked against
    the model's ``classes``."""
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            values = list(range(classes))
        else:
            try:
                values = [int(v) for v in text.split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"--class {spec!r}: give a class number, a comma-separated list or 'all'") from None
    elif isinstance(spec, int):
        values = [spec]
    else:
        values = [int(v) for v in spec]
    if not values:
        raise ValueError("no class given; pass a class number, a list or 'all'")
    if classes <= 0:
        raise ValueError("this model is unconditional (it has no class table); class labels need a class-conditional "
                         "model such as bundled:fashion-cond")
    bad = [v for v in values if not 0 <= v < classes]
    if bad:
        raise ValueError(f"class {bad[0]} is out of range: this model has {classes} classes (0..{classes - 1})")
    return values


def class_labels(spec: int | Sequence[int] | str, n: int, classes: int) -> Tensor:
    """``n`` labels from ``spec`` (:func:`class_cycle`), the classes cycled over the samples."""
    values = class_cycle(spec, classes)
    return torch.tensor(values, dtype=torch.long).repeat(-(-n // len(values)))[:n]


def _check_cfg_model(denoiser: DenoiserBase, classes: int) -> None:
    if classes <= 0:
        raise ValueError("classifier-free guidance needs a class-conditional model trained with label dropout "
                         "(e.g. bundled:fashion-cond); this model is unconditional (no class table). Use "
                         "--guidance classifier with a noise-aware classifier instead")
    cfg = denoiser.config or {}
    obj = cfg.get("objective") if isinstance(cfg, dict) else None
    if isinstance(obj, dict) and obj.get("use_labels") and not obj.get("label_dropout"):
        raise ValueError("this model was trained without label dropout (objective.label_dropout = 0), so its "
                         "unconditional (null-class) prediction is untrained and classifier-free guidance is "
                         "meaningless; fine-tune it with label_dropout > 0 (docs/training.md)")


def guide(denoiser: DenoiserBase, method: str | None, scale: float, *,
          interval: GuidanceInterval | Sequence[float] | str | None = None,
          classifier: NoisyClassifier | None = None, **options: Any) -> DenoiserBase:
    """``denoiser`` with ``method`` guidance (``"cfg"``, ``"classifier"`` or ``None`` for none).

    ``"cfg"``: :class:`~fewstep.ClassifierFreeGuidance` with the null class as the unconditional
    input; ``"classifier"``: :class:`ClassifierGuidance` with ``classifier`` (``options`` go to it).
    """
    if method is None:
        return denoiser
    if method not in GUIDANCE_METHODS:
        raise ValueError(f"unknown guidance {method!r}; valid: {', '.join(GUIDANCE_METHODS)}")
    classes = num_classes(denoiser)
    if method == "cfg":
        if classifier is not None or options:
            raise ValueError("classifier-free guidance takes no classifier nor classifier options")
        _check_cfg_model(denoiser, classes)
        return ClassifierFreeGuidance(denoiser, scale, {"class_labels": classes}, interval)
    require_pixel_space(denoiser, "classifier guidance")
    if classifier is None:
        raise ValueError("classifier guidance needs a noise-aware classifier (--classifier PATH, trained with "
                         "`fewstep train --config fashion-noisy-classifier`)")
    if classes and classes != classifier.num_classes:
        raise ValueError(f"the model has {classes} classes but the classifier {classifier.num_classes}; "
                         f"use a classifier trained on the model's classes")
    return ClassifierGuidance(denoiser, classifier, scale, interval=interval, **options)
