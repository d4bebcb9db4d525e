"""``fewstep sample``: draw images from a model into a grid image, a folder of PNGs, or an ``.npz``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._destination import Destination, check_writable, parse_destination
from ._samplefolder import MANIFEST, PNG_KEY, check_manifest, image_name, is_valid_png, manifest_text, write_manifest
from ._compose import add_guidance_args, check_guidance_args, guidance_from_args, guidance_settings
from ..solvers import DEFAULT_SOLVER
from ._plan import add_plan_args, plan_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate images from a model", description=(
        "Sample N images with per-image seeds SEED..SEED+N-1 (the same seed gives the same image at any batch "
        "size). --out ending in .png, .jpg, .jpeg or .webp writes a grid, .npz an array (images, seeds), no "
        f"suffix a folder of PNGs that resumes where it stopped: its {MANIFEST} records the model and "
        "settings (so does each PNG, so a damaged manifest is rebuilt from them), a rerun with other settings is "
        "refused, and broken images are drawn again."))
    p.add_argument("--model", required=True, help="a checkpoint folder, a run folder, a diffusers UNet2DModel folder, "
                                                  "or bundled:fashion")
    p.add_argument("--solver", default=DEFAULT_SOLVER, help=f"a solver name (`fewstep solvers`; default {DEFAULT_SOLVER})")
    p.add_argument("--nfe", type=int, default=20)
    add_plan_args(p)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    add_guidance_args(p)
    p.add_argument("--raw", action="store_true", help="use the raw (non-EMA) weights of a checkpoint")
    p.add_argument("--clipping", choices=["off", "config"], default="off",
                   help="diffusers folders: 'config' clips the data prediction as the scheduler config's clip_sample / "
                        "thresholding says (diffusers' DDPM/DDIM default); 'off' (default) solves the model's own ODE")
    p.add_argument("--out", required=True, help="grid.png (.jpg, .jpeg, .webp), file.npz, or a folder (no suffix)")
    p.add_argument("--adopt", action="store_true",
                   help=f"--out FOLDER whose {MANIFEST} is damaged or missing and whose images record no settings "
                        "(older fewstep): keep its images as drawn with this command's settings")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)")
    p.add_argument("--compile", action="store_true", help="run the network through torch.compile (faster after "
                                                          "a one-off compilation)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: evaluate the network under bf16 autocast (solver maths stays fp32); about 2x faster on "
                        "GPUs and on CPUs with AMX, slower on other CPUs (docs/accel.md, Precision)")
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
    if model_id.startswith("bundled:"):  # a bundled name can ship new weights in a later release: record which
        from ..bundled import resolve_bundled
        from ..checkpoint import weights_identity

        settings["weights"] = weights_identity(resolve_bundled(model_id))
    if args.grid is not None:
        settings["grid"] = args.grid
    settings["teleport"] = args.teleport
    settings["cache"] = args.cache
    settings["precision"] = args.precision
    if args.clipping != "off":
        settings["clipping"] = args.clipping
    settings.update(class_label=args.class_label, guidance=guidance_settings(args), fewstep_version=__version__)
    return settings


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
    from ..plan import TUNED, make_plan
    from ..solvers import get as get_solver

    if args.n < 1 or args.batch_size < 1 or args.nfe < 1:
        raise ValueError("--n, --batch-size and --nfe must be positive")
    # Everything that can be checked without the model is checked first: a mistake costs a second.
    solver = get_solver(args.solver)
    solver.steps_for(args.nfe)
    grid, plan_kwargs = plan_from_args(args)
    args.grid = grid
    from ..accel import parse_cache

    cache = parse_cache(args.cache)
    args.cache = None if cache is None else str(cache)
    if isinstance(args.grid, str) and args.grid not in GRIDS and args.grid != TUNED:
        from ..grids.files import is_grid_file, read_grid_file

        if not is_grid_file(args.grid):
            raise ValueError(f"--grid {args.grid}: unknown grid; valid grids: {', '.join(GRIDS)} or a grid file (.json)")
        read_grid_file(args.grid)  # a missing or broken file fails before the model loads
    if args.class_label is not None and args.class_label.strip().lstrip("-").isdigit():
        args.class_label = int(args.class_label)  # one class: recorded as a number, as before lists existed
    check_guidance_args(args)
    dest = parse_destination(args.out)
    check_writable(dest)
    device = resolve_device(args.device)
    model_id, model_path = _model_source(args.model)
    settings = _settings(args, model_id, solver.name)
    if dest.kind == "folder":
        check_manifest(dest.path, settings, adopt=args.adopt)
    elif args.adopt:
        raise ValueError("--adopt is for --out FOLDER (a folder of PNGs with a damaged or missing manifest)")
    if args.threads:
        torch.set_num_threads(args.threads)

    from ..loading import load_model

    den = load_model(model_path, ema=not args.raw, device=device, clipping=args.clipping)
    shape = tuple(den.sample_shape)
    plan = make_plan(den, solver.name, args.nfe, args.grid, **plan_kwargs)
    seeds = list(range(args.seed, args.seed + args.n))
    todo = seeds
    if dest.kind == "folder":
        settings = {**settings, "grid": args.grid or den.process.default_grid, "sample_shape": list(shape),
                    "plan": plan.describe()}
        keys = ("model", "weights", "ema", "solver", "nfe", "grid", "teleport", "cache", "precision", "class_label",
                "guidance", "sample_shape", "plan", "fewstep_version")
        settings = {key: settings[key] for key in keys if key in settings}
        if not check_manifest(dest.path, settings, adopt=args.adopt):
            write_manifest(dest.path, settings)
        todo = _folder_todo(dest.path, seeds, shape)
    from ..compose import compose_sampler

    guidance = guidance_from_args(args, device)
    labels = None
    if args.class_label is not None:
        from ..guidance import class_labels, num_classes

        classes = num_classes(den) or (guidance.classifier.num_classes if guidance is not None and
                                       guidance.classifier is not None else 0)
        labels = class_labels(args.class_label, len(seeds), classes)
    composed = compose_sampler(den, compile=bool(args.compile and todo), cache=cache, guidance=guidance,
                               precision=args.precision)
    den = composed.denoiser
    images = _draw(den, shape, todo, args, device, dest, labels, plan,
                   {PNG_KEY: manifest_text(settings)} if dest.kind == "folder" else None)
    if dest.kind != "folder":
        _write_file(torch.cat(images), seeds, dest)
    if composed.cache is not None and todo:
        print(f"{cache}: {composed.cache.full_evals} full and {composed.cache.cached_evals} cached network evaluations "
              f"in {-(-len(todo) // args.batch_size)} batches")
    print(f"wrote {dest.path}")
    return 0


def _draw(den: Any, shape: tuple[int, ...], todo: list[int], args: argparse.Namespace, device: Any,
          dest: Destination, labels: Any = None, plan: Any = None, text: dict[str, str] | None = None) -> list[Any]:
    """Sample ``todo`` in batches with ``plan``; a folder gets each batch's PNGs at once (each with the text chunks
    ``text``: its manifest), else the batches are returned.

    ``labels[i]`` is the class of seed ``args.seed + i`` (whatever the batch it falls in)."""

    from ..api import generate
    from ..imagegrid import save_png, to_uint8
    from ..latent import to_images

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
            x = to_images(den, generate(den, shape, chunk, plan, device=device, callback=step, cond=cond))
            if dest.kind == "folder":
                for s, img in zip(chunk, to_uint8(x)):
                    save_png(img, dest.path / image_name(s), text)
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
