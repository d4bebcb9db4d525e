"""The flags that compose a sampler, shared by ``sample`` and ``eval``: class labels and guidance
(:func:`fewstep.compose.compose_sampler` builds the denoiser from them)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_guidance_args(p: argparse.ArgumentParser) -> None:
    """``--class``, ``--guidance``, ``--guidance-scale``, ``--guidance-interval``, ``--classifier``, ``--calibration``."""
    p.add_argument("--class", "--class-label", dest="class_label", default=None, metavar="C",
                   help="class(es) to condition on: a number, a comma-separated list cycled over the seeds, or 'all' "
                        "(class-conditional models, or any model with --guidance classifier)")
    p.add_argument("--guidance", choices=["cfg", "classifier"], default=None,
                   help="cfg: classifier-free guidance (a model trained with label dropout, e.g. bundled:fashion-cond); "
                        "classifier: guidance by a noise-aware classifier (--classifier); docs/guidance.md")
    p.add_argument("--guidance-scale", type=float, default=None, metavar="W",
                   help="guidance scale (cfg: 1 = conditional, 0 = unconditional; classifier: 0 = none)")
    p.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                   help="guide only where the noise level sigma/alpha lies in (LO, HI] (Kynkaanniemi et al. 2024), "
                        "e.g. 0.3,5; HI may be inf")
    p.add_argument("--classifier", default=None, metavar="PATH",
                   help="noise-aware classifier for --guidance classifier (a run or checkpoint folder of "
                        "`fewstep train --config fashion-noisy-classifier`)")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="per-noise-level temperatures for the classifier (calibrated guidance, EluCD; docs/guidance.md)")
    p.add_argument("--joint-temperature", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--marginal-temperature", type=float, default=1.0, help=argparse.SUPPRESS)


def guidance_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """What the manifest records about guidance (None without)."""
    if args.guidance is None:
        return None
    out: dict[str, Any] = {"method": args.guidance, "scale": args.guidance_scale, "interval": args.guidance_interval}
    if args.guidance == "classifier":
        out.update(classifier=str(Path(args.classifier).resolve()),
                   calibration=str(Path(args.calibration).resolve()) if args.calibration else None,
                   joint_temperature=args.joint_temperature, marginal_temperature=args.marginal_temperature)
    return out


def check_guidance_args(args: argparse.Namespace) -> None:
    """Flag combinations that are wrong whatever the model, refused before it loads."""
    from ..denoisers import GuidanceInterval

    if args.guidance is None:
        extra = [f for f, v in (("--guidance-scale", args.guidance_scale), ("--guidance-interval", args.guidance_interval),
                                ("--classifier", args.classifier), ("--calibration", args.calibration)) if v is not None]
        if extra:
            raise ValueError(f"{extra[0]} needs --guidance cfg or --guidance classifier")
        return
    if args.guidance_scale is None:
        raise ValueError(f"--guidance {args.guidance} needs --guidance-scale W (e.g. 2)")
    if args.class_label is None:
        raise ValueError(f"--guidance {args.guidance} needs --class C (a class, a list, or all)")
    GuidanceInterval.parse(args.guidance_interval)
    if args.guidance == "classifier" and args.classifier is None:
        raise ValueError("--guidance classifier needs --classifier PATH (a noise-aware classifier trained with "
                         "`fewstep train --config fashion-noisy-classifier`)")
    if args.guidance == "cfg" and (args.classifier or args.calibration):
        raise ValueError("--classifier and --calibration belong to --guidance classifier, not cfg")


def _guiding_classifier(args: argparse.Namespace, device: Any) -> Any:
    """The (calibrated) noise-aware classifier of ``--guidance classifier``, else None."""
    if args.guidance != "classifier":
        return None
    from ..guidance import load_calibration, load_classifier

    classifier = load_classifier(args.classifier, device=device)
    return load_calibration(args.calibration, classifier) if args.calibration else classifier


def guidance_from_args(args: argparse.Namespace, device: Any) -> Any:
    """The :class:`fewstep.compose.Guidance` the flags ask for (None without ``--guidance``)."""
    from ..compose import Guidance

    if args.guidance is None:
        return None
    classifier = _guiding_classifier(args, device)
    options = {} if classifier is None else {"joint_temperature": args.joint_temperature,
                                             "marginal_temperature": args.marginal_temperature}
    return Guidance(args.guidance, args.guidance_scale, args.guidance_interval, classifier, options)
