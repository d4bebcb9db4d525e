"""``fewstep invert``: invert real images, reconstruct them, and edit them by changing the class."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

METHODS = ("ddim", "edit-friendly")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("invert", help="invert real images to noise, reconstruct them and edit their class",
                       description=(
        "Invert images with DDIM inversion (the probability-flow ODE run backwards with a deterministic solver) "
        "or edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024), reconstruct them, and with "
        "--edit-class regenerate them under another class. Writes a grid with one row per image: original | "
        "reconstruction [| edit], and prints the reconstruction RMSE and PSNR (docs/inversion.md)."))
    p.add_argument("--model", required=True, help="a checkpoint folder, a run folder, or bundled:fashion")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", nargs="+", metavar="PATH", help="image files, already of the model's size and channels")
    src.add_argument("--data", metavar="SPEC", help="a data set, e.g. fashion-mnist:test (with --index)")
    p.add_argument("--index", type=int, nargs="+", default=[0], metavar="I", help="indices into --data (default: 0)")
    p.add_argument("--method", choices=METHODS, default="ddim")
    p.add_argument("--solver", default=None, help="deterministic solver for ddim (default ddim); "
                                                  "`fewstep solvers` lists them")
    p.add_argument("--nfe", type=int, default=50, help="evaluations to invert (the same again to reconstruct)")
    p.add_argument("--grid", default=None, help="time grid (default: the process's)")
    p.add_argument("--class", dest="class_label", type=int, default=None,
                   help="class to invert with (class-conditional models; default: the data's labels, if any)")
    p.add_argument("--edit-class", type=int, default=None, help="class to regenerate with: the edit")
    p.add_argument("--skip", type=int, default=0, help="edit-friendly: start the edit this many steps after t_max "
                                                      "(the paper's T_skip)")
    p.add_argument("--seed", type=int, default=0, help="edit-friendly: seed of image k's noise is SEED + k")
    p.add_argument("--out", required=True, help="grid image (.png, .jpg, .webp)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _read_images(paths: list[str], shape: tuple[int, ...]) -> Any:
    """Image files as a ``[-1, 1]`` batch; each must already have the model's size and channels."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    from ..data import to_model_range

    c, h, w = shape
    out = []
    for path in paths:
        try:
            with Image.open(path) as img:
                gray = img.mode in ("1", "L", "I", "I;16", "F")
                img = img.convert("L" if gray else "RGB")
                arr = np.asarray(img, dtype=np.uint8)
        except FileNotFoundError:
            raise FileNotFoundError(f"--image {path}: no such file") from None
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"--image {path}: cannot read it as an image ({err})") from None
        channels = 1 if gray else 3
        if channels != c:
            fix = "convert it to grayscale" if c == 1 else "convert it to RGB"
            raise ValueError(f"--image {path} has {channels} channel(s) but the model takes {c}; {fix}")
        if arr.shape[:2] != (h, w):
            raise ValueError(f"--image {path} is {arr.shape[1]}x{arr.shape[0]} pixels but the model takes {w}x{h}; "
                             f"resize it")
        out.append(torch.from_numpy(arr.reshape(h, w, c).copy()).permute(2, 0, 1))
    return to_model_range(torch.stack(out)), None


def _read_data(spec: str, indices: list[int], shape: tuple[int, ...]) -> Any:
    from ..data import load_data, to_model_range

    data = load_data(spec, resolution=shape[1], channels=shape[0])
    bad = [i for i in indices if not 0 <= i < len(data)]
    if bad:
        raise ValueError(f"--index {bad[0]} is outside data set {spec!r} of {len(data)} images")
    labels = data.labels[indices] if data.labels is not None else None
    return to_model_range(data.images[indices]), labels


def _classes(den: Any, args: argparse.Namespace, labels: Any, n: int) -> tuple[Any, Any]:
    """The conditioning to invert with and to edit with (``None``: unconditional)."""
    import torch

    config = den.config or {}
    num_classes = int(config.get("network", {}).get("num_classes", 0))
    asked = [v for v in (args.class_label, args.edit_class) if v is not None]
    if asked and num_classes == 0:
        raise ValueError(f"model {args.model} is unconditional (it has no classes); drop --class and --edit-class, "
                         f"or use a class-conditional model")
    for v in asked:
        if not 0 <= v < num_classes:
            raise ValueError(f"class {v} is outside the model's classes 0..{num_classes - 1}")

    def cond(labels_: Any) -> Any:
        return None if labels_ is None else {"class_labels": labels_.to(torch.long)}

    if num_classes == 0:
        return None, None
    if args.class_label is not None:
        labels = torch.full((n,), args.class_label)
    elif labels is not None and int(labels.max()) >= num_classes:
        labels = None  # the data's labels are not this model's classes: invert unconditionally (the null class)
    edit = None if args.edit_class is None else cond(torch.full((n,), args.edit_class))
    return cond(labels), edit


def run(args: argparse.Namespace) -> int:
    import torch

    from ..devices import resolve_device
    from ..imagegrid import save_image_grid
    from ..inversion import (check_invertible, ddim_invert, ddim_reconstruct, edit_friendly_invert,
                             edit_friendly_sample)
    from ..loading import load_model
    from ..metrics.solution_error import per_sample_rmse, summarize_errors
    from ._destination import check_writable, parse_destination

    if args.nfe < 1:
        raise ValueError("--nfe must be positive")
    if args.method == "edit-friendly" and args.solver is not None:
        raise ValueError("--solver is for --method ddim; edit-friendly inversion runs the DDPM sampler")
    if args.method == "ddim" and args.skip:
        raise ValueError("--skip is for --method edit-friendly (DDIM inversion edits from the inverted noise)")
    solver = args.solver or "ddim"
    if args.method == "ddim":
        check_invertible(solver)
    dest = parse_destination(args.out)
    if dest.kind != "grid":
        raise ValueError(f"--out {args.out}: give a grid image file (.png, .jpg, .jpeg or .webp)")
    check_writable(dest)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    den = load_model(args.model, device=device)
    shape = tuple(den.sample_shape)
    images, labels = _read_images(args.image, shape) if args.image else _read_data(args.data, args.index, shape)
    images = images.to(device)
    cond, edit_cond = _classes(den, args, labels, len(images))
    cond = None if cond is None else {k: v.to(device) for k, v in cond.items()}
    edit_cond = None if edit_cond is None else {k: v.to(device) for k, v in edit_cond.items()}

    if args.method == "ddim":
        x_T = ddim_invert(den, images, solver, args.nfe, args.grid, cond=cond)
        recon = ddim_reconstruct(den, x_T, solver, args.nfe, args.grid, cond=cond)
        edit = None if edit_cond is None else ddim_reconstruct(den, x_T, solver, args.nfe, args.grid, cond=edit_cond)
        how = f"DDIM inversion with {solver}, {args.nfe} NFE each way"
    else:
        inv = edit_friendly_invert(den, images, args.nfe, args.grid, cond=cond,
                                   seeds=range(args.seed, args.seed + len(images)))
        recon = edit_friendly_sample(den, inv)
        edit = None if edit_cond is None else edit_friendly_sample(den, inv, cond=edit_cond, skip=args.skip)
        how = f"edit-friendly DDPM inversion, {args.nfe} NFE each way"
    columns = [images, recon] + ([edit] if edit is not None else [])
    grid = torch.stack([c.float().cpu() for c in columns], dim=1).flatten(0, 1)
    save_image_grid(grid, dest.path, nrow=len(columns))
    err = summarize_errors(per_sample_rmse(recon, images).numpy())
    print(f"{how}: reconstruction RMSE {err['rmse']:.4g} (median {err['rmse_median']:.4g}), "
          f"PSNR {err['psnr']:.2f} dB over {len(images)} image(s)")
    if edit is not None:
        moved = summarize_errors(per_sample_rmse(edit, images).numpy())
        print(f"edit to class {args.edit_class}: RMSE to the original {moved['rmse']:.4g}")
    print(f"wrote {Path(dest.path)} (rows: images; columns: original | reconstruction"
          f"{' | edit' if edit is not None else ''})")
    return 0
