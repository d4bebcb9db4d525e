"""The seed samplers on ``bundled:fashion-v1``: tuned grids, TimeTuner and DC-Solver against the best standard solver.

    PYTHONPATH=src python benchmarks/seed_samplers_fashion.py prepare
    PYTHONPATH=src python benchmarks/seed_samplers_fashion.py rmse --n 128 --reference-nfe 100
    PYTHONPATH=src python benchmarks/seed_samplers_fashion.py fid --n 1000 --nfe 5,6 \
        --configs "ipndm@default;dc_solver@benchmarks/results/seed_samplers/grids/dc-search.json"
    PYTHONPATH=src python benchmarks/seed_samplers_fashion.py ship --n 128
    PYTHONPATH=src python benchmarks/seed_samplers_fashion.py ts --n 128 --nfe 10 --reference-nfe 100

The tuned configurations are grid files under ``benchmarks/results/seed_samplers/grids/`` written by
``fewstep grid optimize`` (commands in docs/solvers.md, "Seed samplers on bundled:fashion-v1"), all tuned on
seeds 10000.. (disjoint from the evaluation seeds 0..n-1).  ``prepare`` turns the DC-Solver ratios searched on
the default grid (``benchmarks/results/dc_fashion_ratios.json``) into a grid file, ``dc-default.json``.

``rmse``: ``fewstep bench model`` (``run_model_bench``) with every standard solver on the default grid and every
tuned grid file, seeds 0..n-1, RMSE to the near-exact solution (dpm++3m at ``--reference-nfe``, logSNR grid);
then, per NFE, each configuration's RMSE divided by the best standard solver's.  ``fid``: dataset-native FID
(fashion extractor, shipped test statistics) of the listed ``solver@grid[:option=value,...]`` configurations
(``;``-separated), seeds 0..n-1.  ``ts``: Time-Shift's window and cutoff against the RMSE to the near-exact solution.
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
TELEPORT = 700.0  # the start of the teleported grids before tuning (fewstep grid optimize --teleport 700)


def prepare() -> None:
    """``dc-default.json``: the searched DC ratios of ``dc_fashion_ratios.json`` on the default grid, as grid entries;
    ``teleport-uniform.json``: each standard solver on the time-uniform grid from t = 700, teleported there
    (:mod:`fewstep.teleport`; no tuning: what the teleport alone gives)."""
    from fewstep.grids import make_grid
    from fewstep.grids.files import GridEntry, write_grid_file
    from fewstep.metrics.models import load_denoiser
    from fewstep.solvers.dc import RatioTable

    den = load_denoiser("bundled:fashion-v1", "cpu")
    table = RatioTable.load(Path(__file__).parent / "results" / "dc_fashion_ratios.json")
    entries = [GridEntry("dc_solver", nfe, nfe, make_grid(den.process, nfe, None).tolist(), "dc", None,
                         provenance={"ratio_search": table.meta}, options={"ratios": ratios})
               for nfe, ratios in sorted(table.ratios.items())]
    GRIDS.mkdir(parents=True, exist_ok=True)
    write_grid_file(GRIDS / "dc-default.json", den.process, entries, {"model": "bundled:fashion-v1"})
    print(f"wrote {GRIDS / 'dc-default.json'}")
    from fewstep import solvers

    uniform = [GridEntry(solver, nfe, solvers.get(solver).steps_for(nfe)[0],
                         make_grid(den.process, solvers.get(solver).steps_for(nfe)[0], "uniform", t_max=TELEPORT).tolist(),
                         "uniform", None, options={"teleport": TELEPORT})
               for solver in STANDARD for nfe in (5, 6)]
    write_grid_file(GRIDS / "teleport-uniform.json", den.process, uniform, {"model": "bundled:fashion-v1"})
    print(f"wrote {GRIDS / 'teleport-uniform.json'}")


def grid_files() -> list[str]:
    return [str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(p) for p in sorted(GRIDS.glob("*.json"))]


def rmse(args: argparse.Namespace) -> None:
    from fewstep.bench.model import ModelBenchConfig, run_model_bench

    files = grid_files()
    cfg = ModelBenchConfig(model="bundled:fashion-v1", solvers=STANDARD + ["dc_solver"], nfes=args.nfes,
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


def parse_config(spec: str) -> tuple[str, str, dict[str, float]]:
    """``solver@grid[:key=value,...]`` -> ``(solver, grid, options)``."""
    head, _, tail = spec.partition(":")
    solver, _, grid = head.partition("@")
    opts = {k: float(v) for k, v in (kv.split("=") for kv in tail.split(",") if kv)}
    return solver, grid or "default", opts


def time_shift(args: argparse.Namespace) -> None:
    """RMSE to the near-exact solution of ts-ddim / ts-unipc over window x cutoff, against their bases."""
    from fewstep.metrics.models import load_denoiser
    from fewstep.tuning import NearExact, ReferenceSettings
    from fewstep.metrics.solution_error import per_sample_rmse
    import fewstep

    den = load_denoiser("bundled:fashion-v1", "cpu")
    shape = tuple(den.sample_shape)
    seeds = list(range(args.n))
    ref = NearExact(den, shape, seeds, ReferenceSettings("dpm++3m", args.reference_nfe, "logsnr"),
                    cache_dir=args.reference_cache, progress=not args.no_progress)(seeds)
    configs = ["ddim"] + [f"ts-ddim:window={w},cutoff=0.6" for w in (0.02, 0.05, 0.1)] + \
        ["ts-ddim:window=0.1,cutoff=0.3", "unipc", "ts-unipc:window=0.05,cutoff=0.6"]
    lines = ["| sampler | " + " | ".join(f"RMSE @ {n}" for n in args.nfes) + " |", "|---|" + "---:|" * len(args.nfes)]
    for spec in configs:
        solver, _, opts = parse_config(spec)
        cells = []
        for nfe in args.nfes:
            r = per_sample_rmse(fewstep.generate(den, shape, seeds, solver, nfe, **opts), ref)
            cells.append(f"{float(r.mean()):.4f} +- {float(r.std() / len(r) ** 0.5):.4f}")
        lines.append(f"| {spec} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    (RESULTS / "time_shift_rmse.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def ship(args: argparse.Namespace) -> None:
    """``src/fewstep/assets/fashion-v1/grids.json`` (``grid="bundled:fashion-v1"``): for each solver and NFE, the tuned
    entry with the lowest held-out RMSE in ``rmse``'s results, where it beats that solver on the default grid."""
    from fewstep.grids.files import read_grid_file, write_grid_file
    from fewstep.metrics.models import load_denoiser

    rows = json.loads((RESULTS / "rmse" / "results.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    den = load_denoiser("bundled:fashion-v1", "cpu")
    plain = {(r["solver"], r["nfe"]): r["rmse"] for r in rows if r["grid"] == den.process.default_grid}
    plain.update({("dc_solver", n): plain[("unipc", n)] for (s, n) in list(plain) if s == "unipc"})
    best: dict[tuple[str, int], tuple[float, str]] = {}
    for r in rows:
        key = (r["solver"], r["nfe"])
        if r["grid"].endswith(".json") and "rmse" in r and r["rmse"] < plain.get(key, float("inf")) \
                and r["rmse"] < best.get(key, (float("inf"), ""))[0]:
            best[key] = (r["rmse"], r["grid"])
    entries = []
    for (solver, nfe), (score, path) in sorted(best.items()):
        e = next(e for e in read_grid_file(path).entries if (e.solver, e.nfe) == (solver, nfe))
        e.provenance = {**e.provenance, "held_out_rmse": round(score, 5), "default_grid_rmse": round(plain[(solver, nfe)], 5),
                        "held_out": f"seeds 0..{args.n - 1}", "from": Path(path).name}
        entries.append(e)
        print(f"{solver:>10} nfe={nfe}: {Path(path).stem} {score:.4f} (default grid {plain[(solver, nfe)]:.4f})")
    out = Path(__file__).parents[1] / "src" / "fewstep" / "assets" / "fashion-v1" / "grids.json"
    write_grid_file(out, den.process, entries, {"model": "bundled:fashion-v1", "made_by": "benchmarks/seed_samplers_fashion.py ship"})
    print(f"wrote {out}")


def fid(args: argparse.Namespace) -> None:
    from fewstep.metrics.evaluate import evaluate
    from fewstep.metrics.extractors import get_extractor
    from fewstep.metrics.models import load_denoiser, reference_stats
    from fewstep.metrics.sampling import solver_sample_fn

    den = load_denoiser("bundled:fashion-v1", "cpu")
    shape = tuple(den.sample_shape)
    ext = get_extractor("fashion")
    ref = reference_stats(None, ext)
    out = RESULTS / "fid.json"
    done = json.loads(out.read_text()) if out.exists() else {}
    print("| sampler | NFE | FID | KID | precision | recall |\n|---|---:|---:|---:|---:|---:|", flush=True)
    for nfe in args.nfes:
        for spec in args.configs.split(";"):
            solver, grid, opts = parse_config(spec)
            key = f"{spec}|{nfe}|{args.n}"
            if key not in done:
                fn = solver_sample_fn(den, shape, solver, nfe, None if grid == "default" else grid, "cpu", **opts)
                r = evaluate(fn, args.n, ext, ref, progress=not args.no_progress)
                done[key] = {k: r[k] for k in ("fid", "kid", "precision", "recall")}
                out.write_text(json.dumps(done, indent=1))
            r = done[key]
            print(f"| {spec.replace(str(GRIDS) + '/', '')} | {nfe} | {r['fid']:.2f} | {r['kid']:.4f} | "
                  f"{r['precision']:.3f} | {r['recall']:.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["prepare", "rmse", "fid", "ts", "ship"])
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--nfe", default="5,6,8,10")
    ap.add_argument("--reference-nfe", type=int, default=200)
    ap.add_argument("--reference-cache", default=None)
    ap.add_argument("--configs", default="ipndm@default")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    args.nfes = [int(v) for v in args.nfe.split(",")]
    torch.set_num_threads(1)
    {"prepare": lambda: prepare(), "rmse": lambda: rmse(args), "fid": lambda: fid(args), "ts": lambda: time_shift(args), "ship": lambda: ship(args)}[args.mode]()


if __name__ == "__main__":
    main()
