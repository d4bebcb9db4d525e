"""``fewstep bench``: sweeps of solver x NFE x grid."""

from __future__ import annotations

import argparse


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _names(text: str) -> list[str]:
    return [v for v in text.split(",") if v]


def add_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmark solvers")
    targets = bench.add_subparsers(dest="target", metavar="TARGET")
    gmm = targets.add_parser("gmm", help="trajectory error and Frechet distance on an exact 64-d Gaussian mixture")
    gmm.add_argument("--solvers", type=_names, default=None, help="comma-separated solver names (default: all deterministic and stochastic)")
    gmm.add_argument("--nfe", type=_ints, default=[3, 4, 5, 6, 8, 10, 15, 20])
    gmm.add_argument("--grids", type=_names, default=["logsnr", "uniform", "quadratic", "karras"],
                     help="comma-separated grids: names or grid files from `fewstep grid optimize`")
    gmm.add_argument("--processes", type=_names, default=["vp_linear_ddpm", "edm"])
    gmm.add_argument("--n", type=int, default=2000, help="samples per configuration")
    gmm.add_argument("--seed", type=int, default=0)
    gmm.add_argument("--out", default="bench-gmm", help="output folder for CSV, JSON and PNG")
    gmm.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    gmm.set_defaults(func=_run_gmm)
    model = targets.add_parser("model", help="FID/KID/precision/recall and the error to the near-exact ODE "
                                             "solution against NFE and wall time on a trained model")
    model.add_argument("--model", default="bundled:fashion", help="model name or path for fewstep.load_model")
    model.add_argument("--solvers", type=_names, default=None, help="comma-separated solver names, or all (default)")
    model.add_argument("--nfe", type=_ints, default=[3, 4, 5, 6, 8, 10, 15, 20])
    model.add_argument("--grids", type=_names, default=["default"],
                       help="comma-separated grids (names, grid files or bundled:fashion); 'default' is the "
                            "process's (time-uniform for VP models); a grid file runs only the solvers and NFEs "
                            "it holds grids for, with their network times and solver options")
    model.add_argument("--n", type=int, default=10_000, help="samples per configuration")
    model.add_argument("--ref", default=None, help="reference .npz from `fewstep stats` (default: shipped statistics)")
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--shape", type=_ints, default=None, help="sample shape C,H,W if the model does not say")
    model.add_argument("--out", default="bench-model", help="output folder (a rerun resumes: finished "
                                                            "configurations are read back, not sampled again)")
    model.add_argument("--compile", action="store_true", help="run the network through torch.compile")
    model.add_argument("--limit-nfe", type=int, default=0, metavar="N",
                       help="also score a near-exact ODE solve (dpm++2m, N NFE, e.g. 100): the FID the solvers "
                            "converge to, drawn as a line on the plots")
    model.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    model.add_argument("--cache", action="append", default=[], metavar="SPEC",
                       help="also run every solver through this cache or step schedule (e.g. deepcache:3, "
                            "taylorseer:interval=3,order=2, gaussian:steps=3); repeat for several")
    model.add_argument("--compare-model", action="append", default=[], metavar="MODEL",
                       help="also run every solver on this model (e.g. a `fewstep quantize` folder), scored "
                            "against --model's reference; repeat for several")
    model.add_argument("--variant-nfe", type=_ints, default=None,
                       help="NFE values of the --cache / --compare-model configurations (default: --nfe)")
    model.add_argument("--variant-solvers", type=_names, default=None,
                       help="solvers of the --cache / --compare-model configurations (default: --solvers)")
    model.add_argument("--timing-rounds", type=int, default=0, metavar="R",
                       help="re-time every configuration after the sweep: R interleaved rounds of one batch "
                            "each (order reversed every other round), median; fair wall times on a busy machine")
    model.add_argument("--timing-batch", type=int, default=None, help="images per timing batch (default: --batch-size)")
    model.add_argument("--generators", type=_names, default=[], metavar="MODEL,...",
                       help="one-step generators (fewstep distill runs, bundled:fashion-sid) scored at 1 step on the "
                            "same seeds, beside the solvers in the table and plots")
    from ._reference import add_reference_args
    from .stats import add_extractor_args

    add_reference_args(model, on_by_default=True)
    add_extractor_args(model)
    model.set_defaults(func=_run_model)
    bench.set_defaults(func=lambda args: bench.print_help() or 2)


def _run_gmm(args: argparse.Namespace) -> int:
    from ..bench.gmm import GMMBenchConfig, run_gmm_bench
    from ._destination import check_output

    if args.out:
        check_output(args.out, "folder")  # before the sweep; its tables are printed as well as written
    cfg = GMMBenchConfig(solvers=args.solvers, nfes=args.nfe, grids=args.grids, processes=args.processes,
                         n=args.n, seed=args.seed, out=args.out)
    run_gmm_bench(cfg)
    return 0


def _run_model(args: argparse.Namespace) -> int:
    from ..bench.model import ModelBenchConfig, run_model_bench
    from ..devices import resolve_device
    from ._destination import check_output
    from ._reference import reference_settings

    if args.out:
        check_output(args.out, "folder")  # before the sweep
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    refopt = reference_settings(args)
    cfg = ModelBenchConfig(model=args.model, solvers=args.solvers, nfes=args.nfe, grids=args.grids, n=args.n,
                           ref=args.ref, extractor=args.extractor, inception=args.inception,
                           batch_size=args.batch_size, seed=args.seed,
                           device=args.device and str(resolve_device(args.device)), shape=args.shape,
                           out=args.out, compile=args.compile,
                           limit_nfe=args.limit_nfe, reference=args.reference, reference_solver=refopt.solver,
                           reference_nfe=refopt.nfe, reference_grid=refopt.grid,
                           reference_cache=args.reference_cache, caches=args.cache, models=args.compare_model,
                           variant_nfes=args.variant_nfe, variant_solvers=args.variant_solvers, timing_rounds=args.timing_rounds,
                           timing_batch=args.timing_batch, generators=args.generators)
    run_model_bench(cfg)
    return 0
