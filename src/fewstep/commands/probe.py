"""``fewstep probe``: linear-probe accuracy of a diffusion model's features (DDAE, Xiang et al. 2023)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="linear-probe classification accuracy of a model's intermediate features",
                       description=(
        "Noise each image to time T (image i of a split with its own seed), run the network once, average a "
        "block's output over space, and fit a multinomial logistic regression (L-BFGS; L2 weight chosen on a "
        "10%% hold-out of the training features) on the first N training images; prints the accuracy on the "
        "first M test images. --tap pixels is the baseline: the raw pixels (docs/inversion.md, 'Diffusion "
        "features')."))
    p.add_argument("--model", default=None, help="a checkpoint folder, a run folder, or bundled:fashion "
                                                 "(not needed for --tap pixels)")
    p.add_argument("--data", default="fashion-mnist", help="a labelled data set with train and test splits: "
                                                           "fashion-mnist (default) or fashion-mnist:DIR")
    p.add_argument("--t", type=float, default=None, help="time of the model's process to noise to "
                                                         "(e.g. 0..999 for a discrete VP model)")
    p.add_argument("--tap", default="mid", help="block(s) to read, comma-separated: UNet in, down.K, mid, up.K, "
                                                "deep; DiT block.K; or pixels")
    p.add_argument("--train-n", type=int, default=10000)
    p.add_argument("--test-n", type=int, default=10000)
    p.add_argument("--l2", default="auto", help="L2 weight, or auto: the best of 1e-5..1e-1 on a 10%% hold-out")
    p.add_argument("--seed", type=int, default=0, help="noise seeds: SEED + i (train), SEED + 10^6 + i (test)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _root(spec: str) -> str:
    """The Fashion-MNIST folder that ``--data`` names."""
    from ..data import _fashion_spec

    if spec != "fashion-mnist" and not spec.startswith("fashion-mnist:"):
        raise ValueError(f"--data {spec}: the probe needs a labelled train and test split; use fashion-mnist "
                         f"or fashion-mnist:DIR")
    rest = spec.partition(":")[2]
    if rest in ("train", "test", "t10k"):
        raise ValueError(f"--data {spec}: name the data set without a split (the probe uses both)")
    return _fashion_spec(spec)[0]


def run(args: argparse.Namespace) -> int:
    import torch

    from .._io import atomic_write_text
    from ..data import load_fashion_mnist
    from ..devices import resolve_device
    from ..diffusion_features import PIXELS, dataset_features
    from ..probe import fit_linear_probe, select_l2

    taps = [name.strip() for name in args.tap.split(",") if name.strip()]
    if not taps:
        raise ValueError("--tap names no block; e.g. --tap mid")
    pixels_only = taps == [PIXELS]
    if not pixels_only and (args.model is None or args.t is None):
        raise ValueError("--model and --t are needed for network features (only --tap pixels needs neither)")
    if args.train_n < 20 or args.test_n < 1 or args.batch_size < 1:
        raise ValueError("--train-n must be at least 20 and --test-n, --batch-size positive")
    try:
        l2 = None if args.l2 == "auto" else float(args.l2)
    except ValueError:
        l2 = -1.0
    if l2 is not None and not l2 >= 0:
        raise ValueError(f"--l2 {args.l2}: give a number >= 0 or auto")
    root = _root(args.data)
    train, test = load_fashion_mnist(root, "train"), load_fashion_mnist(root, "test")
    if train.labels is None or test.labels is None:
        raise ValueError(f"{root} has no label files; the probe needs labels")
    if args.train_n > len(train) or args.test_n > len(test):
        raise ValueError(f"--train-n/--test-n exceed the data ({len(train)} training, {len(test)} test images)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    den = None
    if not pixels_only:
        from ..loading import load_model

        den = load_model(args.model, device=device)
        shape = tuple(den.sample_shape)
        if shape != tuple(train.images.shape[1:]):
            raise ValueError(f"the model takes {shape} images but the data are {tuple(train.images.shape[1:])}")
        den.process.check_time(args.t)
        if int((den.config or {}).get("network", {}).get("num_classes", 0)):
            print("class-conditional model: its features are read under the null class (the label is never given)")
    common = dict(batch_size=args.batch_size, device=device, progress=not args.no_progress)
    f_train = dataset_features(den, train.images[:args.train_n], args.t or 0.0, taps, seed=args.seed, **common)
    f_test = dataset_features(den, test.images[:args.test_n], args.t or 0.0, taps, seed=args.seed + 10**6, **common)
    y_train, y_test = train.labels[:args.train_n], test.labels[:args.test_n]
    scores = None
    if l2 is None:
        l2, scores = select_l2(f_train, y_train, 10)
    probe = fit_linear_probe(f_train, y_train, 10, l2=l2)
    acc, train_acc = probe.accuracy(f_test, y_test), probe.accuracy(f_train, y_train)
    where = "raw pixels" if pixels_only else f"{'+'.join(taps)} of {args.model} at t={args.t:g}"
    print(f"linear probe on {where} ({f_train.shape[1]} features, l2 {l2:g}"
          f"{' chosen on a 10% hold-out' if scores else ''}): test accuracy {acc:.4f} on {len(y_test)} images "
          f"(train accuracy {train_acc:.4f} on {len(y_train)})")
    if args.json:
        result = {"model": args.model, "t": args.t, "taps": taps, "train_n": args.train_n, "test_n": args.test_n,
                  "seed": args.seed, "features": int(f_train.shape[1]), "l2": l2, "holdout_accuracy": scores,
                  "test_accuracy": acc, "train_accuracy": train_acc}
        atomic_write_text(args.json, json.dumps(result, indent=2))
    return 0
