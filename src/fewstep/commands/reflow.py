"""``fewstep reflow``: draw (noise, endpoint) pairs from a teacher's ODE and train a 2-rectified flow on them."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._plan import parse_times

#: Pairs use seeds from here on, far from the seeds 0.. that sampling and evaluation use, so a one-step sample of
#: the student is never scored on a noise it was trained to map.
DEFAULT_PAIR_SEED = 10_000_000

TRAINING_DEFAULTS = {"steps": 2000, "batch_size": 32, "lr": 1e-4, "warmup_steps": 0, "grad_clip": 1.0,
                     "ema_half_life_images": 5000.0, "ema_rampup": 0.05, "checkpoint_every_seconds": 300.0,
                     "sample_every_steps": 200, "log_every": 10}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reflow", help="reflow a model: teacher ODE pairs, then a 2-rectified flow sampled in 1-2 steps",
                       description=(
        "Liu et al. 2023 (Flow Straight and Fast). Draws --pairs (noise, endpoint) pairs from the teacher's ODE "
        "with --solver/--nfe into OUT/pairs (resumable .npz shards), then trains a student on the straight paths "
        "between them; checkpoints go to OUT/checkpoints/step-N (sample them with --solver euler --nfe 1 or 2). "
        "The student starts from the teacher's weights when it keeps the teacher's process and prediction (the "
        "default), from scratch otherwise (e.g. --process rectified_flow --prediction flow). See docs/training.md."))
    p.add_argument("--teacher", default="bundled:fashion", help="the model whose ODE is straightened")
    p.add_argument("--out", required=True, help="run folder (pairs in OUT/pairs)")
    p.add_argument("--resume", action="store_true", help="continue: draw the missing pairs, resume training")
    p.add_argument("--pairs-dir", help="pair folder (default OUT/pairs); an existing one with the same teacher and "
                                       "sampler is reused and completed, so several students can share one")
    p.add_argument("--pairs", type=int, default=4000, help="number of pairs (default 4000)")
    p.add_argument("--solver", default="dpm++2m", help="the teacher's ODE solver (default dpm++2m; deterministic)")
    p.add_argument("--nfe", type=int, default=10, help="its NFE per pair (default 10)")
    p.add_argument("--grid", help="its time grid (default: the teacher's)")
    p.add_argument("--pair-seed", type=int, default=DEFAULT_PAIR_SEED,
                   help=f"seed of the first pair (default {DEFAULT_PAIR_SEED:,}, away from evaluation seeds)")
    p.add_argument("--shard-size", type=int, default=500, help="pairs per .npz shard (default 500)")
    p.add_argument("--pairs-only", action="store_true", help="draw the pairs and stop")
    p.add_argument("--process", choices=["teacher", "rectified_flow"], default="teacher",
                   help="the student's process: the teacher's (warm start) or rectified flow (from scratch)")
    p.add_argument("--prediction", help="the student's prediction type (default: the teacher's; 'flow' with "
                                        "--process rectified_flow)")
    p.add_argument("--time-sampling", help="training times (default flow_uniform: rectified flow's uniform time)")
    p.add_argument("--weighting", help="loss weighting (default flow: rectified flow's velocity loss)")
    p.add_argument("--init-from", help="warm-start the student from this model instead of the teacher (e.g. a "
                                       "finished reflow checkpoint, to distil its few-step path)")
    p.add_argument("--path-weight", type=float,
                   help="share of path distillation in [0, 1]: the --path-nfe Euler solve trained end to end onto "
                        "the endpoints (Liu et al. sec. 2.3 for k steps; 1: path only; default 0)")
    p.add_argument("--path-nfe", type=int, help="NFE of the distilled path (default 2)")
    p.add_argument("--path-times", help="its times, comma-separated and decreasing, steps + 1 of them, the last "
                                        "replaced by clean data (e.g. 999,600,0; default the process's grid)")
    p.add_argument("--path-metric", choices=["l2", "pseudo_huber", "perceptual"],
                   help="distance of the solve to its endpoint: l2 (default), pseudo_huber (iCT's robust distance), "
                        "perceptual (LPIPS-style on --path-encoder's features)")
    p.add_argument("--path-huber-c", type=float, help="pseudo_huber's c per dimension (default iCT's 0.00054)")
    p.add_argument("--path-encoder", help="the perceptual metric's encoder: a run of `fewstep train --config "
                                          "fashion-encoder` (trained on the training split only)")
    p.add_argument("--adv-weight", type=float,
                   help="weight of the adversarial term: a patch discriminator tells the teacher's endpoints from the "
                        "path's samples and the student learns to fool it (default 0: off; needs --path-weight)")
    p.add_argument("--adv-r1", type=float, help="the discriminator's R1 penalty gamma (default 0.1)")
    p.add_argument("--adv-lr", type=float, help="the discriminator's learning rate (default: --lr)")
    p.add_argument("--adv-start-step", type=int,
                   help="step at which the adversarial term joins the student's loss (the discriminator trains from "
                        "step 0; default 0)")
    p.add_argument("--dm-weight", type=float,
                   help="weight of distribution matching (DMD2-style, SiD's loss): the path's samples of fresh noise "
                        "judged by the teacher's and a fake score's denoisers (default 0: off; needs --path-weight)")
    p.add_argument("--dm-alpha", type=float, help="SiD's alpha of the matching loss (default 1.2)")
    p.add_argument("--dm-tmax-index", type=int, help="SiD's highest noise level index of 1000 (default 800)")
    p.add_argument("--dm-fake-lr", type=float, help="the fake score's learning rate (default: --lr)")
    p.add_argument("--dm-start-step", type=int,
                   help="step at which matching joins the student's loss (the fake score trains from step 0; "
                        "default 0)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--sample-every", type=int, help="steps between sample grids (Euler, 1 NFE; 0: never)")
    p.add_argument("--checkpoint-every", type=float, help="seconds between checkpoints")
    p.add_argument("--checkpoint-every-steps", type=int, help="steps between checkpoints")
    p.add_argument("--keep-checkpoints", type=int, help="newest checkpoints kept (0: all; default 2)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="bf16: train under bf16 autocast (about 2x faster per image on GPUs and on CPUs with AMX; "
                        "docs/training.md)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


# flags copied into the objective section as they are (--path-times is parsed, --init-from defaulted)
OBJECTIVE_FLAGS = ("time_sampling", "weighting", "path_weight", "path_nfe", "path_metric", "path_huber_c",
                   "path_encoder", "adv_weight", "adv_r1", "adv_lr", "adv_start_step", "dm_weight", "dm_alpha",
                   "dm_tmax_index", "dm_fake_lr", "dm_start_step")


def _training_overrides(args: argparse.Namespace) -> dict:
    return {key: getattr(args, name) for name, key in [
        ("steps", "steps"), ("batch_size", "batch_size"), ("lr", "lr"), ("seed", "seed"),
        ("sample_every", "sample_every_steps"), ("checkpoint_every", "checkpoint_every_seconds"),
        ("checkpoint_every_steps", "checkpoint_every_steps"), ("keep_checkpoints", "keep_checkpoints"),
        ("precision", "precision")]
        if getattr(args, name) is not None}


def student_config(teacher: str, pairs: str, tcfg: dict, args: argparse.Namespace) -> dict:
    """The reflow run's config: the teacher's network, the chosen process and prediction, the warm start."""
    import copy

    process = copy.deepcopy(tcfg["process"]) if args.process == "teacher" else {"kind": "rectified_flow"}
    prediction = args.prediction or (tcfg["prediction"] if args.process == "teacher" else "flow")
    same = process == tcfg["process"] and prediction == tcfg["prediction"]
    if args.init_from and not same:
        raise ValueError("--init-from needs the teacher's process and prediction (a warm start keeps them); drop "
                         "--process/--prediction or --init-from")
    objective = {"kind": "reflow", "init_from": (args.init_from or teacher) if same else ""}
    for name in OBJECTIVE_FLAGS:
        if getattr(args, name) is not None:
            objective[name] = getattr(args, name)
    if args.path_times:
        objective["path_times"] = parse_times(args.path_times, "--path-times")
    training = {**TRAINING_DEFAULTS, **_training_overrides(args)}
    net = copy.deepcopy(tcfg["network"])
    return {"teacher": teacher, "pairs": pairs, "network": net, "process": process, "prediction": prediction,
            "sigma_data": float(tcfg.get("sigma_data", 0.5)),
            "data": {"spec": pairs, "resolution": net.get("resolution", 28), "channels": net.get("in_channels", 1)},
            "objective": objective, "training": training}


def _refuse_changed_objective(args: argparse.Namespace, objective: dict) -> None:
    """A resumed run keeps its objective: a flag that would change it is refused, naming it, never ignored."""
    given = {"init_from": args.init_from, **{name: getattr(args, name) for name in OBJECTIVE_FLAGS},
             "path_times": parse_times(args.path_times, "--path-times") if args.path_times else None}
    from dataclasses import asdict

    from ..reflow.objective import ReflowSettings

    have = {**asdict(ReflowSettings()), **objective}  # a key absent from an older run's config has its default
    changed = [f"--{k.replace('_', '-')} ({v!r}; the run has {have.get(k)!r})" for k, v in given.items()
               if v is not None and v != have.get(k)]
    if changed:
        raise ValueError(f"--resume keeps the run's objective; these flags would change it: {', '.join(changed)}. "
                         f"Drop them, or start a new --out (e.g. --init-from the run's newest checkpoint)")


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import reflow  # noqa: F401  (registers the objective)
    from ..checkpoint import latest_checkpoint, newest_readable_config
    from ..devices import resolve_device
    from ..distill.base import load_teacher
    from ..loading import load_model
    from ..reflow import draw_pairs, pair_data
    from ..training.settings import resolve_config
    from ..training.trainer import Trainer

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    pairs_dir = Path(args.pairs_dir) if args.pairs_dir else out / "pairs"
    has_ckpt = (out / "checkpoints").is_dir() and latest_checkpoint(out) is not None
    if has_ckpt and not args.resume:
        raise ValueError(f"{out} already holds checkpoints; pass --resume to continue, or choose another --out")
    if not args.pairs_dir and (out / "pairs" / "pairs.json").exists() and not args.resume:
        raise ValueError(f"{out / 'pairs'} already holds pairs; pass --resume to reuse them, or choose another --out")
    _, tcfg = load_teacher(args.teacher)  # refuses one-step generators and diffusers folders by name
    if has_ckpt:
        _, config = newest_readable_config(out)
        config["training"].update(_training_overrides(args))
        if args.pairs_dir and Path(args.pairs_dir).resolve() != Path(config["pairs"]).resolve():
            raise ValueError(f"{out} was trained on the pairs in {config['pairs']}, not --pairs-dir {args.pairs_dir}; "
                             f"resume without --pairs-dir, or train a new --out on the other pairs")
        pairs_dir = Path(config["pairs"])  # a resumed run keeps its own pair folder
        _refuse_changed_objective(args, config["objective"])
    else:
        config = student_config(args.teacher, str(pairs_dir), tcfg, args)
    config["objective"]["pairs_n"] = args.pairs
    resolve_config(config)  # refuse bad values before the (long) pair drawing
    teacher = load_model(args.teacher, device=device)
    draw_pairs(teacher, pairs_dir, args.pairs, solver=args.solver, nfe=args.nfe, grid=args.grid,
               seed=args.pair_seed, shard_size=args.shard_size, teacher_name=args.teacher, device=device,
               progress=not args.no_progress)
    print(f"pairs: {args.pairs} in {pairs_dir} ({args.solver}, {args.nfe} NFE)")
    if args.pairs_only:
        return 0
    del teacher
    if not config["objective"]["init_from"]:
        print("the student's process/prediction differ from the teacher's: training from scratch")
    trainer = Trainer(config, pair_data(pairs_dir, args.pairs), out, device=device,
                      progress=not args.no_progress)
    if has_ckpt:
        print(f"resumed from step {trainer.resume()}")
    trainer.fit()
    print(f"done: step {trainer.step}, checkpoint {latest_checkpoint(out)}")
    return 0
