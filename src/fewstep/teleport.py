"""Analytical teleportation: start a solve below ``t_max`` by the data Gaussian's exact flow.

Wang & Vastola 2024 ("The Unreasonable Effectiveness of Gaussian Score Approximation for Diffusion Models and
its Applications", TMLR, sec. 4) observe that at high noise a trained network's score is close to the score
of the Gaussian with the training data's mean and covariance, whose probability-flow ODE is solved in closed
form (:meth:`fewstep.exact.GaussianMixture.flow`).  A sampler can therefore carry ``x_T`` from ``t_max`` to a
lower time ``t_start`` at the cost of two ``dim x rank`` matrix products per image and spend all of its network
evaluations below ``t_start``: ``fewstep.sample(..., teleport=t_start)`` (or a grid file entry tuned with it)
teleports, then solves.  Class-conditional sampling uses one Gaussian per class (:func:`class_gaussians`),
each sample its own class's flow.

The Gaussian comes from the training data (:func:`data_gaussian`), is saved next to a checkpoint as
``gaussian.safetensors`` (:func:`save_gaussian`; ``fewstep gaussian [--per-class]``) and attached by
``load_model`` as ``denoiser.data_gaussian`` (and ``denoiser.class_gaussians``); ``bundled:fashion`` and
``bundled:fashion-cond`` ship theirs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .data import load_data, to_model_range
from .denoisers import find_attached
from .exact import GaussianMixture
from .processes import NoiseProcess

__all__ = ["GAUSSIAN_FILE", "teleport", "teleported_start", "data_gaussian", "gaussian_of", "class_gaussians", "save_gaussian", "load_gaussian",
           "load_class_gaussians", "find_gaussian", "resolve_gaussian", "truncate"]

GAUSSIAN_FILE = "gaussian.safetensors"
_FORMAT = "fewstep-data-gaussian"


def teleport(x: Tensor, process: NoiseProcess, t_to: float, gaussian: GaussianMixture,
             t_from: float | None = None, labels: Tensor | None = None) -> Tensor:
    """``x`` at ``t_from`` carried to ``t_to`` by the exact flow of ``gaussian`` (in the model's data range); same
    shape, dtype and device as ``x``.

    ``t_from`` defaults to the process's ``t_max``, where the prior draw ``x_T ~ N(0, I)`` is the marginal (up to
    ``alpha(t_max) x0``; exactly at zero terminal SNR): the Gaussian's flow needs no trusted network, so it also
    crosses a singular end's top steps, which network solvers skip by starting at ``t_start`` instead.
    Unconditional: ``gaussian`` is one Gaussian.  Class-conditional: ``gaussian`` has one component per class
    (:func:`class_gaussians`) and ``labels`` (``(batch,)``) picks each sample's: the exact flow of the conditional
    ODE when each class is Gaussian."""
    t_from = process.t_max if t_from is None else float(t_from)
    process.check_time(float(t_to))
    if float(t_to) > t_from:
        raise ValueError(f"teleport goes from noise to data: t_to={t_to} must not exceed t_from={t_from}")
    if gaussian.dim != x[0].numel():
        raise ValueError(f"the data Gaussian has dimension {gaussian.dim} but the samples have {x[0].numel()} "
                         f"elements; it was computed for another image size")
    t = torch.tensor([t_from, float(t_to)], dtype=torch.float64)
    a, s = process.alpha(t), process.sigma(t)
    if labels is not None:
        labels = torch.as_tensor(labels).reshape(-1).cpu()
        if len(gaussian.means) == 1 or labels.shape != (len(x),) or int(labels.max()) >= len(gaussian.means) \
                or int(labels.min()) < 0:
            raise ValueError(f"class-conditional teleport needs one Gaussian per class and one label in "
                             f"0..{len(gaussian.means) - 1} per sample; make them with `fewstep gaussian --per-class`")
    flat = x.reshape(len(x), -1).to(device="cpu", dtype=torch.float64)
    out = gaussian.flow_vp(flat, float(a[0]), float(s[0]), float(a[1]), float(s[1]), labels)
    return out.reshape(x.shape).to(device=x.device, dtype=x.dtype)


def teleported_start(denoiser: Any, x_T: Tensor, t: float, gaussian: Any = None, cond: dict[str, Any] | None = None
                     ) -> Tensor:
    """``x_T`` (a draw at ``t_max``) carried to ``t`` by the data Gaussian's exact flow: ``gaussian`` (a
    :class:`GaussianMixture` or a saved file) or the one attached to ``denoiser``; with
    ``cond={"class_labels": ...}`` each sample follows its class's Gaussian."""
    labels = None
    if cond:
        if set(cond) != {"class_labels"}:
            raise ValueError(f"a teleported start follows unconditional or class-conditional sampling; it cannot "
                             f"follow conditioning on {', '.join(sorted(set(cond) - {'class_labels'}))}")
        labels = cond["class_labels"]
    return teleport(x_T, denoiser.process, t, resolve_gaussian(denoiser, gaussian, labels is not None), labels=labels)


def data_gaussian(data: str, shape: tuple[int, ...]) -> GaussianMixture:
    """The Gaussian with the mean and covariance of data set ``data`` (a ``fewstep train --data`` spec,
    images in the model's ``[-1, 1]`` range) as a one-component, full-covariance :class:`GaussianMixture`."""
    images = load_data(data, resolution=shape[-1], channels=shape[0]).images
    if tuple(images.shape[1:]) != tuple(shape):
        raise ValueError(f"data {data!r} has images of {tuple(images.shape[1:])}, the model samples {tuple(shape)}")
    return gaussian_of(images, to_model_range)


def gaussian_of(samples: Tensor, transform: Any = None) -> GaussianMixture:
    """The Gaussian with the mean and (unbiased) covariance of ``samples`` ``(N, ...)`` (each passed through
    ``transform`` first, e.g. uint8 images to the model range), one full-covariance component."""
    n, chunk = len(samples), 8192
    if n < 2:
        raise ValueError(f"a data Gaussian needs at least 2 samples, got {n}")

    def rows(i: int) -> Tensor:  # float64 in chunks: 60 000 Fashion-MNIST images would be 376 MB at once
        part = samples[i:i + chunk] if transform is None else transform(samples[i:i + chunk])
        return part.reshape(len(part), -1).to(torch.float64)

    mean = sum(rows(i).sum(0) for i in range(0, n, chunk)) / n
    cov = sum((r - mean).T @ (r - mean) for r in (rows(i) for i in range(0, n, chunk))) / max(1, n - 1)
    return GaussianMixture.from_covariances(mean[None], cov[None])


def class_gaussians(data: str, shape: tuple[int, ...]) -> GaussianMixture:
    """One Gaussian per class of the labelled data set ``data`` (component ``k`` is class ``k``, weighted by the
    class's frequency), full covariances: the data Gaussian of each class, for class-conditional teleport."""
    loaded = load_data(data, resolution=shape[-1], channels=shape[0])
    if loaded.labels is None:
        raise ValueError(f"data {data!r} has no labels; per-class Gaussians need a labelled set (e.g. fashion-mnist)")
    labels = loaded.labels
    means, covs, counts = [], [], []
    for k in range(int(labels.max()) + 1):
        rows = to_model_range(loaded.images[labels == k]).reshape(int((labels == k).sum()), -1).to(torch.float64)
        if len(rows) < 2:
            raise ValueError(f"class {k} of {data!r} has {len(rows)} image(s); each class needs at least 2")
        mean = rows.mean(0)
        means.append(mean)
        covs.append((rows - mean).T @ (rows - mean) / (len(rows) - 1))
        counts.append(float(len(rows)))
    return GaussianMixture.from_covariances(torch.stack(means), torch.stack(covs), torch.tensor(counts))


def truncate(gaussian: GaussianMixture, rank: int) -> GaussianMixture:
    """Per component, the top-``rank`` eigen-directions kept exactly and the rest replaced by one shared floor
    (their mean variance over all components): same means, ``dim x rank`` numbers per component to store
    instead of ``dim x dim``; for one Gaussian the total variance is kept exactly."""
    vals, vecs = gaussian.eigvals + gaussian.floor ** 2, gaussian.eigvecs
    if not 1 <= rank <= vals.shape[1]:
        raise ValueError(f"rank must be in 1..{vals.shape[1]}, got {rank}")
    order = torch.argsort(vals, dim=1, descending=True)
    top, rest = order[:, :rank], order[:, rank:]
    floor2 = max(float(torch.gather(vals, 1, rest).mean()), 1e-12) if rest.shape[1] else 0.0
    kept = torch.gather(vecs, 2, top[:, None, :].expand(-1, vecs.shape[1], -1))
    return GaussianMixture(gaussian.means, kept, (torch.gather(vals, 1, top) - floor2).clamp(min=0),
                           gaussian.weights, floor=floor2 ** 0.5)


def save_gaussian(gaussian: GaussianMixture, path: str | os.PathLike, meta: dict[str, Any] | None = None,
                  classes: GaussianMixture | None = None) -> Path:
    """Write ``gaussian`` (one component) and optionally ``classes`` (one component per class) as safetensors,
    atomically (float32 vectors, ``meta`` as JSON)."""
    from safetensors.torch import save_file

    if len(gaussian.means) != 1:
        raise ValueError("save_gaussian stores one Gaussian (and the per-class ones as classes=...)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"mean": gaussian.means[0], "eigvecs": gaussian.eigvecs[0], "eigvals": gaussian.eigvals[0]}
    info = {"format": _FORMAT, "floor": repr(gaussian.floor), "meta": json.dumps(meta or {}, sort_keys=True)}
    if classes is not None:
        tensors.update(class_means=classes.means, class_eigvecs=classes.eigvecs, class_eigvals=classes.eigvals,
                       class_weights=classes.weights)
        info["class_floor"] = repr(classes.floor)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(tmp), metadata=info)
    os.replace(tmp, path)
    return path


def _read(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, Tensor], Path]:
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / GAUSSIAN_FILE
    if not path.exists():
        raise FileNotFoundError(f"no data Gaussian at {path}; make one with `fewstep gaussian --model M --data D`")
    try:
        with safe_open(str(path), framework="pt") as f:
            info = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise ValueError(f"cannot read {path}: {err}; the file is damaged") from None
    if info.get("format") != _FORMAT or not {"mean", "eigvecs", "eigvals"} <= set(t):
        raise ValueError(f"{path} is not a fewstep data Gaussian (written by `fewstep gaussian`)")
    return info, t, path


def load_gaussian(path: str | os.PathLike) -> GaussianMixture:
    """The data Gaussian written by :func:`save_gaussian` (its metadata as ``.meta``)."""
    info, t, _ = _read(path)
    g = GaussianMixture(t["mean"][None], t["eigvecs"][None], t["eigvals"][None], floor=float(info["floor"]))
    g.meta = json.loads(info.get("meta", "{}"))  # type: ignore[attr-defined]
    return g


def load_class_gaussians(path: str | os.PathLike) -> GaussianMixture | None:
    """The per-class Gaussians of a file written by :func:`save_gaussian` (component ``k`` = class ``k``), or None."""
    info, t, _ = _read(path)
    if "class_means" not in t:
        return None
    return GaussianMixture(t["class_means"], t["class_eigvecs"], t["class_eigvals"], t["class_weights"],
                           floor=float(info["class_floor"]))


def find_gaussian(denoiser: Any) -> GaussianMixture | None:
    """The data Gaussian attached to ``denoiser`` or to a denoiser it wraps (``.data_gaussian``, set by
    ``load_model`` from ``<checkpoint>/gaussian.safetensors``)."""
    return find_attached(denoiser, "data_gaussian")


def resolve_gaussian(denoiser: Any, gaussian: GaussianMixture | str | os.PathLike | None,
                     conditional: bool = False) -> GaussianMixture:
    """``gaussian`` itself, loaded from a path, or (``None``) the one attached to ``denoiser``; ``conditional``:
    the per-class Gaussians instead (``denoiser.class_gaussians``, or the file's)."""
    if isinstance(gaussian, GaussianMixture):
        return gaussian
    if gaussian is not None:
        if not conditional:
            return load_gaussian(gaussian)
        found = load_class_gaussians(gaussian)
    else:
        found = find_attached(denoiser, "class_gaussians" if conditional else "data_gaussian")
    if found is None and conditional:
        raise ValueError("class-conditional teleport needs one data Gaussian per class and this model has none: "
                         "make them with `fewstep gaussian --model CKPT --data D --per-class`, or sample from t_max "
                         "without teleport")
    if found is None:
        raise ValueError("teleport needs the training data's Gaussian and this model has none attached: make it "
                         "with `fewstep gaussian --model CKPT --data D` (saved as <checkpoint>/gaussian.safetensors "
                         "and found by load_model), or pass gaussian=PATH")
    return found
