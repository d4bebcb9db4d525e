"""DPM-Solver-v3 against the best existing fewstep solvers at 5-10 NFE (Zheng et al. 2023 claim large gains there).

gmm:     Frechet distance above the floor (the FD of the exact ODE solution from the same noise, as in
         benchmarks/solvers_vs_diffusers.py) on the exact 64-d mixture, DDPM linear schedule; the EMS are computed
         from exact mixture samples through the exact denoiser.
fashion: RMSE to a near-exact solve from the same noise (DPM-Solver++(3M), --ref-nfe) on bundled:fashion-v1, with
         EMS from `fewstep ems` (--ems DIR).
Run: PYTHONPATH=src python benchmarks/dpm_v3.py gmm [--n 4000]
     PYTHONPATH=src python benchmarks/dpm_v3.py fashion --ems DIR [--n 256]
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

import fewstep
from fewstep.bench.gmm import bench_mixture
from fewstep.exact import reference_solution
from fewstep.processes import VPDiscrete
from fewstep.solvers.dpm_v3 import EMS
from fewstep.tuning import compute_ems
from solvers_vs_diffusers import frechet  # the shared FD-or-inf helper (benchmarks/ is on sys.path)

NFES = (5, 6, 8, 10)
BASELINES = [("dpm++2m", {}), ("dpm++3m", {}), ("unipc", {"order": 2}), ("unipc", {"order": 3}), ("deis", {}),
             ("ipndm", {})]
V3 = [("dpm_v3", {}), ("dpm_v3", {"corrector": False}), ("dpm_v3", {"pseudo": True}),
      ("dpm_v3", {"pseudo": False})]


def label(solver: str, opts: dict) -> str:
    return solver + ("(" + ",".join(f"{k}={v}" for k, v in opts.items() if k != "ems") + ")" if
                     any(k != "ems" for k in opts) else "")


def gmm(args: argparse.Namespace) -> None:
    mix = bench_mixture()
    den = mix.denoiser(VPDiscrete.linear())
    t0 = time.time()
    ems = compute_ems(den, mix.sample(20000, torch.Generator().manual_seed(7)), n_lambda=args.n_lambda,
                      n_samples=args.n_samples, batch_size=args.n_samples, seed=0, progress=False)
    print(f"EMS: {args.n_lambda + 1} lambdas x {args.n_samples} samples in {time.time() - t0:.0f} s")
    noise = torch.randn(args.n, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    floor = frechet(reference_solution(den, noise, rtol=1e-9, atol=1e-9), mix.mean, mix.covariance)
    print(f"floor (n={args.n}): {floor:.5f}")
    grids = args.grids.split(",")
    rows = {}
    for nfe in NFES:
        for (s, o), g in itertools.product(BASELINES + [(v, {**p, "ems": ems}) for v, p in V3] +
                                           [("dpm_v3", {"ems": "degenerate"})], grids):
            key = label(s, o) + ("[l=1,s=b=0]" if o.get("ems") == "degenerate" else "")
            rows[(key, g, nfe)] = frechet(fewstep.sample(den, noise, s, nfe, g, **o), mix.mean, mix.covariance) - floor
    names = sorted({k[0] for k in rows}, key=lambda n: (not n.startswith("dpm_v3"), n))
    print("\nFD above the floor, best grid per cell (grid in brackets)")
    print(f"| solver | {' | '.join(f'NFE {n}' for n in NFES)} |\n|---|{'---:|' * len(NFES)}")
    for name in names:
        cells = []
        for nfe in NFES:
            fd, g = min((rows[(name, g, nfe)], g) for g in grids)
            cells.append(f"{fd:.4f} ({g})")
        print(f"| {name} | {' | '.join(cells)} |")
    print("\nper grid, dpm_v3 default vs best baseline on that grid")
    for g in grids:
        line = []
        for nfe in NFES:
            base = min(rows[(label(s, o), g, nfe)] for s, o in BASELINES)
            line.append(f"{rows[('dpm_v3', g, nfe)]:.4f} vs {base:.4f}")
        print(f"{g:>9}: " + " | ".join(line))


def fashion(args: argparse.Namespace) -> None:
    den = fewstep.load_model("bundled:fashion-v1")
    ems = EMS.load(args.ems)
    seeds = list(range(args.seed, args.seed + args.n))
    shape = den.sample_shape
    t0 = time.time()
    ref = gen(den, shape, seeds, "dpm++3m", args.ref_nfe, args.grid, args.batch_size)
    print(f"reference: dpm++3m, {args.ref_nfe} NFE, {args.grid} grid, {args.n} seeds ({time.time() - t0:.0f} s)")
    if args.check_nfe:
        chk = gen(den, shape, seeds, "unipc", args.check_nfe, args.grid, args.batch_size)
        print(f"  a second near-exact solve (unipc, {args.check_nfe} NFE) lies {rmse(chk, ref):.4f} from it")
    configs = [("dpm++2m", {}), ("unipc", {}), ("ipndm", {})] + [(v, {**p, "ems": ems}) for v, p in V3[:2]] + \
        [("dpm_v3", {"ems": "degenerate"})]
    print(f"\nRMSE to the reference, {args.grid} grid, {args.n} seeds")
    print(f"| solver | {' | '.join(f'NFE {n}' for n in NFES)} |\n|---|{'---:|' * len(NFES)}")
    for s, o in configs:
        name = label(s, o) + ("[l=1,s=b=0]" if o.get("ems") == "degenerate" else "")
        cells = [rmse(gen(den, shape, seeds, s, nfe, args.grid, args.batch_size, **o), ref)
                 for nfe in NFES]
        print(f"| {name} | {' | '.join(f'{c:.4f}' for c in cells)} |", flush=True)


def gen(den, shape, seeds, solver, nfe, grid, batch_size, **opts) -> torch.Tensor:
    """``fewstep.generate`` in batches (the same seed gives the same image in any batch)."""
    return torch.cat([fewstep.generate(den, shape, seeds[i:i + batch_size], solver, nfe, grid, **opts)
                      for i in range(0, len(seeds), batch_size)])


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    g = sub.add_parser("gmm")
    g.add_argument("--n", type=int, default=4000)
    g.add_argument("--n-lambda", type=int, default=120)
    g.add_argument("--n-samples", type=int, default=1024)
    g.add_argument("--grids", default="logsnr,quadratic,uniform,karras")
    f = sub.add_parser("fashion")
    f.add_argument("--ems", required=True)
    f.add_argument("--n", type=int, default=256)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--grid", default="uniform")
    f.add_argument("--ref-nfe", type=int, default=100)
    f.add_argument("--check-nfe", type=int, default=0)
    f.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    (gmm if args.what == "gmm" else fashion)(args)


if __name__ == "__main__":
    main()
