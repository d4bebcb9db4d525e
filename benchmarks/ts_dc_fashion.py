"""Time-Shift and DC-Solver on ``bundled:fashion-v1``: RMSE to a near-exact solve and dataset-native FID.

    PYTHONPATH=src python benchmarks/ts_dc_fashion.py rmse  [--n 256] [--nfe 5,6,8,10]
    PYTHONPATH=src python benchmarks/ts_dc_fashion.py fid   [--n 1000] [--nfe 5,6,8,10]
    PYTHONPATH=src python benchmarks/ts_dc_fashion.py sweep [--n 1000] [--nfe 10]   (TS window/cutoff/data_var)

``rmse``: RMS distance of each solver's samples to ``generate(den, shape, seeds, "dpm++3m", 200)`` from the same
noise (seeds 0..n-1).  DC-Solver's ratios are searched on other seeds (100000..100031, reference 200 NFE) and
written to ``benchmarks/results/dc_fashion_ratios.json``; ``dc_solver (CPR)`` uses ratios predicted by CPR fitted
on the *other* searched NFEs (leave-one-out), as a user with an unsearched NFE would get them.
``fid``/``sweep``: ``fewstep.metrics.evaluate`` with the fashion extractor against the shipped test statistics
(seeds 0..n-1, the same noise for every sampler).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import fewstep
from fewstep.metrics.evaluate import evaluate
from fewstep.metrics.extractors import get_extractor
from fewstep.metrics.models import load_denoiser, reference_stats
from fewstep.metrics.sampling import solver_sample_fn
from fewstep.solvers.dc import RatioTable, fit_cpr
from fewstep.tuning import search_table

RATIOS = Path(__file__).parent / "results" / "dc_fashion_ratios.json"


def ratio_table(den, shape, nfes: list[int]) -> RatioTable:
    if RATIOS.exists():
        table = RatioTable.load(RATIOS)
        if all(n in table.ratios for n in nfes):
            return table
    start = time.perf_counter()
    table = search_table(den, shape, nfes, range(100_000, 100_016), reference_nfe=100, progress=True)
    print(f"ratio search: {time.perf_counter() - start:.0f} s")
    RATIOS.parent.mkdir(parents=True, exist_ok=True)
    table.save(RATIOS)
    return table


def rmse(args, den, shape) -> None:
    seeds = range(args.n)
    ref = fewstep.generate(den, shape, seeds, "dpm++3m", 200)
    table = ratio_table(den, shape, args.nfes)
    rows = {}
    for nfe in args.nfes:
        loo = {k: v for k, v in table.ratios.items() if k != nfe}
        cpr = RatioTable(loo, table.dc_order, fit_cpr(loo, table.dc_order)).for_steps(nfe)
        cfgs = [("ddim", {}), ("ts-ddim", {}), ("dpm++2m", {}), ("ts-dpm++2m", {}), ("ipndm", {}), ("unipc", {}),
                ("ts-unipc", {}), ("dc_solver", {"ratios": table}), ("dc_solver (CPR)", {"ratios": cpr})]
        for name, opts in cfgs:
            out = fewstep.generate(den, shape, seeds, name.split(" ")[0], nfe, **opts)
            rows.setdefault(name, {})[nfe] = float((out - ref).pow(2).mean().sqrt())
        print(nfe, {k: round(v[nfe], 4) for k, v in rows.items()}, flush=True)
    print("| solver | " + " | ".join(f"NFE {n}" for n in args.nfes) + " |")
    print("|---|" + "---:|" * len(args.nfes))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[n]:.4f}" for n in args.nfes) + " |")


def fid(args, den, shape, configs) -> None:
    ext = get_extractor("fashion")
    ref = reference_stats(None, ext)
    for nfe in args.nfes:
        for name, solver, opts in configs:
            fn = solver_sample_fn(den, shape, solver, nfe, None, "cpu", **opts)
            r = evaluate(fn, args.n, ext, ref, progress=False)
            print(f"| {name} | {nfe} | {r['fid']:.2f} | {r['kid'] * 1e3:.2f} | {r['precision']:.3f} | "
                  f"{r['recall']:.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["rmse", "fid", "sweep"])
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--nfe", default=None)
    args = ap.parse_args()
    args.n = args.n or (256 if args.mode == "rmse" else 1000)
    args.nfes = [int(v) for v in (args.nfe or ("10" if args.mode == "sweep" else "5,6,8,10")).split(",")]
    torch.set_num_threads(2)
    den = load_denoiser("bundled:fashion-v1", "cpu")
    shape = tuple(den.sample_shape)
    if args.mode == "rmse":
        rmse(args, den, shape)
        return
    print("| sampler | NFE | FID | KID x1e3 | precision | recall |\n|---|---:|---:|---:|---:|---:|")
    if args.mode == "sweep":
        configs = [("ddim", "ddim", {})] + [
            (f"ts-ddim w={w} c={c} {dv}", "ts-ddim", {"window": w, "cutoff": c, "data_var": dv})
            for w in (0.02, 0.05, 0.1) for c in (0.3, 0.6) for dv in ("ignore", "predicted")]
    else:
        table = ratio_table(den, shape, args.nfes)
        configs = [("ddim", "ddim", {}), ("ts-ddim", "ts-ddim", {}), ("ts-ddim w=0.1 c=0.3", "ts-ddim",
                   {"window": 0.1, "cutoff": 0.3}), ("unipc", "unipc", {}), ("ts-unipc", "ts-unipc", {}),
                   ("dc_solver", "dc_solver", {"ratios": table})]
    fid(args, den, shape, configs)


if __name__ == "__main__":
    main()
