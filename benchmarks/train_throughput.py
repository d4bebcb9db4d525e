"""Training throughput (images/s): fewstep's trainer on the bundled model's configuration versus a
diffusers ``UNet2DModel`` of about the same parameter count trained with a plain PyTorch loop.

Same batch, resolution, thread count and data (random 28x28 images; the speed does not depend on
the pixels).  Rounds alternate between the two so that load from other processes hits both alike.

    PYTHONPATH=src python benchmarks/train_throughput.py --threads 1 --steps 10 --rounds 3
"""

from __future__ import annotations

import argparse
import time

import torch


def fewstep_step_fn(batch: int):
    from fewstep.data import ImageData
    from fewstep.training.presets import get_preset
    from fewstep.training.trainer import Trainer

    cfg = get_preset("fashion-unet")
    cfg["training"].update(batch_size=batch, checkpoint_every_seconds=0, sample_every_steps=0)
    images = torch.randint(0, 256, (4096, 1, 28, 28), dtype=torch.uint8)
    tr = Trainer(cfg, ImageData(images), "/tmp/fewstep-throughput-unused", device="cpu", progress=False)
    n = sum(p.numel() for p in tr.model.parameters())
    return tr.train_step, n


def diffusers_step_fn(batch: int, channels: tuple[int, ...]):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=channels,
                       layers_per_block=1, norm_num_groups=8, attention_head_dim=32,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(unet.parameters(), lr=5e-4)
    images = torch.rand(4096, 1, 28, 28) * 2 - 1
    unet.train()

    def step() -> float:
        idx = torch.randint(0, len(images), (batch,))
        x0 = images[idx]
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,))
        loss = torch.nn.functional.mse_loss(unet(sched.add_noise(x0, noise, t), t).sample, noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    return step, sum(p.numel() for p in unet.parameters())


def timed(step, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--diffusers-channels", default="32,64,64")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fs, n_fs = fewstep_step_fn(args.batch)
    df, n_df = diffusers_step_fn(args.batch, tuple(int(c) for c in args.diffusers_channels.split(",")))
    print(f"parameters: fewstep UNet {n_fs / 1e6:.2f}M, diffusers UNet2DModel {n_df / 1e6:.2f}M; "
          f"batch {args.batch}, 28x28, {args.threads} thread(s)")
    for step in (fs, df):  # warm-up
        timed(step, 2)
    t_fs = t_df = 0.0
    for _ in range(args.rounds):
        t_fs += timed(fs, args.steps)
        t_df += timed(df, args.steps)
    images = args.batch * args.steps * args.rounds
    ips_fs, ips_df = images / t_fs, images / t_df
    print(f"fewstep trainer (AdamW + EMA + clipping): {ips_fs:.1f} images/s")
    print(f"diffusers UNet2DModel, plain loop:        {ips_df:.1f} images/s")
    print(f"ratio fewstep / diffusers: {ips_fs / ips_df:.2f}x")


if __name__ == "__main__":
    main()
