"""Denoising MCMC against the best ODE solvers at equal NFE on the exact 64-d mixture (docs/dmcmc.md).

The score and the noise-level posterior are exact here (``ExactLevelPosterior``), so what is measured is the
sampler itself, not an estimator.  Prints the Frechet distance to the mixture's exact moments of N samples
(seeds 0..N-1) for each configuration, with the finite-sample floor.

    nice -n 10 python benchmarks/dmcmc_gmm.py --n 2000
"""

from __future__ import annotations

import argparse

import torch

import fewstep
from fewstep.bench.gmm import bench_mixture, finite_sample_floor
from fewstep.dmcmc import DMCMCConfig, ExactLevelPosterior, NoiseLevels, dmcmc_generate
from fewstep.metrics.frechet import frechet_distance_to_moments
from fewstep.processes import VPDiscrete


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--nfe", default="5,6,8,10,20")
    args = ap.parse_args()
    torch.set_num_threads(1)
    gmm, process = bench_mixture(), VPDiscrete.linear(1000, 1e-4, 0.02)
    den = gmm.denoiser(process)
    fd = lambda x: frechet_distance_to_moments(x.double().reshape(len(x), -1), gmm.mean, gmm.covariance)  # noqa: E731
    print(f"n = {args.n}; finite-sample floor (exact samples): {finite_sample_floor(gmm, args.n, 5, 0):.4f}")
    print("| total NFE per image | sampler | FD |")
    print("|---|---|---|")
    levels = NoiseLevels.logsnr(process, 8, 200.0, 700.0)
    post = ExactLevelPosterior(gmm, process, levels)
    for nfe in [int(v) for v in args.nfe.split(",")]:
        best = None
        for solver in ("dpm++2m", "unipc", "ipndm"):
            for grid in ("uniform", "logsnr"):
                v = fd(fewstep.generate(den, (64,), range(args.n), solver, nfe, grid))
                best = min(best or (v, ""), (v, f"{solver} {grid}"))
        print(f"| {nfe} | best ODE solver ({best[1]}) | {best[0]:.4f} |")
        for per_chain, burn_in, stride in ((20, 20, 1), (20, 20, 2), (100, 100, 1)):
            ode = nfe - stride - burn_in // per_chain
            if ode < 2:
                continue
            for step_scale in (0.05, 0.2):
                cfg = DMCMCConfig("dpm++2m", ode, "logsnr", burn_in, stride, per_chain, step_scale)
                assert cfg.nfe_per_image() == nfe
                v = fd(dmcmc_generate(den, (64,), range(args.n), post, cfg))
                print(f"| {nfe} | DMCMC (chain: burn-in {burn_in}, {per_chain} states per chain every {stride} "
                      f"step(s), step {step_scale}; dpm++2m logsnr {ode} NFE) | {v:.4f} |", flush=True)
    # independent chains (one state each): the chain's law, at a cost no few-step budget affords
    for burn_in in (20, 100):
        cfg = DMCMCConfig("dpm++2m", 4, "logsnr", burn_in, 1, 1, 0.05)
        v = fd(dmcmc_generate(den, (64,), range(args.n), post, cfg))
        print(f"| {float(cfg.nfe_per_image()):g} | DMCMC, independent chains (burn-in {burn_in}, step 0.05; dpm++2m "
              f"logsnr 4 NFE) | {v:.4f} |", flush=True)


if __name__ == "__main__":
    main()
