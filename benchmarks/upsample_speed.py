"""Cost of the UNet's decoder upsampling: the low-resolution transposed convolution against upsample-then-convolve.

    PYTHONPATH=src python benchmarks/upsample_speed.py --model bundled:fashion --threads 1 --rounds 10

Loads one model twice, the second with every ``UpsampleConv`` forced onto the slow path (nearest upsampling, then
the 3x3 convolution at full resolution: what the UNet computed before), checks that both give the same output,
and times one evaluation (inference) and one training step (forward + backward) of each, interleaved, at batch
``--batch``: the minimum over ``--rounds`` rounds of the thread's CPU time (``time.thread_time``).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from fewstep import load_model
from fewstep.nets.upsample import UpsampleConv


def _slow(net: torch.nn.Module) -> torch.nn.Module:
    for m in net.modules():
        if isinstance(m, UpsampleConv):
            m.forward = lambda h, size, m=m: torch.nn.Conv2d.forward(m, F.interpolate(h, size=size, mode="nearest"))
    return net


def _cpu_time(fn) -> float:
    c0 = time.thread_time()
    fn()
    return time.thread_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bundled:fashion")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    den = load_model(args.model)
    fast, slow = next(den.networks()), _slow(next(load_model(args.model).networks()))
    c, h, w = den.sample_shape
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(args.batch, c, h, w, generator=g), torch.full((args.batch,), 500.0)
    with torch.inference_mode():
        diff = (fast(x, t) - slow(x, t)).abs().max().item()

    def evaluate(net):
        with torch.inference_mode():
            net(x, t)

    def train_step(net):
        net.zero_grad(set_to_none=True)
        net(x, t).square().mean().backward()

    best = {(k, n): float("inf") for k in ("eval", "train") for n in ("fast", "slow")}
    for _ in range(args.rounds + 1):  # the first round warms up and is not counted
        for name, net in (("fast", fast), ("slow", slow)):
            for kind, fn in (("eval", evaluate), ("train", train_step)):
                best[kind, name] = min(best[kind, name], _cpu_time(lambda: fn(net)))
    print(f"{args.model}, batch {args.batch}, {args.threads} thread(s), min of {args.rounds} interleaved rounds; "
          f"max |fast - slow| = {diff:.2e}")
    print("| | upsample then convolve (ms) | transposed convolution (ms) | speed-up |")
    print("|---|---:|---:|---:|")
    for kind in ("eval", "train"):
        s, f = best[kind, "slow"], best[kind, "fast"]
        print(f"| {kind} | {1000 * s:.0f} | {1000 * f:.0f} | {s / f:.2f}x |")


if __name__ == "__main__":
    main()
