"""``fewstep restore``: inpainting, super-resolution and denoising of data images with a diffusion prior."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._destination import check_writable, parse_destination

#: Measurement noise of image ``i`` is drawn from seed ``MEASUREMENT_SEED + seed + i`` (the restoration from ``seed + i``).
MEASUREMENT_SEED = 1_000_000


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="inpaint, super-resolve or denoise data images with a diffusion prior",
                       description=(
        "Degrade N data images (y = A(x) + sigma_y n), restore them with RePaint, DPS or RED-diff and print PSNR "
        "and SSIM to the originals. --out grid.png writes a before/after grid (measurement | restored | ground "
        "truth per image); --out FOLDER writes restored/ and measurement/ PNGs, grid.png and scores.json. "
        "docs/restoration.md"))
    p.add_argument("--model", required=True, help="a checkpoint folder or bundled:fashion")
    p.add_argument("--task", required=True, choices=("inpaint", "sr", "denoise"))
    p.add_argument("--mask", default=None, help="inpainting mask: box, random or half (default box)")
    p.add_argument("--fraction", type=float, default=0.7, help="random mask: the fraction of pixels missing")
    p.add_argument("--mask-seed", type=int, default=0, help="random mask: its seed")
    p.add_argument("--box-size", type=int, default=None, help="box mask: side of the missing box (default H/2)")
    p.add_argument("--side", default="right", help="half mask: the missing half (left, right, top, bottom)")
    p.add_argument("--factor", type=int, default=2, help="sr: the downsampling factor (average pooling)")
    p.add_argument("--sigma-y", type=float, default=0.05, help="measurement noise std on the [-1, 1] scale")
    p.add_argument("--method", default="dps", help="repaint (inpainting only), dps or reddiff")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option: repaint jump=, resample=; dps zeta=; reddiff lam=, lr=")
    p.add_argument("--nfe", type=int, default=50)
    p.add_argument("--grid", default=None, help="time grid (default: the process's)")
    p.add_argument("--data", default="fashion-mnist:test", help="images to degrade (a --data spec of fewstep train)")
    p.add_argument("--first", type=int, default=0, help="index of the first data image")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="image i draws its noise from seed + i")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True, help="grid.png (.jpg, .webp) or a folder")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def parse_options(items: list[str]) -> dict[str, Any]:
    """``["jump=5", "zeta=0.5"]`` -> ``{"jump": 5, "zeta": 0.5}`` (int when the value is an integer)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--opt {item}: expected KEY=VALUE, e.g. --opt zeta=0.5")
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                raise ValueError(f"--opt {item}: {value!r} is not a number") from None
    return out


def make_operator(args: argparse.Namespace, shape: tuple[int, ...]):
    """The operator of ``--task`` (and ``--mask`` ...) for images of ``shape``."""
    from ..restoration import denoise, inpaint, make_mask, super_resolution

    if args.task == "inpaint":
        return inpaint(make_mask(args.mask or "box", shape, fraction=args.fraction, seed=args.mask_seed,
                                 size=args.box_size, side=args.side))
    return super_resolution(args.factor) if args.task == "sr" else denoise()


def run(args: argparse.Namespace) -> int:
    import torch

    from ..restoration import MASKS, get_method, restore_nfe

    if args.n < 1 or args.batch_size < 1 or args.nfe < 1 or args.first < 0:
        raise ValueError("--n, --batch-size and --nfe must be positive and --first >= 0")
    if args.task != "inpaint" and args.mask is not None:
        raise ValueError(f"--mask is for --task inpaint; --task {args.task} takes no mask")
    if args.mask is not None and args.mask not in MASKS:
        raise ValueError(f"unknown --mask {args.mask}; valid masks: {', '.join(MASKS)}")
    spec = get_method(args.method)
    if spec.inpaint_only and args.task != "inpaint":
        raise ValueError(f"--method {spec.name} only inpaints; use --method dps or reddiff for --task {args.task}")
    options = parse_options(args.opt)
    spec.check_options(options)
    nfe_used = restore_nfe(args.method, args.nfe, **options)
    if args.sigma_y < 0:
        raise ValueError(f"--sigma-y must be >= 0, got {args.sigma_y}")
    dest = parse_destination(args.out)
    if dest.kind == "npz":
        raise ValueError(f"--out {args.out}: restore writes a grid image or a folder, not .npz")
    check_writable(dest)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ..devices import resolve_device
    from ..loading import load_model
    from ..metrics.data import load_images

    device = resolve_device(args.device)
    den = load_model(args.model, device=device)
    shape = tuple(den.sample_shape)
    operator = make_operator(args, shape)
    operator.check(shape)
    images = load_images(args.data)
    if tuple(images.shape[1:]) != shape:
        raise ValueError(f"--data {args.data} holds {tuple(images.shape[1:])} images but the model makes {shape}; "
                         f"use data of the model's resolution")
    if args.first + args.n > len(images):
        raise ValueError(f"--data {args.data} holds {len(images)} images; --first {args.first} --n {args.n} asks for more")
    truth = images[args.first:args.first + args.n]
    measured, restored = _restore_all(den, operator, truth, args, options, device)
    return _report(measured, restored, truth, operator, args, dest, nfe_used)


def _restore_all(den: Any, operator: Any, truth: Any, args: argparse.Namespace, options: dict[str, Any],
                 device: Any) -> tuple[Any, Any]:
    """Measure and restore ``truth`` in batches (per-image seeds: the batch size changes nothing)."""
    import torch

    from ..api import generators
    from ..restoration import measure, restore

    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(truth), desc=f"restore ({args.method})", unit="img", dynamic_ncols=True)
    ys, outs = [], []
    try:
        for i in range(0, len(truth), args.batch_size):
            seeds = list(range(args.seed + i, args.seed + min(i + args.batch_size, len(truth))))
            x = truth[i:i + len(seeds)].to(device)
            y = measure(operator, x, args.sigma_y, generators(MEASUREMENT_SEED + s for s in seeds))
            step = (lambda info: bar.set_postfix(step=info["i"] + 1, refresh=False)) if bar is not None else None
            outs.append(restore(den, y, operator, seeds, args.method, args.nfe, args.grid, callback=step,
                                **options).detach().cpu())
            ys.append(y.cpu())
            if bar is not None:
                bar.update(len(seeds))
    finally:
        if bar is not None:
            bar.close()
    return torch.cat(ys), torch.cat(outs)


def before_after(shown: Any, restored: Any, truth: Any) -> Any:
    """Interleave ``(measurement, restored, truth)`` per image for a grid of triplets."""
    import torch

    return torch.stack([shown, restored, truth], 1).flatten(0, 1)


def _report(measured: Any, restored: Any, truth: Any, operator: Any, args: argparse.Namespace, dest: Any,
            nfe_used: int) -> int:
    from .._io import atomic_write_text
    from ..imagegrid import save_image_grid, save_png, to_uint8
    from ..restoration.scores import image_scores, summarize_scores

    scores = image_scores(restored, truth)
    before = image_scores(operator.pinv(measured), truth)
    summary = {"task": args.task, "mask": args.mask or ("box" if args.task == "inpaint" else None),
               "method": args.method, "nfe": nfe_used, "sigma_y": args.sigma_y, "n": len(truth),
               **summarize_scores(scores), "measurement_psnr": float(before["psnr"].mean()),
               "measurement_ssim": float(before["ssim"].mean())}
    grid = before_after(operator.pinv(measured), restored, truth)
    cols = 3 * min(4, len(truth))
    if dest.kind == "grid":
        save_image_grid(grid, dest.path, nrow=cols)
    else:
        for name, batch in (("restored", restored), ("measurement", operator.pinv(measured))):
            for k, img in enumerate(to_uint8(batch)):
                save_png(img, dest.path / name / f"{args.first + k:05d}.png")
        save_image_grid(grid, dest.path / "grid.png", nrow=cols)
        atomic_write_text(dest.path / "scores.json", json.dumps(summary, indent=1) + "\n")
    print(f"{args.method} {args.task} (NFE {nfe_used}, {len(truth)} images): PSNR {summary['psnr']:.2f} dB, "
          f"SSIM {summary['ssim']:.4f}  (measurement A^+ y: PSNR {summary['measurement_psnr']:.2f} dB, "
          f"SSIM {summary['measurement_ssim']:.4f})")
    print(f"wrote {dest.path}")
    return 0
