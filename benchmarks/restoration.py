"""Restoration benchmark: PSNR, SSIM and FID of RePaint, DPS and RED-diff on bundled:fashion-v1.

For each task (inpainting with a box, random-pixel and half mask; 2x super-resolution; denoising), method
and NFE, the test images ``first .. first + n - 1`` are measured with noise ``sigma_y`` and restored
(image ``i`` from seed ``i``), and scored against the originals: PSNR and SSIM per image (mean +- s.e.),
FID of the restored set against the shipped Fashion-MNIST test statistics (``fashion`` extractor).
Rows for the measurement itself (``A^+ y``) and for the ground-truth images (the FID floor at this n:
FID of n real images is biased upwards) stand beside them.  Each finished configuration is stored at
once in ``--store`` (JSON); a rerun reads it back.

    nice -n 10 python benchmarks/restoration.py --n 64 --nfe 20,50 --threads 1
    nice -n 10 python benchmarks/restoration.py --n 64 --nfe 50 --methods repaint-j5r3 --tasks inpaint-box,...

``repaint-j5r3`` is RePaint with resampling (jump 5, 3 passes per block); ``repaint`` is plain replacement.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fewstep._io import atomic_write_text
from fewstep.api import generators
from fewstep.loading import load_model
from fewstep.metrics.data import fashion_mnist
from fewstep.metrics.evaluate import compare, quantize
from fewstep.metrics.extractors import get_extractor
from fewstep.metrics.models import reference_stats
from fewstep.metrics.stats import FeatureStats
from fewstep.restoration import denoise, get_method, inpaint, make_mask, measure, restore, restore_nfe, super_resolution
from fewstep.restoration.scores import image_scores, summarize_scores

RESULTS = Path(__file__).parent / "results"
TASKS = ("inpaint-box", "inpaint-random", "inpaint-half", "sr-x2", "denoise")
METHODS = ("repaint", "dps", "reddiff")
#: Method variants by name: (method, options).  ``repaint`` alone is plain replacement (no resampling).
VARIANTS = {"repaint": ("repaint", {}), "repaint-j5r3": ("repaint", {"jump": 5, "resample": 3}),
            "dps": ("dps", {}), "reddiff": ("reddiff", {})}
MEASUREMENT_SEED = 1_000_000  # as fewstep restore


def operator_for(task: str, shape: tuple[int, ...]):
    if task.startswith("inpaint-"):
        return inpaint(make_mask(task.split("-", 1)[1], shape))
    return super_resolution(2) if task == "sr-x2" else denoise()


def fid_of(images: torch.Tensor, extractor, ref) -> float:
    stats = FeatureStats.like(extractor).update(extractor(quantize(images.float())))
    return compare(stats, ref)["fid"]


def row(images: torch.Tensor, truth: torch.Tensor, extractor, ref) -> dict:
    return {**summarize_scores(image_scores(images, truth)), "fid": fid_of(images, extractor, ref)}


def table(results: dict, n: int) -> str:
    """Every stored row: per task the measurement, then each method variant by NFE."""
    nfes = sorted({int(k.split("|")[2]) for k in results if k.count("|") == 2})
    lines = [f"| task | method | NFE | PSNR (dB) | SSIM | FID (n={n}) | CPU s / image |",
             "|---|---|---:|---:|---:|---:|---:|"]
    if "ground truth" in results:
        lines.append(f"| (all) | ground truth (FID floor at this n) | | | | {results['ground truth']['fid']:.2f} | |")
    for task in TASKS:
        for key in [f"{task}|measurement"] + [f"{task}|{m}|{k}" for m in VARIANTS for k in nfes]:
            r = results.get(key)
            if r is None:
                continue
            _, method, *rest = key.split("|")
            nfe = r.get("nfe_used", "")
            cpu = f"{r['cpu_s'] / n:.2f}" if "cpu_s" in r else ""
            lines.append(f"| {task} | {method if method != 'measurement' else 'measurement A^+ y'} | {nfe} | "
                         f"{r['psnr']:.2f} ± {r['psnr_se']:.2f} | {r['ssim']:.3f} ± {r['ssim_se']:.3f} | "
                         f"{r['fid']:.2f} | {cpu} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--first", type=int, default=1000, help="first test image (0..15 were used to pick defaults)")
    ap.add_argument("--nfe", default="20,50")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--sigma-y", type=float, default=0.05, help="measurement noise of inpainting and sr")
    ap.add_argument("--sigma-denoise", type=float, default=0.2, help="measurement noise of the denoising task")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--store", default=str(RESULTS / "restoration.json"))
    ap.add_argument("--out", default=str(RESULTS / "restoration.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    nfes = [int(v) for v in args.nfe.split(",")]
    tasks, methods = args.tasks.split(","), args.methods.split(",")
    den = load_model("bundled:fashion-v1")
    shape = tuple(den.sample_shape)
    extractor = get_extractor("fashion")
    ref = reference_stats(None, extractor)
    truth = fashion_mnist("test")[0][args.first:args.first + args.n]
    seeds = list(range(args.n))
    store = Path(args.store)
    saved = json.loads(store.read_text()) if store.exists() else {}
    settings = {"n": args.n, "first": args.first, "sigma_y": args.sigma_y, "sigma_denoise": args.sigma_denoise}
    sigma = {t: args.sigma_denoise if t == "denoise" else args.sigma_y for t in tasks}
    results = saved.get("results", {}) if saved.get("settings") == settings else {}

    def save() -> None:
        atomic_write_text(store, json.dumps({"settings": settings, "results": results}, indent=1) + "\n")
        text = (f"# Restoration on bundled:fashion-v1\n\n{args.n} test images ({args.first}..{args.first + args.n - 1}), "
                f"sigma_y = {args.sigma_y} ({args.sigma_denoise} for denoising), PSNR/SSIM mean ± s.e. over images, FID against the Fashion-MNIST test "
                f"statistics (fashion extractor). Written by benchmarks/restoration.py.\n\n{table(results, args.n)}\n")
        atomic_write_text(args.out, text)

    unknown = sorted(set(methods) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown method variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    configs = [(t, m, k) for k in nfes for t in tasks for m in methods
               if not (get_method(VARIANTS[m][0]).inpaint_only and not t.startswith("inpaint"))]
    print(f"{len(configs)} configurations x {args.n} images")
    for task in tasks:
        op = operator_for(task, shape)
        y = measure(op, truth, sigma[task], generators(MEASUREMENT_SEED + s for s in seeds))
        results.setdefault(f"{task}|measurement", row(op.pinv(y), truth, extractor, ref))
    results.setdefault("ground truth", {"psnr": float("inf"), "psnr_se": 0.0, "ssim": 1.0, "ssim_se": 0.0,
                                        "fid": fid_of(truth, extractor, ref)})
    save()
    for task, method, nfe in configs:
        key = f"{task}|{method}|{nfe}"
        if key in results:
            continue
        op = operator_for(task, shape)
        y = measure(op, truth, sigma[task], generators(MEASUREMENT_SEED + s for s in seeds))
        c0, w0 = time.process_time(), time.perf_counter()
        name, options = VARIANTS[method]
        out = restore(den, y, op, seeds, name, nfe, **options)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        results[key] = {**row(out, truth, extractor, ref), "nfe_used": restore_nfe(name, nfe, **options), "cpu_s": cpu,
                        "wall_s": wall}
        save()
        r = results[key]
        print(f"{key}: PSNR {r['psnr']:.2f} SSIM {r['ssim']:.3f} FID {r['fid']:.2f} ({cpu:.0f} s CPU, {wall:.0f} s)",
              flush=True)
    print(table(results, args.n))


if __name__ == "__main__":
    main()
