"""``fewstep dmcmc train-estimator|sample``: Denoising MCMC (Kim & Ye 2022; docs/dmcmc.md)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dmcmc", help="Denoising MCMC: a noise-level estimator, Langevin-Gibbs chains, then an ODE",
                       description="Denoising MCMC (Kim & Ye 2022): train a noise-level estimator for a model, then "
                                   "sample by Langevin-Gibbs chains on (image, noise level) whose states are each "
                                   "solved to clean data by an existing solver (docs/dmcmc.md).")
    dsub = p.add_subparsers(dest="dmcmc_command", metavar="ACTION")

    t = dsub.add_parser("train-estimator", help="train the noise-level estimator (a small CNN classifier)")
    t.add_argument("--model", required=True, help="the diffusion model whose noise process the levels follow")
    t.add_argument("--data", default="fashion-mnist", help="training images (as fewstep train --data)")
    t.add_argument("--out", required=True, help="estimator folder to write (must not exist)")
    t.add_argument("--levels", type=int, default=16, help="noise levels, uniform in logSNR (default 16)")
    t.add_argument("--t-low", type=float, default=None, help="lowest level's time (default: 2%% of t_max)")
    t.add_argument("--t-high", type=float, default=None, help="highest level's time (default: the process's start)")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--width", type=int, default=16)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    t.set_defaults(func=run_train)

    s = dsub.add_parser("sample", help="sample by Denoising MCMC with an exact NFE per image",
                        description="Chain c = seed // PER_CHAIN runs BURN_IN Langevin-Gibbs steps, then emits a state "
                                    "every STRIDE steps; each state is solved by SOLVER with ODE_NFE evaluations from "
                                    "its noise level. Network evaluations per image: ODE_NFE + STRIDE + "
                                    "BURN_IN / PER_CHAIN.")
    s.add_argument("--model", required=True)
    s.add_argument("--estimator", required=True, help="a folder from fewstep dmcmc train-estimator")
    s.add_argument("--solver", default="dpm++2m", help="the solver of each state's ODE (default dpm++2m)")
    s.add_argument("--ode-nfe", type=int, default=4)
    s.add_argument("--grid", default=None)
    s.add_argument("--burn-in", type=int, default=20)
    s.add_argument("--stride", type=int, default=1)
    s.add_argument("--per-chain", type=int, default=20)
    s.add_argument("--step-scale", type=float, default=0.05, help="Langevin step as a fraction of sigma(t)^2")
    s.add_argument("--t-max", type=float, default=None, help="keep the chain to levels at or below this time")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=None, help="chains' images per batch (default: 5 chains)")
    s.add_argument("--out", required=True, help="grid.png or file.npz")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(func=run_sample)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_train(args: argparse.Namespace) -> int:
    import torch

    from ..dmcmc import NoiseLevels, save_estimator, train_level_classifier
    from ..loading import load_model
    from ..metrics.data import load_images
    from ._destination import check_output

    out = check_output(args.out, "folder")
    if out.exists():
        raise ValueError(f"--out {out} already exists; choose a new folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    den = load_model(args.model)
    process = den.process
    t_high = float(process.t_start) if args.t_high is None else args.t_high
    t_low = 0.02 * float(process.t_max) if args.t_low is None else args.t_low
    levels = NoiseLevels.logsnr(process, args.levels, t_low, t_high)
    images = load_images(args.data)
    if den.sample_shape is not None and tuple(images.shape[1:]) != tuple(den.sample_shape):
        raise ValueError(f"--data images are {tuple(images.shape[1:])} but the model takes {tuple(den.sample_shape)}")
    resume = out.parent / f".{out.name}.resume.pt"
    net, log = train_level_classifier(process, images, levels, steps=args.steps, batch_size=args.batch_size,
                                      lr=args.lr, width=args.width, seed=args.seed, resume_file=resume,
                                      progress=not args.no_progress)
    print(f"noise-level estimator: {args.levels} levels t in [{t_low:g}, {t_high:g}], {args.steps} steps in "
          f"{log['seconds']:.0f} s: last-100-step loss {log['loss']:.3f}, accuracy {log['accuracy']:.3f}")
    save_estimator(out, net, levels, {"model": args.model, "data": args.data, "train": log})
    resume.unlink(missing_ok=True)
    print(f"wrote {out}")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..dmcmc import DMCMCConfig, dmcmc_generate, load_estimator, restrict_levels
    from ..imagegrid import save_image_grid, save_npz
    from ..loading import load_model
    from ._destination import parse_destination, check_writable

    dest = parse_destination(args.out)
    if dest.kind not in ("grid", "npz"):
        raise ValueError(f"--out {args.out}: give a grid image (.png) or an array (.npz)")
    check_writable(dest)
    if args.n < 1:
        raise ValueError("--n must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = DMCMCConfig(args.solver, args.ode_nfe, args.grid, args.burn_in, args.stride, args.per_chain, args.step_scale)
    den = load_model(args.model)
    post = load_estimator(args.estimator)
    if args.t_max is not None:
        post = restrict_levels(post, args.t_max)
    batch = args.batch_size or 5 * args.per_chain
    seeds = list(range(args.seed, args.seed + args.n))
    stats_all = {"chain_evals": 0, "ode_evals": 0}
    out = []
    for i in range(0, len(seeds), batch):
        stats: dict = {}
        out.append(dmcmc_generate(den, tuple(den.sample_shape), seeds[i:i + batch], post, cfg, stats=stats))
        for k in stats_all:
            stats_all[k] += stats[k]
    x = torch.cat(out)
    spent = (stats_all["chain_evals"] + stats_all["ode_evals"]) / len(seeds)
    print(f"DMCMC: {json.dumps(cfg.describe())}; network evaluations per image {spent:g} (planned "
          f"{float(cfg.nfe_per_image()):g}; more when a batch holds part of a chain), estimator calls "
          f"{post.calls}")
    if dest.kind == "grid":
        save_image_grid(x, dest.path)
    else:
        save_npz(x, dest.path, seeds=np.asarray(seeds))
    print(f"wrote {dest.path}")
    return 0
