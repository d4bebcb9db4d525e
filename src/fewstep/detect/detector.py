"""multiLID detection of generated images (Lorenz, Durall & Keuper 2023).

An image's features: for each layer of an untrained ResNet (:class:`~.network.LIDNet`), the distances from its
activations to its ``k`` nearest neighbours among the activations of a fixed *reference* set of real images,
unfolded into the ``k`` terms ``log(r_k / r_i)`` (:func:`~.lid.lid_terms`; their inverted mean is the MLE LID).
A random forest on these features says real (0) or generated (1).

The reference set is part of the detector (Ma et al. 2018 take each minibatch's normal examples as its
reference; a fixed one makes an image's score independent of the other images scored with it, so the same
image gets the same score in any batch).  Images are quantized to 8 bits first, as any saved image is, so a
detector cannot tell float samples from stored photographs by their quantization.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._io import atomic_dir
from .forest import FOREST_KEYS, fit_forest, forest_proba
from .lid import knn_distances, lid_terms
from .network import LAYER_NAMES, LIDNet

__all__ = ["DetectorConfig", "Detector", "multilid_features", "minibatch_multilid_features", "fit_detector", "load_detector",
           "detection_metrics", "roc_auc"]

CONFIG_FILE, WEIGHTS_FILE, FORMAT = "detector.json", "detector.safetensors", "fewstep-multilid"


@dataclass
class DetectorConfig:
    """What a detector was built with; ``shape`` is the ``(C, H, W)`` of the images it takes."""

    shape: tuple[int, int, int]
    k: int = 20
    width: int = 16
    seed: int = 0
    trees: int = 100
    layers: tuple[str, ...] = LAYER_NAMES
    provenance: dict = field(default_factory=dict)


def quantize(images: Tensor) -> Tensor:
    """``[-1, 1]`` floats rounded to the 256 levels of an 8-bit image."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def _check_shape(images: Tensor, shape: tuple[int, int, int], what: str = "images") -> None:
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape):
        got = "x".join(str(s) for s in images.shape[1:]) if images.ndim == 4 else f"shape {tuple(images.shape)}"
        raise ValueError(f"the detector was fitted on {'x'.join(map(str, shape))} (CxHxW) images but the {what} are "
                         f"{got}; fit a detector on images of this size (fewstep detect fit)")


def multilid_features(net: LIDNet, images: Tensor, reference: Tensor, k: int, layers=LAYER_NAMES, *,
                      batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """multiLID features ``(n, len(layers) * k)`` of ``images`` against the ``reference`` images (both float
    ``(n, C, H, W)`` in ``[-1, 1]``)."""
    from tqdm.auto import tqdm

    if reference.shape[1:] != images.shape[1:]:
        raise ValueError(f"images {tuple(images.shape[1:])} and reference {tuple(reference.shape[1:])} differ in shape")
    if k > reference.shape[0]:
        raise ValueError(f"k = {k} neighbours needs at least {k} reference images (have {reference.shape[0]})")
    with torch.inference_mode():
        ref = {name: a for name, a in net(quantize(reference)).items() if name in layers}
        out = []
        for i in tqdm(range(0, len(images), batch_size), desc="multiLID features", disable=not progress,
                      unit="batch"):
            acts = net(quantize(images[i:i + batch_size]))
            out.append(torch.cat([lid_terms(knn_distances(acts[name], ref[name], k)) for name in layers], 1))
    return torch.cat(out).numpy() if out else np.zeros((0, len(layers) * k))


def minibatch_multilid_features(net: LIDNet, images: Tensor, k: int, layers=LAYER_NAMES, *,
                                 batch_size: int = 100) -> np.ndarray:
    """multiLID features with the neighbours among the *other images of the same minibatch* (consecutive
    ``batch_size`` images; Ma et al. 2018 and Lorenz et al. 2023 estimate LID within minibatches).  An image's
    features then depend on the batch it is in: a batch of only generated images describes the generated set, not
    the image.  For comparison with the per-image protocol of :class:`Detector` (docs/detection.md)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            acts = net(quantize(images[i:i + batch_size]))
            out.append(torch.cat([lid_terms(knn_distances(acts[n], acts[n], k, exclude_self=True))
                                  for n in layers], 1))
    return torch.cat(out).numpy()


@dataclass
class Detector:
    """A fitted multiLID detector: the feature network, the reference images (uint8) and the forest."""

    config: DetectorConfig
    net: LIDNet
    reference: Tensor
    forest: dict[str, np.ndarray]

    def features(self, images: Tensor, *, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        _check_shape(images, self.config.shape)
        ref = self.reference.float() / 127.5 - 1
        return multilid_features(self.net, images, ref, self.config.k, self.config.layers,
                                 batch_size=batch_size, progress=progress)

    def proba(self, images: Tensor, *, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """Probability ``(n,)`` that each image (float ``[-1, 1]``) is generated."""
        return forest_proba(self.forest, self.features(images, batch_size=batch_size, progress=progress))

    def save(self, path: str | Path) -> Path:
        """Write the detector as a folder (``detector.json`` + ``detector.safetensors``), atomically."""
        from safetensors.torch import save_file

        tensors = {f"net.{k}": v.contiguous() for k, v in self.net.state_dict().items()}
        tensors["reference"] = self.reference.contiguous()
        tensors.update({f"forest.{k}": torch.from_numpy(np.ascontiguousarray(self.forest[k])) for k in FOREST_KEYS})
        with atomic_dir(path) as tmp:
            save_file(tensors, str(tmp / WEIGHTS_FILE))
            (tmp / CONFIG_FILE).write_text(json.dumps({"format": FORMAT, **asdict(self.config)}, indent=2) + "\n")
        return Path(path)


def load_detector(path: str | Path) -> Detector:
    """Read a detector folder written by :meth:`Detector.save`."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a detector folder (no {CONFIG_FILE} / {WEIGHTS_FILE}); write one "
                                f"with fewstep detect fit")
    raw = json.loads(cfg_path.read_text())
    if raw.pop("format", None) != FORMAT:
        raise ValueError(f"{cfg_path} is not a multiLID detector (format {FORMAT!r} expected)")
    raw["shape"], raw["layers"] = tuple(raw["shape"]), tuple(raw["layers"])
    config = DetectorConfig(**raw)
    tensors = load_file(str(path / WEIGHTS_FILE))
    net = LIDNet(config.shape[0], config.width, config.seed)
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    forest = {k: tensors[f"forest.{k}"].numpy() for k in FOREST_KEYS}
    return Detector(config, net, tensors["reference"], forest)


def fit_detector(real: Tensor, fake: Tensor, reference: Tensor, *, k: int = 20, width: int = 16, seed: int = 0,
                 trees: int = 100, batch_size: int = 256, progress: bool = False,
                 provenance: dict | None = None) -> Detector:
    """Fit a multiLID detector on ``real`` and ``fake`` images (float ``[-1, 1]``), with neighbours among the
    ``reference`` real images (which must not be among ``real``: an image's zero distance to itself would mark
    every real image)."""
    shape = tuple(reference.shape[1:])
    _check_shape(real, shape, "real images")
    _check_shape(fake, shape, "generated images")
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"fitting needs at least 2 real and 2 generated images (got {len(real)} and {len(fake)})")
    config = DetectorConfig(shape=shape, k=k, width=width, seed=seed, trees=trees, provenance=provenance or {})
    net = LIDNet(shape[0], width, seed)
    ref_u8 = ((quantize(reference) + 1) * 127.5).round().to(torch.uint8)
    detector = Detector(config, net, ref_u8, {})
    x = np.concatenate([detector.features(real, batch_size=batch_size, progress=progress),
                        detector.features(fake, batch_size=batch_size, progress=progress)])
    y = np.concatenate([np.zeros(len(real), np.int64), np.ones(len(fake), np.int64)])
    detector.forest = fit_forest(x, y, trees=trees, seed=seed)
    return detector


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random negative (ties
    count one half; the Mann-Whitney statistic)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        raise ValueError("the AUC needs both real and generated images")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def detection_metrics(p_fake: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy at threshold 0.5 and, with both kinds present, the AUC; ``labels`` 1 = generated."""
    p_fake, labels = np.asarray(p_fake), np.asarray(labels).astype(np.int64)
    out = {"n": int(len(labels)), "n_real": int((labels == 0).sum()), "n_fake": int((labels == 1).sum()),
           "accuracy": float(((p_fake > 0.5).astype(np.int64) == labels).mean())}
    if out["n_real"] and out["n_fake"]:
        out["auc"] = roc_auc(p_fake, labels)
    return out
