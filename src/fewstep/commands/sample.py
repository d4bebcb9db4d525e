"""``fewstep sample``: draw images from a model into a grid image, a folder of PNGs, or an ``.npz``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._destination import Destination, check_writable, parse_destination
from ._samplefolder import MANIFEST, check_manifest, image_name, is_valid_png, write_manifest


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate images from a model", description=(
        "Sample N images with per-image seeds SEED..SEED+N-1 (the same seed gives the same image at any batch "
        "size). --out ending in .png, .jpg, .jpeg or .webp writes a grid, .npz an array (images, seeds), no "
        f"suffix a folder of PNGs that resumes where it stopped: its {MANIFEST} records the model and "
        "settings, a rerun with other settings is refused, and broken images are drawn again."))
    p.add_argument("--model", required=True, help="a checkpoint folder, a run folder, a diffusers UNet2DModel folder, "
                                                  "or bundled:fashion")
    p.add_argument("--solver", default="dpm++2m")
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--grid", default=None, help="time grid: uniform, logsnr, quadratic, karras or a grid file "
                                                   "from `fewstep grid optimize`, or bundled:fashion (the grids tuned for "
                                                   "that model; default: the process's, "
                                                   "time-uniform for VP models, karras for EDM)")
    p.add_argument("--teleport", type=float, default=None, metavar="T",
                   help="start the solve at time T below t_max, reached by the training data Gaussian's exact flow "
                        "(all NFE spent below T; the model needs a gaussian.safetensors: `fewstep gaussian`; "
                        "bundled:fashion has one; with --class one per class, `--per-class`, as bundled:fashion-cond has). "
                        "About 700 at 5-6 NFE, 900 at 8-10 (docs/solvers.md). A grid file entry tuned with teleport "
                        "carries its own T")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
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
    p.add_argument("--raw", action="store_true", help="use the raw (non-EMA) weights of a checkpoint")
    p.add_argument("--clipping", choices=["off", "config"], default="off",
                   help="diffusers folders: 'config' clips the data prediction as the scheduler config's clip_sample / "
                        "thresholding says (diffusers' DDPM/DDIM default); 'off' (default) solves the model's own ODE")
    p.add_argument("--out", required=True, help="grid.png (.jpg, .jpeg, .webp), file.npz, or a folder (no suffix)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)")
    p.add_argument("--compile", action="store_true", help="run the network through torch.compile (faster after "
                                                          "a one-off compilation)")
    p.add_argument("--cache", default=None, metavar="SPEC", help="feature caching, e.g. deepcache:3, encoder:2, "
                   "taylorseer:interval=3,order=2, or a step schedule, gaussian:steps=3 (docs/accel.md)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _model_source(spec: str) -> tuple[str, str]:
    """``(identity recorded in the manifest, what to load)``: a run folder means its newest checkpoint now."""
    if spec.startswith("bundled:"):
        return spec, spec
    path = Path(spec)
    if (path / "checkpoints").is_dir() and not (path / "config.json").exists():
        from ..checkpoint import latest_checkpoint

        path = latest_checkpoint(path) or path  # none yet: load_model says so
    return str(path.resolve()), str(path)


def _settings(args: argparse.Namespace, model_id: str, solver: str) -> dict[str, Any]:
    """What a folder's manifest records that is known before loading the model (grid only when given)."""
    from .. import __version__

    settings: dict[str, Any] = {"model": model_id, "ema": not args.raw, "solver": solver, "nfe": args.nfe}
    if args.grid is not None:
        settings["grid"] = args.grid
    settings["teleport"] = args.teleport
    settings["cache"] = args.cache
    if args.clipping != "off":
        settings["clipping"] = args.clipping
    settings.update(class_label=args.class_label, guidance=_guidance_settings(args), fewstep_version=__version__)
    return settings


def _guidance_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """What the manifest records about guidance (None without)."""
    if args.guidance is None:
        return None
    out: dict[str, Any] = {"method": args.guidance, "scale": args.guidance_scale, "interval": args.guidance_interval}
    if args.guidance == "classifier":
        out.update(classifier=str(Path(args.classifier).resolve()),
                   calibration=str(Path(args.calibration).resolve()) if args.calibration else None,
                   joint_temperature=args.joint_temperature, marginal_temperature=args.marginal_temperature)
    return out


def _check_guidance_args(args: argparse.Namespace) -> None:
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


def _guided(den: Any, args: argparse.Namespace, classifier: Any) -> Any:
    """The model with the requested guidance (a thin layer over fewstep.guidance.guide)."""
    from ..guidance import guide

    if args.guidance is None:
        return den
    options = {} if classifier is None else {"joint_temperature": args.joint_temperature,
                                             "marginal_temperature": args.marginal_temperature}
    return guide(den, args.guidance, args.guidance_scale, interval=args.guidance_interval, classifier=classifier,
                 **options)


def _folder_todo(folder: Path, seeds: list[int], shape: tuple[int, ...]) -> list[int]:
    """Seeds whose image is missing or broken in ``folder``; says what is there already."""
    todo = [s for s in seeds if not is_valid_png(folder / image_name(s), shape)]
    broken = sum(1 for s in todo if (folder / image_name(s)).exists())
    if len(todo) < len(seeds) or broken:
        note = (f" ({broken} broken image{'s' if broken != 1 else ''}, empty, truncated or of another size, "
                f"drawn again)" if broken else "")
        print(f"{len(seeds) - len(todo)} of {len(seeds)} images already in {folder}; "
              f"generating the other {len(todo)}{note}")
    return todo


def run(args: argparse.Namespace) -> int:
    import torch

    from ..devices import resolve_device
    from ..grids import GRIDS
    from ..solvers import get as get_solver

    if args.n < 1 or args.batch_size < 1 or args.nfe < 1:
        raise ValueError("--n, --batch-size and --nfe must be positive")
    # Everything that can be checked without the model is checked first: a mistake costs a second.
    solver = get_solver(args.solver)
    solver.steps_for(args.nfe)
    from ..accel import parse_cache

    cache = parse_cache(args.cache)
    args.cache = None if cache is None else str(cache)
    if args.grid is not None and args.grid not in GRIDS:
        from ..grids.files import is_grid_file, read_grid_file

        if not is_grid_file(args.grid):
            raise ValueError(f"--grid {args.grid}: unknown grid; valid grids: {', '.join(GRIDS)} or a grid file (.json)")
        read_grid_file(args.grid)  # a missing or broken file fails before the model loads
    if args.class_label is not None and args.class_label.strip().lstrip("-").isdigit():
        args.class_label = int(args.class_label)  # one class: recorded as a number, as before lists existed
    _check_guidance_args(args)
    dest = parse_destination(args.out)
    check_writable(dest)
    device = resolve_device(args.device)
    model_id, model_path = _model_source(args.model)
    settings = _settings(args, model_id, solver.name)
    if dest.kind == "folder":
        check_manifest(dest.path, settings)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ..loading import load_model

    den = load_model(model_path, ema=not args.raw, device=device, clipping=args.clipping)
    shape = tuple(den.sample_shape)
    seeds = list(range(args.seed, args.seed + args.n))
    todo = seeds
    if dest.kind == "folder":
        settings = {**settings, "grid": args.grid or den.process.default_grid, "sample_shape": list(shape)}
        keys = ("model", "ema", "solver", "nfe", "grid", "teleport", "cache", "class_label", "guidance", "sample_shape",
                "fewstep_version")
        settings = {key: settings[key] for key in keys}
        if not check_manifest(dest.path, settings):
            write_manifest(dest.path, settings)
        todo = _folder_todo(dest.path, seeds, shape)
    if args.compile and todo:
        from ..compiling import compile_denoiser

        compile_denoiser(den)
    if cache is not None:
        den = cache.apply(den)
    classifier = _guiding_classifier(args, device)
    labels = None
    if args.class_label is not None:
        from ..guidance import class_labels, num_classes

        classes = num_classes(den) or (classifier.num_classes if classifier is not None else 0)
        labels = class_labels(args.class_label, len(seeds), classes)
    den = _guided(den, args, classifier)
    images = _draw(den, shape, todo, args, device, dest, labels)
    if dest.kind != "folder":
        _write_file(torch.cat(images), seeds, dest)
    if cache is not None and todo:
        print(f"{cache}: {den.full_evals} full and {den.cached_evals} cached network evaluations "
              f"in {-(-len(todo) // args.batch_size)} batches")
    print(f"wrote {dest.path}")
    return 0


def _draw(den: Any, shape: tuple[int, ...], todo: list[int], args: argparse.Namespace, device: Any,
          dest: Destination, labels: Any = None) -> list[Any]:
    """Sample ``todo`` in batches; a folder gets each batch's PNGs at once, else the batches are returned.

    ``labels[i]`` is the class of seed ``args.seed + i`` (whatever the batch it falls in)."""

    from ..api import generate
    from ..imagegrid import save_png, to_uint8

    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="sample", unit="img", dynamic_ncols=True)
    images = []
    try:
        for i in range(0, len(todo), args.batch_size):
            chunk = todo[i:i + args.batch_size]
            cond = {}
            if labels is not None:
                cond["class_labels"] = labels[[s - args.seed for s in chunk]].to(device)
            step = (lambda info: bar.set_postfix(step=info["i"] + 1, refresh=False)) if bar is not None else None
            x = generate(den, shape, chunk, args.solver, args.nfe, args.grid, device=device, callback=step, cond=cond,
                         teleport=args.teleport)
            if dest.kind == "folder":
                for s, img in zip(chunk, to_uint8(x)):
                    save_png(img, dest.path / image_name(s))
            else:
                images.append(x.cpu())
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()  # before any error message, so that message gets a line of its own
    return images


def _write_file(x: Any, seeds: list[int], dest: Destination) -> None:
    import numpy as np

    from ..imagegrid import save_image_grid, save_npz

    if dest.kind == "grid":
        save_image_grid(x, dest.path)
    else:
        save_npz(x, dest.path, seeds=np.asarray(seeds))
