"""The solver registry: name, order, NFE per step, stochasticity, paper and option ranges of each solver."""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Mapping, NamedTuple

__all__ = ["SolverSpec", "Interval", "register", "get", "available", "specs"]

Plan = Callable[[int, bool], tuple[int, dict[str, Any]]]


class Interval(NamedTuple):
    """The valid values of a numeric option: from ``low`` to ``high``, each end included or not.

    Plain data, declared per solver as ``ranges={"eta": (0, 1)}`` or ``(0, 1, False, True)`` for ``(0, 1]``;
    an infinite end is a value the option accepts only when that end is included (``s_tmax = inf``).
    """

    low: float
    high: float
    low_closed: bool = True
    high_closed: bool = True

    def holds(self, value: float) -> bool:
        """Whether ``value`` lies in the interval (NaN never does)."""
        v = float(value)
        above = v >= self.low if self.low_closed else v > self.low
        below = v <= self.high if self.high_closed else v < self.high
        return not math.isnan(v) and above and below

    def describe(self, name: str) -> str:
        """``0 <= eta <= 1``, ``s_churn >= 0``, ``0 < theta <= 1``."""
        lo = "" if self.low == -math.inf else f"{self.low:g} {'<=' if self.low_closed else '<'} "
        hi = "" if self.high == math.inf and not self.high_closed else \
            f" {'<=' if self.high_closed else '<'} {self.high:g}"
        if not lo and not hi:
            return f"{name} finite"
        if lo and not hi:
            return f"{name} {'>=' if self.low_closed else '>'} {self.low:g}"
        return f"{lo}{name}{hi}"


def one_step_per_eval(nfe: int, clean_end: bool) -> tuple[int, dict[str, Any]]:
    """Plan for solvers spending one evaluation per step: ``nfe`` steps."""
    return nfe, {}


@dataclass(frozen=True)
class SolverSpec:
    """What the registry knows of a solver.

    ``fn(denoiser, x, schedule, *, generator=None, callback=None, **options) -> x`` is the
    stateless solver; ``plan(nfe, clean_end) -> (steps, options)`` turns an NFE budget into a
    number of grid steps and the options that make the solver spend exactly that budget.
    """

    name: str
    fn: Callable[..., Any]
    order: int
    nfe_per_step: float
    stochastic: bool
    paper: str
    min_nfe: int = 1
    plan: Plan = one_step_per_eval
    fixed_nfe: bool = True
    aliases: tuple[str, ...] = field(default=())
    ranges: Mapping[str, Interval] = field(default_factory=dict, hash=False, compare=False)
    """Each numeric option's valid interval (an option whose default is an integer must also be one)."""

    @cached_property
    def options(self) -> dict[str, Any]:
        """The solver's own options and their defaults (keyword arguments other than generator, callback, cond)."""
        params = inspect.signature(self.fn).parameters.values()
        return {p.name: p.default for p in params
                if p.kind is p.KEYWORD_ONLY and p.name not in ("generator", "callback", "cond")}

    @cached_property
    def planned_options(self) -> frozenset[str]:
        """Options the NFE plan sets so that the solver spends exactly its budget."""
        return frozenset(self.plan(max(self.min_nfe, 6), True)[1])

    def check_options(self, options: dict[str, Any]) -> None:
        """Refuse unknown options (naming the valid ones) and options that would override the NFE plan."""
        for name in options:
            if name not in self.options:
                valid = sorted(set(self.options) - self.planned_options) if self.fixed_nfe else sorted(self.options)
                close = difflib.get_close_matches(name, valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                cond = " Conditioning goes in cond={...}." if not close else ""
                raise ValueError(f"solver {self.name!r} has no option {name!r}{hint}; its options: "
                                 f"{', '.join(valid) or 'none'}.{cond}")
            if self.fixed_nfe and name in self.planned_options:
                raise ValueError(f"option {name!r} of solver {self.name!r} is set from nfe so that it spends exactly "
                                 f"nfe evaluations; choose nfe instead (or call the solver function directly)")
            self._check_value(name, options[name])

    def _check_value(self, name: str, value: Any) -> None:
        """Refuse a value outside the option's declared interval, NaN, or a fraction where an integer is due."""
        interval = self.ranges.get(name)
        default = self.options[name]
        if interval is None or value is None or (isinstance(value, str) and isinstance(default, str)):
            return  # not numeric (or a named choice, such as data_var="ignore"): the solver checks it
        valid = interval.describe(name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"solver {self.name!r}: {name} must be a number ({valid}), got {value!r}")
        if not interval.holds(value):
            raise ValueError(f"solver {self.name!r}: {name}={value!r} is out of range; valid: {valid}")
        integer = isinstance(default, int) and not isinstance(default, bool)
        if integer and not float(value).is_integer():
            raise ValueError(f"solver {self.name!r}: {name} must be an integer ({valid}), got {value!r}")

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
    ``(low, high, low_closed, high_closed)``; :meth:`SolverSpec.check_options` refuses values outside it.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"solver name {name!r} is already registered")
        intervals = {k: Interval(*v) for k, v in (ranges or {}).items()}
        spec = SolverSpec(name, fn, order, nfe_per_step, stochastic, paper, min_nfe, plan, fixed_nfe, aliases,
                          intervals)
        unknown = sorted(set(intervals) - set(spec.options))
        if unknown:
            raise ValueError(f"solver {name!r} declares ranges for {', '.join(unknown)}, which are not its options")
        _REGISTRY[name] = spec
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
