"""``fewstep ems``: DPM-Solver-v3's empirical model statistics of a model, resumable, saved next to it."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ._beside import beside_checkpoint


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ems", help="compute DPM-Solver-v3's empirical model statistics of a model", description=(
        "Computes l, s, b (Zheng et al. 2023, sec. 3.2) on a uniform log-SNR grid from noised data samples. "
        "Partial sums are saved per lambda in OUT/partial/, so an interrupted run continues where it stopped. "
        "By default OUT is <checkpoint>/ems/, where load_model finds it for the dpm_v3 solver."))
    p.add_argument("--model", required=True, help="a checkpoint folder, a run folder or a diffusers folder "
                                                  "(bundled models are read-only: give --out)")
    p.add_argument("--data", required=True, help="clean samples: fashion-mnist[:train|:test], an idx file, a .npz/.npy "
                                                 "image array or a folder of images")
    p.add_argument("--out", default=None, help="output folder (default: <checkpoint>/ems)")
    p.add_argument("--n-lambda", type=int, default=120, help="log-SNR grid intervals (default 120)")
    p.add_argument("--n-samples", type=int, default=1024, help="noised samples per lambda (default 1024)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float16", "float32"],
                   help="precision the statistics are stored in (default float32)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import load_data, to_model_range
    from ..devices import resolve_device
    from ..loading import load_model
    from ..tuning import compute_ems

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else beside_checkpoint(
        args.model, "ems", "pass --out DIR (then sample with ems=EMS.load(DIR) or copy DIR to a checkpoint's ems/)")
    device = resolve_device(args.device)
    den = load_model(args.model, device=device)
    shape = den.sample_shape
    data = load_data(args.data, shape[-1] if shape else None, shape[0] if shape else None)
    images = to_model_range(data.images)
    ems = compute_ems(den, images, n_lambda=args.n_lambda, n_samples=args.n_samples, batch_size=args.batch_size,
                      seed=args.seed, progress=not args.no_progress, state_dir=out / "partial")
    ems.meta["data"] = args.data
    ems.save(out, dtype=getattr(torch, args.dtype))
    shutil.rmtree(out / "partial", ignore_errors=True)
    print(f"wrote {out}: l, s, b on {args.n_lambda + 1} log-SNR points x {tuple(ems.sample_shape)} "
          f"from {args.n_samples} samples each")
    return 0
