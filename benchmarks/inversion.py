"""Inversion of real Fashion-MNIST test images: reconstruction error, and class edits.

    PYTHONPATH=src python benchmarks/inversion.py recon [--n 32] [--nfe 10,20,50] [--threads 1]
    PYTHONPATH=src python benchmarks/inversion.py edit  [--model /work/runs/fashion-cond] [--nfe 50] [--skip 10]

``recon``: the first ``n`` test images through ``bundled:fashion-v1``: DDIM inversion then reconstruction with each
deterministic solver at each NFE (the same NFE each way), and edit-friendly DDPM inversion (seeds 0..n-1);
RMSE / PSNR of the reconstruction to the image (``fewstep.metrics.solution_error``: per image, clamped to
[-1, 1], mean +- standard error).  Each finished configuration is saved to
``benchmarks/results/inversion_recon.json`` and read back on a rerun.

``edit``: a class-conditional model; 8 test images (one per class 0..7) inverted with their true class, then
regenerated with every class: ``docs/inversion-edit.png`` (edit-friendly, T_skip = ``--skip`` steps) and
``benchmarks/results/inversion-edit-ddim.png`` (DDIM inversion with dpm++2m).  Columns: original,
reconstruction, classes 0..9.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fewstep import load_model
from fewstep._io import atomic_write_text
from fewstep.data import load_fashion_mnist, to_model_range
from fewstep.imagegrid import save_image_grid
from fewstep.inversion import ddim_invert, ddim_reconstruct, edit_friendly_invert, edit_friendly_sample
from fewstep.metrics.solution_error import per_sample_rmse, summarize_errors

RESULTS = Path(__file__).parent / "results"
SOLVERS = ("ddim", "heun", "dpm++2m", "unipc", "unip")


def recon(args) -> None:
    den = load_model("bundled:fashion-v1")
    x0 = to_model_range(load_fashion_mnist(split="test").images[:args.n])
    path = RESULTS / "inversion_recon.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    configs = [("ddim", s, n) for n in args.nfes for s in SOLVERS] + [("edit-friendly", "ddpm", n) for n in args.nfes]
    for method, solver, nfe in configs:
        key = f"{method}|{solver}|{nfe}|n={args.n}"
        if key not in done:
            start = time.perf_counter()
            if method == "ddim":
                out = ddim_reconstruct(den, ddim_invert(den, x0, solver, nfe), solver, nfe)
            else:
                out = edit_friendly_sample(den, edit_friendly_invert(den, x0, nfe, seeds=range(args.n)))
            done[key] = {**summarize_errors(per_sample_rmse(out, x0).numpy()), "seconds": time.perf_counter() - start}
            atomic_write_text(path, json.dumps(done, indent=1))
        r = done[key]
        print(f"{method:13s} {solver:8s} NFE {nfe:3d}: RMSE {r['rmse']:.4g} +- {r['rmse_se']:.2g}  "
              f"PSNR {r['psnr']:.2f} +- {r['psnr_se']:.2f} dB  ({r['seconds']:.0f} s)", flush=True)
    print("\n| method | solver | " + " | ".join(f"NFE {n}" for n in args.nfes) + " |")
    print("|---|---|" + "---:|" * len(args.nfes))
    for method, solver in [("DDIM inversion", s) for s in SOLVERS] + [("edit-friendly", "ddpm")]:
        m = "ddim" if method.startswith("DDIM") else "edit-friendly"
        cells = [done[f"{m}|{solver}|{n}|n={args.n}"] for n in args.nfes]
        print(f"| {method} | {solver} | " + " | ".join(f"{c['rmse']:.3g} ({c['psnr']:.1f} dB)" for c in cells) + " |")


def edit(args) -> None:
    den = load_model(args.model)
    classes = int((den.config or {}).get("network", {}).get("num_classes", 0))
    if classes == 0:
        raise SystemExit(f"{args.model} is not class-conditional")
    test = load_fashion_mnist(split="test")
    idx = [int((test.labels == c).nonzero()[0]) for c in range(8)]
    x0 = to_model_range(test.images[idx])
    labels = test.labels[idx]
    n = len(idx)

    def cond(c):
        return {"class_labels": torch.full((n,), c) if isinstance(c, int) else c}

    inv = edit_friendly_invert(den, x0, args.nfe, cond=cond(labels), seeds=range(n))
    columns = [x0, edit_friendly_sample(den, inv)]
    columns += [edit_friendly_sample(den, inv, cond=cond(c), skip=args.skip) for c in range(classes)]
    err = summarize_errors(per_sample_rmse(columns[1], x0).numpy())
    save_image_grid(torch.stack(columns, 1).flatten(0, 1), Path("docs") / "inversion-edit.png", nrow=len(columns))
    print(f"edit-friendly, {args.nfe} NFE, skip {args.skip}: reconstruction RMSE {err['rmse']:.3g}; "
          f"wrote docs/inversion-edit.png")
    x_T = ddim_invert(den, x0, "dpm++2m", args.nfe, cond=cond(labels))
    columns = [x0, ddim_reconstruct(den, x_T, "dpm++2m", args.nfe, cond=cond(labels))]
    columns += [ddim_reconstruct(den, x_T, "dpm++2m", args.nfe, cond=cond(c)) for c in range(classes)]
    err = summarize_errors(per_sample_rmse(columns[1], x0).numpy())
    out = RESULTS / "inversion-edit-ddim.png"
    save_image_grid(torch.stack(columns, 1).flatten(0, 1), out, nrow=len(columns))
    print(f"DDIM inversion (dpm++2m), {args.nfe} NFE: reconstruction RMSE {err['rmse']:.3g}; wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["recon", "edit"])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--nfe", default="10,20,50")
    ap.add_argument("--model", default="/work/runs/fashion-cond")
    ap.add_argument("--skip", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.nfes = [int(v) for v in args.nfe.split(",")]
    if args.mode == "edit":
        args.nfe = args.nfes[0]
    RESULTS.mkdir(exist_ok=True)
    recon(args) if args.mode == "recon" else edit(args)


if __name__ == "__main__":
    main()
