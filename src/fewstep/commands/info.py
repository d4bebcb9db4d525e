"""``fewstep info``: what fewstep makes of a model (:func:`fewstep.modelinfo.model_info`)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a model's process, prediction type, where sampling starts and why, attached "
                                    "data and which diffusers config keys were honoured, mapped or ignored")
    p.add_argument("--model", required=True, help="a checkpoint folder, a run folder, a diffusers UNet folder "
                                                  "or bundled:fashion")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..modelinfo import model_info

    info = model_info(args.model)
    print(json.dumps(info.as_dict(), indent=2, default=str) if args.json else "\n".join(info.lines()))
    return 0
