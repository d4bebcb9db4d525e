"""``fewstep ema``: rebuild an EMA of any length after training from a run's post-hoc EMA snapshots (EDM2)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ema", help="rebuild an EMA of any length from a run's post-hoc EMA snapshots", description=(
        "Post-hoc EMA (Karras et al. 2024, EDM2, sec. 3): a run trained with training.posthoc_ema_sigma_rels "
        "stores snapshots of power-function EMA tracks in RUN/posthoc-ema/. This fits the EMA profile of "
        "relative length --sigma-rel at --step (default: the newest snapshot) by least squares over the "
        "snapshots and writes it as an ordinary checkpoint folder (config.json + ema.safetensors) that "
        "fewstep sample / eval / load_model read."))
    p.add_argument("--run", required=True, help="the training run folder (holds posthoc-ema/ and checkpoints/)")
    p.add_argument("--sigma-rel", type=float, default=None,
                   help="relative EMA length, in (0, 0.2887); EDM2 found 0.05-0.15 best for its models")
    p.add_argument("--out", help="new checkpoint folder to write (must not exist)")
    p.add_argument("--step", type=int, default=None, help="training step of the EMA (default: the newest snapshot's)")
    p.add_argument("--list", action="store_true", help="list the run's snapshots and exit")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.posthoc_ema import list_snapshots, write_posthoc_checkpoint

    if args.list:
        for s in list_snapshots(args.run):
            print(f"{s.stem}  step {s.step:>9}  sigma_rel {s.sigma_rel:.4f}  gamma {s.gamma:.3f}  {s.path.name}")
        return 0
    if args.sigma_rel is None or not args.out:
        raise ValueError("fewstep ema needs --sigma-rel and --out (a new folder for the rebuilt checkpoint), or --list")
    out, info = write_posthoc_checkpoint(args.run, args.sigma_rel, args.out, step=args.step)
    print(json.dumps({"out": str(out), **info}, indent=2))
    return 0
