"""Milliseconds per image-evaluation of a model's network: eager against ``fewstep.compile_denoiser``.

    PYTHONPATH=src python benchmarks/compile_speed.py --threads 2 --batch-sizes 64,128,500

Times ``--reps`` forward passes per batch size after a warm-up (the compilation is reported
separately) and checks that compiled outputs equal eager ones to float32 rounding.
"""

from __future__ import annotations

import argparse
import time

import torch

import fewstep
from fewstep.metrics.models import load_denoiser, sample_shape


def per_image_ms(fn, x: torch.Tensor, t: torch.Tensor, reps: int) -> float:
    with torch.no_grad():
        fn(x, t)
        start = time.perf_counter()
        for _ in range(reps):
            fn(x, t)
    return 1000 * (time.perf_counter() - start) / reps / x.shape[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bundled:fashion-v1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", default="64,128,500")
    ap.add_argument("--reps", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    eager = load_denoiser(args.model, "cpu")
    shape = sample_shape(eager)
    net = eager.net
    compiled = fewstep.compile_denoiser(load_denoiser(args.model, "cpu")).net
    print(f"{args.model}, {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters, "
          f"{args.threads} CPU threads; ms per image-evaluation")
    print(f"{'batch':>6s} {'eager':>8s} {'compiled':>9s} {'speed-up':>9s} {'compile s':>10s} {'max |diff|':>11s}")
    for b in (int(v) for v in args.batch_sizes.split(",")):
        x = torch.randn(b, *shape, generator=torch.Generator().manual_seed(0))
        t = torch.linspace(10, 990, b)
        start = time.perf_counter()
        with torch.no_grad():
            diff = float((compiled(x, t) - net(x, t)).abs().max())
        compile_s = time.perf_counter() - start
        e, c = per_image_ms(net, x, t, args.reps), per_image_ms(compiled, x, t, args.reps)
        print(f"{b:>6d} {e:8.3f} {c:9.3f} {e / c:8.2f}x {compile_s:10.1f} {diff:11.2e}", flush=True)


if __name__ == "__main__":
    main()
