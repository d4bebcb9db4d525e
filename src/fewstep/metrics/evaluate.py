"""Evaluation: features of data sets and of a sample function's images, and the metrics between them.

:func:`evaluate` is the one entry point that ``fewstep eval``, ``fewstep bench model`` and
``benchmarks/fashion_fid.py`` call.  It takes a sample function (:mod:`.sampling`): images are
made batch by batch from per-sample seeds ``seed .. seed + n - 1``, so the numbers do not depend
on the batch size, and are quantised to 8 bits like stored images before feature extraction.
Only the running statistics (and a capped feature sample) are kept.  Given ``reference`` images
for the same seeds (e.g. :class:`~fewstep.tuning.NearExact`, the near-exact ODE
solution), each sample's error to its reference (:mod:`.solution_error`, before quantisation)
is accumulated alongside.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Union

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
from .sampling import DivergedError, SampleFn
from .solution_error import per_sample_rmse, summarize_errors
from .stats import FeatureStats

__all__ = ["quantize", "images_stats", "SampleRun", "sample_stats", "compare", "evaluate", "DivergedError",
           "Reference"]

Reference = Union[Tensor, Callable[[list[int]], Tensor]]
"""Reference images per seed: a tensor whose image ``i`` belongs to seed ``seed + i``, or a function
``seeds -> images`` (e.g. :class:`~fewstep.tuning.NearExact`)."""


def _reference_images(reference: Reference, seeds: list[int], first_seed: int) -> Tensor:
    """The reference images of ``seeds``."""
    if isinstance(reference, Tensor):
        idx = [s - first_seed for s in seeds]
        if idx[0] < 0 or idx[-1] >= len(reference):
            raise ValueError(f"the reference tensor holds {len(reference)} images (seeds {first_seed}.."
                             f"{first_seed + len(reference) - 1}); seed {seeds[-1]} has none")
        return reference[idx[0]:idx[-1] + 1]
    return reference(seeds)


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
    """Statistics of generated samples (all ranks merged) and what it cost this rank to make them."""

    stats: FeatureStats
    sample_seconds: float
    feature_seconds: float
    batches: int
    logits: np.ndarray | None = None
    errors: np.ndarray | None = None  # per-sample RMSE to the reference images, when one was given


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@torch.no_grad()
def sample_stats(sample_fn: SampleFn, n: int, extractor: FeatureExtractor, *, seed: int = 0, batch_size: int = 64,
                 max_features: int = 10_000, with_logits: bool = False, progress: bool = True,
                 desc: str = "samples", on_batch: Callable[[int], None] | None = None,
                 reference: Reference | None = None) -> SampleRun:
    """Images of ``sample_fn`` for seeds ``seed .. seed + n - 1`` and their feature statistics.

    Under ``torchrun`` each rank handles a disjoint slice of the seeds and the statistics are
    merged across ranks.  ``on_batch(k)`` is called after each batch of ``k`` images (e.g. to
    advance an overall progress bar).  Non-finite samples raise :class:`DivergedError`.  With
    ``reference`` (see :data:`Reference`), each sample's RMSE to its reference image is kept
    (``errors``); fetching the reference is timed neither as sampling nor as features.
    """
    if n < 1:
        raise ValueError(f"the number of samples must be positive, got {n}")
    setup(extractor.device)
    rank, size = world()
    seeds = shard(range(seed, seed + n), rank, size)
    stats = FeatureStats.like(extractor, max_features)
    logits: list[np.ndarray] = []
    errors: list[np.ndarray] = []
    t_sample = t_feat = 0.0
    bar = tqdm(total=len(seeds), desc=desc, disable=not progress or rank != 0, unit="img", leave=False)
    for i in range(0, len(seeds), batch_size):
        chunk = list(seeds[i:i + batch_size])
        _sync()
        t0 = time.perf_counter()
        x = sample_fn(chunk)
        if tuple(x.shape[:1]) != (len(chunk),) or x.ndim != 4:
            raise ValueError(f"a sample function must return (len(seeds), C, H, W) images; for {len(chunk)} seeds "
                             f"it returned shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise DivergedError(f"{desc} produced NaN or infinite samples (seeds {chunk[0]}..{chunk[-1]})")
        _sync()
        t1 = time.perf_counter()
        if reference is not None:
            errors.append(per_sample_rmse(x, _reference_images(reference, chunk, seed)).numpy())
        t_ref = time.perf_counter()
        x = quantize(x.float())
        stats.update(extractor(x.to(extractor.device)))
        if with_logits:
            logits.append(extractor.logits(x.to(extractor.device)).double().cpu().numpy())
        _sync()
        t_sample, t_feat = t_sample + t1 - t0, t_feat + time.perf_counter() - t_ref
        bar.update(len(chunk))
        if on_batch is not None:
            on_batch(len(chunk))
    bar.close()
    stats = gather_stats(stats)
    logits = gather_list(logits)
    errors = gather_list(errors) if reference is not None else []
    return SampleRun(stats, t_sample, t_feat, -(-len(seeds) // batch_size),
                     np.concatenate(logits) if logits else None, np.concatenate(errors) if errors else None)


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


def evaluate(sample_fn: SampleFn, n: int, extractor: FeatureExtractor, ref: FeatureStats, *, seed: int = 0,
             batch_size: int = 64, max_features: int = 10_000, inception_score: bool | None = None,
             progress: bool = True, desc: str = "samples",
             on_batch: Callable[[int], None] | None = None, reference: Reference | None = None) -> dict[str, Any]:
    """Score ``n`` images of ``sample_fn`` (seeds ``seed ..``) against reference statistics ``ref``.

    Returns ``fid``, ``kid``/``kid_std``, ``precision``/``recall`` (and ``is``/``is_std`` with
    ``inception_score``; None: when the extractor is Inception), ``n``, ``seed``, ``nfe_used``
    when ``sample_fn`` counts it (see :func:`~fewstep.metrics.sampling.solver_sample_fn`), and the
    timings ``sample_s``, ``feature_s`` and ``ms_per_image``.  With ``reference`` images for the
    same seeds (:data:`Reference`; e.g. the near-exact ODE solution), also their error to it:
    ``rmse``, ``rmse_median``, ``rmse_se``, ``psnr``, ``psnr_se``
    (:func:`~fewstep.metrics.solution_error.summarize_errors`).  Raises :class:`DivergedError`
    when the samples are not finite.
    """
    if n < 2:
        raise ValueError(f"n must be at least 2 to estimate a covariance, got {n}")
    with_logits = extractor.name.startswith("inception") if inception_score is None else inception_score
    run = sample_stats(sample_fn, n, extractor, seed=seed, batch_size=batch_size, max_features=max_features,
                       with_logits=with_logits, progress=progress, desc=desc, on_batch=on_batch, reference=reference)
    result: dict[str, Any] = {**compare(run.stats, ref, logits=run.logits, seed=seed), "n": n, "seed": seed}
    if run.errors is not None:
        result.update(summarize_errors(run.errors))
    nfe_used = getattr(sample_fn, "nfe_used", None)
    if nfe_used is not None:
        result["nfe_used"] = nfe_used
    result.update(sample_s=run.sample_seconds, feature_s=run.feature_seconds,
                  ms_per_image=1000 * run.sample_seconds / n)
    return result
