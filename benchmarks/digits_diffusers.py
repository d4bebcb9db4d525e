"""Small diffusers models fewstep never tuned on: scikit-learn's digits, trained with a plain diffusers loop.

Benchmark data for sampling diffusers checkpoints with fewstep (docs/diffusers.md, "Benchmark models:
sklearn digits").  Only this script uses scikit-learn; fewstep does not depend on it.

    python benchmarks/digits_diffusers.py data --out benchmarks/models
    python benchmarks/digits_diffusers.py train --kind cosine-eps --out /work/runs/digits-cosine-eps --minutes 30
    python benchmarks/digits_diffusers.py train --kind zsnr-v --out /work/runs/digits-zsnr-v --minutes 30
    python benchmarks/digits_diffusers.py preview --model /work/runs/digits-cosine-eps --out grid.png
    python benchmarks/digits_diffusers.py classifier --out benchmarks/models/digits_classifier
    python benchmarks/digits_diffusers.py eval --model benchmarks/models/digits-cosine-eps --nfe 5,6,8,10 --n 1000

``data``: the 1797 8x8 images of ``sklearn.datasets.load_digits`` (values 0..16), upscaled bilinearly to 16x16
uint8 and split (stratified, seed 0) into ``digits16-train.npz`` (1500) and ``digits16-test.npz`` (297), each with
keys ``images`` ``(N, 1, 16, 16)`` and ``labels``: what fewstep's ``--data`` loader reads.

``train``: a ``diffusers.UNet2DModel`` trained the way a diffusers user would (DDPMScheduler.add_noise, MSE on
the scheduler's prediction type, AdamW, diffusers' EMAModel), resumable; the EMA UNet is saved with
``save_pretrained(DIR, safe_serialization=True)`` beside the scheduler's ``scheduler_config.json``, so
``fewstep.load_model(DIR)`` reads it.  ``--minutes`` is the *total* training wall time across resumes: rerunning
the same command continues an interrupted run and does nothing once it is done.

``eval``: at each NFE, diffusers' schedulers built from the model's own scheduler config (plain loop over
``scheduler.timesteps``) and fewstep's samplers, all from the same per-sample seeds; Frechet distance in the
digits classifier's feature space to the held-out test split and to the train split; Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
MODELS = HERE / "models"
TRAIN_NPZ, TEST_NPZ = "digits16-train.npz", "digits16-test.npz"
RES = 16
N_TEST = 297  # 1797 - 1500

KINDS = {
    # Improved DDPM's cosine schedule with eps prediction: alpha_bar(T) is ~0 but not 0 (betas capped at 0.999).
    "cosine-eps": dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                       clip_sample=False),
    # Lin et al. 2024 ("Common diffusion noise schedules and sample steps are flawed"): zero terminal SNR,
    # v prediction, trailing timesteps.
    "zsnr-v": dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                   rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing",
                   clip_sample=False),
}

UNET = dict(sample_size=RES, in_channels=1, out_channels=1, block_out_channels=(16, 32, 32), layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8)


def _atomic_replace(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- data

def build_data(out: Path) -> None:
    """Write the 16x16 digits train/test split (bilinear upscaling; see the module docstring)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32))[:, None]  # (1797, 1, 8, 8), 0..16
    # Bilinear (align_corners=False): smooth strokes instead of 2x2 blocks whose sharp edges nearest
    # upscaling would add; either way the images span the same 64-d linear subspace of the 256 pixels.
    up = F.interpolate(x, size=(RES, RES), mode="bilinear", align_corners=False)
    images = torch.round(up / 16.0 * 255.0).clamp(0, 255).to(torch.uint8).numpy()
    labels = d.target.astype(np.int64)
    idx = np.arange(len(labels))
    tr, te = train_test_split(idx, test_size=N_TEST, random_state=0, stratify=labels)
    tr, te = np.sort(tr), np.sort(te)
    out.mkdir(parents=True, exist_ok=True)
    for name, sel in ((TRAIN_NPZ, tr), (TEST_NPZ, te)):
        tmp = out / f".{name}.tmp.npz"
        np.savez_compressed(tmp, images=images[sel], labels=labels[sel], source_index=sel)
        os.replace(tmp, out / name)
        print(f"wrote {out / name}: {len(sel)} images {images[sel].shape[1:]}, "
              f"{os.path.getsize(out / name)} bytes, class counts {np.bincount(labels[sel]).tolist()}")


def load_split(split: str, folder: Path = MODELS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images in [-1, 1] float32 (N, 1, 16, 16), labels)`` of the train or test split."""
    path = folder / (TRAIN_NPZ if split == "train" else TEST_NPZ)
    if not path.exists():
        sys.exit(f"{path} not found; run: python benchmarks/digits_diffusers.py data --out {folder}")
    with np.load(path, allow_pickle=False) as z:
        return torch.from_numpy(z["images"]).float() / 127.5 - 1.0, torch.from_numpy(z["labels"])


# ----------------------------------------------------------------------------- training

def _export(unet_cls, ema, unet_cfg, sched, out: Path) -> None:
    """Save the EMA UNet + scheduler config into ``out`` as a diffusers user would, file by file atomically."""
    tmp = out / ".export.tmp"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    model = unet_cls.from_config(unet_cfg)
    ema.copy_to(model.parameters())
    model.save_pretrained(str(tmp), safe_serialization=True)
    sched.save_pretrained(str(tmp))
    for f in sorted(tmp.iterdir()):
        _atomic_replace(f, out / f.name)
    tmp.rmdir()


def train(kind: str, out: Path, minutes: float, max_steps: int | None, data: Path, lr: float, seed: int,
          batch: int, ema_decay: float, checkpoint_minutes: float) -> None:
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    x_train, _ = load_split("train", data)
    sched = DDPMScheduler(**KINDS[kind])
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "train_state.pt"
    torch.manual_seed(seed)
    unet = UNet2DModel(**UNET)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    ema = EMAModel(unet.parameters(), decay=ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    step, wall, cpu = 0, 0.0, 0.0
    if state_path.exists():
        st = torch.load(state_path, weights_only=True)
        if st["kind"] != kind:
            sys.exit(f"{out} holds a {st['kind']} run, not {kind}; pick another --out")
        unet.load_state_dict(st["unet"])
        opt.load_state_dict(st["opt"])
        ema.load_state_dict(st["ema"])
        step, wall, cpu = st["step"], st["wall_s"], st["cpu_s"]
        print(f"resumed {out} at step {step} ({wall / 60:.1f} min of training so far)", flush=True)
    n_params = sum(p.numel() for p in unet.parameters())
    log = open(out / "train_log.jsonl", "a")

    def checkpoint() -> None:
        tmp = out / ".train_state.pt.tmp"
        torch.save({"kind": kind, "step": step, "wall_s": wall, "cpu_s": cpu, "unet": unet.state_dict(),
                    "opt": opt.state_dict(), "ema": ema.state_dict()}, tmp)
        os.replace(tmp, state_path)
        _export(UNet2DModel, ema, unet.config, sched, out)
        log.write(json.dumps({"event": "checkpoint", "step": step, "wall_s": round(wall, 1)}) + "\n")
        log.flush()

    def done() -> bool:
        return wall >= minutes * 60 or (max_steps is not None and step >= max_steps)

    if done():
        print(f"{out}: already trained ({step} steps, {wall / 60:.1f} min); nothing to do")
        return
    log.write(json.dumps({"event": "start", "step": step, "kind": kind, "params": n_params, "lr": lr,
                          "batch": batch, "ema_decay": ema_decay, "seed": seed, "unet": UNET,
                          "scheduler": KINDS[kind], "argv": sys.argv, "time": time.strftime("%F %T")}) + "\n")
    print(f"training {kind}: {n_params} parameters, {len(x_train)} images, batch {batch}", flush=True)
    last_ckpt, losses = time.time(), []
    unet.train()
    while not done():
        t0, c0 = time.time(), time.process_time()
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)  # (seed, step) -> batch: resumes exactly
        idx = torch.randint(0, len(x_train), (batch,), generator=g)
        x0 = x_train[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=g)
        xt = sched.add_noise(x0, noise, t)
        target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
        warm = min(1.0, (step + 1) / 200)
        for group in opt.param_groups:
            group["lr"] = lr * warm
        loss = F.mse_loss(unet(xt, t).sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.step(unet.parameters())
        step += 1
        wall += time.time() - t0
        cpu += time.process_time() - c0
        losses.append(loss.item())
        if step % 100 == 0:
            rec = {"step": step, "loss": round(float(np.mean(losses)), 5), "wall_s": round(wall, 1),
                   "cpu_s": round(cpu, 1), "ema_decay": round(ema.get_decay(ema.optimization_step), 5)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(rec, flush=True)
            losses = []
        if time.time() - last_ckpt > checkpoint_minutes * 60:
            checkpoint()
            last_ckpt = time.time()
    checkpoint()
    log.write(json.dumps({"event": "done", "step": step, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}) + "\n")
    log.close()
    print(f"done: {step} steps, {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU; model in {out}")


# ----------------------------------------------------------------------------- diffusers sampling

def load_unet(model: Path):
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(str(model), use_safetensors=True).eval()
    return unet, json.loads((model / "scheduler_config.json").read_text())


def seeded_noise(seeds, shape) -> torch.Tensor:
    """x_T per sample from its own seed: the same seed gives the same draw in any batch (fewstep.generate's rule)."""
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def diffusers_loop(unet, scheduler, noise: torch.Tensor, steps: int, seeds=None) -> torch.Tensor:
    """The plain diffusers sampling loop over ``scheduler.timesteps`` (as in DDPMPipeline / DDIMPipeline).

    Stochastic schedulers get one generator per sample is not possible in diffusers; a batch generator
    seeded from the first seed is passed instead (only DDPM here, which is not evaluated).
    """
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = unet(scheduler.scale_model_input(x, t), t).sample
        x = scheduler.step(out, t, x).prev_sample
    return x


def preview(model: Path, out: Path, steps: int, n: int) -> None:
    from diffusers import DDIMScheduler

    from fewstep.imagegrid import save_image_grid

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    unet, cfg = load_unet(model)
    sched = DDIMScheduler.from_config(cfg)
    x = diffusers_loop(unet, sched, seeded_noise(range(n), (1, RES, RES)), steps)
    save_image_grid(x.clamp(-1, 1), out, nrow=int(math.ceil(math.sqrt(n))))
    print(f"wrote {out}: DDIM {steps} steps, {n} samples, max |x| {x.abs().max():.3f}")


# ----------------------------------------------------------------------------- CLI

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("data", help="write digits16-train.npz / digits16-test.npz")
    p.add_argument("--out", type=Path, default=MODELS)
    p = sub.add_parser("train", help="train a diffusers UNet2DModel (resumes if --out exists)")
    p.add_argument("--kind", choices=sorted(KINDS), required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, required=True, help="total training wall time, across resumes")
    p.add_argument("--steps", type=int, default=None, help="stop at this many steps if reached first")
    p.add_argument("--data", type=Path, default=MODELS, help="folder holding digits16-train.npz")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-minutes", type=float, default=3.0)
    p = sub.add_parser("preview", help="PNG grid of diffusers DDIM samples")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--n", type=int, default=64)
    args = ap.parse_args()
    if args.cmd == "data":
        build_data(args.out)
    elif args.cmd == "train":
        train(args.kind, args.out, args.minutes, args.steps, args.data, args.lr, args.seed, args.batch,
              args.ema_decay, args.checkpoint_minutes)
    elif args.cmd == "preview":
        preview(args.model, args.out, args.steps, args.n)


if __name__ == "__main__":
    main()
