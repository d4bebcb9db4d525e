"""Pixel statistics of a Fashion-MNIST model's samples beside the test split's: brightness, contrast, sharpness.

    PYTHONPATH=src python benchmarks/pixel_stats.py --model bundled:fashion-fewstep --solver euler --nfe 2 \\
        --model bundled:fashion-fewstep-v4 --solver euler --nfe 2 --model bundled:fashion --solver dpm++3m_sde --nfe 10

A check beside the Frechet distances (docs/training.md, the bundled few-step generator): where two feature spaces
disagree about which of two generators is nearer the data, the pixels say in which direction the samples moved.
Per arm, on the same seeds: the mean pixel value, the mean per-image standard deviation (contrast), the mean squared
response to the 4-neighbour Laplacian (sharpness; fine detail that a blurred sample lacks), the share of pixels at
the background value (<= -0.99) and the share outside [-1, 1] (before the clamp every metric applies). Values are
clamped to [-1, 1] for all but the last.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def pixel_stats(x: torch.Tensor) -> dict[str, float]:
    """The statistics above of images ``(n, 1, H, W)`` in the model range [-1, 1] (unclamped)."""
    c = x.float().clamp(-1, 1)
    return {"mean": c.mean().item(), "contrast": c.flatten(1).std(1).mean().item(),
            "laplacian": F.conv2d(c, LAPLACIAN).square().mean().item(),
            "background": (c <= -0.99).float().mean().item(), "outside": (x.abs() > 1).float().mean().item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, help="repeat with --solver/--nfe for each arm")
    ap.add_argument("--solver", action="append", required=True)
    ap.add_argument("--nfe", action="append", type=int, required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=500000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not len(args.model) == len(args.solver) == len(args.nfe):
        raise SystemExit("give one --solver and one --nfe per --model")

    import fewstep
    from fewstep.data import load_fashion_mnist, to_model_range
    from fewstep.plan import make_plan

    torch.set_num_threads(args.threads)
    seeds = list(range(args.seed, args.seed + args.n))
    rows = [("test split", pixel_stats(to_model_range(load_fashion_mnist(split="test").images)[:args.n]))]
    for name, solver, nfe in zip(args.model, args.solver, args.nfe):
        den = fewstep.load_model(name)
        plan = make_plan(den, solver, nfe, None)
        with torch.no_grad():
            x = torch.cat([fewstep.generate(den, den.sample_shape, seeds[i:i + 250], plan)
                           for i in range(0, len(seeds), 250)])
        rows.append((f"{name} {solver}@{nfe}", pixel_stats(x)))
    print(f"seeds {args.seed}..{args.seed + args.n - 1} (test split: its first {args.n} images)")
    print("| arm | mean | contrast | Laplacian energy | background share | outside [-1, 1] |\n|---|---:|---:|---:|---:|---:|")
    for label, s in rows:
        print(f"| {label} | {s['mean']:.3f} | {s['contrast']:.3f} | {s['laplacian']:.3f} | {s['background']:.3f} | "
              f"{s['outside']:.3f} |")


if __name__ == "__main__":
    main()
