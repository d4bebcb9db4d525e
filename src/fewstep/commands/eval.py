"""``fewstep eval``: FID, KID, precision/recall (and IS with Inception) of a model's samples."""

from __future__ import annotations

import argparse
import json

from .stats import add_extractor_args
from ._compose import add_guidance_args, check_guidance_args, guidance_from_args
from ..solvers import DEFAULT_SOLVER
from ._plan import add_plan_args, plan_from_args


def _shape(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="sample a model and score it against reference statistics")
    p.add_argument("--model", default="bundled:fashion", help="model name or path for fewstep.load_model")
    p.add_argument("--solver", default=DEFAULT_SOLVER, help=f"a solver name (`fewstep solvers`; default {DEFAULT_SOLVER})")
    p.add_argument("--nfe", type=int, default=10)
    add_plan_args(p)
    add_guidance_args(p)
    p.add_argument("--ref", default=None, help="reference .npz from `fewstep stats` (default: shipped statistics)")
    p.add_argument("--n", type=int, default=10_000, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="first seed; sample i uses seed + i")
    p.add_argument("--shape", type=_shape, default=None, help="sample shape C,H,W if the model does not say")
    p.add_argument("--out", default=None, help="also write the metrics as JSON here")
    p.add_argument("--compile", action="store_true", help="run the network through torch.compile (faster after "
                                                          "a one-off compilation)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: evaluate the network under bf16 autocast (docs/accel.md, Precision)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, batch jobs)")
    p.add_argument("--cache", default=None, metavar="SPEC", help="feature caching, e.g. deepcache:3, encoder:2, "
                   "taylorseer:interval=3,order=2, or a step schedule, gaussian:steps=3 (docs/accel.md)")
    add_extractor_args(p)
    from ._reference import add_reference_args

    add_reference_args(p, on_by_default=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from .._io import atomic_write_text
    from ..metrics.distributed import default_batch_size, default_device, world
    from ..metrics.evaluate import evaluate
    from ..metrics.extractors import get_extractor
    from ..metrics.models import load_denoiser, reference_stats, sample_shape
    from ..accel import parse_cache
    from ..metrics.sampling import solver_sample_fn

    if args.n < 2:
        raise ValueError(f"--n must be at least 2, got {args.n}")
    grid, plan_kwargs = plan_from_args(args)
    check_guidance_args(args)
    if args.class_label is not None and args.class_label.strip().lstrip("-").isdigit():
        args.class_label = int(args.class_label)
    if args.out:
        from ._destination import check_output

        check_output(args.out)  # before any sampling: the metrics are never lost to a bad --out
    cache = parse_cache(args.cache)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device(args.device)
    extractor = get_extractor(args.extractor, args.inception, device)
    ref = reference_stats(args.ref, extractor)
    denoiser = load_denoiser(args.model, device)
    shape = sample_shape(denoiser, args.shape)
    from ._reference import near_exact_from_args

    if args.reference:
        from ..latent import require_pixel_space

        require_pixel_space(denoiser, "--reference (the solution error against a near-exact solve)")
    near = near_exact_from_args(args, denoiser, shape, device) if args.reference else None  # before compiling
    if args.compile:  # composed as every command composes (fewstep.compose); cache and guidance in the sample function
        from ..compose import compose_sampler

        compose_sampler(denoiser, compile=True)
    sample_fn = solver_sample_fn(denoiser, shape, args.solver, args.nfe, grid, device, cache=cache,
                                 guidance=guidance_from_args(args, device), class_label=args.class_label,
                                 first_seed=args.seed, precision=args.precision, **plan_kwargs)
    batch_size = args.batch_size or default_batch_size(device)
    if world()[0] == 0:
        print(f"eval: {args.n} samples of {args.model} with {args.solver} at {args.nfe} NFE "
              f"({args.n * args.nfe:,} image-evaluations, batches of {batch_size}); the bar shows the ETA",
              flush=True)
    result = evaluate(sample_fn, args.n, extractor, ref, seed=args.seed, batch_size=batch_size,
                      desc=f"{args.solver} nfe={args.nfe}", reference=near, progress=not args.no_progress)
    if world()[0] != 0:
        return 0
    result = {"model": args.model, **sample_fn.description, "extractor": extractor.name, **result,
              **(sample_fn.evals_used or {}), "plan": sample_fn.plan.describe()}
    if near is not None:
        result["error_reference"] = near.description
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0
