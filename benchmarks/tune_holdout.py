"""`fewstep tune`'s plans on a third seed set that neither tuning nor validation used.

    PYTHONPATH=src python benchmarks/tune_holdout.py --model bundled:fashion-v1 \
        --plans benchmarks/results/tune_fashion/plans.json --seeds 30000:30128 --baseline ipndm@uniform

`fewstep tune` keeps the best of several candidates by their error on the validation seeds, so the ratio it
reports for a plan is a little optimistic (the winner's curse).  This script measures each written plan once
more, on fresh seeds, against the baseline the validation chose (mean per-sample RMSE to the near-exact solution,
dpm++3m at ``--reference-nfe`` on the logSNR grid), and prints the ratio next to the one the validation reported.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    import fewstep
    from fewstep.commands.grid import _seeds, load_for_grids
    from fewstep.grids.files import read_grid_file
    from fewstep.tuning import NearExact, ReferenceSettings, compare
    from fewstep.metrics.solution_error import per_sample_rmse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bundled:fashion-v1")
    ap.add_argument("--plans", required=True)
    ap.add_argument("--seeds", type=_seeds, default=list(range(30_000, 30_128)))
    ap.add_argument("--baseline", default="ipndm@uniform", help="solver@grid of the standard baseline")
    ap.add_argument("--reference-nfe", type=int, default=100)
    ap.add_argument("--reference-cache", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    den, shape = load_for_grids(args.model)
    clamp = len(shape) == 3
    t0 = time.perf_counter()
    ref = NearExact(den, shape, args.seeds, ReferenceSettings("dpm++3m", args.reference_nfe, "logsnr"),
                    cache_dir=args.reference_cache, progress=False)(list(args.seeds))
    solver, grid = args.baseline.split("@")
    entries = read_grid_file(args.plans).entries
    print(f"seeds {args.seeds[0]}..{args.seeds[-1]}; ratio = mean error / {args.baseline}'s on these seeds")
    print("| plan | NFE | RMSE | ratio [95% interval] | validation said | worse | worst sample |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for nfe in sorted({e.nfe for e in entries}):
        base = per_sample_rmse(fewstep.generate(den, shape, args.seeds, solver, nfe, grid), ref, clamp=clamp)
        print(f"| {args.baseline} | {nfe} | {float(base.mean()):.4f} | 1 | | |", flush=True)
        for e in (e for e in entries if e.nfe == nfe):
            err = per_sample_rmse(fewstep.generate(den, shape, args.seeds, e.solver, nfe, args.plans), ref,
                                  clamp=clamp)
            v = e.provenance.get("validation", {})
            said = f"{v['ratio']:.3f} [{v['low']:.3f}, {v['high']:.3f}]" if v else "-"
            c = compare(err.numpy(), base.numpy())
            print(f"| {e.solver}: {e.provenance.get('candidate', e.method)} | {nfe} | {float(err.mean()):.4f} | "
                  f"{c.ratio:.3f} [{c.low:.3f}, {c.high:.3f}] | {said} | {c.worse:.0%} | "
                  f"{float((err / base).max()):.2f}x |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
