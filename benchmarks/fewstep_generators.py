"""FID of few-step generators trained from ``bundled:fashion-v1`` at 1-2 NFE: ECT and 2-rectified flow (reflow).

    PYTHONPATH=src python benchmarks/fewstep_generators.py --ect runs/ect --reflow runs/reflow \
        --n 2000 --threads 1 --out benchmarks/results/fewstep_generators

Rows (dataset-native ``fashion`` extractor against the shipped Fashion-MNIST test statistics, seeds 0..n-1):
ECT at 1 NFE, at 2 NFE with the paper's multistep consistency sampling (``cm``) on the default time-uniform
grid and with the intermediate noise level ECT's code uses on CIFAR-10 (``sigma = 0.821``), and with
deterministic DDIM; reflow with Euler at 1 and 2 NFE; the teacher's own network at 1 NFE for scale.  Each
finished row is written to ``OUT/rows.jsonl`` at once and read back on a rerun (resumable); ``OUT/results.md``
gets the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fewstep.checkpoint import latest_checkpoint
from fewstep.metrics.evaluate import evaluate
from fewstep.metrics.extractors import get_extractor
from fewstep.metrics.models import load_denoiser, reference_stats, sample_shape
from fewstep.metrics.sampling import solver_sample_fn
from fewstep._io import atomic_write_text

ECT_MID_SIGMA = 0.821  # ECT's two-step sampler: t = (80, 0.821) in EDM units (the authors' CIFAR-10 setting)


def _grid_at(denoiser, mid: tuple[str, float]) -> list[float]:
    """Two steps ``t_start -> t_mid -> t_min`` through ``mid``: ``("sigma", noise level)`` or ``("t", time)``."""
    p = denoiser.process
    kind, value = mid
    t_mid = float(p.t_of_sigma_hat(torch.tensor(value, dtype=torch.float64))) if kind == "sigma" else float(value)
    return [float(p.t_start), t_mid, float(p.t_min)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ect", help="an ECT run folder or checkpoint (fewstep distill --method ect)")
    ap.add_argument("--reflow", help="a reflow run folder or checkpoint (fewstep reflow)")
    ap.add_argument("--teacher", default="bundled:fashion-v1")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", help="comma-separated row names to run (default: all)")
    ap.add_argument("--reflow-mid", help="comma-separated intermediate times for extra 2-NFE reflow rows "
                    "(reflow-2-midT: Euler through t_start, T, t_min), e.g. 700,600,500")
    ap.add_argument("--out", default="benchmarks/results/fewstep_generators")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done = {}
    if rows_path.exists():
        for line in rows_path.read_text().splitlines():
            r = json.loads(line)
            done[(r["name"], r["model"], r["n"], r["seed"])] = r
    extractor = get_extractor("fashion", None, "cpu")
    ref = reference_stats(None, extractor)

    configs = []  # (name, model spec, solver, nfe, intermediate point of a 2-step grid or None)
    if args.ect:
        ect = str(latest_checkpoint(args.ect) or args.ect)
        configs += [("ect-1", ect, "ddim", 1, None), ("ect-2-cm", ect, "cm", 2, None),
                    ("ect-2-cm-0.821", ect, "cm", 2, ("sigma", ECT_MID_SIGMA)), ("ect-2-ddim", ect, "ddim", 2, None)]
    if args.reflow:
        rf = str(latest_checkpoint(args.reflow) or args.reflow)
        configs += [("reflow-1", rf, "euler", 1, None), ("reflow-2", rf, "euler", 2, None)]
        for t in filter(None, (args.reflow_mid or "").split(",")):  # 2 NFE through another intermediate time
            configs.append((f"reflow-2-mid{float(t):g}", rf, "euler", 2, ("t", float(t))))
    configs += [("teacher-1", args.teacher, "ddim", 1, None)]
    if args.only:
        keep = set(args.only.split(","))
        configs = [c for c in configs if c[0] in keep]
    rows = []
    for name, model, solver, nfe, mid in configs:
        key = (name, model, args.n, args.seed)
        if key in done:
            rows.append(done[key])
            continue
        den = load_denoiser(model, "cpu")
        grid = _grid_at(den, mid) if mid else None
        fn = solver_sample_fn(den, sample_shape(den), solver, nfe, grid, "cpu")
        t0 = time.time()
        res = evaluate(fn, args.n, extractor, ref, seed=args.seed, batch_size=64, desc=name)
        row = {"name": name, "model": model, "solver": solver, "nfe": nfe, "grid": grid, "n": args.n,
               "seed": args.seed, "fid": res["fid"], "kid": res["kid"], "precision": res["precision"],
               "recall": res["recall"], "wall_s": time.time() - t0}
        print(json.dumps(row), flush=True)
        with open(rows_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
    lines = ["| row | model | solver | NFE | FID | precision | recall | n |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        times = f" (times {', '.join(f'{t:g}' for t in r['grid'])})" if r["grid"] else ""
        lines.append(f"| {r['name']} | {r['model']} | {r['solver']}{times} | {r['nfe']} | "
                     f"{r['fid']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['n']} |")
    table = "\n".join(lines)
    print(table)
    atomic_write_text(out / "results.md", table + "\n")


if __name__ == "__main__":
    main()
