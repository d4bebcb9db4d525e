"""CPU time per training image of the bundled recipe at several batch sizes, with the UNet's upsampling computed
at low resolution (today's code) or upsampled then convolved (the code `bundled:fashion-v1` was trained with).

    PYTHONPATH=src python benchmarks/train_cost.py --batch 64 32 16 8 --steps 12 --rounds 3 --threads 1

Each arm builds the ``fashion-unet`` preset's Trainer on Fashion-MNIST (the full step: batch assembly, loss,
backward, clipping, AdamW, EMA) and times ``--steps`` steps by the thread's CPU time (``time.thread_time``,
robust to other processes on a shared machine); arms alternate for ``--rounds`` rounds and the minimum per arm is
kept. Equal images at equal per-image cost is equal compute: this is how the half-compute recipes of
docs/training.md are held to half of v1's CPU time.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch

from fewstep.data import load_data
from fewstep.nets.upsample import UpsampleConv
from fewstep.training.presets import PRESETS
from fewstep.training.trainer import Trainer


def _trainer(batch: int, slow: bool, data, out: str) -> Trainer:
    cfg = copy.deepcopy(PRESETS["fashion-unet"])
    cfg["training"].update(batch_size=batch, steps=10**6, sample_every_steps=0, checkpoint_every_seconds=0,
                           checkpoint_every_steps=0, lr_schedule="cosine", precision="fp32")
    trainer = Trainer(cfg, data, out, progress=False)
    if slow:
        for m in trainer.model.modules():
            if isinstance(m, UpsampleConv):
                m.forward = m.reference
    return trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 32, 16, 8])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data("fashion-mnist", 28, 1)
    with tempfile.TemporaryDirectory() as tmp:
        arms = {(b, slow): _trainer(b, slow, data, f"{tmp}/{b}-{slow}") for b in args.batch for slow in (True, False)}
        for trainer in arms.values():
            trainer.train_step()  # warm-up
        best = {k: float("inf") for k in arms}
        for _ in range(args.rounds):
            for key, trainer in arms.items():
                c0 = time.thread_time()
                for _ in range(args.steps):
                    trainer.train_step()
                best[key] = min(best[key], (time.thread_time() - c0) / (args.steps * key[0]))
    ref = best[64, True] if (64, True) in best else None
    print(f"{args.threads} thread(s), {args.steps} steps x min of {args.rounds} rounds; ms of CPU per training image")
    print("| batch | upsample then convolve | low-resolution transposed conv | relative to batch 64, upsample then convolve |")
    print("|---:|---:|---:|---:|")
    for b in args.batch:
        s, f = 1000 * best[b, True], 1000 * best[b, False]
        rel = f"{best[b, True] / ref:.2f} / {best[b, False] / ref:.2f}" if ref else "-"
        print(f"| {b} | {s:.2f} | {f:.2f} | {rel} |")


if __name__ == "__main__":
    main()
