"""The seed samplers on ``bundled:fashion``: tuned grids, TimeTuner and DC-Solver against the best standard solver.

    PYTHONPATH=src python benchmarks/seed_samplers_fashion.py prepare
    PYTHONPATH=src python benchmarks/seed_samplers_fashion.py rmse --n 128 --reference-nfe 100
    PYTHONPATH=src python benchmarks/seed_samplers_fashion.py fid --n 1000 --nfe 5,6 \
        --configs ipndm@default,unipc@default,dc_solver@GRIDS/dc-search.json

The tuned configurations are grid files under ``benchmarks/results/seed_samplers/grids/`` written by
``fewstep grid optimize`` (commands in docs/solvers.md, "Seed samplers on bundled:fashion"), all tuned on
seeds 10000.. (disjoint from the evaluation seeds 0..n-1).  ``prepare`` turns the DC-Solver ratios searched on
the default grid (``benchmarks/results/dc_fashion_ratios.json``) into a grid file, ``dc-default.json``.

``rmse``: ``fewstep bench model`` (``run_model_bench``) with every standard solver on the default grid and every
tuned grid file, seeds 0..n-1, RMSE to the near-exact solution (dpm++3m at ``--reference-nfe``, logSNR grid);
then, per NFE, each configuration's RMSE divided by the best standard solver's.  ``fid``: dataset-native FID
(fashion extractor, shipped test statistics) of the listed ``solver@grid`` configurations, seeds 0..n-1.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "seed_samplers"
GRIDS = RESULTS / "grids"
STANDARD = ["ipndm", "unipc", "dpm++3m"]


def prepare() -> None:
    """``dc-default.json``: the searched DC ratios of ``dc_fashion_ratios.json`` on the default grid, as grid entries."""
    from fewstep.grids import make_grid
    from fewstep.grids.files import GridEntry, write_grid_file
    from fewstep.metrics.models import load_denoiser
    from fewstep.solvers.dc import RatioTable

    den = load_denoiser("bundled:fashion", "cpu")
    table = RatioTable.load(Path(__file__).parent / "results" / "dc_fashion_ratios.json")
    entries = [GridEntry("dc_solver", nfe, nfe, make_grid(den.process, nfe, None).tolist(), "dc", None,
                         provenance={"ratio_search": table.meta}, options={"ratios": ratios})
               for nfe, ratios in sorted(table.ratios.items())]
    GRIDS.mkdir(parents=True, exist_ok=True)
    write_grid_file(GRIDS / "dc-default.json", den.process, entries, {"model": "bundled:fashion"})
    print(f"wrote {GRIDS / 'dc-default.json'}")


def grid_files() -> list[str]:
    return [str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(p) for p in sorted(GRIDS.glob("*.json"))]


def rmse(args: argparse.Namespace) -> None:
    from fewstep.bench.model import ModelBenchConfig, run_model_bench

    files = grid_files()
    cfg = ModelBenchConfig(model="bundled:fashion", solvers=STANDARD + ["dc_solver"], nfes=args.nfes,
                           grids=["default", *files], n=args.n, extractor="fashion", reference_nfe=args.reference_nfe,
                           out=str(RESULTS / "rmse"), reference_cache=args.reference_cache, grid_images=16)
    t0 = time.perf_counter()
    rows = run_model_bench(cfg, progress=not args.no_progress)
    print(f"{time.perf_counter() - t0:.0f} s")
    summary(rows, args.nfes)


def summary(rows: list[dict], nfes: list[int]) -> None:
    """Per NFE: each configuration's RMSE (+- s.e.) and its ratio to the best standard solver's."""
    default = [r for r in rows if r["grid"] in ("uniform", "default") and r["solver"] in STANDARD]
    lines = ["| configuration | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|" + "---:|" * len(nfes)]
    best = {n: min((r for r in default if r["nfe"] == n), key=lambda r: r["rmse"]) for n in nfes}
    configs = dict.fromkeys((r["solver"], r["grid"]) for r in rows)
    for solver, grid in configs:
        cells = []
        for n in nfes:
            r = next((r for r in rows if (r["solver"], r["grid"], r["nfe"]) == (solver, grid, n)), None)
            cells.append("-" if r is None or "rmse" not in r else
                         f"{r['rmse']:.4f} ({r['rmse'] / best[n]['rmse']:.2f}x)")
        lines.append(f"| {solver} @ {Path(grid).stem if grid.endswith('.json') else grid} | " + " | ".join(cells) + " |")
    lines.append("\nbest standard solver: " + ", ".join(f"NFE {n} {best[n]['solver']} {best[n]['rmse']:.4f}"
                                                     for n in nfes))
    text = "\n".join(lines) + "\n"
    print(text)
    (RESULTS / "rmse_summary.md").write_text(text)


def fid(args: argparse.Namespace) -> None:
    from fewstep.metrics.evaluate import evaluate
    from fewstep.metrics.extractors import get_extractor
    from fewstep.metrics.models import load_denoiser, reference_stats
    from fewstep.metrics.sampling import solver_sample_fn

    den = load_denoiser("bundled:fashion", "cpu")
    shape = tuple(den.sample_shape)
    ext = get_extractor("fashion")
    ref = reference_stats(None, ext)
    out = RESULTS / "fid.json"
    done = json.loads(out.read_text()) if out.exists() else {}
    print("| sampler | NFE | FID | KID x1e3 | precision | recall |\n|---|---:|---:|---:|---:|---:|", flush=True)
    for nfe in args.nfes:
        for spec in args.configs.split(","):
            solver, grid = spec.split("@")
            key = f"{spec}|{nfe}|{args.n}"
            if key not in done:
                fn = solver_sample_fn(den, shape, solver, nfe, None if grid == "default" else grid, "cpu")
                r = evaluate(fn, args.n, ext, ref, progress=not args.no_progress)
                done[key] = {k: r[k] for k in ("fid", "kid", "precision", "recall")}
                out.write_text(json.dumps(done, indent=1))
            r = done[key]
            print(f"| {solver} @ {Path(grid).stem} | {nfe} | {r['fid']:.2f} | {r['kid'] * 1e3:.2f} | "
                  f"{r['precision']:.3f} | {r['recall']:.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["prepare", "rmse", "fid"])
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--nfe", default="5,6,8,10")
    ap.add_argument("--reference-nfe", type=int, default=200)
    ap.add_argument("--reference-cache", default=None)
    ap.add_argument("--configs", default="ipndm@default")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    args.nfes = [int(v) for v in args.nfe.split(",")]
    torch.set_num_threads(1)
    {"prepare": lambda: prepare(), "rmse": lambda: rmse(args), "fid": lambda: fid(args)}[args.mode]()


if __name__ == "__main__":
    main()
