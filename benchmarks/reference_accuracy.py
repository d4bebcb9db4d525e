"""How exact is the near-exact reference?  Its change when the NFE doubles, against solver errors.

    PYTHONPATH=src python benchmarks/reference_accuracy.py --model bundled:fashion-v1 --seeds 4

For each reference setting (``--solver``, ``--grid``) and NFE in ``--nfes`` (N, 2N, 4N, ...), the
near-exact solution ``x0_hat(x(t_min), t_min)`` of seeds ``0 .. --seeds - 1``
(:func:`fewstep.tuning.near_exact_batch`, nothing cached), then the RMSE
(:mod:`fewstep.metrics.solution_error`) between consecutive NFEs and to the finest one, and the
RMSE of a few-step solver (``--check``) to the finest, for scale.  The reference's own error is
about its change from N to 2N (less for higher-order convergence).
"""

from __future__ import annotations

import argparse

import torch

import fewstep
from fewstep.metrics.models import load_denoiser, sample_shape
from fewstep.tuning import ReferenceSettings, near_exact_batch
from fewstep.metrics.solution_error import per_sample_rmse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bundled:fashion-v1")
    ap.add_argument("--solver", default="dpm++3m")
    ap.add_argument("--grids", default="logsnr,uniform")
    ap.add_argument("--nfes", default="50,100,200,400")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--check", default="dpm++3m:5,dpm++3m:10,unipc:5,unipc:10,ddim:5")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    den = load_denoiser(args.model, "cpu")
    shape = sample_shape(den)
    seeds = list(range(args.seeds))
    nfes = [int(v) for v in args.nfes.split(",")]

    def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(per_sample_rmse(a, b).mean())

    finest = None
    for grid in args.grids.split(","):
        refs = {n: near_exact_batch(den, shape, seeds, ReferenceSettings(args.solver, n, grid)) for n in nfes}
        for a, b in zip(nfes, nfes[1:]):
            print(f"{args.solver} {grid:8s} NFE {a:4d} vs {b:4d}: RMSE {rmse(refs[a], refs[b]):.2e}", flush=True)
        if finest is None:
            finest = refs[nfes[-1]]
        else:
            print(f"{args.solver} {grid:8s} NFE {nfes[-1]} vs the first grid's: RMSE {rmse(refs[nfes[-1]], finest):.2e}")
    for item in args.check.split(","):
        solver, nfe = item.split(":")
        x = fewstep.generate(den, shape, seeds, solver, int(nfe))
        print(f"{solver} at {nfe} NFE (default grid) to the finest reference: RMSE {rmse(x, finest):.4f}", flush=True)


if __name__ == "__main__":
    main()
