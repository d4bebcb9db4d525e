"""``fewstep detect fit|score``: detect generated images by multiLID (docs/detection.md)."""

from __future__ import annotations

import argparse
import json

_SPEC = "fashion-mnist[:train|:test], a .npz/.npy array, or a folder of images (e.g. one from fewstep sample)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="detect generated images (multiLID features + random forest)",
                       description="Fit a multiLID detector of generated images (Lorenz et al. 2023) and score "
                                   "held-out images with it (docs/detection.md).")
    dsub = p.add_subparsers(dest="detect_command", metavar="ACTION")

    f = dsub.add_parser("fit", help="fit a detector on real and generated images",
                        description="Reference images: real images [START, START+REFERENCE); real training images: "
                                    "the next N; generated training images: [FAKE-START, FAKE-START+N). The image "
                                    "ranges are recorded in the detector, and `detect score` refuses to score them.")
    f.add_argument("--real", required=True, help=f"real images: {_SPEC}")
    f.add_argument("--fake", required=True, help=f"generated images: {_SPEC}")
    f.add_argument("--out", required=True, help="detector folder to write (must not exist)")
    f.add_argument("--n", type=int, default=1000, help="training images of each kind (default 1000)")
    f.add_argument("--reference", type=int, default=256, help="real reference images for the neighbours (256)")
    f.add_argument("--start", type=int, default=0, help="first real image used (default 0)")
    f.add_argument("--fake-start", type=int, default=0, help="first generated image used (default 0)")
    f.add_argument("--k", type=int, default=20, help="nearest neighbours per layer (default 20)")
    f.add_argument("--trees", type=int, default=100, help="random-forest trees (default 100)")
    f.add_argument("--seed", type=int, default=0, help="seed of the untrained network and the forest")
    _common(f)
    f.set_defaults(func=run_fit)

    s = dsub.add_parser("score", help="score images with a detector: accuracy and AUC",
                        description="Probability of being generated for each image; with --real and --fake, the "
                                    "accuracy (threshold 0.5) and AUC. Images the detector was fitted on are refused.")
    s.add_argument("--detector", required=True, help="a folder written by fewstep detect fit")
    s.add_argument("--images", default=None, help=f"images of unknown kind: {_SPEC}")
    s.add_argument("--real", default=None, help=f"held-out real images: {_SPEC}")
    s.add_argument("--fake", "--generated", dest="fake", default=None, help=f"held-out generated images: {_SPEC}")
    s.add_argument("--start", type=int, default=0, help="first image of each set scored (default 0)")
    s.add_argument("--fake-start", type=int, default=None, help="first generated image scored (default: --start)")
    s.add_argument("--n", type=int, default=None, help="images of each set scored (default: all from --start)")
    s.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")
    _common(s)
    s.set_defaults(func=run_score)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)


def _load(spec: str, start: int, n: int | None, what: str):
    from ..metrics.data import load_images

    images = load_images(spec)
    if start < 0 or (n is not None and n < 1):
        raise ValueError(f"{what}: --start must be >= 0 and --n positive")
    stop = len(images) if n is None else start + n
    if stop > len(images) or start >= len(images):
        raise ValueError(f"{what} {spec} holds {len(images)} images; the range [{start}, {stop}) does not fit")
    return images[start:stop], [start, stop]


def run_fit(args: argparse.Namespace) -> int:
    import torch

    from ..detect import detection_metrics, fit_detector
    from ._destination import check_output

    out = check_output(args.out, "folder")
    if out.exists():
        raise ValueError(f"--out {out} already exists; choose a new folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reference < args.k:
        raise ValueError(f"--reference {args.reference} must be at least --k {args.k}")
    ref, ref_range = _load(args.real, args.start, args.reference, "--real")
    real, real_range = _load(args.real, args.start + args.reference, args.n, "--real")
    fake, fake_range = _load(args.fake, args.fake_start, args.n, "--fake")
    seen = {"real": {"spec": _key(args.real), "range": [ref_range[0], real_range[1]]},
            "fake": {"spec": _key(args.fake), "range": fake_range}}
    det = fit_detector(real, fake, ref, k=args.k, seed=args.seed, trees=args.trees, batch_size=args.batch_size,
                       progress=not args.no_progress, provenance={"fitted_on": seen})
    import numpy as np

    p = np.concatenate([det.proba(real, batch_size=args.batch_size), det.proba(fake, batch_size=args.batch_size)])
    m = detection_metrics(p, np.r_[np.zeros(len(real)), np.ones(len(fake))])
    print(f"fitted on {len(real)} real + {len(fake)} generated images ({args.reference} reference images, k "
          f"{args.k}, {len(det.config.layers)} layers, {args.trees} trees): training accuracy {m['accuracy']:.4f} "
          f"(not a held-out figure: score other images with fewstep detect score)")
    det.save(out)
    print(f"wrote {out}")
    return 0


def _key(spec: str) -> str:
    """A spec as recorded: an existing path made absolute, so that two spellings of one file compare equal."""
    from pathlib import Path

    return str(Path(spec).resolve()) if Path(spec).exists() else spec


def _overlap(seen: dict, spec: str, rng: list[int]) -> bool:
    return seen.get("spec") == _key(spec) and rng[0] < seen["range"][1] and seen["range"][0] < rng[1]


def run_score(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .._io import atomic_write_text
    from ..detect import detection_metrics, load_detector

    if not (args.images or args.real or args.fake):
        raise ValueError("give the images to score: --images, or --real and/or --fake for accuracy and AUC")
    if args.threads:
        torch.set_num_threads(args.threads)
    det = load_detector(args.detector)
    seen = det.config.provenance.get("fitted_on", {})
    result: dict = {"detector": args.detector, "sets": {}}
    probs, labels = [], []
    for kind, spec in (("real", args.real), ("fake", args.fake), ("images", args.images)):
        if not spec:
            continue
        start = args.fake_start if kind == "fake" and args.fake_start is not None else args.start
        images, rng = _load(spec, start, args.n, f"--{kind}")
        for role in ("real", "fake"):
            if _overlap(seen.get(role, {}), spec, rng):
                raise ValueError(f"--{kind} {spec} [{rng[0]}, {rng[1]}) overlaps the {role} images the detector was "
                                 f"fitted on ({seen[role]['range']}); score held-out images (--start)")
        p = det.proba(images, batch_size=args.batch_size, progress=not args.no_progress)
        flagged = float((p > 0.5).mean())
        result["sets"][kind] = {"spec": spec, "range": rng, "flagged_generated": flagged, "mean_p": float(p.mean())}
        print(f"--{kind} {spec} [{rng[0]}, {rng[1]}): {flagged:.4f} flagged as generated (mean p {p.mean():.4f})")
        if kind != "images":
            probs.append(p)
            labels.append(np.full(len(p), kind == "fake", dtype=np.int64))
    if probs:
        m = detection_metrics(np.concatenate(probs), np.concatenate(labels))
        result.update(m)
        auc = f", AUC {m['auc']:.4f}" if "auc" in m else " (AUC needs both --real and --fake)"
        print(f"accuracy {m['accuracy']:.4f} on {m['n']} images ({m['n_real']} real, {m['n_fake']} generated){auc}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0
