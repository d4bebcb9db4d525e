"""Evaluation pipeline: features of data sets and of generated samples, and the metrics between them.

Generated samples are made batch by batch from per-sample seeds (``fewstep.generate``), so the
numbers do not depend on the batch size, and are quantised to 8 bits like stored images before
feature extraction.  Only the running statistics (and a capped feature sample) are kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .distributed import gather_list, gather_stats, setup, shard, world
from .features import FeatureExtractor
from .frechet import frechet_distance
from .inception_score import inception_score
from .kid import kernel_inception_distance
from .prdc import precision_recall
from .stats import FeatureStats

__all__ = ["quantize", "images_stats", "SampleRun", "sample_stats", "compare", "DivergedError"]


class DivergedError(ValueError):
    """A sampler produced NaN or infinite samples."""


def quantize(images: Tensor) -> Tensor:
    """Clamp to ``[-1, 1]`` and round to the 256 levels of an 8-bit image."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


@torch.no_grad()
def images_stats(extractor: FeatureExtractor, images: Tensor, batch_size: int = 500, max_features: int = 10_000,
                 shuffle_seed: int | None = 0, progress: bool = True) -> FeatureStats:
    """Statistics of a data set held as a tensor ``(n, C, H, W)`` in ``[-1, 1]``.

    The data are visited in a seeded random order so the kept features are a uniform subset.
    Under ``torchrun`` each rank featurises a contiguous slice of that order and the results are merged.
    """
    setup(extractor.device)
    rank, size = world()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(shuffle_seed)) \
        if shuffle_seed is not None else torch.arange(len(images))
    order = shard(order, rank, size)
    stats = FeatureStats.like(extractor, max_features)
    for i in tqdm(range(0, len(order), batch_size), desc="features", disable=not progress or rank != 0, unit="batch"):
        stats.update(extractor(images[order[i:i + batch_size]].to(extractor.device)))
    return gather_stats(stats)


@dataclass
class SampleRun:
    """Statistics of generated samples and what it cost to make them."""

    stats: FeatureStats
    sample_seconds: float
    feature_seconds: float
    first_images: Tensor | None = None
    logits: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def sample_stats(denoiser, shape: Sequence[int], n: int, extractor: FeatureExtractor, solver: str = "dpm++2m",
                 nfe: int = 10, grid: Any = None, *, seed: int = 0, batch_size: int = 250,
                 device: str | torch.device = "cpu", max_features: int = 10_000, keep_images: int = 0,
                 with_logits: bool = False, progress: bool = True, sampler=None, **options: Any) -> SampleRun:
    """Generate ``n`` samples from seeds ``seed .. seed + n - 1`` and accumulate their feature statistics.

    Under ``torchrun`` each rank handles a disjoint slice of the seeds and the statistics are
    merged across ranks.  ``sampler(seeds) -> images`` replaces ``fewstep.generate`` (e.g. a
    diffusers scheduler loop); ``keep_images`` returns the first images for a sample grid.
    """
    from ..api import generate
    from ..denoisers import NFECounter
    from ..solvers._common import NonFiniteError

    device = torch.device(device)
    counter = NFECounter(denoiser)
    setup(device)
    rank, size = world()
    seeds = shard(range(seed, seed + n), rank, size)
    stats = FeatureStats.like(extractor, max_features)
    kept: list[Tensor] = []
    logits: list[np.ndarray] = []
    t_sample = t_feat = 0.0
    bar = tqdm(total=len(seeds), desc=f"{solver} nfe={nfe}", disable=not progress or rank != 0, unit="img")
    for i in range(0, len(seeds), batch_size):
        chunk = seeds[i:i + batch_size]
        _sync(device)
        t0 = time.perf_counter()
        if sampler is not None:
            x = sampler(chunk)
        else:
            try:
                x = generate(counter, shape, chunk, solver, nfe, grid, device=device, **options)
            except NonFiniteError as err:
                raise DivergedError(f"{solver} at nfe={nfe} diverged: {err}") from err
        if not bool(torch.isfinite(x).all()):
            raise DivergedError(f"{solver} at nfe={nfe} produced NaN or infinite samples (seeds {chunk[0]}..{chunk[-1]})")
        x = quantize(x.float())
        _sync(device)
        t1 = time.perf_counter()
        stats.update(extractor(x.to(extractor.device)))
        if with_logits:
            logits.append(extractor.logits(x.to(extractor.device)).double().cpu().numpy())
        _sync(device)
        t_sample, t_feat = t_sample + t1 - t0, t_feat + time.perf_counter() - t1
        if sum(len(k) for k in kept) < keep_images:
            kept.append(x[:keep_images - sum(len(k) for k in kept)].cpu())
        bar.update(len(chunk))
    bar.close()
    stats = gather_stats(stats)
    logits = gather_list(logits)
    batches = -(-len(seeds) // batch_size)
    extra = {"nfe_used": counter.count / batches} if sampler is None and batches else {}
    return SampleRun(stats, t_sample, t_feat, torch.cat(kept) if kept else None,
                     np.concatenate(logits) if logits else None, extra)


def compare(gen: FeatureStats, ref: FeatureStats, *, kid_subsets: int = 100, kid_subset_size: int = 1000,
            pr_k: int = 3, pr_max: int = 5000, seed: int = 0, logits: np.ndarray | None = None) -> dict[str, float]:
    """FID, and KID / precision / recall where both sides kept features (float64 throughout).

    Precision and recall use the first ``min(pr_max, n_gen_kept, n_ref_kept)`` features of each side,
    equal sizes as in the paper.
    """
    gen.check_compatible(ref)
    out: dict[str, float] = {"fid": frechet_distance(gen.mu, gen.sigma, ref.mu, ref.sigma)}
    fg, fr = gen.features, ref.features
    if len(fg) >= 2 and len(fr) >= 2:
        out["kid"], out["kid_std"] = kernel_inception_distance(fr, fg, kid_subsets, kid_subset_size, seed)
        m = min(pr_max, len(fg), len(fr))
        if m > pr_k + 1:
            out["precision"], out["recall"] = precision_recall(fr[:m], fg[:m], pr_k)
    if logits is not None:
        out["is"], out["is_std"] = inception_score(logits)
    return out
