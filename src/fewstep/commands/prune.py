"""``fewstep prune``: structured pruning of a fewstep UNet (LD-Pruner / Diff-Pruning), then an optional fine-tune."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune a UNet's channels/blocks (LD-Pruner, Diff-Pruning) and fine-tune it",
                       description=(
        "Score every prunable unit of a fewstep UNet (each GroupNorm group of a residual block's hidden channels, "
        "each attention block), remove RATIO of the prunable channels, and write the smaller model. 'ld' "
        "(LD-Pruner): change of the output mean/std when a unit is removed, one global ranking; 'taylor' "
        "(Diff-Pruning): first-order Taylor importance of the denoising loss over the low-noise timesteps, the "
        "same fraction removed from every block. Without --finetune-steps OUT is the pruned model; with it "
        "OUT/pruned is the pruned model and OUT a fine-tune run warm-started from it (rerun the same command to "
        "resume), which 'fewstep sample --model OUT' reads. See docs/pruning.md."))
    p.add_argument("--model", required=True, help="a fewstep UNet checkpoint folder, a run folder, or bundled:fashion")
    p.add_argument("--ratio", type=float, required=True,
                   help="fraction of the prunable channels (or, with --budget macs, multiply-adds) to remove, in (0, 1)")
    p.add_argument("--method", default="ld", choices=["ld", "taylor"])
    p.add_argument("--budget", default="channels", choices=["channels", "macs"],
                   help="what --ratio counts: channels (the papers' convention) or multiply-adds (ld then ranks by "
                        "score per multiply-add; taylor's per-block fraction is the same either way)")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--finetune-steps", type=int, default=0, help="optimiser steps of the fine-tune (0: none)")
    p.add_argument("--lr", type=float, default=None, help="fine-tune learning rate (default: the model's training lr)")
    p.add_argument("--distill", type=float, nargs="?", const=1.0, default=None, metavar="W",
                   help="fine-tune against the unpruned model's predictions (output distillation) with weight W "
                        "(default 1: the teacher's targets only; the rest on the data)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                   help="the fine-tune's training.precision (bf16: about 2x faster per image on GPUs and on CPUs "
                        "with AMX; default: the source model's)")
    p.add_argument("--data", default=None, help="images to score and fine-tune on (default: the model's training data)")
    p.add_argument("--images", type=int, default=32, help="images the scores are computed on")
    p.add_argument("--levels", type=int, default=3, help="ld: noise levels of the output statistics")
    p.add_argument("--steps", type=int, default=100, help="taylor: timesteps visited from the clean end")
    p.add_argument("--thr", type=float, default=0.05, help="taylor: stop below this fraction of the largest loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    from ..checkpoint import latest_checkpoint, read_config
    from ..data import load_data, to_model_range
    from ..loading import load_model
    from ..pruning import check_budget, check_prunable, check_ratio, prunable_units
    from ..pruning.api import finetune_config, prune_denoiser, save_pruned
    from ._destination import check_output

    check_ratio(args.ratio)
    check_budget(args.budget)
    for name in ("images", "levels", "steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.finetune_steps < 0:
        raise ValueError(f"--finetune-steps must be 0 or positive, got {args.finetune_steps}")
    out = Path(args.out)
    target = out / "pruned" if args.finetune_steps else out
    if target.exists() and not args.finetune_steps:
        raise FileExistsError(f"--out {out} already exists; choose a new folder (pruned models are never overwritten)")
    check_output(out, "folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    if target.exists():  # a rerun of a fine-tune: the pruned model is kept, only the training resumes
        recorded = read_config(target).get("pruning", {})
        asked = (args.model, args.method, args.ratio, args.budget)
        if (recorded.get("source"), recorded.get("method"), recorded.get("ratio"),
                recorded.get("budget", "channels")) != asked:
            raise ValueError(f"{target} was pruned from {recorded.get('source')} with --method "
                             f"{recorded.get('method')} --ratio {recorded.get('ratio')} --budget "
                             f"{recorded.get('budget', 'channels')}; use another --out")
        print(f"reusing the pruned model in {target}")
    else:
        den = load_model(args.model)
        check_prunable(den.net)
        cfg = den.config or {}
        spec = args.data or cfg.get("data", {}).get("spec")
        if not spec:
            raise ValueError(f"{args.model} does not record its training data; pass --data")
        images = load_data(spec, cfg["network"].get("resolution", 28), cfg["network"].get("in_channels", 1)).images
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[:args.images]
        x0 = to_model_range(images[pick])
        n_units = len(prunable_units(den.net))
        total = n_units if args.method == "ld" else args.steps
        from tqdm import tqdm

        with tqdm(total=total, desc=f"{args.method} scores", unit="unit" if args.method == "ld" else "step",
                  disable=args.no_progress) as bar:
            result = prune_denoiser(den, x0, args.ratio, args.method, levels=args.levels, steps=args.steps,
                                    thr=args.thr, seed=args.seed, budget=args.budget, progress=bar.update)
        print(f"pruned {len(result.removed)} of {n_units} units: {result.params_before:,} -> "
              f"{result.params_after:,} parameters ({result.params_after / result.params_before:.1%}), "
              f"{result.details['macs_removed']:.1%} of the prunable multiply-adds; "
              f"scoring took {result.seconds:.0f} CPU-s", flush=True)
        save_pruned(result, target, args.model)
        print(f"wrote {target}")
    if not args.finetune_steps:
        return 0
    from ..training.trainer import Trainer

    config = finetune_config(target, args.finetune_steps, lr=args.lr, data=args.data,
                             teacher=args.model if args.distill is not None else None,
                             teacher_weight=args.distill if args.distill is not None else 1.0,
                             precision=args.precision)
    data = load_data(config["data"]["spec"], config["data"]["resolution"], config["data"]["channels"])
    trainer = Trainer(config, data, out, progress=not args.no_progress)
    if latest_checkpoint(out):
        print(f"resumed the fine-tune from step {trainer.resume()}")
    start = time.process_time()
    trainer.fit()
    print(f"fine-tuned to step {trainer.step} in {(time.process_time() - start) / 60:.1f} CPU-minutes (this call); "
          f"model: {out} (newest checkpoint {latest_checkpoint(out)})")
    return 0
