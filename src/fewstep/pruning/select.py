"""Which units to remove for a pruning ratio: globally by score (LD-Pruner) or per block (Diff-Pruning).

The ratio counts channels (``budget="channels"``, the papers' convention) or multiply-adds (``"macs"``): channels
are not compute, since a channel of a full-resolution block costs 16 times one at a quarter of the resolution
(docs/pruning.md).
"""

from __future__ import annotations

import math
from typing import Sequence

from .units import Unit

__all__ = ["BUDGETS", "check_ratio", "check_budget", "select_global", "select_per_block"]

#: What a pruning ratio is a fraction of.
BUDGETS = ("channels", "macs")


def check_ratio(ratio: float) -> float:
    """``ratio`` if it lies strictly between 0 and 1, else a ValueError saying so."""
    if not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) < 1.0 or math.isnan(ratio):
        raise ValueError(f"pruning ratio {ratio!r} must lie strictly between 0 and 1 (the fraction of prunable "
                         f"channels removed, e.g. 0.3)")
    return float(ratio)


def check_budget(budget: str) -> str:
    if budget not in BUDGETS:
        raise ValueError(f"pruning budget {budget!r} must be one of {', '.join(BUDGETS)} (what the ratio counts)")
    return budget


def select_global(units: Sequence[Unit], scores: Sequence[float], ratio: float,
                  costs: Sequence[float] | None = None) -> list[Unit]:
    """The longest prefix of a ranking that removes at most ``ratio`` of the units' total size.

    Without ``costs``: units ranked by increasing score, sized by their channels (LD-Pruner ranks every operator
    on one scale).  With ``costs`` (each unit's multiply-adds, :func:`~fewstep.pruning.units.unit_macs`): ranked
    by score per multiply-add (the greedy rule for a compute budget: least importance lost per unit of compute
    saved), sized by their costs.  A ResBlock may lose all its groups: its residual branch goes."""
    check_ratio(ratio)
    sizes = [float(u.size) for u in units] if costs is None else [float(c) for c in costs]
    if costs is not None and (len(sizes) != len(units) or min(sizes, default=1.0) <= 0):
        raise ValueError("costs must give every unit a positive multiply-add count")
    key = (lambda i: scores[i]) if costs is None else (lambda i: scores[i] / sizes[i])
    budget = ratio * sum(sizes)
    chosen, total = [], 0.0
    for i in sorted(range(len(units)), key=key):
        if total + sizes[i] > budget * (1 + 1e-9):
            break
        chosen.append(units[i])
        total += sizes[i]
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
