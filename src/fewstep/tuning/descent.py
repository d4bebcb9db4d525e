"""Derivative-free coordinate descent: the one optimizer behind every grid method.

Align Your Steps (Sabour et al. 2024, sec. 3.2, "iterative refinement") moves one interior time
at a time to the best of a few candidates between its neighbours and repeats with a finer
neighbourhood; the same loop tunes TimeTuner's network times.  A move is accepted only when it
lowers the score, so the result is never worse than the start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

__all__ = ["DescentResult", "coordinate_descent"]

Bracket = Callable[[list[float], int], tuple[float, float]]


@dataclass
class DescentResult:
    """The best point found, its score, the start's score and the score after each round."""

    x: list[float]
    score: float
    start_score: float
    history: list[float] = field(default_factory=list)
    evaluations: int = 0


def coordinate_descent(score: Callable[[list[float]], float], x0: Sequence[float], bracket: Bracket, *,
                       rounds: int = 3, candidates: int = 2, shrink: float = 0.5,
                       on_eval: Callable[[float], None] | None = None) -> DescentResult:
    """Minimise ``score`` one coordinate at a time.

    ``bracket(x, i)`` is the open interval coordinate ``i`` may move in given the others (e.g.
    between its neighbours).  In round ``r`` the candidates for coordinate ``i`` lie at fractions
    ``f = 0.5^(k+1) * shrink^r`` (``k < candidates``) of the way to either end of its bracket.
    """
    x = [float(v) for v in x0]
    best = start = float(score(x))
    evals = 1
    history: list[float] = []
    for r in range(rounds):
        for i in range(len(x)):
            lo, hi = bracket(x, i)
            fracs = [0.5 ** (k + 1) * shrink ** r for k in range(candidates)]
            trial = [x[i] + f * (hi - x[i]) for f in fracs] + [x[i] - f * (x[i] - lo) for f in fracs]
            for v in trial:
                if not lo < v < hi or v == x[i]:
                    continue
                y = x.copy()
                y[i] = v
                s = float(score(y))
                evals += 1
                if on_eval is not None:
                    on_eval(s)
                if s < best:  # NaN never wins
                    best, x = s, y
        history.append(best)
    return DescentResult(x, best, start, history, evals)
