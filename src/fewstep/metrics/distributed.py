"""Sharding over processes launched by ``torchrun``: disjoint seed slices, merged statistics.

With ``WORLD_SIZE > 1`` each rank samples and featurises a contiguous slice of the seeds and the
per-rank :class:`~fewstep.metrics.stats.FeatureStats` are gathered and merged (exactly, by
the pairwise update), so every rank ends with the statistics of all samples.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from ..devices import resolve_device
from .stats import FeatureStats

__all__ = ["world", "setup", "shard", "merge_all", "gather_stats", "gather_list", "default_device"]


def world() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's environment (``(0, 1)`` when not launched by it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def default_device(spec: str | None = None) -> torch.device:
    """The device ``spec`` names, checked by :func:`fewstep.devices.resolve_device`; without one,
    ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if spec:
        return resolve_device(spec)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def default_batch_size(device: torch.device | str) -> int:
    """Images per sampling batch: 64 on a CPU, where larger batches fall out of cache (the eager
    bundled UNet on 2 CPU threads takes 2.55 ms per image-evaluation at batch 64 and 5.67 ms at
    500: the figures of :mod:`fewstep.compiling`, from ``benchmarks/compile_speed.py``), 500 on an
    accelerator."""
    return 64 if torch.device(device).type == "cpu" else 500


def setup(device: torch.device) -> None:
    """Join the process group once when launched with several processes."""
    import torch.distributed as dist

    if world()[1] > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def shard(items: Sequence[int], rank: int, world_size: int) -> Sequence[int]:
    """The ``rank``-th of ``world_size`` contiguous, disjoint, covering slices of ``items``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    n = len(items)
    return items[rank * n // world_size:(rank + 1) * n // world_size]


def merge_all(parts: Sequence[FeatureStats]) -> FeatureStats:
    """Merge per-shard statistics in shard order."""
    if not parts:
        raise ValueError("nothing to merge")
    out = parts[0]
    for p in parts[1:]:
        out = out.merge(p)
    return out


def gather_stats(stats: FeatureStats) -> FeatureStats:
    """All ranks' statistics merged (identity when not distributed)."""
    import torch.distributed as dist

    if world()[1] == 1 or not dist.is_initialized():
        return stats
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, stats)
    return merge_all(parts)


def gather_list(items: list) -> list:
    """Concatenate a per-rank list across ranks in rank order (identity when not distributed)."""
    import torch.distributed as dist

    if world()[1] == 1 or not dist.is_initialized():
        return items
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]
