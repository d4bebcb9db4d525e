"""The sampling-plan flags shared by ``sample`` and ``eval``: ``--grid``, ``--plan``, ``--borrow``, ``--teleport``."""

from __future__ import annotations

import argparse
from typing import Any


def add_plan_args(p: argparse.ArgumentParser) -> None:
    """Add the flags that choose a :class:`fewstep.plan.SamplingPlan`."""
    p.add_argument("--grid", default=None, help="time grid: uniform, logsnr, quadratic, karras, a plan file (see "
                                                "--plan), or explicit decreasing times, comma-separated, steps + 1 of "
                                                "them (e.g. 999,600,0; the last becomes clean data); default: the "
                                                "process's (time-uniform for VP models, karras for EDM)")
    p.add_argument("--plan", default=None, metavar="PLANS",
                   help="a tuned plan file (`fewstep tune`, `fewstep grid optimize`), bundled:fashion, or 'tuned' (the "
                        "model's own plans.json beside its checkpoint): its entry for exactly this --solver and --nfe "
                        "(times, start, network times, solver options); no entry is an error listing the entries")
    p.add_argument("--borrow", default=None, metavar="SOLVER",
                   help="with --plan: run --solver on SOLVER's entry's times (without its network times and options; a "
                        "teleported entry needs --teleport at its time)")
    p.add_argument("--teleport", type=float, default=None, metavar="T",
                   help="start the solve at time T below t_max, reached by the training data Gaussian's exact flow "
                        "(all NFE spent below T; the model needs a gaussian.safetensors: `fewstep gaussian`; "
                        "bundled:fashion has one; with --class one per class, `--per-class`, as bundled:fashion-cond "
                        "has). About 700 at 5-6 NFE, 900 at 8-10 (docs/solvers.md). A plan entry tuned with "
                        "teleport carries its own T")


def parse_times(text: str, flag: str = "--grid") -> list[float]:
    """``"999,600,0"`` -> ``[999.0, 600.0, 0.0]``; anything else that is not a list of numbers is refused."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers such as 999,600,0, got {text!r}") from None


def plan_from_args(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """``(grid, plan keywords)`` for :func:`fewstep.make_plan` from the flags; ``--plan`` and ``--grid`` exclude
    each other, and ``--borrow`` needs ``--plan``."""
    if args.plan is not None and args.grid is not None:
        raise ValueError("--plan and --grid both choose the times; pass one")
    if args.borrow is not None and args.plan is None and args.grid is None:
        raise ValueError("--borrow SOLVER takes that solver's entry of a plan file: pass --plan PLANS too")
    grid = args.plan if args.plan is not None else args.grid
    if args.plan is None and grid is not None and "," in grid:
        grid = parse_times(grid)
    kwargs: dict[str, Any] = {}
    if args.teleport is not None:
        kwargs["teleport"] = args.teleport
    if args.borrow is not None:
        kwargs["borrow"] = args.borrow
    return grid, kwargs
