"""``fewstep tune``: tune sampling plans for a model, keep those that beat the best standard solver on fresh seeds."""

from __future__ import annotations

import argparse

from .grid import EXACT_MODELS, _ints, _seeds


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="tune sampling plans (teleport, grids, DC ratios, TimeTuner) and keep only those "
                                    "that win on fresh seeds",
                       description=(
                           "For each solver x NFE: fits the data Gaussian (if the model has none), scans teleport "
                           "starts, searches the grid, DC-Solver's ratios and TimeTuner's network times on the tuning "
                           "seeds, then validates every candidate on validation seeds no choice saw, against the best "
                           "standard solver x named grid at equal NFE (per-sample RMSE to the near-exact solution, "
                           "paired bootstrap interval of the error ratio, fraction of samples that end worse). Only "
                           "candidates whose interval lies below 1 are kept; --out gets the best per solver x NFE as a "
                           "plan file (`fewstep sample --plan OUT`; written as <checkpoint>/plans.json it loads with "
                           "the model: `--plan tuned`), OUT's .report.md / .report.json say why the "
                           "others were dropped. Resumable: finished steps live in <out stem>.tune/."))
    p.add_argument("--model", required=True, help="a checkpoint folder, a run folder, a diffusers UNet folder, "
                                                  "bundled:fashion, or an exact model: " + ", ".join(EXACT_MODELS))
    p.add_argument("--data", default=None,
                   help="the training data (fashion-mnist[:train|:test], an idx file, a .npz/.npy image array or a "
                        "folder of images), for the data Gaussian when the model has none and for dpm_v3's "
                        "statistics (default: the data the checkpoint's config records, if any; for an exact "
                        "mixture 10 000 samples of it)")
    p.add_argument("--solvers", default="unipc,ipndm,dc_solver", help="solvers to tune (default unipc,ipndm,dc_solver)")
    p.add_argument("--nfe", type=_ints, default=[5, 6, 8, 10], help="NFE budgets (default 5,6,8,10)")
    p.add_argument("--out", required=True, help="the plans: a grid file (.json)")
    p.add_argument("--tuning-seeds", type=_seeds, default=list(range(10_000, 10_048)),
                   help="seeds the candidates are tuned on, A:B (default 10000:10048)")
    p.add_argument("--validation-seeds", type=_seeds, default=list(range(20_000, 20_128)),
                   help="fresh seeds the candidates are judged on, A:B, disjoint from the tuning seeds "
                        "(default 20000:20128)")
    p.add_argument("--reference-nfe", type=int, default=100, help="NFE of the near-exact reference (dpm++3m, logSNR "
                                                                 "grid; default 100)")
    p.add_argument("--budget-minutes", type=float, default=30.0,
                   help="time budget: TimeTuner is left out when the estimate exceeds it, and tuning stages after it "
                        "ran out are skipped (default 30)")
    p.add_argument("--starts", type=_floats, default=None,
                   help="teleport start times to scan (default: noise levels sigma/alpha 80, 40, 25, 15, 10, 6)")
    p.add_argument("--standard", default="ipndm,unipc,dpm++3m",
                   help="the standard solvers of the baseline, each on every named grid (default ipndm,unipc,dpm++3m)")
    p.add_argument("--iters", type=int, default=1, help="rounds of coordinate descent (grid search, TimeTuner)")
    p.add_argument("--candidates", type=int, default=2, help="candidate moves per side and coordinate")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-resume", action="store_true", help="start afresh instead of reading <out stem>.tune/")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from ..devices import resolve_device
    from ..tuning.tune import tune
    from ._destination import Destination, check_writable
    from .grid import load_for_grids

    out = Path(args.out)
    if out.suffix != ".json":
        raise ValueError(f"--out {args.out}: the plans are a grid file and end in .json")
    check_writable(Destination(out, "grid"))  # before any work
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    exact = args.model.startswith("exact:")
    den, shape = load_for_grids(args.model, device)
    data = args.data
    if data is None and exact:  # an exact mixture's training data: samples of it
        data = den.model.sample(10_000, torch.Generator().manual_seed(0)).float()
    elif data is None:
        data = ((getattr(den, "config", None) or {}).get("data") or {}).get("spec")
    elif exact:
        raise ValueError(f"--data: {args.model} is an exact mixture whose training data are its own samples; "
                         f"leave --data out")
    report = tune(den, data, [s for s in args.solvers.split(",") if s], args.nfe, out,
                  tuning_seeds=args.tuning_seeds, validation_seeds=args.validation_seeds,
                  reference_nfe=args.reference_nfe, budget_minutes=args.budget_minutes, starts=args.starts,
                  resume=not args.no_resume, progress=not args.no_progress,
                  standard=[s for s in args.standard.split(",") if s], rounds=args.iters,
                  candidates=args.candidates, batch_size=args.batch_size,
                  device=None if exact else device, shape=shape, model_name=args.model)
    print(report.table())
    if report.plans is not None:
        print(f"wrote {report.plans} ({len(report.kept)} plan(s)) and {report.report_md}; sample with "
              f"`fewstep sample --model {args.model} --plan {report.plans} --solver S --nfe N`"
              + (" (beside the checkpoint: --plan tuned)" if report.plans.name == "plans.json"
                 and Path(args.model).is_dir() and report.plans.resolve().parent == Path(args.model).resolve()
                 else ""))
    else:
        print(f"no candidate beat the best standard solver on the validation seeds, so no plans were written; "
              f"see {report.report_md}")
    print(f"{report.seconds / 60:.1f} min ({report.cpu_seconds / 60:.1f} CPU-minutes)")
    return 0
