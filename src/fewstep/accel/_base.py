"""The shared machinery of feature caches: a denoiser wrapper that answers the network's block taps.

A cache wrapper decides per evaluation whether the network runs fully (a *full* evaluation, which
refreshes the cache) or partly (a *cached* evaluation, some blocks reused or forecast), installs
its tap handler on the sampling context (:meth:`fewstep.context.StepContext.with_tap`) and keeps
every cached tensor in ``ctx.state`` - one dict per solve call - so nothing outlives a sample call,
solvers stay stateless and a sample's image does not depend on the batch it is drawn in.

Stages: the step decides.  Every evaluation of a key step (its main evaluation and its
corrections or intermediate points, ``ctx.stage > 0``) is full; every evaluation of another step
is cached and reuses the features of the latest full evaluation.  The latest full evaluation of
a two-stage step sits at ``t[i+1]`` (Heun) or between ``t[i]`` and ``t[i+1]`` (DPM-Solver-2), so
the reused features are the freshest available, and interval 1 reproduces the plain sampler.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import numpy as np
from torch import Tensor

from ..context import StepContext
from ..denoisers import DenoiserBase, DenoiserWrapper
from ..parametrization import Prediction
from ._schedule import key_steps

__all__ = ["FeatureCache", "Evaluation"]


class Evaluation:
    """One evaluation as a tap handler sees it: full or cached, its position, the trajectory's cache."""

    __slots__ = ("full", "position", "cache", "previous_tap")

    def __init__(self, full: bool, position: float, cache: dict[str, Any], previous_tap: Any):
        self.full, self.position, self.cache, self.previous_tap = full, position, cache, previous_tap

    def compute(self, ctx: StepContext, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run the block, through an outer wrapper's tap handler when there is one (caches compose)."""
        if self.previous_tap is not None:
            return self.previous_tap(ctx, name, fn, *args)
        return fn(*args)


class FeatureCache(DenoiserWrapper):
    """Base class: key-step schedule, evaluation counters and per-trajectory cache in ``ctx.state``.

    Subclasses set ``method`` and implement :meth:`handle` (the tap handler of one evaluation) and
    :meth:`check` (raise when a full evaluation left nothing to reuse: the network lacks the taps).
    ``full_evals`` and ``cached_evals`` count the evaluations of each kind since construction.
    """

    method: ClassVar[str] = ""

    def __init__(self, inner: DenoiserBase, interval: int = 2, *, nonuniform: bool = False, center: float = 0.45,
                 power: float = 1.4):
        super().__init__(inner)
        key_steps(4, int(interval), nonuniform=nonuniform, center=center, power=power)  # validates the options
        self.interval, self.nonuniform, self.center, self.power = int(interval), bool(nonuniform), center, power
        self.full_evals = 0
        self.cached_evals = 0

    @property
    def options(self) -> dict[str, Any]:
        """The options that define this cache (what a description or a spec string records)."""
        opts: dict[str, Any] = {"interval": self.interval}
        if self.nonuniform:
            opts.update(nonuniform=True, center=self.center, power=self.power)
        return opts

    @property
    def spec(self) -> str:
        """This cache as a spec string, e.g. ``"deepcache:interval=3"`` (see :func:`fewstep.accel.parse_cache`)."""
        return f"{self.method}:" + ",".join(f"{k}={v}" for k, v in self.options.items())

    def counts(self) -> dict[str, int]:
        return {"full_evals": self.full_evals, "cached_evals": self.cached_evals}

    # ------------------------------------------------------------------ per evaluation

    def handle(self, ev: Evaluation, ctx: StepContext, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def check(self, cache: dict[str, Any]) -> None:
        """Called after the first full evaluation of a trajectory; raise if the taps were missing."""

    def _trajectory(self, ctx: StepContext) -> dict[str, Any]:
        state = ctx.state.get(self)
        if state is None:
            state = ctx.state[self] = {"keys": key_steps(ctx.schedule.steps, self.interval, nonuniform=self.nonuniform,
                                                         center=self.center, power=self.power),
                                       "cache": {}, "checked": False}
        return state

    def predict(self, x: Tensor, t: float | Tensor, *, ctx: StepContext | None = None, **cond: Any) -> Prediction:
        if ctx is None:  # outside a solver there is no trajectory to cache along
            self.full_evals += 1
            return self.inner.predict(x, t, ctx=ctx, **cond)
        state = self._trajectory(ctx)
        full = ctx.step in state["keys"] or not state["checked"]
        ev = Evaluation(full, _position(ctx, t), state["cache"], ctx.tap)
        p = self.inner.predict(x, t, ctx=ctx.with_tap(lambda c, n, f, *a: self.handle(ev, c, n, f, *a)), **cond)
        if full:
            self.full_evals += 1
            if not state["checked"]:
                self.check(state["cache"])
                state["checked"] = True
        else:
            self.cached_evals += 1
        return p


def _position(ctx: StepContext, t: float | Tensor) -> float:
    """Where the evaluation lies in units of steps: ``step`` for a main evaluation, the fractional
    index of its time on the grid for a correction or intermediate stage (e.g. ``i + 1`` for Heun's)."""
    if ctx.stage == 0:
        return float(ctx.step)
    tt = float(t.reshape(-1)[0]) if isinstance(t, Tensor) else float(t)
    grid = ctx.schedule.t.double().cpu().numpy()
    finite = np.isfinite(grid)
    idx = np.arange(len(grid), dtype=np.float64)[finite]
    g = grid[finite]
    if not math.isfinite(tt) or len(g) < 2:
        return ctx.step + 1.0
    order = np.argsort(g)
    return float(np.interp(tt, g[order], idx[order]))
