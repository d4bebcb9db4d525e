"""Analytical teleportation: start a solve below ``t_max`` by the data Gaussian's exact flow.

Wang & Vastola 2024 ("The Unreasonable Effectiveness of Gaussian Score Approximation for Diffusion Models and
its Applications", TMLR, sec. 4) observe that at high noise a trained network's score is close to the score
of the Gaussian with the training data's mean and covariance, whose probability-flow ODE is solved in closed
form (:meth:`fewstep.exact.GaussianMixture.flow`).  A sampler can therefore carry ``x_T`` from ``t_max`` to a
lower time ``t_start`` at the cost of one ``dim x dim`` matrix product per image and spend all of its network
evaluations below ``t_start``.  In fewstep this is what a schedule that starts below ``t_max`` means:
``fewstep.sample(..., teleport=t_start)`` (or a grid file entry tuned with it) teleports, then solves.

The Gaussian comes from the training data (:func:`data_gaussian`), is saved next to a checkpoint as
``gaussian.safetensors`` (:func:`save_gaussian`; ``fewstep gaussian``) and attached by ``load_model`` as
``denoiser.data_gaussian``; ``bundled:fashion`` ships one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .exact import GaussianMixture
from .processes import NoiseProcess

__all__ = ["GAUSSIAN_FILE", "teleport", "data_gaussian", "save_gaussian", "load_gaussian", "find_gaussian",
           "resolve_gaussian", "truncate"]

GAUSSIAN_FILE = "gaussian.safetensors"
_FORMAT = "fewstep-data-gaussian"


def teleport(x: Tensor, process: NoiseProcess, t_to: float, gaussian: GaussianMixture,
             t_from: float | None = None) -> Tensor:
    """``x`` at ``t_from`` (default ``t_max``) carried to ``t_to`` by the exact flow of ``gaussian``
    (one component, in the model's data range); same shape, dtype and device as ``x``."""
    t_from = process.t_max if t_from is None else float(t_from)
    process.check_time(float(t_to))
    if float(t_to) > t_from:
        raise ValueError(f"teleport goes from noise to data: t_to={t_to} must not exceed t_from={t_from}")
    if gaussian.dim != x[0].numel():
        raise ValueError(f"the data Gaussian has dimension {gaussian.dim} but the samples have {x[0].numel()} "
                         f"elements; it was computed for another image size")
    t = torch.tensor([t_from, float(t_to)], dtype=torch.float64)
    a, s = process.alpha(t), process.sigma(t)
    y = x.reshape(len(x), -1).to(device="cpu", dtype=torch.float64) / float(a[0])
    out = gaussian.flow(y, float(s[0] / a[0]), float(s[1] / a[1])) * float(a[1])
    return out.reshape(x.shape).to(device=x.device, dtype=x.dtype)


def data_gaussian(data: str, shape: tuple[int, ...]) -> GaussianMixture:
    """The Gaussian with the mean and covariance of data set ``data`` (a ``fewstep train --data`` spec,
    images in the model's ``[-1, 1]`` range) as a one-component, full-covariance :class:`GaussianMixture`."""
    from .data import load_data, to_model_range

    images = load_data(data, resolution=shape[-1], channels=shape[0]).images
    if tuple(images.shape[1:]) != tuple(shape):
        raise ValueError(f"data {data!r} has images of {tuple(images.shape[1:])}, the model samples {tuple(shape)}")
    n, chunk = len(images), 8192

    def rows(i: int) -> Tensor:  # float64 in chunks: 60 000 Fashion-MNIST images would be 376 MB at once
        return to_model_range(images[i:i + chunk]).reshape(-1, images[0].numel()).to(torch.float64)

    mean = sum(rows(i).sum(0) for i in range(0, n, chunk)) / n
    cov = sum((r - mean).T @ (r - mean) for r in (rows(i) for i in range(0, n, chunk))) / max(1, n - 1)
    return GaussianMixture.from_covariances(mean[None], cov[None])


def truncate(gaussian: GaussianMixture, rank: int) -> GaussianMixture:
    """The top-``rank`` eigen-directions kept exactly, the rest replaced by their mean variance (the floor):
    same mean and total variance, ``dim x rank`` numbers to store instead of ``dim x dim``."""
    vals, vecs = gaussian.eigvals[0] + gaussian.floor ** 2, gaussian.eigvecs[0]
    if not 1 <= rank <= len(vals):
        raise ValueError(f"rank must be in 1..{len(vals)}, got {rank}")
    order = torch.argsort(vals, descending=True)
    top, rest = order[:rank], order[rank:]
    floor2 = max(float(vals[rest].mean()), 1e-12) if len(rest) else 0.0
    return GaussianMixture(gaussian.means, vecs[:, top][None], (vals[top] - floor2).clamp(min=0)[None],
                           floor=floor2 ** 0.5)


def save_gaussian(gaussian: GaussianMixture, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write ``gaussian`` (one component) as safetensors, atomically (float32 vectors, ``meta`` as JSON)."""
    from safetensors.torch import save_file

    if len(gaussian.means) != 1:
        raise ValueError("save_gaussian stores one Gaussian")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"mean": gaussian.means[0].float().contiguous(), "eigvecs": gaussian.eigvecs[0].float().contiguous(),
               "eigvals": gaussian.eigvals[0].float().contiguous()}
    info = {"format": _FORMAT, "floor": repr(gaussian.floor), "meta": json.dumps(meta or {}, sort_keys=True)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=info)
    os.replace(tmp, path)
    return path


def load_gaussian(path: str | os.PathLike) -> GaussianMixture:
    """Read a Gaussian written by :func:`save_gaussian` (its metadata as ``.meta``)."""
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
    g = GaussianMixture(t["mean"][None], t["eigvecs"][None], t["eigvals"][None], floor=float(info["floor"]))
    g.meta = json.loads(info.get("meta", "{}"))  # type: ignore[attr-defined]
    return g


def find_gaussian(denoiser: Any) -> GaussianMixture | None:
    """The data Gaussian attached to ``denoiser`` or to a denoiser it wraps (``.data_gaussian``, set by
    ``load_model`` from ``<checkpoint>/gaussian.safetensors``)."""
    from .denoisers import find_attached

    return find_attached(denoiser, "data_gaussian")


def resolve_gaussian(denoiser: Any, gaussian: GaussianMixture | str | os.PathLike | None) -> GaussianMixture:
    """``gaussian`` itself, loaded from a path, or (``None``) the one attached to ``denoiser``."""
    if isinstance(gaussian, GaussianMixture):
        return gaussian
    if gaussian is not None:
        return load_gaussian(gaussian)
    found = find_gaussian(denoiser)
    if found is None:
        raise ValueError("teleport needs the training data's Gaussian and this model has none attached: make it "
                         "with `fewstep gaussian --model CKPT --data D` (saved as <checkpoint>/gaussian.safetensors "
                         "and found by load_model), or pass gaussian=PATH")
    return found
