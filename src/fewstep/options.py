"""``OptionSpec``: the base of every registry of named methods whose options are keyword arguments.

A method (a solver, a restoration method) is a function; its *options* are its keyword-only parameters
other than the plumbing every method of the kind receives (``generator``, ``callback``, ``cond``), read once
from the signature with their defaults.  ``ranges`` declares each numeric option's valid :class:`Interval`.
:meth:`OptionSpec.check_options` refuses an unknown option, one the method's plan sets itself, or a value
outside its interval, with one error format for every kind:

    solver 'ddim' has no option 'etaa' (did you mean 'eta'?); its options: eta=0.0.
    solver 'ddim': eta=2.0 is out of range; valid: 0 <= eta <= 1
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, ClassVar, Mapping, NamedTuple

__all__ = ["OptionSpec", "Interval"]


class Interval(NamedTuple):
    """The valid values of a numeric option: from ``low`` to ``high``, each end included or not.

    Plain data, declared per method as ``ranges={"eta": (0, 1)}`` or ``(0, 1, False, True)`` for ``(0, 1]``;
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


@dataclass(frozen=True)
class OptionSpec:
    """A named method ``fn`` and its options (keyword-only parameters, with defaults)."""

    name: str
    fn: Callable[..., Any]
    #: Each numeric option's valid interval (an option whose default is an integer must also be one); given as
    #: :class:`Interval` or its tuple.
    ranges: Mapping[str, Interval] = field(default_factory=dict, kw_only=True, compare=False, hash=False)

    #: What the method is called in messages ("solver", "restoration method").
    kind: ClassVar[str] = "method"
    #: Keyword arguments every method of the kind receives: not options.
    plumbing: ClassVar[frozenset[str]] = frozenset({"generator", "callback", "cond"})
    #: Why a :attr:`fixed_options` option may not be passed (completes "option X of solver Y ...").
    fixed_reason: ClassVar[str] = "is set by fewstep"

    def __post_init__(self) -> None:
        ranges = {k: v if isinstance(v, Interval) else Interval(*v) for k, v in self.ranges.items()}
        object.__setattr__(self, "ranges", ranges)
        unknown = sorted(set(ranges) - set(self.options))
        if unknown:
            raise ValueError(f"{self.kind} {self.name!r} declares ranges for {', '.join(unknown)}, which are not its "
                             f"options")

    @cached_property
    def options(self) -> dict[str, Any]:
        """The method's own options and their defaults, read from ``fn``'s signature."""
        params = inspect.signature(self.fn).parameters.values()
        return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in self.plumbing}

    @property
    def fixed_options(self) -> frozenset[str]:
        """Options the method's plan sets itself, refused from callers (none by default)."""
        return frozenset()

    def settable_options(self) -> dict[str, Any]:
        """The options a caller may pass, with their defaults."""
        fixed = self.fixed_options
        return {k: v for k, v in self.options.items() if k not in fixed}

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse unknown options (naming the valid ones, and the closest), options the plan sets, and values
        outside their declared :class:`Interval`."""
        valid = self.settable_options()
        for name in options:
            if name not in self.options:
                close = difflib.get_close_matches(name, list(valid), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                listing = ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in valid.items())
                cond = "" if close or "cond" not in inspect.signature(self.fn).parameters else \
                    " Conditioning goes in cond={...}."
                raise ValueError(f"{self.kind} {self.name!r} has no option {name!r}{hint}; its options: "
                                 f"{listing or 'none'}.{cond}")
            if name not in valid:
                raise ValueError(f"option {name!r} of {self.kind} {self.name!r} {self.fixed_reason}")
            self._check_value(name, options[name])

    def _check_value(self, name: str, value: Any) -> None:
        """Refuse a value outside the option's declared interval, NaN, or a fraction where an integer is due."""
        interval = self.ranges.get(name)
        default = self.options[name]
        if interval is None or value is None or (isinstance(value, str) and isinstance(default, str)):
            return  # not numeric (or a named choice, such as data_var="ignore"): the method checks it
        valid = interval.describe(name)
        where = f"{self.kind} {self.name!r}"
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{where}: {name} must be a number ({valid}), got {value!r}")
        if not interval.holds(value):
            raise ValueError(f"{where}: {name}={value!r} is out of range; valid: {valid}")
        integer = isinstance(default, int) and not isinstance(default, bool)
        if integer and not float(value).is_integer():
            raise ValueError(f"{where}: {name} must be an integer ({valid}), got {value!r}")
