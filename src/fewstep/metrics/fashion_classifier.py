"""The dataset-native feature extractor: a small CNN trained on Fashion-MNIST, shipped with fewstep.

Features are the 128-d penultimate activations before their ReLU (a full-rank linear layer, so
their covariance is well conditioned), in the spirit of FID's use of a classifier's last hidden
layer (Heusel et al. 2017), standardised per dimension with the training set's mean and standard
deviation (fixed buffers saved with the weights) so that the cubic KID kernel sees unit-scale
features.  The weights and their provenance (test accuracy, training recipe,
SHA-256) are in ``fewstep/assets/fashion_classifier/``; ``benchmarks/train_fashion_classifier.py``
retrains them.  Inputs: ``(B, 1, 28, 28)`` in ``[-1, 1]``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from .features import FeatureExtractor, sha256_file

__all__ = ["FashionNet", "FashionExtractor", "load_fashion_extractor", "asset_dir"]

NAME = "fashion-classifier-v1"
WEIGHTS = "fashion_classifier.safetensors"
CONFIG = "fashion_classifier.json"


def asset_dir() -> Path:
    return Path(str(resources.files("fewstep") / "assets" / "fashion_classifier"))


class FashionNet(nn.Module):
    """conv3x3(16)-conv3x3(16)-pool-conv3x3(32)-conv3x3(32)-pool-fc(128)-fc(10), ReLU between."""

    def __init__(self, width: int = 16, features: int = 128, classes: int = 10):
        super().__init__()
        w = width
        self.convs = nn.ModuleList([nn.Conv2d(1, w, 3, padding=1), nn.Conv2d(w, w, 3, padding=1),
                                    nn.Conv2d(w, 2 * w, 3, padding=1), nn.Conv2d(2 * w, 2 * w, 3, padding=1)])
        self.fc = nn.Linear(2 * w * 7 * 7, features)
        self.head = nn.Linear(features, classes)
        self.register_buffer("feature_mean", torch.zeros(features))
        self.register_buffer("feature_scale", torch.ones(features))

    def hidden(self, x: Tensor) -> Tensor:
        """The penultimate pre-activations."""
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i % 2 == 1:
                x = F.max_pool2d(x, 2)
        return self.fc(x.flatten(1))

    def embed(self, x: Tensor) -> Tensor:
        """The features: penultimate pre-activations standardised with the training set's moments."""
        return (self.hidden(x) - self.feature_mean) / self.feature_scale

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.dropout(F.relu(self.hidden(x)), 0.25, self.training))


class FashionExtractor(FeatureExtractor):
    """:class:`FashionNet` as a feature extractor with the shipped weights' name and hash."""

    channels = (1,)

    def __init__(self, net: FashionNet, fingerprint: str, name: str = NAME):
        super().__init__()
        self.net = net
        self.name = name
        self.num_features = net.fc.out_features
        self._fingerprint = fingerprint

    def _check(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
            raise ValueError(f"the Fashion-MNIST extractor takes (B, 1, 28, 28) images in [-1, 1], got "
                             f"{tuple(images.shape)}; use --extractor inception for other image sizes")
        return images.to(self.device, torch.float32)

    def forward(self, images: Tensor) -> Tensor:
        return self.net.embed(self._check(images))

    def logits(self, images: Tensor) -> Tensor:
        return self.net(self._check(images))

    def fingerprint(self) -> str:
        return self._fingerprint


def load_fashion_extractor(folder: str | Path | None = None) -> FashionExtractor:
    """Load the shipped classifier (or one saved by the training script in ``folder``)."""
    from safetensors.torch import load_file

    folder = Path(folder) if folder else asset_dir()
    weights, config = folder / WEIGHTS, folder / CONFIG
    if not weights.exists():
        raise FileNotFoundError(f"{weights} is missing; reinstall fewstep or run "
                                f"benchmarks/train_fashion_classifier.py --out {folder}")
    meta = json.loads(config.read_text()) if config.exists() else {}
    digest = sha256_file(weights)
    if meta.get("sha256") not in (None, digest):
        raise ValueError(f"{weights} does not match its provenance file {config} (SHA-256 {digest[:12]} != "
                         f"{meta['sha256'][:12]}); reinstall fewstep or retrain the classifier")
    net = FashionNet(**meta.get("arch", {}))
    net.load_state_dict(load_file(str(weights)))
    return FashionExtractor(net.eval(), digest, meta.get("name", NAME))
