"""Which units to remove for a pruning ratio: globally by score (LD-Pruner) or per block (Diff-Pruning)."""

from __future__ import annotations

import math
from typing import Sequence

from .units import Unit

__all__ = ["check_ratio", "select_global", "select_per_block"]


def check_ratio(ratio: float) -> float:
    """``ratio`` if it lies strictly between 0 and 1, else a ValueError saying so."""
    if not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) < 1.0 or math.isnan(ratio):
        raise ValueError(f"pruning ratio {ratio!r} must lie strictly between 0 and 1 (the fraction of prunable "
                         f"channels removed, e.g. 0.3)")
    return float(ratio)


def select_global(units: Sequence[Unit], scores: Sequence[float], ratio: float) -> list[Unit]:
    """The lowest-scored units, in increasing score, as long as they hold at most ``ratio`` of all units'
    channels: the ranking's longest prefix within the budget (LD-Pruner ranks every operator on one scale).  A ResBlock may lose all its groups: its residual branch goes."""
    check_ratio(ratio)
    budget = ratio * sum(u.size for u in units)
    chosen, total = [], 0
    for score, u in sorted(zip(scores, units), key=lambda su: su[0]):
        if total + u.size > budget + 1e-9:
            break
        chosen.append(u)
        total += u.size
    return chosen


def select_per_block(units: Sequence[Unit], scores: Sequence[float], ratio: float) -> list[Unit]:
    """``round(ratio * groups)`` lowest-scored groups of every ResBlock, at least one group kept (Diff-Pruning's
    uniform channel sparsity per layer); attention blocks are not removed."""
    check_ratio(ratio)
    by_block: dict[int, list[tuple[float, Unit]]] = {}
    for s, u in zip(scores, units):
        if u.kind == "res":
            by_block.setdefault(u.index, []).append((s, u))
    chosen = []
    for items in by_block.values():
        n = min(len(items) - 1, round(ratio * len(items)))
        chosen += [u for _, u in sorted(items, key=lambda su: su[0])[:n]]
    return chosen
