"""Which standard PTQ fix closes the int8 gap: RMSE between int8 and float images from the same noise.

    PYTHONPATH=src python benchmarks/quantization_fixes.py --n 64 --threads 1

Each variant quantizes ``--model`` with per-step ranges calibrated by dpm++2m at ``--nfe`` on 64
trajectories (seeds 1,000,000..) and samples seeds 0..n-1 with dpm++2m at ``--nfe``: symmetric
against asymmetric (zero-point) activation ranges, max against percentile range estimators, and
the first/last convolution (``conv_in``, ``conv_out``) kept float.  A quick screen before the
FID runs of ``benchmarks/quantization.py``; results in ``benchmarks/results/quantization_fixes.txt``.
"""

from __future__ import annotations

import argparse
import time

import torch

import fewstep
from fewstep.quant import CalibrationSettings, quantize_denoiser

VARIANTS: dict[str, tuple[dict, tuple[str, ...]]] = {
    "symmetric, max": ({}, ()),
    "asymmetric, max": ({"activations": "asymmetric"}, ()),
    "asymmetric, percentile 99.99": ({"activations": "asymmetric", "estimator": "percentile"}, ()),
    "asymmetric, percentile 99.9": ({"activations": "asymmetric", "estimator": "percentile", "percentile": 99.9}, ()),
    "symmetric, max, float conv_in+conv_out": ({}, ("conv_in", "conv_out")),
    "asymmetric, max, float conv_in": ({"activations": "asymmetric"}, ("conv_in",)),
    "asymmetric, max, float conv_out": ({"activations": "asymmetric"}, ("conv_out",)),
    "asymmetric, max, float conv_in+conv_out": ({"activations": "asymmetric"}, ("conv_in", "conv_out")),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bundled:fashion-v1")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=None, help="comma-separated variant numbers (1-based) to run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    float_den = fewstep.load_model(args.model)
    shape, seeds = float_den.sample_shape, range(args.n)
    ref = fewstep.generate(float_den, shape, seeds, "dpm++2m", args.nfe)
    picked = None if args.only is None else {int(v) for v in args.only.split(",")}
    print(f"{args.model}: RMSE int8 vs float, dpm++2m NFE {args.nfe}, seeds 0..{args.n - 1}, {args.threads} threads")
    for i, (name, (options, keep)) in enumerate(VARIANTS.items(), 1):
        if picked is not None and i not in picked:
            continue
        start = time.perf_counter()
        den = fewstep.load_model(args.model)
        quantize_denoiser(den, CalibrationSettings(nfe=args.nfe, n=64, **options), keep_float=keep)
        x = fewstep.generate(den, shape, seeds, "dpm++2m", args.nfe)
        err = float((x - ref).pow(2).mean().sqrt())
        print(f"{i}. {name:45s} RMSE {err:.4f}   ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
