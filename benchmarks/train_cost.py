"""CPU time per training image of the bundled recipe at several batch sizes, with the UNet's upsampling computed
at low resolution (today's code) or upsampled then convolved (the code `bundled:fashion-v1` was trained with).

    PYTHONPATH=src python benchmarks/train_cost.py --batch 64 32 16 8 --steps 12 --rounds 3 --threads 1
    PYTHONPATH=src python benchmarks/train_cost.py --batch 64 32 --precision fp32 bf16 --forms today --rounds 3

``--precision bf16`` adds arms trained under bf16 autocast (the trainer's ``training.precision``); on a CPU with
AMX tiles (``torch.cpu._is_amx_tile_supported()``, printed) oneDNN runs the convolutions and matmuls in bf16 there.

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


def _trainer(batch: int, slow: bool, data, out: str, precision: str = "fp32") -> Trainer:
    cfg = copy.deepcopy(PRESETS["fashion-unet"])
    cfg["training"].update(batch_size=batch, steps=10**6, sample_every_steps=0, checkpoint_every_seconds=0,
                           checkpoint_every_steps=0, lr_schedule="cosine", precision=precision)
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
    ap.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"],
                    help="training.precision of the arms (bf16: autocast)")
    ap.add_argument("--forms", choices=["both", "today"], default="both",
                    help="both upsampling forms, or only today's low-resolution one")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data("fashion-mnist", 28, 1)
    forms = (True, False) if args.forms == "both" else (False,)
    print(f"AMX tiles: {torch.cpu._is_amx_tile_supported()}, avx512-bf16: {torch.cpu._is_avx512_bf16_supported()}")
    with tempfile.TemporaryDirectory() as tmp:
        arms = {(b, slow, p): _trainer(b, slow, data, f"{tmp}/{b}-{slow}-{p}", p)
                for b in args.batch for p in args.precision for slow in forms}
        for trainer in arms.values():
            trainer.train_step()  # warm-up
        best = {k: float("inf") for k in arms}
        for _ in range(args.rounds):
            for key, trainer in arms.items():
                c0 = time.thread_time()
                for _ in range(args.steps):
                    trainer.train_step()
                best[key] = min(best[key], (time.thread_time() - c0) / (args.steps * key[0]))
    ref_key = (64, forms[0], "fp32")
    ref = best.get(ref_key)
    print(f"{args.threads} thread(s), {args.steps} steps x min of {args.rounds} rounds; ms of CPU per training image")
    names = {True: "upsample then convolve", False: "low-resolution transposed conv"}
    print(f"| batch | precision | {' | '.join(names[f] for f in forms)} | relative to batch 64, fp32, "
          f"{names[forms[0]]} |")
    print("|---:|---|" + "---:|" * (len(forms) + 1))
    for b in args.batch:
        for p in args.precision:
            cells = " | ".join(f"{1000 * best[b, f, p]:.2f}" for f in forms)
            rel = " / ".join(f"{best[b, f, p] / ref:.2f}" for f in forms) if ref else "-"
            print(f"| {b} | {p} | {cells} | {rel} |")


if __name__ == "__main__":
    main()
