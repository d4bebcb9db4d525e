"""``fewstep sample``: draw images from a model into a PNG grid, a folder of PNGs, or an ``.npz``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate images from a model", description=(
        "Sample N images with per-image seeds SEED..SEED+N-1 (the same seed gives the same image at any batch "
        "size). --out ending in .png writes a grid, .npz an array, anything else a folder of PNGs that resumes "
        "where it stopped and never overwrites finished images."))
    p.add_argument("--model", required=True, help="a checkpoint folder, a run folder, a diffusers UNet2DModel folder, "
                                                  "or bundled:fashion")
    p.add_argument("--solver", default="dpm++2m")
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--grid", default=None, help="time grid: uniform, logsnr, quadratic or karras (default: the "
                                                   "process's, time-uniform for VP models, karras for EDM)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--class-label", type=int, default=None, help="class to condition on (class-conditional models)")
    p.add_argument("--raw", action="store_true", help="use the raw (non-EMA) weights of a checkpoint")
    p.add_argument("--out", required=True, help="grid.png, a folder, or file.npz")
    p.add_argument("--device", default=None)
    p.add_argument("--compile", action="store_true", help="run the network through torch.compile (faster after "
                                                          "a one-off compilation)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..api import generate
    from ..imagegrid import save_image_grid, save_npz, save_png, to_uint8
    from ..loading import load_model

    if args.n < 1 or args.batch_size < 1 or args.nfe < 1:
        raise ValueError("--n, --batch-size and --nfe must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    den = load_model(args.model, ema=not args.raw, device=device)
    shape = den.sample_shape
    if args.compile:
        from ..compiling import compile_denoiser

        compile_denoiser(den)
    out = Path(args.out)
    as_folder = out.suffix.lower() not in (".png", ".npz")
    seeds = list(range(args.seed, args.seed + args.n))
    if as_folder:
        out.mkdir(parents=True, exist_ok=True)
        todo = [s for s in seeds if not (out / f"{s:06d}.png").exists()]
        if len(todo) < len(seeds):
            print(f"{len(seeds) - len(todo)} of {len(seeds)} images already in {out}; generating the other {len(todo)}")
    else:
        todo = seeds
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="sample", unit="img", dynamic_ncols=True)
    images = []
    for i in range(0, len(todo), args.batch_size):
        chunk = todo[i:i + args.batch_size]
        cond = {}
        if args.class_label is not None:
            cond["class_labels"] = torch.full((len(chunk),), args.class_label, dtype=torch.long, device=device)
        with torch.no_grad():
            step = (lambda info: bar.set_postfix(step=info["i"] + 1, refresh=False)) if bar is not None else None
            x = generate(den, shape, chunk, args.solver, args.nfe, args.grid, device=device, callback=step, cond=cond)
        if as_folder:
            for s, img in zip(chunk, to_uint8(x)):
                save_png(img, out / f"{s:06d}.png")
        else:
            images.append(x.cpu())
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    if not as_folder:
        x = torch.cat(images)
        if out.suffix.lower() == ".png":
            save_image_grid(x, out)
        else:
            import numpy as np
            save_npz(x, out, seeds=np.asarray(seeds))
    print(f"wrote {out}")
    return 0
