"""Float against int8 (fewstep.quant, TFMQ-style per-step calibration) on a model: FID, RMSE, wall time, size.

    PYTHONPATH=src python benchmarks/quantization.py --n 1000 --threads 1 --reps 5 --ablation

For each NFE (dpm++2m, the process's default grid) the float model and the int8 model calibrated at
``--calib-nfe`` are scored with the dataset-native Fashion-MNIST extractor through
``fewstep.metrics.evaluate.evaluate`` on the same seeds 0..n-1 (calibration uses seeds from
1,000,000, disjoint); RMSE is between int8 and float images from the same noise (the first ``--rmse-n`` seeds).  Wall time per image
is one batch-64 ``fewstep.generate`` at NFE 10, float / simulated int8 / int8 kernels timed in
interleaved order ``--reps`` times (median, and the median of the per-rep ratios).  Size is the
weights file on disk.  ``--ablation`` adds one static range for all steps (``--groups 1``).
``--activations asymmetric`` and ``--keep-float conv_in,conv_out`` choose the int8 scheme (see
docs/quantization.md); ``--float-fid NFE=FID`` reuses a float FID measured before on the same seeds
and extractor (sampling is deterministic per seed) instead of sampling the float model again.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import fewstep
from fewstep.metrics.evaluate import evaluate
from fewstep.metrics.extractors import get_extractor
from fewstep.metrics.models import reference_stats
from fewstep.metrics.sampling import solver_sample_fn
from fewstep.quant import CalibrationSettings, quantize_denoiser, save_quantized, set_kernels


def quantized(model: str, nfe: int, n: int, groups: int | None, out: Path, activations: str = "symmetric",
              estimator: str = "max", keep_float: tuple[str, ...] = ()) -> fewstep.DenoiserBase:
    den = fewstep.load_model(model)
    quantize_denoiser(den, CalibrationSettings(nfe=nfe, n=n, groups=groups, activations=activations,
                                               estimator=estimator), keep_float=keep_float, progress=False)
    save_quantized(den, out)
    return fewstep.load_model(out)


def rmse(a: fewstep.DenoiserBase, b: fewstep.DenoiserBase, nfe: int, n: int) -> float:
    shape = a.sample_shape
    err = 0.0
    for i in range(0, n, 250):
        seeds = range(i, min(n, i + 250))
        err += float((fewstep.generate(a, shape, seeds, "dpm++2m", nfe) -
                      fewstep.generate(b, shape, seeds, "dpm++2m", nfe)).pow(2).sum())
    return (err / (n * torch.Size(shape).numel())) ** 0.5


def timings(models: dict[str, fewstep.DenoiserBase], reps: int, batch: int = 64, nfe: int = 10) -> dict[str, list[float]]:
    shape = next(iter(models.values())).sample_shape
    seeds = list(range(batch))
    times: dict[str, list[float]] = {k: [] for k in models}
    for den in models.values():  # warm-up
        fewstep.generate(den, shape, seeds, "dpm++2m", nfe)
    for _ in range(reps):
        for name, den in models.items():
            start = time.perf_counter()
            fewstep.generate(den, shape, seeds, "dpm++2m", nfe)
            times[name].append(1000 * (time.perf_counter() - start) / batch)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bundled:fashion-v1")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--nfes", default="10,20")
    ap.add_argument("--calib-nfe", type=int, default=10)
    ap.add_argument("--calib-n", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-timing", action="store_true", help="skip the wall-time comparison")
    ap.add_argument("--rmse-n", type=int, default=250, help="images (seeds 0..) in the RMSE")
    ap.add_argument("--ablation", action="store_true", help="also one static range for all steps (groups=1), at the calibration NFE")
    ap.add_argument("--activations", default="symmetric", choices=["symmetric", "asymmetric"])
    ap.add_argument("--estimator", default="max", choices=["max", "mse", "percentile"])
    ap.add_argument("--keep-float", default="", help="comma-separated layers kept float, e.g. conv_in,conv_out")
    ap.add_argument("--float-fid", action="append", default=[], metavar="NFE=FID",
                    help="reuse the float model's FID at NFE measured before on the same seeds (repeatable)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    extractor = get_extractor("fashion", device="cpu")
    ref = reference_stats(None, extractor)
    work = Path(tempfile.mkdtemp(prefix="quant-bench-"))
    float_den = fewstep.load_model(args.model)
    keep = tuple(v for v in args.keep_float.split(",") if v)
    int8 = quantized(args.model, args.calib_nfe, args.calib_n, None, work / "int8", args.activations, args.estimator,
                     keep)
    scheme = f"{args.activations}, {args.estimator}" + (f", float {'+'.join(keep)}" if keep else "")
    variants = {"float": float_den, f"int8 ({scheme}, per step)": int8}
    recorded = {int(k): float(v) for k, v in (item.split("=") for item in args.float_fid)}
    ablation = None
    if args.ablation:
        ablation = f"int8 ({scheme}, one range)"
        variants[ablation] = quantized(args.model, args.calib_nfe, args.calib_n, 1, work / "int8-g1", args.activations,
                                       args.estimator, keep)
    src = fewstep.loading.resolve_bundled(args.model) if args.model.startswith("bundled:") else Path(args.model)
    sizes = {"float": sum(f.stat().st_size for f in src.glob("*.safetensors")),
             "int8": (work / "int8" / "int8.safetensors").stat().st_size}
    print(f"{args.model}: {sum(p.numel() for p in float_den.net.parameters()) / 1e6:.2f}M parameters; dpm++2m, "
          f"default grid; n={args.n}, seeds 0..{args.n - 1}; calibration dpm++2m NFE {args.calib_nfe}, "
          f"{args.calib_n} trajectories (seeds 1000000..); {args.threads} threads; torch {torch.__version__}")
    print(f"weights on disk: float {sizes['float'] / 1e6:.2f} MB, int8 {sizes['int8'] / 1e6:.2f} MB")
    print(f"{'model':52s} {'NFE':>4s} {'FID':>8s} {'vs float':>9s} {'RMSE':>8s}", flush=True)
    for nfe in (int(v) for v in args.nfes.split(",")):
        base = None
        for name, den in variants.items():
            if name == ablation and nfe != args.calib_nfe:
                continue
            if den is float_den and nfe in recorded:
                fid, name = recorded[nfe], "float (recorded)"
            else:
                fid = evaluate(solver_sample_fn(den, den.sample_shape, "dpm++2m", nfe), args.n, extractor, ref,
                               progress=False)["fid"]
            base = fid if base is None else base
            err = rmse(den, float_den, nfe, min(args.n, args.rmse_n)) if den is not float_den else 0.0
            print(f"{name:52s} {nfe:4d} {fid:8.3f} {100 * (fid / base - 1):+8.1f}% {err:8.4f}", flush=True)
    if args.no_timing:
        return
    sim = fewstep.load_model(work / "int8")
    timed = {"float": float_den, "int8 simulated": set_kernels(sim, "simulated")}
    if args.activations == "symmetric":
        timed["int8 kernels"] = set_kernels(fewstep.load_model(work / "int8"), "int8")
    t = timings(timed, args.reps)
    print(f"wall time per image, batch 64, NFE 10, {args.reps} interleaved reps (ms; median, ratio to float)")
    for name, vals in t.items():
        ratio = statistics.median(v / f for v, f in zip(vals, t["float"]))
        print(f"  {name:16s} {statistics.median(vals):7.3f} ms   x{ratio:.2f}")


if __name__ == "__main__":
    main()
