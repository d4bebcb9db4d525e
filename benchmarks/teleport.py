"""Analytical teleportation (``fewstep.sample(..., teleport=t)``): where to start, and what it buys at few NFE.

    PYTHONPATH=src python benchmarks/teleport.py gmm --n 4000
    PYTHONPATH=src python benchmarks/teleport.py fashion --n 128 --reference-nfe 100 --reference-cache refcache
    PYTHONPATH=src python benchmarks/teleport.py cond --n 64 --starts 800,700
    PYTHONPATH=src python benchmarks/teleport.py cost --n 64

``gmm``: the exact 64-d mixture (DDPM linear), its moment-matched Gaussian as the data Gaussian (what
``fewstep gaussian`` computes from samples).  Each cell: Frechet distance above the floor (the FD of the exact ODE
solution from the same noise) / RMS distance to that exact solution, for the built-in grid that is best without
teleport, started at ``t_max`` (no teleport) or teleported to each ``--starts`` time.

``fashion``: ``bundled:fashion-v1`` and its shipped data Gaussian; mean per-sample RMSE to the near-exact solution
(dpm++3m, ``--reference-nfe``, logSNR grid) of seeds 0..n-1 for the standard solvers on the time-uniform grid from
each start (``none``: the default grid from ``t_max``), and the teleport alone (the Gaussian's flow to the start,
then the near-exact solve from there: the floor a start sets).

``cond``: a class-conditional model (``bundled:fashion-cond``) with class ``seed % 10``; each sample teleported by
its class's Gaussian (``fewstep gaussian --per-class``); RMSE to the near-exact solve of the same guided ODE, for
plain conditional sampling and CFG 3 with and without a guidance interval (an interval that excludes the teleported
range makes the class Gaussian's flow the right surrogate there).  ``cost``: the teleport against one network
evaluation.
"""

from __future__ import annotations

import argparse
import time

import torch

import fewstep


def gmm(args: argparse.Namespace) -> None:
    from fewstep.bench.gmm import bench_mixture
    from fewstep.exact import GaussianMixture, reference_solution
    from fewstep.metrics import frechet_distance_to_moments
    from fewstep.processes import VPDiscrete

    gm = bench_mixture()
    process = VPDiscrete.linear()
    den = gm.denoiser(process)
    den.data_gaussian = GaussianMixture.from_covariances(gm.mean[None], gm.covariance[None])
    noise = torch.randn(args.n, 64, generator=torch.Generator().manual_seed(0))
    exact = reference_solution(den, noise.double(), rtol=1e-9, atol=1e-9)
    floor = frechet_distance_to_moments(exact, gm.mean, gm.covariance)
    print(f"floor (n={args.n}): {floor:.5f}; each cell: FD - floor / RMSE to the exact ODE solution\n")
    starts = [None] + [float(v) for v in args.starts.split(",")]
    print("| solver | NFE | grid | " + " | ".join("no teleport" if s is None else f"t = {s:g}" for s in starts) +
          " |\n|---|---:|---|" + "---:|" * len(starts))
    for solver in args.solvers.split(","):
        for nfe in [int(v) for v in args.nfe.split(",")]:
            for grid in args.grids.split(","):
                cells = []
                for t in starts:
                    x = fewstep.sample(den, noise, solver, nfe, grid, teleport=t)
                    fd = frechet_distance_to_moments(x, gm.mean, gm.covariance) - floor
                    cells.append(f"{fd:.4f} / {float((x.double() - exact).pow(2).mean().sqrt()):.3f}")
                print(f"| {solver} | {nfe} | {grid} | " + " | ".join(cells) + " |", flush=True)


def fashion(args: argparse.Namespace) -> None:
    from fewstep.metrics.models import load_denoiser
    from fewstep.tuning import NearExact, ReferenceSettings
    from fewstep.metrics.solution_error import per_sample_rmse

    den = load_denoiser("bundled:fashion-v1", "cpu")  # load_model attaches the shipped data Gaussian
    shape = tuple(den.sample_shape)
    seeds = list(range(args.n))
    ref = NearExact(den, shape, seeds, ReferenceSettings("dpm++3m", args.reference_nfe, "logsnr"),
                    cache_dir=args.reference_cache, progress=True)(seeds)
    starts = [None] + [float(v) for v in args.starts.split(",")]
    nfes = [int(v) for v in args.nfe.split(",")]
    print("| start | " + " | ".join(f"{s} @ {n}" for s in args.solvers.split(",") for n in nfes) +
          " | teleport + near-exact |\n|---|" + "---:|" * (len(nfes) * len(args.solvers.split(",")) + 1))
    for t in starts:
        t0 = time.perf_counter()
        cells = []
        for solver in args.solvers.split(","):
            for nfe in nfes:
                x = fewstep.generate(den, shape, seeds, solver, nfe, None if t is None else "uniform", teleport=t)
                cells.append(f"{float(per_sample_rmse(x, ref).mean()):.4f}")
        if t is None:
            cells.append("0")
        else:
            x = fewstep.generate(den, shape, seeds, "dpm++3m", args.reference_nfe, "logsnr", teleport=t)
            cells.append(f"{float(per_sample_rmse(x, ref).mean()):.4f}")
        print(f"| {'none (default grid)' if t is None else f'{t:g}'} | " + " | ".join(cells) +
              f" |  ({time.perf_counter() - t0:.0f} s)", flush=True)


def cond(args: argparse.Namespace) -> None:
    """Class-conditional teleport on ``--model`` (default bundled:fashion-cond): each sample's class Gaussian
    carries it to the start; plain conditional sampling and CFG 3 with and without a guidance interval."""
    from fewstep.guidance import guide
    from fewstep.metrics.solution_error import per_sample_rmse

    den = fewstep.load_model(args.model)
    if args.gaussian:
        from fewstep.teleport import load_class_gaussians

        den.class_gaussians = load_class_gaussians(args.gaussian)
    shape = tuple(den.sample_shape)
    seeds = list(range(args.n))
    labels = torch.tensor([s % 10 for s in seeds])
    x_T = fewstep.prior_noise(den.process, shape, fewstep.generators(seeds))
    cond_ = {"class_labels": labels}
    nfes = [int(v) for v in args.nfe.split(",")]
    starts = [None] + [float(v) for v in args.starts.split(",")]
    configs = [("conditional (w = 1)", None, 1.0, None), ("CFG 3, interval (0.3, 5]", "cfg", 3.0, "0.3,5"),
               ("CFG 3, everywhere", "cfg", 3.0, None)]
    print("| guidance | start | " + " | ".join(f"{s} @ {n}" for s in args.solvers.split(",") for n in nfes) +
          " | teleport + near-exact |\n|---|---|" + "---:|" * (len(nfes) * len(args.solvers.split(",")) + 1))
    for name, method, scale, interval in configs:
        g = guide(den, method, scale, interval=interval)
        ref = fewstep.sample(g, x_T, "dpm++3m", args.reference_nfe, "logsnr", cond=cond_)
        for t in starts:
            cells = [f"{float(per_sample_rmse(fewstep.sample(g, x_T, solver, nfe, None if t is None else 'uniform', teleport=t, cond=cond_), ref).mean()):.4f}"
                     for solver in args.solvers.split(",") for nfe in nfes]
            floor = "0" if t is None else f"{float(per_sample_rmse(fewstep.sample(g, x_T, 'dpm++3m', args.reference_nfe, 'logsnr', teleport=t, cond=cond_), ref).mean()):.4f}"
            print(f"| {name} | {'none (default grid)' if t is None else f'{t:g}'} | " + " | ".join(cells) +
                  f" | {floor} |", flush=True)


def cost(args: argparse.Namespace) -> None:
    """Seconds of one teleport against one network evaluation, same batch, median of ``--rounds``."""
    from fewstep.teleport import teleport

    den = fewstep.load_model("bundled:fashion-v1")
    g, p = den.data_gaussian, den.process
    x = fewstep.prior_noise(p, tuple(den.sample_shape), fewstep.generators(range(args.n)))

    def median(fn) -> float:
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    with torch.inference_mode():
        net = median(lambda: den.predict(x, 500.0))
        tele = median(lambda: teleport(x, p, 700.0, g))
    print(f"batch {args.n}, {torch.get_num_threads()} thread(s): network evaluation {1000 * net:.1f} ms, "
          f"teleport {1000 * tele:.2f} ms = {tele / net:.4f} of an evaluation")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["gmm", "fashion", "cond", "cost"])
    ap.add_argument("--model", default="bundled:fashion-cond", help="cond: a class-conditional model")
    ap.add_argument("--gaussian", default=None, help="cond: a gaussian.safetensors with per-class Gaussians "
                                                     "(default: the model's)")
    ap.add_argument("--rounds", type=int, default=7, help="cost: timing rounds")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--nfe", default="5,6")
    ap.add_argument("--solvers", default="ipndm,unipc")
    ap.add_argument("--grids", default="logsnr,quadratic", help="gmm: the built-in grids (each from the start)")
    ap.add_argument("--starts", default="900,800,700,600,500")
    ap.add_argument("--reference-nfe", type=int, default=100)
    ap.add_argument("--reference-cache", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"gmm": gmm, "fashion": fashion, "cond": cond, "cost": cost}[args.mode](args)


if __name__ == "__main__":
    main()
