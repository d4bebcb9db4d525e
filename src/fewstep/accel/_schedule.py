"""Which steps of a solve run the network fully ("key" steps); the others reuse or forecast features.

Uniform: every ``interval``-th step, ``0, N, 2N, ...`` (DeepCache's "uniform 1:N", Ma et al. 2024,
sec. 3.3; TaylorSeer's "interval N", Liu et al. 2025, sec. 3.3).  Non-uniform: the same number of
key steps, denser around ``center`` (a fraction of the steps): DeepCache's non-uniform 1:N
strategy (sec. 3.3) puts key step ``j`` at ``c + sign(u_j) |u_j|^p`` for ``u_j`` evenly spaced
between ``-c^(1/p)`` and ``(T - c)^(1/p)``; with ``center=0`` the key steps crowd the start of
sampling, as in Faster Diffusion's non-uniform key steps (Li et al. 2024, sec. 3.3).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["key_steps"]


def key_steps(steps: int, interval: int, *, nonuniform: bool = False, center: float = 0.45,
              power: float = 1.4) -> frozenset[int]:
    """The indices of the full steps among ``steps`` steps: ``ceil(steps / interval)`` of them, step 0 always."""
    if interval < 1:
        raise ValueError(f"interval must be a positive integer, got {interval}")
    if not nonuniform or interval == 1:
        return frozenset(range(0, steps, interval))
    if not 0.0 <= center <= 1.0 or power < 1.0:
        raise ValueError(f"center must lie in [0, 1] and power be >= 1, got center={center}, power={power}")
    n, c, p = math.ceil(steps / interval), center * steps, power
    while True:  # lower the power towards 1 (uniform) until the rounded key steps are distinct
        u = np.linspace(-(c ** (1 / p)), (steps - c) ** (1 / p), n + 1)[:-1]
        keys = {0} | {min(steps - 1, max(0, int(math.floor(c + math.copysign(abs(v) ** p, v))))) for v in u}
        if len(keys) >= n or p <= 1.0:
            return frozenset(keys)
        p = max(1.0, p - 0.02)
