"""``fewstep`` command line: a thin layer over the library.

Each sub-command lives in ``fewstep.commands.<name>`` and exposes ``add_parser(subparsers)``,
which registers its arguments and sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ["bench", "solvers", "train", "sample", "stats", "eval"]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="fewstep", description="Few-step diffusion generation, measured honestly.")
    parser.add_argument("--version", action="version", version=f"fewstep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"fewstep.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError, RuntimeError, FloatingPointError) as err:
        # Library errors are written for people: show the message, not a traceback.
        if getattr(args, "debug", False):
            raise
        print(f"fewstep {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
