"""Options for the error to the near-exact ODE solution, shared by ``bench model`` and ``eval``."""

from __future__ import annotations

import argparse
from typing import Any

DEFAULTS = {"solver": "dpm++3m", "nfe": 200, "grid": "logsnr"}


def add_reference_args(p: argparse.ArgumentParser, *, on_by_default: bool) -> None:
    """``--no-reference`` (bench) or ``--reference`` (eval), and the reference solve's settings."""
    if on_by_default:
        p.add_argument("--no-reference", dest="reference", action="store_false",
                       help="do not measure the error (RMSE, PSNR) to the near-exact ODE solution")
    else:
        p.add_argument("--reference", action="store_true",
                       help="also measure the error (RMSE, PSNR) to the near-exact ODE solution from the same seeds")
    p.add_argument("--reference-solver", default=DEFAULTS["solver"], metavar="SOLVER",
                   help=f"solver of the near-exact solution (default {DEFAULTS['solver']})")
    p.add_argument("--reference-nfe", type=int, default=DEFAULTS["nfe"], metavar="N",
                   help=f"its network evaluations (default {DEFAULTS['nfe']})")
    p.add_argument("--reference-grid", default=DEFAULTS["grid"], metavar="GRID",
                   help=f"its time grid (default {DEFAULTS['grid']}; 'default': the process's)")
    p.add_argument("--reference-cache", default=None, metavar="DIR",
                   help="folder caching the near-exact solutions (default: reference-cache/ inside --out "
                        "for bench, beside --out for eval)")


def reference_options(args: argparse.Namespace) -> dict[str, Any]:
    """``solver``, ``nfe``, ``grid`` (None for the process's) and ``cache`` from the parsed options."""
    grid = None if args.reference_grid in (None, "", "default") else args.reference_grid
    return {"solver": args.reference_solver, "nfe": args.reference_nfe, "grid": grid, "cache": args.reference_cache}


def near_exact_from_args(args: argparse.Namespace, denoiser: Any, shape: Any, device: Any) -> Any:
    """``eval``'s :class:`~fewstep.metrics.near_exact.NearExact` for seeds ``--seed .. --seed + --n - 1``,
    computed (or read back) now, before any timed sampling; cached in ``--reference-cache``, else
    ``reference-cache/`` beside ``--out`` (or in the current folder)."""
    from pathlib import Path

    from ..metrics.distributed import default_batch_size, shard, world
    from ..metrics.near_exact import NearExact, ReferenceSettings

    opt = reference_options(args)
    cache = opt["cache"] or str((Path(args.out).parent if args.out else Path(".")) / "reference-cache")
    seeds = range(args.seed, args.seed + args.n)
    near = NearExact(denoiser, shape, seeds, ReferenceSettings(opt["solver"], opt["nfe"], opt["grid"]),
                     cache_dir=cache, batch_size=args.batch_size or default_batch_size(device), device=device,
                     progress=world()[0] == 0)
    near.prepare(shard(seeds, *world()))
    return near
