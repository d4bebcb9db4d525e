"""Held-out denoising loss of a MaskUNet with its learned masks against the same network with masks off.

    PYTHONPATH=src python benchmarks/maskunet_loss.py /work/prune-runs/mask2 --n 128 --times 6

The loss is the model's training loss (its prediction type's target, its weighting) on the first ``--n``
Fashion-MNIST test images, noised with the same noise (seed 0) at ``--times`` times spread over the range;
also printed: the fraction of masked channels at each time.  Masks off is exactly the frozen source network.
"""

from __future__ import annotations

import argparse

import torch

from fewstep import load_model
from fewstep.data import load_data, to_model_range
from fewstep.training.losses import diffusion_loss
from fewstep.training.settings import resolve_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--times", type=int, default=6)
    ap.add_argument("--data", default="fashion-mnist:test")
    args = ap.parse_args()
    torch.set_num_threads(1)
    den = load_model(args.model)
    net, cfg = den.net, den.config
    obj = resolve_config({k: v for k, v in cfg.items() if k != "objective"} | {"objective": cfg["objective"]})[0]["objective"]
    x0 = to_model_range(load_data(args.data, 28, 1).images[:args.n])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    p = den.process
    print(f"{args.model}: held-out loss ({obj['weighting']} weighting), n={args.n}")
    print("| t | masked channels | loss, masks on | loss, masks off | ratio |")
    print("|---:|---:|---:|---:|---:|")
    total = [0.0, 0.0]
    for k in range(args.times):
        t = p.t_min + (p.t_max - p.t_min) * (k + 0.5) / args.times
        tt = torch.full((args.n,), t)
        losses = []
        with torch.no_grad():
            for on in (True, False):
                net.masks_enabled = on
                losses.append(float(diffusion_loss(net, den.prediction, p, x0, tt, eps, weighting=obj["weighting"],
                                                   sigma_data=den.sigma_data, gamma=obj["min_snr_gamma"]).mean()))
            a, s = p.alpha_sigma(float(t))
            masks = net.masks(a * x0 + s * eps, tt)
            off = sum(float((1 - m).sum()) for m in masks) / sum(m.numel() for m in masks)
        total = [total[0] + losses[0], total[1] + losses[1]]
        print(f"| {t:.0f} | {off:.2%} | {losses[0]:.5f} | {losses[1]:.5f} | {losses[0] / losses[1]:.4f} |")
    print(f"| mean | | {total[0] / args.times:.5f} | {total[1] / args.times:.5f} | {total[0] / total[1]:.4f} |")


if __name__ == "__main__":
    main()
