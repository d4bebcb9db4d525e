"""``fewstep solvers``: list the registered solvers."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("solvers", help="list the registered solvers with their order, cost and paper")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .. import solvers

    print(f"{'name':<14}{'order':>6}{'NFE/step':>10}{'min NFE':>9}  {'kind':<14}paper")
    for s in solvers.specs():
        kind = "stochastic" if s.stochastic else ("adaptive" if not s.fixed_nfe else "deterministic")
        print(f"{s.name:<14}{s.order:>6}{s.nfe_per_step:>10g}{s.min_nfe:>9}  {kind:<14}{s.paper}")
    return 0
