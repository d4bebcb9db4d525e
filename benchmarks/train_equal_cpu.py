"""Train a recipe on a Fashion-MNIST subset for a fixed budget of CPU time (equal-compute comparisons).

Usage (one recipe per process, resumable: rerun the same command after a kill)::

    nice -n 10 python benchmarks/train_equal_cpu.py --recipe patch --subset 5000 --cpu-minutes 12 \\
        --out runs/eq/patch
    fewstep eval --model runs/eq/patch --solver dpm++2m --nfe 10 --n 2000 --extractor fashion --threads 1

Recipes are the ``fashion-unet`` preset (the network of ``bundled:fashion-v1``) with one change each:

* ``default`` - the preset as it is;
* ``patch`` - Patch Diffusion (coordinate channels, ``patch_full_fraction`` p = 0.5, sizes R/2 and R/4);
* ``repa`` - representation alignment of the ``mid`` tap with an encoder (``--encoder``, a run of
  ``fewstep train --config fashion-encoder``), lambda 0.5;
* ``dispersive`` - the dispersive loss on the ``mid`` tap, lambda 0.5, tau 0.5.

The budget is the process's CPU time (``time.process_time``, with one torch thread), so runs that share a
busy machine still get equal compute.  The subset is the first ``--subset`` images of a fixed permutation
(seed 0) of the training split, written to ``<out>/../fashion<N>.npz``.  Prints steps, images seen,
CPU and wall seconds; ``<out>/budget.json`` keeps them across resumes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from fewstep._io import atomic_write_text
from fewstep.checkpoint import latest_checkpoint
from fewstep.data import load_array, load_fashion_mnist
from fewstep.training import Trainer
from fewstep.training.presets import get_preset


def subset(n: int, folder: Path) -> Path:
    path = folder / f"fashion{n}.npz"
    if not path.exists():
        data = load_fashion_mnist()
        idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n]
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, images=data.images[idx].numpy(), labels=data.labels[idx].numpy())
        tmp.rename(path)
    return path


def recipe(name: str, encoder: str | None, channels: int, warmup: int) -> dict:
    cfg = get_preset("fashion-unet")
    cfg["network"]["channels"] = channels
    cfg["training"].update(sample_every_steps=0, checkpoint_every_seconds=0, checkpoint_every_steps=0, steps=10**7,
                           warmup_steps=warmup)
    if name == "patch":
        cfg["network"]["coordinates"] = True
        cfg["objective"]["patch_full_fraction"] = 0.5
    elif name == "repa":
        if not encoder:
            raise SystemExit("--recipe repa needs --encoder (a run of `fewstep train --config fashion-encoder`)")
        cfg["objective"].update(align="repa", align_encoder=encoder, align_weight=0.5, align_tap="mid")
    elif name == "dispersive":
        cfg["objective"].update(align="dispersive", align_weight=0.5, align_tap="mid")
    elif name != "default":
        raise SystemExit(f"unknown recipe {name}")
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", required=True, choices=["default", "patch", "repa", "dispersive"])
    ap.add_argument("--subset", type=int, default=5000)
    ap.add_argument("--cpu-minutes", type=float, default=12.0)
    ap.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps")
    ap.add_argument("--encoder", default=None)
    ap.add_argument("--channels", type=int, default=32, help="the UNet's base width (32: bundled:fashion-v1's)")
    ap.add_argument("--warmup", type=int, default=200, help="learning-rate warm-up steps (200: the preset's)")
    ap.add_argument("--milestones", default="", help="comma-separated CPU minutes at which a copy of the checkpoint "
                    "is kept under <out>/milestones/cpu-<M>min (an equal-compute point for shorter runs)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    data = load_array(subset(args.subset, out.parent))
    trainer = Trainer(recipe(args.recipe, args.encoder, args.channels, args.warmup), data, out, device="cpu", progress=False)
    ledger = out / "budget.json"
    spent = {"cpu_s": 0.0, "wall_s": 0.0}
    if latest_checkpoint(out) is not None:
        trainer.resume()
        if ledger.exists():
            spent = json.loads(ledger.read_text())
            if spent.get("step") != trainer.step:  # steps after the ledger's checkpoint were lost: count them
                spent["cpu_s"] *= trainer.step / max(spent.get("step", trainer.step), 1)
    budget = 60.0 * args.cpu_minutes
    cpu0, wall0 = time.process_time() - spent["cpu_s"], time.monotonic() - spent["wall_s"]

    def record() -> None:
        trainer.save()
        spent.update(cpu_s=time.process_time() - cpu0, wall_s=time.monotonic() - wall0, step=trainer.step,
                     images_seen=trainer.step * trainer.settings.batch_size, recipe=args.recipe, subset=args.subset)
        atomic_write_text(ledger, json.dumps(spent, indent=2))

    milestones = sorted(float(m) for m in args.milestones.split(",") if m)
    while time.process_time() - cpu0 < budget:
        loss = trainer.train_step()
        due = [m for m in milestones if time.process_time() - cpu0 >= 60.0 * m]
        for m in due:
            keep = out / "milestones" / f"cpu-{m:g}min"
            if not keep.exists():
                record()
                shutil.copytree(latest_checkpoint(out), keep)
                (keep / "budget.json").write_text(json.dumps(spent, indent=2))
            milestones.remove(m)
        if trainer.step % args.save_every == 0:
            record()
            print(f"step {trainer.step} loss {loss:.4f} cpu {spent['cpu_s']:.0f}s wall {spent['wall_s']:.0f}s",
                  flush=True)
    record()
    print(json.dumps(spent))


if __name__ == "__main__":
    main()
