"""Cost of the UNet's decoder upsampling: the low-resolution transposed convolution against upsample-then-convolve.

    PYTHONPATH=src python benchmarks/upsample_speed.py --model bundled:fashion --threads 1 --rounds 10

Loads one model twice, the second with every ``UpsampleConv`` forced onto the slow path (nearest upsampling, then
the 3x3 convolution at full resolution: what the UNet computed before), checks that both give the same output,
and times one evaluation (inference) and one training step (forward + backward) of each, interleaved, at each batch
size in ``--batch``: the minimum over ``--rounds`` rounds of the thread's CPU time (``time.thread_time``), per
batch and per image (the per-image training cost is what compares recipes with different batch sizes).
"""

from __future__ import annotations

import argparse
import time

import torch

from fewstep import load_model
from fewstep.nets.upsample import UpsampleConv


def _slow(net: torch.nn.Module) -> torch.nn.Module:
    for m in net.modules():
        if isinstance(m, UpsampleConv):
            m.forward = m.reference
    return net


def _cpu_time(fn) -> float:
    c0 = time.thread_time()
    fn()
    return time.thread_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bundled:fashion")
    ap.add_argument("--batch", type=int, nargs="+", default=[64])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    den = load_model(args.model)
    fast, slow = next(den.networks()), _slow(next(load_model(args.model).networks()))
    c, h, w = den.sample_shape
    g = torch.Generator().manual_seed(0)
    print(f"{args.model}, {args.threads} thread(s), min of {args.rounds} interleaved rounds")
    print("| batch | | upsample then convolve (ms) | transposed convolution (ms) | speed-up | per image (ms), before / after |")
    print("|---:|---|---:|---:|---:|---:|")
    diffs = []
    for batch in args.batch:
        x, t = torch.randn(batch, c, h, w, generator=g), torch.full((batch,), 500.0)
        diffs.append(_time(fast, slow, x, t, args.rounds))
    print(f"max |fast - slow| of the outputs: {max(diffs):.2e}")


def _time(fast: torch.nn.Module, slow: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, rounds: int) -> float:
    with torch.inference_mode():
        diff = (fast(x, t) - slow(x, t)).abs().max().item()

    def evaluate(net):
        with torch.inference_mode():
            net(x, t)

    def train_step(net):
        net.zero_grad(set_to_none=True)
        net(x, t).square().mean().backward()

    best = {(k, n): float("inf") for k in ("eval", "train") for n in ("fast", "slow")}
    for _ in range(rounds + 1):  # the first round warms up and is not counted
        for name, net in (("fast", fast), ("slow", slow)):
            for kind, fn in (("eval", evaluate), ("train", train_step)):
                best[kind, name] = min(best[kind, name], _cpu_time(lambda: fn(net)))
    n = x.shape[0]
    for kind in ("eval", "train"):
        s, f = best[kind, "slow"], best[kind, "fast"]
        print(f"| {n} | {kind} | {1000 * s:.0f} | {1000 * f:.0f} | {s / f:.2f}x | {1000 * s / n:.2f} / {1000 * f / n:.2f} |")
    return diff


if __name__ == "__main__":
    main()
