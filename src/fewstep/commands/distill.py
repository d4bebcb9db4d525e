"""``fewstep distill``: distill a diffusion model into a one-step generator (SiD, SiDA), fine-tune it
for a fixed few-step sampler (MMD) or into a consistency model (ECT), on the shared Trainer."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="distill a model into a one-step generator (sid, sida), fine-tune it for "
                                       "a few-step sampler (mmd) or into a consistency model (ect)", description=(
        "Checkpoints go to OUT/checkpoints/step-N (a model load_model, sample, eval and bench read), losses and "
        "the tracked FID to OUT/log.jsonl, FID against generator images to OUT/fid_vs_images.png, sample grids "
        "to OUT/samples. Run under torchrun for several GPUs. See docs/distillation.md."))
    p.add_argument("--teacher", default="bundled:fashion", help="the model to distill (default: bundled:fashion)")
    p.add_argument("--method", choices=["sid", "sida", "mmd", "ect"], default="sid",
                   help="sid, sida (one-step generators), mmd (fine-tune for a sampler), ect (consistency tuning)")
    p.add_argument("--data", help="real data (default: the teacher's); SiDA's discriminator and MMD use it")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT")
    p.add_argument("--steps", type=int, help="total steps (each: one fake-score and one generator update for SiD)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="generator (or model) learning rate")
    p.add_argument("--fake-lr", type=float, help="fake score learning rate (SiD/SiDA; default: --lr)")
    p.add_argument("--alpha", type=float, help="SiD's alpha (default 1.2)")
    p.add_argument("--init-from", help="SiDA: a SiD run or checkpoint to start generator and fake score from")
    p.add_argument("--solver", help="MMD: the sampler the model is fine-tuned for (default ddim)")
    p.add_argument("--nfe", type=int, help="MMD: its NFE (default 4)")
    p.add_argument("--stage-steps", type=int, help="ECT: steps per stage of the shrinking dt (default: steps / 8)")
    p.add_argument("--q", type=float, help="ECT: dt shrinks by this factor per stage (default 2)")
    p.add_argument("--huber-c", type=float, help="ECT: pseudo-Huber constant c (default 0: the L2 norm)")
    p.add_argument("--fid-every", type=int, help="steps between FID measurements and sample grids (default 200)")
    p.add_argument("--fid-n", type=int, help="samples per tracked FID (default 1000; 0: no FID)")
    p.add_argument("--ema-half-life", type=float, help="EMA half-life of the generator in images (default 5000)")
    p.add_argument("--ema-rampup", type=float, help="EMA ramp-up: half-life at most this x images seen (0: none; "
                                                    "default 0.05)")
    p.add_argument("--seed", type=int)
    p.add_argument("--checkpoint-every", type=float, help="seconds between checkpoints")
    p.add_argument("--checkpoint-every-steps", type=int, help="steps between checkpoints (e.g. = --fid-every, so "
                                                              "every FID point can be picked)")
    p.add_argument("--keep-checkpoints", type=int, help="newest checkpoints kept (0: all; default 2)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="bf16: train under bf16 autocast (about 2x faster per image on GPUs and on CPUs with AMX; "
                        "docs/training.md)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> tuple[dict, dict]:
    training = {key: getattr(args, name) for name, key in [
        ("steps", "steps"), ("batch_size", "batch_size"), ("lr", "lr"), ("seed", "seed"),
        ("checkpoint_every", "checkpoint_every_seconds"), ("fid_every", "sample_every_steps"),
        ("checkpoint_every_steps", "checkpoint_every_steps"), ("keep_checkpoints", "keep_checkpoints"),
        ("ema_half_life", "ema_half_life_images"), ("ema_rampup", "ema_rampup"), ("precision", "precision")]
        if getattr(args, name) is not None}
    objective = {key: getattr(args, name) for name, key in [
        ("fake_lr", "fake_lr"), ("alpha", "alpha"), ("init_from", "init_from"), ("solver", "solver"),
        ("nfe", "nfe"), ("fid_n", "fid_n"), ("stage_steps", "stage_steps"), ("q", "q"), ("huber_c", "huber_c")]
        if getattr(args, name) is not None}
    own = {"mmd": ("solver", "nfe"), "ect": ("stage_steps", "q", "huber_c"), "sid": ("fake_lr", "alpha", "init_from"),
           "sida": ("fake_lr", "alpha", "init_from")}
    bad = [k for k in ("fake_lr", "alpha", "init_from", "solver", "nfe", "stage_steps", "q", "huber_c")
           if k in objective and k not in own[args.method]]
    if bad:
        raise ValueError(f"--{bad[0].replace('_', '-')} does not apply to --method {args.method}")
    return training, objective


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import distill  # noqa: F401  (registers the objectives)
    from ..checkpoint import latest_checkpoint, newest_readable_config
    from ..data import load_data
    from ..devices import resolve_device
    from ..distill.config import distill_config
    from ..distill.tracking import plot_fid_curve
    from ..training.settings import resolve_config
    from ..training.trainer import Trainer, init_distributed_from_env

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    training, objective = _overrides(args)
    if args.resume:
        if latest_checkpoint(args.out) is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {Path(args.out) / 'checkpoints'}")
        _, config = newest_readable_config(args.out)
        config["training"].update(training)
        config["objective"].update(objective)
    else:
        if (Path(args.out) / "checkpoints").is_dir() and latest_checkpoint(args.out):
            raise ValueError(f"{args.out} already holds checkpoints; pass --resume to continue, or choose another --out")
        config = distill_config(args.teacher, args.method, args.data, objective=objective, training=training)
    resolve_config(config)  # refuse bad values before loading any data
    init_distributed_from_env()
    d = config["data"]
    data = load_data(d["spec"], d["resolution"], d["channels"])
    trainer = Trainer(config, data, args.out, device=device, progress=not args.no_progress)
    if args.resume:
        step = trainer.resume()
        if trainer.rank == 0:
            print(f"resumed from step {step}")
    elif trainer.rank == 0 and trainer.settings.sample_every_steps:
        trainer.preview()  # the FID of the initial generator: the first point of the curve
    trainer.fit()
    if trainer.rank == 0:
        plot_fid_curve(args.out)
        print(f"done: step {trainer.step}, checkpoint {latest_checkpoint(args.out)}")
    return 0
