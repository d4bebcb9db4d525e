"""Validation of tuned sampling plans on fresh seeds: does a candidate beat the best standard solver?

Tuning (grids, teleport starts, DC ratios, TimeTuner times) minimises an error on a few dozen *tuning* seeds and
can overfit them: on an exact low-rank mixture, tuned plans were the best of all at some NFE and much worse
than untuned solvers at others when scored on fresh noise.  So every candidate is judged on *validation* seeds
that no tuning choice saw (:func:`check_disjoint` refuses any overlap), by the per-sample error to the
near-exact ODE solution from the same ``x_T`` (:func:`fewstep.metrics.solution_error.per_sample_rmse`), paired
with the baseline's error on the same samples:

* ``ratio = mean(e_cand) / mean(e_base)``, with a paired bootstrap interval (resampling *samples*, both errors
  of a sample together; Efron & Tibshirani 1993, ch. 13, percentile interval),
* ``worse``: the fraction of samples on which the candidate's error exceeds the baseline's.

A candidate is kept only when the interval's upper end is below 1 (:func:`judge`).  The baseline is the best
*standard* configuration (standard solver x named grid) at the same NFE, chosen on the same validation seeds
(:func:`best_standard`): that choice is biased in the baseline's favour (the minimum of several noisy means), so
the comparison is conservative for the candidates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["Comparison", "check_disjoint", "compare", "judge", "best_standard"]


def check_disjoint(tuning: Iterable[int], validation: Iterable[int]) -> None:
    """Refuse validation seeds that tuning also used (a candidate would be scored on the noise it was fitted to)."""
    tuning, validation = [int(s) for s in tuning], [int(s) for s in validation]
    if not tuning or not validation:
        raise ValueError("tuning and validation both need seeds (e.g. tuning 10000:10048, validation 20000:20128)")
    if len(set(validation)) != len(validation):
        raise ValueError("the validation seeds repeat a seed; give each seed once")
    shared = sorted(set(tuning) & set(validation))
    if shared:
        show = ", ".join(map(str, shared[:5])) + (", ..." if len(shared) > 5 else "")
        raise ValueError(f"{len(shared)} seed(s) are both tuning and validation seeds ({show}); validation needs "
                         f"fresh seeds that no tuning choice saw: use disjoint ranges (e.g. tuning 10000:10048, "
                         f"validation 20000:20128)")


@dataclass(frozen=True)
class Comparison:
    """A candidate against the baseline on the same validation samples (see the module docstring)."""

    mean: float            # mean per-sample error of the candidate
    baseline_mean: float   # ... of the baseline
    ratio: float           # mean / baseline_mean
    low: float             # bootstrap interval of the ratio
    high: float
    worse: float           # fraction of samples where the candidate's error exceeds the baseline's
    n: int
    level: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(errors: Sequence[float] | np.ndarray, baseline: Sequence[float] | np.ndarray, *, level: float = 0.95,
            resamples: int = 2000, seed: int = 0) -> Comparison:
    """The paired comparison of per-sample ``errors`` with ``baseline`` (same samples, same order)."""
    e, b = np.asarray(errors, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if e.shape != b.shape or e.ndim != 1 or e.size < 2:
        raise ValueError(f"compare needs two equally long lists of per-sample errors (at least 2), got "
                         f"{e.shape} and {b.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not np.all(np.isfinite(e)):  # a diverged sample: infinitely worse, never kept
        return Comparison(math.inf, float(b.mean()), math.inf, math.inf, math.inf, float(np.mean(~(e <= b))), e.size,
                          level)
    idx = np.random.default_rng(seed).integers(0, e.size, size=(resamples, e.size))
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = e[idx].mean(1) / b[idx].mean(1)
        ratio = float(e.mean() / b.mean())
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return Comparison(float(e.mean()), float(b.mean()), ratio, float(lo), float(hi), float(np.mean(e > b)), e.size,
                      level)


def judge(c: Comparison) -> tuple[bool, str]:
    """``(kept, why)``: kept only when the whole interval lies below 1 (the candidate wins on fresh seeds)."""
    pct = f"{100 * c.level:g}%"
    if not math.isfinite(c.mean):
        return False, "diverged on some validation seeds"
    if c.high < 1:
        return True, f"wins: ratio {c.ratio:.3f}, {pct} interval [{c.low:.3f}, {c.high:.3f}] below 1"
    if c.low >= 1:
        return False, f"loses on fresh seeds: ratio {c.ratio:.3f}, {pct} interval [{c.low:.3f}, {c.high:.3f}] " \
                      f"above 1 (overfit to the tuning seeds, or no gain)"
    return False, f"no clear win: ratio {c.ratio:.3f}, {pct} interval [{c.low:.3f}, {c.high:.3f}] contains 1"


def best_standard(errors: Mapping[str, Sequence[float] | np.ndarray]) -> str:
    """The name of the configuration with the lowest mean per-sample error (the baseline)."""
    if not errors:
        raise ValueError("no standard configuration to compare with")
    means = {k: float(np.mean(v)) for k, v in errors.items()}
    return min(means, key=lambda k: (not math.isfinite(means[k]), means[k]))
