"""Time-Shift (ts-*) and DC-Solver against the best existing fewstep solvers on the exact 64-d mixture.

    PYTHONPATH=src python benchmarks/ts_dc_gmm.py [--n 4000] [--nfe 5,6,8,10]

DDPM linear schedule.  Frechet distance to the exact moments minus the floor (the FD of the exact ODE solution
from the same noise; the same noise and floor as benchmarks/solvers_vs_diffusers.py), best over the logSNR and quadratic grids.
DC-Solver's ratios are searched per NFE and grid on 64 other seeds against a 200-NFE DPM-Solver++(3M) reference.
"""

from __future__ import annotations

import argparse

import torch

import fewstep
from fewstep.bench.gmm import bench_mixture
from fewstep.exact import reference_solution
from fewstep.metrics import frechet_distance_to_moments
from fewstep.processes import VPDiscrete
from fewstep.tuning import search_ratios

GRIDS = ("logsnr", "quadratic")
BASES = ("ddim", "dpm++2m", "unipc", "ipndm")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--nfe", default="5,6,8,10")
    args = ap.parse_args()
    torch.set_num_threads(1)
    gmm = bench_mixture()
    den = gmm.denoiser(VPDiscrete.linear())
    noise = torch.randn(args.n, 64, generator=torch.Generator().manual_seed(0))  # as solvers_vs_diffusers.py
    fd = lambda x: frechet_distance_to_moments(x, gmm.mean, gmm.covariance)  # noqa: E731
    floor = fd(reference_solution(den, noise.double(), rtol=1e-9, atol=1e-9))
    print(f"floor (n={args.n}): {floor:.5f}")
    nfes = [int(v) for v in args.nfe.split(",")]
    rows: dict[str, dict[int, tuple[float, str]]] = {}
    for nfe in nfes:
        for name in [*BASES, *(f"ts-{b}" for b in BASES), "dc_solver"]:
            best = None
            for grid in GRIDS:
                opts = {}
                if name == "dc_solver":
                    opts["ratios"] = search_ratios(den, (64,), nfe, range(10_000, 10_064), reference_nfe=200,
                                                   grid=grid, dtype=torch.float64)
                value = fd(fewstep.sample(den, noise, name, nfe, grid, **opts)) - floor
                if best is None or value < best[0]:
                    best = (value, grid)
            rows.setdefault(name, {})[nfe] = best
        print(nfe, {k: f"{v[nfe][0]:.4f}/{v[nfe][1]}" for k, v in rows.items()}, flush=True)
    print("| solver | " + " | ".join(f"NFE {n}" for n in nfes) + " |\n|---|" + "---:|" * len(nfes))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[n][0]:.4f} ({r[n][1]})" for n in nfes) + " |")


if __name__ == "__main__":
    main()
