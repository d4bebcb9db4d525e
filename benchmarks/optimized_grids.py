"""Optimized time grids against fewstep's built-in grids.

Part ``gmm``: Frechet distance above the floor on the exact 64-d mixture (DDPM linear), the floor
being the FD of the exact ODE solution from the same noise (as benchmarks/solvers_vs_diffusers.py),
for each solver on the best built-in grid, the analytic grid and the searched grid (searched on
seeds disjoint from the evaluation noise).
Part ``fashion``: RMS distance to a near-exact solve (dpm++3m, 200 NFE) on ``bundled:fashion-v1`` for
the default, analytic and searched grids (search seeds disjoint from the evaluation seeds).

    PYTHONPATH=src python benchmarks/optimized_grids.py gmm --n 4000
    PYTHONPATH=src python benchmarks/optimized_grids.py fashion --n 128 --search-seeds 32 --rounds 1 \
        --reference-nfe 100 --search-solvers unipc --no-compile
"""

from __future__ import annotations

import argparse
import time

import torch

import fewstep
from fewstep.grids import GRIDS
from fewstep.tuning import ReferenceSet, optimize_grids

BUILTIN = GRIDS


def gmm(args: argparse.Namespace) -> None:
    from fewstep.bench.gmm import bench_mixture
    from fewstep.exact import reference_solution
    from fewstep.metrics import frechet_distance_to_moments
    from fewstep.processes import VPDiscrete

    from fewstep.nettimes import time_tuned

    gm = bench_mixture()
    den = gm.denoiser(VPDiscrete.linear())
    noise = torch.randn(args.n, 64, generator=torch.Generator().manual_seed(0))
    exact = reference_solution(den, noise.double(), rtol=1e-9, atol=1e-9)
    floor = frechet_distance_to_moments(exact, gm.mean, gm.covariance)
    print(f"floor (n={args.n}): {floor:.5f}; each cell: FD - floor / RMSE to the exact ODE solution", flush=True)

    def cell(solver: str, nfe: int, grid, net_times=None) -> tuple[float, float]:
        x = fewstep.sample(time_tuned(den, grid, net_times) if net_times else den, noise, solver, nfe, grid)
        if not torch.isfinite(x).all():
            return float("inf"), float("inf")
        return (frechet_distance_to_moments(x, gm.mean, gm.covariance) - floor,
                float((x.double() - exact).pow(2).mean().sqrt()))

    ref = ReferenceSet(den, (64,), range(100_000, 100_000 + args.search_seeds), nfe=200)
    nfes = [int(v) for v in args.nfe.split(",")]
    cols = ["best built-in", "analytic", "searched", "analytic+TT", "searched+TT"]
    print(f"{'solver':>8} {'NFE':>4} " + " ".join(f"{c:>24}" for c in cols), flush=True)
    for solver in args.solvers.split(","):
        for nfe in nfes:
            t0 = time.perf_counter()
            scored = [(cell(solver, nfe, g), g) for g in BUILTIN]
            (builtin, name) = min(scored, key=lambda r: r[0][0])
            ana = optimize_grids(den, solver, [nfe], "analytic")[0]
            srch = optimize_grids(den, solver, [nfe], "search", reference=ref, rounds=args.rounds)[0]
            cells = [builtin, cell(solver, nfe, ana.times), cell(solver, nfe, srch.times)]
            for start in (ana.times, srch.times):
                tt = optimize_grids(den, solver, [nfe], "timetuner", reference=ref, rounds=args.rounds,
                                    start=start)[0]
                cells.append(cell(solver, nfe, tt.times, tt.net_times))
            text = [f"{fd:.4f} / {rmse:.4f}" for fd, rmse in cells]
            text[0] = f"{name[:5]} {text[0]}"
            print(f"{solver:>8} {nfe:>4} " + " ".join(f"{c:>24}" for c in text)
                  + f"   ({time.perf_counter() - t0:.0f} s)", flush=True)


def fashion(args: argparse.Namespace) -> None:
    from fewstep.metrics.models import load_denoiser, sample_shape

    den = load_denoiser("bundled:fashion-v1", "cpu")
    shape = sample_shape(den)
    if not args.no_compile:
        fewstep.compile_denoiser(den)
    t0 = time.perf_counter()
    evaluation = ReferenceSet(den, shape, range(args.n), nfe=args.reference_nfe, grid=None)
    search = ReferenceSet(den, shape, range(50_000, 50_000 + args.search_seeds), nfe=args.reference_nfe, grid=None)
    print(f"references: {time.perf_counter() - t0:.0f} s; RMSE to dpm++3m at {args.reference_nfe} NFE, {args.n} seeds "
          f"(search on {args.search_seeds} other seeds)", flush=True)
    nfes = [int(v) for v in args.nfe.split(",")]
    print(f"{'solver':>8} {'NFE':>4} {'default':>9} {'analytic':>9} {'searched':>9}", flush=True)
    for solver in args.solvers.split(","):
        for nfe in nfes:
            t0 = time.perf_counter()
            ana = optimize_grids(den, solver, [nfe], "analytic", data_std=args.data_std)[0]
            cells = [evaluation.rmse(solver, nfe, None), evaluation.rmse(solver, nfe, ana.times)]
            if args.search_seeds and solver in args.search_solvers.split(","):
                srch = optimize_grids(den, solver, [nfe], "search", reference=search, rounds=args.rounds,
                                      candidates=args.candidates, data_std=args.data_std)[0]
                cells.append(evaluation.rmse(solver, nfe, srch.times))
            print(f"{solver:>8} {nfe:>4} " + " ".join(f"{c:>9.4f}" for c in cells)
                  + f"   ({time.perf_counter() - t0:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["gmm", "fashion"])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--nfe", default="5,6,8,10")
    ap.add_argument("--solvers", default="ipndm,unipc,dpm++2m")
    ap.add_argument("--search-solvers", default="ipndm,unipc,dpm++2m")
    ap.add_argument("--search-seeds", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--candidates", type=int, default=2)
    ap.add_argument("--reference-nfe", type=int, default=200)
    ap.add_argument("--data-std", type=float, nargs=2, default=(0.1, 4.0))
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    args.data_std = tuple(args.data_std)
    torch.set_num_threads(1)
    gmm(args) if args.part == "gmm" else fashion(args)


if __name__ == "__main__":
    main()
