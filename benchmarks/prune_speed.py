"""Cost of one network evaluation of pruned / masked models against the original: parameters, wall and CPU time.

    PYTHONPATH=src python benchmarks/prune_speed.py bundled:fashion-v1 /work/prune-runs/ld-0.6 ... --threads 1

Each round times one forward pass of every model in turn (interleaved, so a change of the machine's load
hits all alike) at batch ``--batch``; the table gives the minimum over ``--rounds`` rounds of the wall time
and of the thread's CPU time (``time.thread_time``, less sensitive to other processes on a shared machine),
and the speed-up of each against the first model. ``--train`` also times one training step of each (forward,
backward of a squared-output loss and an AdamW step at a tiny rate, batch ``--batch``, random times): what a
fine-tune step costs relative to a step of the original, which converts fine-tune steps into a share of the
original training's compute. ``--precision fp32 bf16`` times every model in each precision (bf16: the network under
autocast, ``fewstep.precision``), the first model in fp32 staying the reference.
"""

from __future__ import annotations

import argparse
import time

import torch

from fewstep import load_model
from fewstep.precision import set_precision


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="models for fewstep.load_model; the first is the reference")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--train", action="store_true", help="also time a training step of each model")
    ap.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names, nets = [], []
    for p in args.precision:
        for m in args.models:
            den = set_precision(load_model(m), p)
            names.append(m if p == "fp32" else f"{m} ({p})")
            nets.append(next(den.networks()))
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(args.batch, 1, 28, 28, generator=g), torch.full((args.batch,), 500.0)
    wall = [float("inf")] * len(nets)
    cpu = [float("inf")] * len(nets)
    with torch.inference_mode():
        for net in nets:
            net(x, t)
        for _ in range(args.rounds):
            for i, net in enumerate(nets):
                w0, c0 = time.perf_counter(), time.thread_time()
                net(x, t)
                wall[i] = min(wall[i], time.perf_counter() - w0)
                cpu[i] = min(cpu[i], time.thread_time() - c0)
    print(f"batch {args.batch}, {args.threads} thread(s), min of {args.rounds} interleaved rounds")
    print("| model | parameters | wall ms / eval | CPU ms / eval | speed-up (wall) | speed-up (CPU) |")
    print("|---|---:|---:|---:|---:|---:|")
    for m, net, w, c in zip(names, nets, wall, cpu):
        n = sum(p.numel() for p in net.parameters())
        print(f"| {m} | {n:,} | {1000 * w:.0f} | {1000 * c:.0f} | {wall[0] / w:.2f}x | {cpu[0] / c:.2f}x |")
    if args.train:
        _train_steps(names, nets, x, args.rounds)


def _train_steps(names: list[str], nets: list[torch.nn.Module], x: torch.Tensor, rounds: int) -> None:
    """Minimum thread CPU time of one training step per model, interleaved like the evaluations."""
    t = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(1)) * 999
    opts = [torch.optim.AdamW(net.parameters(), lr=1e-12) for net in nets]
    for net in nets:
        net.train().requires_grad_(True)
    cpu = [float("inf")] * len(nets)
    for r in range(rounds + 1):  # round 0 warms up
        for i, (net, opt) in enumerate(zip(nets, opts)):
            c0 = time.thread_time()
            net(x, t).square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if r:
                cpu[i] = min(cpu[i], time.thread_time() - c0)
    print("\n| model | CPU ms / training step | step cost relative to the first |")
    print("|---|---:|---:|")
    for m, c in zip(names, cpu):
        print(f"| {m} | {1000 * c:.0f} | 1/{cpu[0] / c:.2f} |")


if __name__ == "__main__":
    main()
