"""Load a noise-aware classifier trained by ``fewstep train`` (objective ``classifier``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from ..bundled import resolve_bundled
from ..checkpoint import checkpoint_folder, read_config
from ..nets.classifier import NoisyClassifierNet

__all__ = ["BUNDLED_CLASSIFIERS", "NetworkClassifier", "load_classifier"]

#: Noise-aware classifiers shipped with fewstep (``bundled:<name>``), see docs/guidance.md.
BUNDLED_CLASSIFIERS = {"fashion-noisy-classifier": "fashion-noisy-classifier"}


class NetworkClassifier:
    """A :class:`~fewstep.nets.classifier.NoisyClassifierNet` as a :class:`~fewstep.guidance.NoisyClassifier`."""

    def __init__(self, net: NoisyClassifierNet, config: dict | None = None):
        self.net = net
        self.num_classes = net.config.num_classes
        self.config = config

    def logits(self, y: Tensor, sigma_hat: float | Tensor) -> Tensor:
        p = next(self.net.parameters())
        s = sigma_hat.to(p.device, torch.float32) if isinstance(sigma_hat, Tensor) else sigma_hat
        return self.net(y.to(p.device, p.dtype), s)


def load_classifier(path: str | os.PathLike, *, ema: bool = True, device: str | torch.device = "cpu") -> NetworkClassifier:
    """The classifier in a checkpoint folder, a run folder (its newest checkpoint) or
    ``bundled:fashion-noisy-classifier``, in eval mode."""
    from safetensors.torch import load_file

    from ..training.classifier import classifier_config

    if str(path).startswith("bundled:"):
        path = resolve_bundled(str(path), BUNDLED_CLASSIFIERS, "classifier")
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"classifier {path} not found (give the run folder or checkpoint folder of "
                                f"`fewstep train --config fashion-noisy-classifier`)")
    folder = checkpoint_folder(folder)
    cfg = read_config(folder)
    if "classifier" not in cfg:
        raise ValueError(f"{folder} is not a classifier checkpoint (its config has no 'classifier' section; a "
                         f"denoiser cannot serve as the guiding classifier). Train one with "
                         f"`fewstep train --config fashion-noisy-classifier`")
    net = NoisyClassifierNet(classifier_config(cfg["classifier"]))
    names = ["classifier-ema.safetensors", "classifier.safetensors"] if ema else ["classifier.safetensors"]
    weights = next((folder / n for n in names if (folder / n).exists()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder} has no {' or '.join(names)}; the checkpoint is incomplete")
    net.load_state_dict(load_file(str(weights)))
    return NetworkClassifier(net.to(device).eval().requires_grad_(False), cfg)
