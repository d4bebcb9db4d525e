"""Options for the error to the near-exact ODE solution, shared by ``bench model`` and ``eval``."""

from __future__ import annotations

import argparse
from typing import Any

_DEFAULT = "default: dpm++3m, 200 NFE, logsnr grid (fewstep.metrics.ReferenceSettings)"


def add_reference_args(p: argparse.ArgumentParser, *, on_by_default: bool) -> None:
    """``--no-reference`` (bench) or ``--reference`` (eval), and the reference solve's settings."""
    if on_by_default:
        p.add_argument("--no-reference", dest="reference", action="store_false",
                       help="do not measure the error (RMSE, PSNR) to the near-exact ODE solution")
    else:
        p.add_argument("--reference", action="store_true",
                       help="also measure the error (RMSE, PSNR) to the near-exact ODE solution from the same seeds")
    p.add_argument("--reference-solver", default=None, metavar="SOLVER",
                   help=f"solver of the near-exact solution ({_DEFAULT})")
    p.add_argument("--reference-nfe", type=int, default=None, metavar="N", help="its network evaluations")
    p.add_argument("--reference-grid", default=None, metavar="GRID", help="its time grid ('default': the process's)")
    p.add_argument("--reference-cache", default=None, metavar="DIR",
                   help="folder caching the near-exact solutions (default: reference-cache/ inside --out "
                        "for bench, beside --out for eval)")


def reference_settings(args: argparse.Namespace) -> Any:
    """The :class:`~fewstep.tuning.ReferenceSettings` the options ask for (unset ones: its defaults)."""
    from ..tuning import ReferenceSettings

    grid = ReferenceSettings.grid if args.reference_grid is None else args.reference_grid
    return ReferenceSettings(args.reference_solver or ReferenceSettings.solver,
                             ReferenceSettings.nfe if args.reference_nfe is None else args.reference_nfe,
                             None if grid == "default" else grid)


def near_exact_from_args(args: argparse.Namespace, denoiser: Any, shape: Any, device: Any) -> Any:
    """``eval``'s :class:`~fewstep.tuning.NearExact` for seeds ``--seed .. --seed + --n - 1``,
    computed (or read back) now, before any timed sampling; cached in ``--reference-cache``, else
    ``reference-cache/`` beside ``--out`` (or in the current folder)."""
    from pathlib import Path

    from ..metrics.distributed import default_batch_size, shard, world
    from ..tuning import NearExact

    cache = args.reference_cache or str((Path(args.out).parent if args.out else Path(".")) / "reference-cache")
    seeds = range(args.seed, args.seed + args.n)
    near = NearExact(denoiser, shape, seeds, reference_settings(args), cache_dir=cache,
                     batch_size=args.batch_size or default_batch_size(device), device=device,
                     progress=world()[0] == 0)
    near.prepare(shard(seeds, *world()))
    return near
