"""``fewstep gaussian``: the training data's mean and covariance, saved next to a model for ``teleport``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._beside import beside_checkpoint


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gaussian", help="save the training data's Gaussian next to a model (for --teleport)",
                       description=(
                           "Computes the mean and covariance of the training data in the model's [-1, 1] range and "
                           "writes them as gaussian.safetensors (top --rank eigen-directions exactly, the rest as "
                           "their mean variance). load_model attaches it; `fewstep sample --teleport T` and "
                           "`--cache gaussian:steps=K` use it (Wang & Vastola 2024)."))
    p.add_argument("--model", required=True, help="a checkpoint folder or a run folder (bundled models are read-only: "
                                                  "give --out)")
    p.add_argument("--data", default=None, help="the training data: fashion-mnist[:train|:test], an idx file, a "
                                                ".npz/.npy image array or a folder of images (default: the data the "
                                                "checkpoint's config records it was trained on)")
    p.add_argument("--rank", type=int, default=128, help="eigen-directions kept exactly (default 128; the image "
                                                        "size for the full covariance)")
    p.add_argument("--per-class", action="store_true",
                   help="also one Gaussian per class of the (labelled) data, for class-conditional teleport "
                        "(`fewstep sample --class C --teleport T`); each kept at --rank as well")
    p.add_argument("--out", default=None, help="output file (default: <checkpoint>/gaussian.safetensors)")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import load_data, to_model_range
    from ..latent import latent_space_of
    from ..loading import load_model
    from ..teleport import GAUSSIAN_FILE, class_gaussians, data_gaussian, gaussian_of, save_gaussian, truncate

    out = Path(args.out) if args.out else beside_checkpoint(
        args.model, GAUSSIAN_FILE, f"pass --out FILE (then sample with gaussian=FILE, or copy it to a checkpoint's "
                                   f"{GAUSSIAN_FILE})")
    den = load_model(args.model)
    shape = den.sample_shape
    if shape is None:
        raise ValueError(f"model {args.model} does not declare its sample shape")
    dim = 1
    for v in shape:
        dim *= int(v)
    if not 1 <= args.rank <= dim:
        raise ValueError(f"--rank must be in 1..{dim} (the image size), got {args.rank}")
    if args.data is None:
        args.data = ((den.config or {}).get("data") or {}).get("spec")
        if not args.data:
            raise ValueError(f"model {args.model} does not record its training data; pass --data D")
    space = latent_space_of(den)
    if space is None:
        full = data_gaussian(args.data, tuple(int(v) for v in shape))
    else:  # a latent model teleports in its latent space: the Gaussian of the encoded training data
        if args.per_class:
            raise ValueError(f"--per-class for a latent model ({args.model}) is not supported yet; drop --per-class")
        images = load_data(args.data, resolution=space.image_shape[-1], channels=space.image_shape[0]).images
        with torch.no_grad():
            full = gaussian_of(images, lambda part: space.encode(to_model_range(part)))
    g = full if args.rank == dim else truncate(full, args.rank)
    total = float(full.eigvals[0].sum())
    kept = float(full.eigvals[0].sort(descending=True).values[:args.rank].sum())
    classes = None
    if args.per_class:
        classes = class_gaussians(args.data, tuple(int(v) for v in shape))
        classes = classes if args.rank == dim else truncate(classes, args.rank)
    save_gaussian(g, out, {"data": args.data, "shape": list(shape), "rank": args.rank}, classes)
    per_class = f", and one per class ({len(classes.means)} classes)" if classes is not None else ""
    print(f"wrote {out}: mean and covariance of {args.data} at {tuple(shape)}, rank {args.rank} "
          f"({100 * kept / total:.1f}% of the variance exactly, the rest as a floor){per_class}")
    return 0
