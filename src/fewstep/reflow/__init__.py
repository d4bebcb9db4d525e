"""Reflow (Liu et al. 2023, "Flow Straight and Fast"): straighten a teacher's ODE into a 1-2 step model.

* :func:`draw_pairs` / :func:`load_pairs` - (noise, teacher ODE endpoint) pairs in resumable ``.npz`` shards;
* :class:`ReflowObjective` - the 2-rectified flow trained on them, an objective of the shared trainer
  (``"objective": {"kind": "reflow"}``); sampled with Euler (or DDIM, the same step) at 1-2 NFE.
"""

from .objective import ReflowObjective, ReflowSettings, reflow_loss
from .pairs import PAIRS_FORMAT, draw_pairs, load_pairs, pair_data

__all__ = ["ReflowObjective", "ReflowSettings", "reflow_loss", "draw_pairs", "load_pairs", "pair_data", "PAIRS_FORMAT"]
