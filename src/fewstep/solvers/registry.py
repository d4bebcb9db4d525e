"""The solver registry: name, order, NFE per step, stochasticity, paper and option ranges of each solver."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, ClassVar, Mapping

from ..options import Interval, OptionSpec

__all__ = ["SolverSpec", "Interval", "register", "get", "available", "specs", "DEFAULT_SOLVER"]

#: The solver used when none is named (library, CLI, diffusers scheduler).  UniPC (bh2, order 2) is chosen on three
#: trained models with different schedules and prediction types: it errs less than DPM-Solver++(2M) and scores a
#: lower FID/FD at 5-10 NFE on bundled:fashion (linear, eps), the digits cosine-eps and zero-SNR v models
#: (docs/solvers.md, "The default solver": benchmarks/grid_choice.py and benchmarks/digits_diffusers.py).
DEFAULT_SOLVER = "unipc"

Plan = Callable[[int, bool], tuple[int, dict[str, Any]]]


def one_step_per_eval(nfe: int, clean_end: bool) -> tuple[int, dict[str, Any]]:
    """Plan for solvers spending one evaluation per step: ``nfe`` steps."""
    return nfe, {}


@dataclass(frozen=True)
class SolverSpec(OptionSpec):
    """What the registry knows of a solver.

    ``fn(denoiser, x, schedule, *, generator=None, callback=None, **options) -> x`` is the
    stateless solver; ``plan(nfe, clean_end) -> (steps, options)`` turns an NFE budget into a
    number of grid steps and the options that make the solver spend exactly that budget.  Its options,
    their ``ranges`` and their check are :class:`~fewstep.options.OptionSpec`'s.
    """

    order: int
    nfe_per_step: float
    stochastic: bool
    paper: str
    min_nfe: int = 1
    plan: Plan = one_step_per_eval
    fixed_nfe: bool = True
    aliases: tuple[str, ...] = field(default=())

    kind: ClassVar[str] = "solver"
    fixed_reason: ClassVar[str] = ("is set from nfe so that it spends exactly nfe evaluations; choose nfe instead "
                                   "(or call the solver function directly)")

    @cached_property
    def planned_options(self) -> frozenset[str]:
        """Options the NFE plan sets so that the solver spends exactly its budget."""
        return frozenset(self.plan(max(self.min_nfe, 6), True)[1])

    @property
    def fixed_options(self) -> frozenset[str]:
        """The planned options, for a solver with a fixed NFE (an adaptive one takes them all)."""
        return self.planned_options if self.fixed_nfe else frozenset()

    def steps_for(self, nfe: int, clean_end: bool = True) -> tuple[int, dict[str, Any]]:
        if not isinstance(nfe, int) or isinstance(nfe, bool):
            raise TypeError(f"nfe must be an integer, got {nfe!r}")
        if nfe < self.min_nfe:
            raise ValueError(f"solver {self.name!r} needs at least {self.min_nfe} network evaluations, got nfe={nfe}")
        return self.plan(nfe, clean_end)


_REGISTRY: dict[str, SolverSpec] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, *, order: int, paper: str, stochastic: bool = False, nfe_per_step: float = 1,
             min_nfe: int = 1, plan: Plan = one_step_per_eval, fixed_nfe: bool = True,
             aliases: tuple[str, ...] = (), ranges: Mapping[str, tuple] | None = None
             ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a solver function under ``name``.

    ``ranges`` maps each numeric option to its valid interval, ``(low, high)`` (both ends included) or
    ``(low, high, low_closed, high_closed)`` (:class:`~fewstep.options.Interval`); :meth:`SolverSpec.check_options`
    refuses values outside it.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"solver name {name!r} is already registered")
        _REGISTRY[name] = SolverSpec(name, fn, order, nfe_per_step, stochastic, paper, min_nfe, plan, fixed_nfe,
                                     aliases, ranges=dict(ranges or {}))  # ranges are checked against the options
        for a in aliases:
            _ALIASES[a] = name
        return fn

    return wrap


def get(name: str) -> SolverSpec:
    """The spec registered under ``name`` (or an alias); unknown names list the valid ones."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown solver {name!r}; available solvers: {', '.join(available())}")
    return _REGISTRY[key]


def available() -> list[str]:
    """Registered solver names, in registration order."""
    return list(_REGISTRY)


def specs() -> list[SolverSpec]:
    return list(_REGISTRY.values())
