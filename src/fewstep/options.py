"""``OptionSpec``: the base of every registry of named methods whose options are keyword arguments.

A method (a solver, a restoration method) is a function; its *options* are its keyword-only parameters
other than the plumbing every method of the kind receives (``generator``, ``callback``, ``cond``), read once
from the signature with their defaults.  :meth:`OptionSpec.check_options` refuses an unknown option, or one
the method's plan sets itself, with one error format for every kind:

    solver 'ddim' has no option 'etaa' (did you mean 'eta'?); its options: eta=0.0.

``ranges`` declares numeric ranges of options (``name -> (low, high)``), the place for range checks.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, ClassVar, Mapping

__all__ = ["OptionSpec"]


@dataclass(frozen=True)
class OptionSpec:
    """A named method ``fn`` and its options (keyword-only parameters, with defaults)."""

    name: str
    fn: Callable[..., Any]
    #: Declared numeric ranges of options, ``name -> (low, high)``.
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict, kw_only=True, compare=False, hash=False)

    #: What the method is called in messages ("solver", "restoration method").
    kind: ClassVar[str] = "method"
    #: Keyword arguments every method of the kind receives: not options.
    plumbing: ClassVar[frozenset[str]] = frozenset({"generator", "callback", "cond"})
    #: Why a :attr:`fixed_options` option may not be passed (completes "option X of solver Y ...").
    fixed_reason: ClassVar[str] = "is set by fewstep"

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
        """Refuse unknown options (naming the valid ones, and the closest) and options the plan sets."""
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
