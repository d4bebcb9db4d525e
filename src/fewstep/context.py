"""The sampling context: where one network evaluation stands in one trajectory.

Solvers are stateless functions, and a network sees only ``(x, t)``.  Methods that make an
evaluation cheaper or smarter need more: feature caching reuses a block's output from an earlier
step, per-timestep quantization picks the activation ranges of the current step, time-shifting
looks at the step being taken.  :class:`StepContext` carries exactly that from the solver loop,
through every denoiser wrapper, into the network:

* ``schedule`` - the whole time grid of this solve (``schedule.steps`` steps);
* ``step`` - the index ``i`` of the step from ``schedule.t[i]`` to ``schedule.t[i + 1]``;
* ``stage`` - ``0`` for the step's main evaluation, ``1, 2, ...`` for its extra evaluations
  (a Heun correction, a DPM-Solver midpoint, a PNDM Runge-Kutta stage);
* ``state`` - a dict that lives for one solve call (one trajectory of one batch), shared by all
  of its evaluations: the place for caches, so nothing outlives the call and solvers stay stateless;
* ``tap`` - an optional handler of the network's *block taps* (see :func:`tap`).

A solver binds the denoiser once per call with :func:`bind` and evaluates through the bound
object, naming the step and stage of each evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Protocol

from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from .denoisers import DenoiserBase
    from .grids import Schedule
    from .parametrization import Prediction

__all__ = ["StepContext", "TapHandler", "tap", "bind", "BoundDenoiser"]


class TapHandler(Protocol):
    """``handler(ctx, name, compute, *args) -> output``: run ``compute(*args)``, or reuse, forecast or record it."""

    def __call__(self, ctx: "StepContext", name: str, compute: Callable[..., Any], *args: Any) -> Any: ...


@dataclass(frozen=True)
class StepContext:
    """Where an evaluation stands: ``schedule``, ``step`` index, ``stage`` within the step, the
    per-trajectory ``state`` dict and an optional block-``tap`` handler."""

    schedule: "Schedule"
    step: int
    stage: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    tap: TapHandler | None = None

    @property
    def is_main(self) -> bool:
        """The step's main evaluation (stage 0), as opposed to a correction or intermediate stage."""
        return self.stage == 0

    def with_tap(self, handler: TapHandler | None) -> "StepContext":
        """This context with ``handler`` answering the network's block taps (for wrappers)."""
        return replace(self, tap=handler)


def tap(ctx: StepContext | None, name: str, compute: Callable[..., Any], *args: Any) -> Any:
    """A named block of a network: ``compute(*args)``, unless the context's handler answers it.

    Networks mark the blocks a cache may reuse or a forecaster may predict
    (``h = tap(ctx, "mid", self.mid, h, emb)``); without a context or handler this is a plain call.
    """
    if ctx is None or ctx.tap is None:
        return compute(*args)
    return ctx.tap(ctx, name, compute, *args)


class BoundDenoiser:
    """A denoiser as one solve call sees it: conditioning bound, one ``state`` for the trajectory,
    and every evaluation told its ``step`` and ``stage``."""

    __slots__ = ("denoiser", "schedule", "cond", "state")

    def __init__(self, denoiser: "DenoiserBase", schedule: "Schedule", cond: dict[str, Any] | None = None):
        self.denoiser = denoiser
        self.schedule = schedule
        self.cond = cond or {}
        self.state: dict[str, Any] = {}

    def predict(self, x: Tensor, t: float | Tensor, step: int, stage: int = 0) -> "Prediction":
        """Both predictions at ``(x, t)``, the evaluation being stage ``stage`` of step ``step``."""
        ctx = StepContext(self.schedule, step, stage, self.state)
        return self.denoiser.predict(x, t, ctx=ctx, **self.cond)

    def x0(self, x: Tensor, t: float | Tensor, step: int, stage: int = 0) -> Tensor:
        """The data prediction (one evaluation)."""
        return self.predict(x, t, step, stage).x0

    def eps(self, x: Tensor, t: float | Tensor, step: int, stage: int = 0) -> Tensor:
        """The noise prediction (one evaluation)."""
        return self.predict(x, t, step, stage).eps


def bind(denoiser: "DenoiserBase", schedule: "Schedule", cond: dict[str, Any] | None = None) -> BoundDenoiser:
    """Bind ``denoiser`` to one solve along ``schedule`` with conditioning ``cond`` (see :class:`BoundDenoiser`)."""
    return BoundDenoiser(denoiser, schedule, cond)
