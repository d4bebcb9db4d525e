"""``fewstep grid``: optimize time grids into a grid file, and show one."""

from __future__ import annotations

import argparse
from typing import Any

EXACT_MODELS = {
    "exact:gmm64": "the benchmark's 64-d low-rank mixture under the DDPM linear schedule",
    "exact:gmm8": "an 8-d low-rank mixture (3 components, rank 2) under the DDPM linear schedule",
}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _seeds(text: str) -> list[int]:
    """``A:B`` (seeds A..B-1) or a comma-separated list."""
    if ":" in text:
        a, b = (int(v) for v in text.split(":"))
        if b <= a:
            raise argparse.ArgumentTypeError(f"--seeds {text}: empty range")
        return list(range(a, b))
    return _ints(text)


def _data_std(text: str) -> float | tuple[float, float]:
    vals = [float(v) for v in text.split(",") if v]
    if len(vals) == 1:
        return vals[0]
    if len(vals) != 2:
        raise argparse.ArgumentTypeError("--data-std takes one standard deviation or C_MIN,C_MAX")
    return vals[0], vals[1]


def add_parser(sub: argparse._SubParsersAction) -> None:
    grid = sub.add_parser("grid", help="optimize time grids (analytic, searched, TimeTuner) and show grid files")
    targets = grid.add_subparsers(dest="action", metavar="ACTION")
    opt = targets.add_parser("optimize", help="write a grid file of optimized times for a solver at several NFEs",
                             description="analytic: optimal steps for Gaussian data of standard deviations "
                                         "--data-std (no network evaluation). search: coordinate descent of the "
                                         "interior times against a near-exact solve of --seeds (Align Your Steps "
                                         "style). timetuner: tuned network time inputs on the best start grid "
                                         "(TimeTuner; --start grid.json tunes on a searched grid). dc: DC-Solver's "
                                         "compensation ratios searched on the start grid (--solver dc_solver; "
                                         "--start grid.json uses its unipc grid); TimeTuner then composes on top "
                                         "(--method timetuner --solver dc_solver --start dc.json).")
    opt.add_argument("--model", required=True, help="checkpoint folder, bundled:fashion, or an exact model: "
                                                    + ", ".join(EXACT_MODELS))
    opt.add_argument("--solver", default="unipc")
    opt.add_argument("--nfe", type=_ints, default=[5, 6, 8, 10])
    opt.add_argument("--method", choices=["analytic", "search", "timetuner", "dc"], default="analytic")
    opt.add_argument("--out", required=True, help="the grid file to write (.json); an existing one gains or "
                                                  "replaces these entries")
    opt.add_argument("--seeds", type=_seeds, default=list(range(10_000, 10_064)),
                     help="seeds scored by search/timetuner, A:B or a list (default 10000:10064; keep them "
                          "disjoint from evaluation seeds)")
    opt.add_argument("--reference-nfe", type=int, default=200, help="NFE of the near-exact reference (dpm++3m)")
    opt.add_argument("--reference-cache", default=None, metavar="DIR",
                     help="cache the near-exact reference of --seeds in DIR (the yardstick's solution, shared "
                          "with later runs and `fewstep bench model --reference-cache`; default: not cached)")
    opt.add_argument("--iters", type=int, default=3, help="rounds of coordinate descent")
    opt.add_argument("--candidates", type=int, default=2, help="candidate moves per side and coordinate")
    opt.add_argument("--data-std", type=_data_std, default=None,
                     help="data standard deviation(s) of the analytic model: C or C_MIN,C_MAX (default 0.1,4)")
    opt.add_argument("--start", default=None, help="start grid of search/timetuner (a grid name or file; "
                                                   "default: the best of the default, logsnr and analytic grids)")
    opt.add_argument("--teleport", type=float, default=None, metavar="T",
                     help="start at time T, reached by the training data Gaussian's exact flow (fewstep.teleport); "
                          "search then also moves T. The entry records it and `sample --grid FILE` applies it")
    opt.add_argument("--batch-size", type=int, default=64)
    opt.add_argument("--threads", type=int, default=None)
    opt.add_argument("--no-progress", action="store_true")
    opt.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    opt.set_defaults(func=_run_optimize)
    show = targets.add_parser("show", help="print the grids of a grid file")
    show.add_argument("path")
    show.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    show.set_defaults(func=_run_show)
    grid.set_defaults(func=lambda args: grid.print_help() or 2)


def load_for_grids(spec: str, device: Any = "cpu") -> tuple[Any, tuple[int, ...]]:
    """``(denoiser, sample shape)`` of a model path, ``bundled:fashion`` or an exact mixture (always on the CPU)."""
    if spec in EXACT_MODELS:
        from ..bench.gmm import bench_mixture
        from ..exact import GaussianMixture
        from ..processes import VPDiscrete

        gmm = bench_mixture() if spec == "exact:gmm64" else \
            GaussianMixture.random_low_rank(dim=8, components=3, rank=2, floor=0.05, seed=1)
        return gmm.denoiser(VPDiscrete.linear(1000, 1e-4, 0.02)), (gmm.dim,)
    if spec.startswith("exact:"):
        raise ValueError(f"unknown exact model {spec!r}; valid: {', '.join(EXACT_MODELS)}")
    from ..loading import load_model

    den = load_model(spec, device=device)
    if den.sample_shape is None:
        raise ValueError(f"model {spec} does not declare its sample shape")
    return den, tuple(den.sample_shape)


def _run_optimize(args: argparse.Namespace) -> int:
    import os

    import torch

    from .. import __version__, solvers
    from ..grids.files import GridEntry, check_process, read_grid_file, write_grid_file
    from ..tuning.gaussian import DEFAULT_DATA_STD
    from ..tuning.optimize import expected_evaluations, optimize_grids

    spec = solvers.get(args.solver)
    for nfe in args.nfe:
        spec.steps_for(nfe)
    if not args.out.endswith(".json"):
        raise ValueError(f"--out {args.out}: a grid file ends in .json")
    from ._destination import check_output

    check_output(args.out)  # before the search: its result is never lost to a bad --out
    if args.iters < 1 or args.candidates < 1:
        raise ValueError("--iters and --candidates must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    den, shape = load_for_grids(args.model)
    kept: list[GridEntry] = []
    if os.path.exists(args.out):
        old = read_grid_file(args.out)
        check_process(old, den.process, args.out)
        kept = [e for e in old.entries if not (e.solver == spec.name and e.nfe in args.nfe)]
    bar = None
    if not args.no_progress and args.method not in ("analytic", "dc"):
        from tqdm.auto import tqdm

        total = expected_evaluations(spec.name, args.nfe, args.iters, args.candidates)
        print(f"grid {args.method}: {spec.name} at NFE {','.join(map(str, args.nfe))}, {len(args.seeds)} seeds, "
              f"reference dpm++3m at {args.reference_nfe} NFE, up to {total} scored solves", flush=True)
        bar = tqdm(total=total, desc=f"grid {args.method}", unit="solve", dynamic_ncols=True)
    if not args.no_progress and args.method == "dc":
        print(f"grid dc: DC-Solver ratios at NFE {','.join(map(str, args.nfe))} on {args.start or 'the best start grid'}, "
              f"{len(args.seeds)} seeds, reference dpm++3m at {args.reference_nfe} NFE", flush=True)

    def on_eval(score: float) -> None:
        bar.update()
        bar.set_postfix(score=f"{score:.4g}", refresh=False)

    try:
        entries = optimize_grids(den, spec.name, args.nfe, args.method, shape=shape, seeds=args.seeds,
                                 reference_nfe=args.reference_nfe, rounds=args.iters, candidates=args.candidates,
                                 data_std=args.data_std or DEFAULT_DATA_STD, start=args.start,
                                 on_eval=on_eval if bar is not None else None, batch_size=args.batch_size,
                                 reference_cache=args.reference_cache, teleport=args.teleport)
    finally:
        if bar is not None:
            bar.close()
    for e in entries:  # shown before writing, so a failed write loses nothing
        print(_describe(e), flush=True)
    provenance = {"model": args.model, "fewstep_version": __version__}
    write_grid_file(args.out, den.process, kept + entries, provenance)
    print(f"wrote {args.out}")
    return 0


def _describe(e: Any) -> str:
    start = e.provenance.get("start_score")
    gain = f" (start {start:.4g})" if isinstance(start, (int, float)) else ""
    kind = e.provenance.get("score_kind", "score")
    score = "" if e.score is None else f" {kind} {e.score:.4g}{gain}"
    line = f"{e.solver:>10} nfe={e.nfe:<3} {e.method:<9}{score}\n    times " + \
        " ".join(f"{t:.4g}" for t in e.times)
    if e.net_times is not None:
        line += "\n    net   " + " ".join(f"{t:.4g}" for t in e.net_times)
    if e.teleport is not None:
        line += f"\n    teleport {e.teleport:.4f} (start: the data Gaussian's exact flow from t_max)"
    for k, v in (e.options or {}).items():
        text = " ".join(f"{r:.4g}" for r in v) if isinstance(v, list) else f"{v:.4g}" if isinstance(v, float) else str(v)
        line += f"\n    {k:<5} {text}"
    return line


def _run_show(args: argparse.Namespace) -> int:
    from ..grids.files import read_grid_file
    from ..processes import process_from_config

    g = read_grid_file(args.path)
    print(f"{args.path}: {len(g.entries)} grid{'s' if len(g.entries) != 1 else ''} for {process_from_config(g.process)!r}")
    if g.provenance:
        print("provenance: " + ", ".join(f"{k}={v}" for k, v in g.provenance.items()))
    for e in g.entries:
        print(_describe(e))
    return 0
