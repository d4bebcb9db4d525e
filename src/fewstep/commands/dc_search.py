"""``fewstep dc-search``: search DC-Solver's compensation ratios for a model and save them (with CPR) as JSON."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dc-search", help="search DC-Solver's ratios for a model (use them with --solver dc_solver)",
                       description="Search DC-Solver's per-step compensation ratios at each NFE against a high-NFE "
                                   "reference on a few dozen seeds, fit the cascade polynomial regression on them "
                                   "and write both to a JSON file (atomically); sample with them through "
                                   "fewstep.sample(..., 'dc_solver', nfe, ratios=PATH).")
    p.add_argument("--model", required=True, help="a checkpoint folder, a diffusers UNet folder, or bundled:fashion")
    p.add_argument("--nfe", default="5,6,8,10", help="comma-separated NFEs to search, e.g. 5,6,8,10")
    p.add_argument("--seeds", type=int, default=32, help="number of search seeds (from --seed)")
    p.add_argument("--seed", type=int, default=100_000)
    p.add_argument("--reference-nfe", type=int, default=200)
    p.add_argument("--grid", default=None, help="time grid (default: the process's)")
    p.add_argument("--out", required=True, help="the ratio file to write, e.g. ratios.json")
    p.add_argument("--device", default=None)
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..loading import load_model
    from ..tuning import search_table

    try:
        nfes = [int(v) for v in args.nfe.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--nfe {args.nfe}: give comma-separated integers, e.g. 5,6,8,10") from None
    if not nfes or min(nfes) < 1 or args.seeds < 1 or args.reference_nfe < 1:
        raise ValueError("--nfe, --seeds and --reference-nfe must be positive")
    device = resolve_device(args.device)
    den = load_model(args.model, device=device)
    table = search_table(den, tuple(den.sample_shape), nfes, range(args.seed, args.seed + args.seeds),
                         reference_nfe=args.reference_nfe, grid=args.grid, device=device, progress=True)
    table.meta["model"] = args.model
    table.save(args.out)
    print(f"wrote {args.out}")
    return 0
