"""Which time grid for a trained model: error against a near-exact solve, and FID, per grid.

    PYTHONPATH=src python benchmarks/grid_choice.py --model bundled:fashion-v1

Part 1 (accuracy): RMS distance of ``--n-error`` samples (seeds 0..n-1) to a near-exact ODE solve
of the same noise (DPM-Solver++(2M), ``--ref-nfe`` steps on the logSNR grid; a second near-exact
solve, UniPC on the time-uniform grid, shows how exact that reference is).
Part 2 (quality): dataset-native FID of ``--n-fid`` samples against the shipped Fashion-MNIST
test-set statistics, plus the FID of the near-exact solve itself (the ODE's own FID).
This is the measurement behind each process's ``default_grid`` (docs/solvers.md).
"""

from __future__ import annotations

import argparse

import torch

import fewstep
from fewstep.metrics.evaluate import evaluate
from fewstep.metrics.extractors import get_extractor
from fewstep.metrics.models import load_denoiser, reference_stats, sample_shape
from fewstep.metrics.sampling import solver_sample_fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bundled:fashion-v1")
    ap.add_argument("--solvers", default="ddim,dpm++2m,unipc")
    ap.add_argument("--grids", default="uniform,logsnr,karras,quadratic")
    ap.add_argument("--nfe", default="5,10,20")
    ap.add_argument("--n-error", type=int, default=256)
    ap.add_argument("--n-fid", type=int, default=1000, help="0 skips the FID part")
    ap.add_argument("--ref-nfe", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()

    device = torch.device("cpu")
    denoiser = load_denoiser(args.model, device)
    shape = sample_shape(denoiser)
    if not args.no_compile:
        fewstep.compile_denoiser(denoiser)
    names, grids = args.solvers.split(","), args.grids.split(",")
    nfes = [int(v) for v in args.nfe.split(",")]
    seeds = list(range(args.n_error))

    @torch.no_grad()
    def solve(solver: str, nfe: int, grid: str) -> torch.Tensor:
        return torch.cat([fewstep.generate(denoiser, shape, seeds[i:i + args.batch_size], solver, nfe, grid)
                          for i in range(0, len(seeds), args.batch_size)])

    ref = solve("dpm++2m", args.ref_nfe, "logsnr")
    check = solve("unipc", args.ref_nfe, "uniform")
    print(f"RMS distance to the near-exact solve (dpm++2m, {args.ref_nfe} NFE, logsnr), {args.n_error} samples; "
          f"a second near-exact solve (unipc, {args.ref_nfe} NFE, uniform) is "
          f"{float((check - ref).pow(2).mean().sqrt()):.4f} from it")
    print(f"{'solver':>8s} {'grid':>10s} " + " ".join(f"{'NFE ' + str(n):>8s}" for n in nfes), flush=True)
    for name in names:
        for grid in grids:
            errs = [float((solve(name, nfe, grid) - ref).pow(2).mean().sqrt()) for nfe in nfes]
            print(f"{name:>8s} {grid:>10s} " + " ".join(f"{e:8.4f}" for e in errs), flush=True)
    if args.n_fid <= 0:
        return
    extractor = get_extractor("fashion", device=device)
    stats = reference_stats(None, extractor)

    def fid(solver: str, nfe: int, grid: str) -> float:
        return evaluate(solver_sample_fn(denoiser, shape, solver, nfe, grid, device), args.n_fid, extractor, stats,
                        batch_size=args.batch_size, progress=False)["fid"]

    print(f"\nFID of {args.n_fid} samples (fashion classifier features, Fashion-MNIST test set); "
          f"the near-exact solve (dpm++2m, {args.ref_nfe} NFE, logsnr) scores {fid('dpm++2m', args.ref_nfe, 'logsnr'):.2f}")
    print(f"{'solver':>8s} {'grid':>10s} " + " ".join(f"{'NFE ' + str(n):>8s}" for n in nfes), flush=True)
    for name in names:
        for grid in grids:
            print(f"{name:>8s} {grid:>10s} " + " ".join(f"{fid(name, nfe, grid):8.2f}" for nfe in nfes), flush=True)


if __name__ == "__main__":
    main()
