"""``fewstep`` command line: a thin layer over the library.

Each sub-command lives in ``fewstep.commands.<name>`` and exposes ``add_parser(subparsers)``,
which registers its arguments and sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

COMMANDS = ["bench", "solvers", "train", "sample", "stats", "eval", "dc-search", "grid", "ems", "gaussian",
            "tune", "quantize", "restore", "invert", "probe", "distill", "info", "detect", "dmcmc", "prune",
            "reflow", "ema"]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="fewstep", description="Few-step diffusion generation, measured honestly.")
    parser.add_argument("--version", action="version", version=f"fewstep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"fewstep.commands.{name.replace('-', '_')}").add_parser(sub)
    return parser


def error_message(err: BaseException) -> str:
    """One line telling a person what went wrong; unexpected error types point to ``--debug``."""
    text = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else str(err)
    text = re.sub(r"\s*\n\s*", " ", str(text).strip()) or type(err).__name__
    if type(err).__name__ == "SafetensorError":  # safetensors' own type; no import needed to recognise it
        return f"cannot read a .safetensors weights file ({text}); is it complete?"
    if isinstance(err, ModuleNotFoundError):
        extra = " (pip install 'fewstep[diffusers]')" if (err.name or "").split(".")[0] == "diffusers" else ""
        return f"a missing dependency: {text}{extra}"
    if isinstance(err, ImportError):
        return f"cannot import: {text} (a dependency's version may not fit; rerun with --debug for the traceback)"
    if isinstance(err, KeyError):
        return f"missing entry {text!r} (rerun with --debug for the traceback)"
    if isinstance(err, NotImplementedError):
        return f"not implemented: {text}" if text != type(err).__name__ else "not implemented"
    if isinstance(err, _MESSAGES):
        return text
    return f"{type(err).__name__}: {text} (unexpected; rerun with --debug for the traceback)"


# Errors raised with a message written for people: shown as they are.
_MESSAGES = (ValueError, TypeError, OSError, RuntimeError, FloatingPointError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # every error is one line without a traceback, unless --debug
        if getattr(args, "debug", False):
            raise
        print(f"fewstep {args.command}: error: {error_message(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
