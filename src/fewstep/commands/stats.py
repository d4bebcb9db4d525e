"""``fewstep stats``: reference feature statistics of a data set (``.npz``, pytorch-fid's layout)."""

from __future__ import annotations

import argparse


def add_extractor_args(p: argparse.ArgumentParser) -> None:
    """Options choosing the feature extractor, shared by ``stats``, ``eval`` and ``bench model``."""
    p.add_argument("--extractor", default="auto", choices=["auto", "fashion", "inception"],
                   help="feature extractor: FID's Inception-v3 or the shipped Fashion-MNIST classifier "
                        "(auto: Inception when its weights are found)")
    p.add_argument("--inception", default=None, metavar="PATH",
                   help="pt_inception-2015-12-05-6726825d.pth (else $FEWSTEP_INCEPTION)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per batch (default: 64 for sampling on a CPU, 500 on a GPU; 250 for `stats`)")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="compute reference feature statistics of a data set")
    p.add_argument("--data", required=True,
                   help="fashion-mnist:test|train, an IDX file, a .npy/.npz image array or a folder of images")
    p.add_argument("--out", required=True, help="output .npz (mu, sigma, extractor name and hash, features)")
    p.add_argument("--max-features", type=int, default=10_000, help="features kept for KID and precision/recall")
    p.add_argument("--resolution", type=int, default=None, metavar="N",
                   help="resize (and centre-crop) every image to N x N; needed when a folder mixes image sizes")
    add_extractor_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..metrics.data import check_channels, load_images
    from ..metrics.distributed import default_device, world
    from ..metrics.evaluate import images_stats
    from ..metrics.extractors import get_extractor
    from ._destination import check_output

    check_output(args.out)  # before the features are computed
    device = default_device(args.device)
    extractor = get_extractor(args.extractor, args.inception, device)
    if args.resolution is not None and args.resolution < 1:
        raise ValueError(f"--resolution must be a positive number of pixels, got {args.resolution}")
    images = load_images(args.data, args.resolution)
    check_channels(images, args.data, extractor)
    stats = images_stats(extractor, images, args.batch_size or 250, args.max_features)
    if world()[0] != 0:
        return 0
    print(f"stats: {stats.n} images, {extractor.name} ({stats.dim}-d, hash {stats.fingerprint[:12]}), "
          f"|mu| {float((stats.mu ** 2).sum() ** 0.5):.6g}, trace(sigma) {float(stats.sigma.trace()):.6g}", flush=True)
    stats.save(args.out)
    print(f"wrote {args.out}")
    return 0
