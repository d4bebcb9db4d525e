"""The training loop: AdamW with warm-up, EMA, clipping, accumulation, bf16 autocast, DDP, checkpoints.

Every step's randomness (which images, which times, which noise, flips, dropout) is derived
from ``(seed, step)``, so a run resumed from a checkpoint reproduces the losses of an
uninterrupted run, and ``N`` DDP processes reproduce one process with the summed batch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..processes import process_from_config
from ..nets import build_net
from ..checkpoint import (latest_checkpoint, load_optimizer_state, load_tensors, read_config, save_checkpoint)
from ..data import ImageData, to_model_range
from .ema import ema_decay, make_ema, update_ema
from .losses import TIME_SAMPLERS, WEIGHTINGS, diffusion_loss

__all__ = ["TrainSettings", "Trainer", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainSettings:
    """Optimisation settings, saved in every checkpoint's ``config.json`` under ``training``."""

    steps: int = 1000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 100
    grad_clip: float | None = 1.0
    ema_half_life_images: float = 50_000.0
    ema_rampup: float | None = 0.05
    seed: int = 0
    precision: str = "auto"
    time_sampling: str = "uniform"
    weighting: str = "uniform"
    min_snr_gamma: float = 5.0
    p_mean: float = -1.2
    p_std: float = 1.2
    hflip: bool = False
    use_labels: bool = False
    checkpoint_every_steps: int = 0
    checkpoint_every_seconds: float = 300.0
    keep_checkpoints: int = 2
    sample_every_steps: int = 0
    sample_nfe: int = 20
    log_every: int = 10

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "TrainSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**cfg)

    def check(self) -> None:
        if self.batch_size < 1 or self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be a positive multiple of grad_accum ({self.grad_accum})")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.time_sampling not in TIME_SAMPLERS:
            raise ValueError(f"unknown time_sampling {self.time_sampling!r}; valid: {', '.join(TIME_SAMPLERS)}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed_from_env() -> None:
    """Join the process group torchrun describes (``WORLD_SIZE > 1``): gloo on CPU, NCCL on CUDA."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


class Trainer:
    """Train ``config["network"]`` as a ``config["prediction"]`` denoiser of ``config["process"]`` on ``data``.

    ``config`` holds ``network``, ``process``, ``prediction``, ``sigma_data`` and ``training``
    (a :class:`TrainSettings` dict); it is saved in every checkpoint.
    """

    def __init__(self, config: dict[str, Any], data: ImageData, out_dir: str | os.PathLike,
                 device: str | torch.device | None = None, progress: bool = True):
        for key in ("network", "process", "prediction"):
            if key not in config:
                raise ValueError(f"training config is missing {key!r} (needs network, process, prediction, training)")
        self.config = json.loads(json.dumps(config))
        self.settings = TrainSettings.from_dict(self.config.get("training", {}))
        self.settings.check()
        self.config["training"] = dataclasses.asdict(self.settings)
        self.config.setdefault("sigma_data", 0.5)
        self.process = process_from_config(self.config["process"])
        self.prediction = self.config["prediction"]
        self.data = data
        self.out_dir = Path(out_dir)
        self.rank, self.world = _dist()
        if self.settings.batch_size % (self.world * self.settings.grad_accum):
            raise ValueError(f"batch_size {self.settings.batch_size} must be divisible by processes x grad_accum "
                             f"({self.world} x {self.settings.grad_accum})")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())  # set from LOCAL_RANK under torchrun
        self.progress = progress and self.rank == 0
        torch.manual_seed(self.settings.seed)
        self.model = build_net(self.config["network"]).to(self.device)
        ncfg = self.config["network"]
        if data.images.shape[1] != ncfg.get("in_channels", 1):
            raise ValueError(f"the data has {data.images.shape[1]} channel(s) but the network's in_channels is "
                             f"{ncfg.get('in_channels', 1)}; set network.in_channels to {data.images.shape[1]}")
        self.ema = make_ema(self.model)
        s = self.settings
        self.optimizer = _adamw(self.model.parameters(), lr=s.lr, betas=tuple(s.adam_betas),
                                weight_decay=s.weight_decay)
        self.ddp = None
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.step = 0
        self._perm_cache: tuple[int, Tensor] | None = None
        self.losses: list[float] = []

    # ----------------------------------------------------------------- state
    def resume(self, checkpoint: str | os.PathLike | None = None) -> int:
        """Load model, EMA, optimizer and step from ``checkpoint`` (default: the newest in ``out_dir``)."""
        folder = Path(checkpoint) if checkpoint else latest_checkpoint(self.out_dir)
        if folder is None:
            raise FileNotFoundError(f"--resume: no checkpoint found under {self.out_dir / 'checkpoints'}")
        cfg = read_config(folder)
        for key in ("network", "process", "prediction"):
            if cfg[key] != self.config[key]:
                raise ValueError(f"--resume: the checkpoint's {key} differs from this run's config; "
                                 f"resume with the config stored in {folder / 'config.json'}")
        self.model.load_state_dict(load_tensors(folder / "model.safetensors"))
        self.ema.load_state_dict(load_tensors(folder / "ema.safetensors"))
        load_optimizer_state(self.optimizer, load_tensors(folder / "optimizer.safetensors"),
                             json.loads((folder / "optimizer.json").read_text()))
        for group in self.optimizer.param_groups:  # settings may have changed (e.g. more steps)
            group["weight_decay"] = self.settings.weight_decay
        torch.set_rng_state(load_tensors(folder / "rng.safetensors")["torch"])
        self.step = int(cfg["step"])
        self._trim_log()
        return self.step

    def _trim_log(self) -> None:
        """Drop log records written after the checkpoint we resume from (they will be redone)."""
        log = self.out_dir / "log.jsonl"
        if self.rank != 0 or not log.exists():
            return
        lines = log.read_text().splitlines()
        keep = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= self.step]
        if len(keep) != len(lines):
            from .._io import atomic_write_text
            atomic_write_text(log, "".join(line + "\n" for line in keep))

    def save(self) -> Path:
        """Write the checkpoint of the current step (a no-op if it already exists)."""
        existing = self.out_dir / "checkpoints" / f"step-{self.step:08d}"
        if existing.is_dir():
            return existing
        return save_checkpoint(self.out_dir, self.step, self._checkpoint_config(), self.model, self.ema,
                               self.optimizer, keep=self.settings.keep_checkpoints)

    def _checkpoint_config(self) -> dict[str, Any]:
        cfg = dict(self.config)
        cfg["images_seen"] = self.step * self.settings.batch_size
        cfg["data"] = {**cfg.get("data", {}), "channels": int(self.data.images.shape[1]),
                       "resolution": int(self.data.images.shape[-1])}
        return cfg

    # ----------------------------------------------------------------- batches
    def _indices(self, step: int) -> Tensor:
        """Dataset indices of the global batch at ``step``: a fresh permutation per epoch."""
        n, b = len(self.data), self.settings.batch_size
        pos = torch.arange(step * b, (step + 1) * b)
        epochs, offsets = pos // n, pos % n
        out = torch.empty(b, dtype=torch.long)
        for e in epochs.unique().tolist():
            if self._perm_cache is None or self._perm_cache[0] != e:
                g = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + 7919 * e + 17)
                self._perm_cache = (e, torch.randperm(n, generator=g))
            mask = epochs == e
            out[mask] = self._perm_cache[1][offsets[mask]]
        return out

    def batch(self, step: int) -> dict[str, Tensor]:
        """The global batch of ``step`` (images in [-1, 1], times, noise, labels), identical on every rank."""
        s = self.settings
        g = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
        idx = self._indices(step)
        x0 = to_model_range(self.data.images[idx])
        if s.hflip:
            flip = torch.rand(len(idx), generator=g) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        t = TIME_SAMPLERS[s.time_sampling](self.process, len(idx), g, p_mean=s.p_mean, p_std=s.p_std)
        eps = torch.randn(x0.shape, generator=g)
        out = {"x0": x0, "t": t, "eps": eps}
        if s.use_labels and self.data.labels is not None:
            out["labels"] = self.data.labels[idx]
        return out

    # ----------------------------------------------------------------- step
    def _autocast(self):
        p = self.settings.precision
        use = p == "bf16" or (p == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported())
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use)

    def lr_at(self, step: int) -> float:
        s = self.settings
        return s.lr * min(1.0, (step + 1) / s.warmup_steps) if s.warmup_steps > 0 else s.lr

    def accumulate_gradients(self) -> float:
        """Forward and backward on this rank's share of the current step's batch (micro-batched for
        ``grad_accum``; DDP averages the gradients across ranks); returns the global mean loss."""
        s = self.settings
        batch = self.batch(self.step)
        per_rank = s.batch_size // self.world
        lo = self.rank * per_rank
        torch.manual_seed(s.seed * 1_000_003 + self.step * 101 + self.rank)  # dropout
        net = self.ddp or self.model
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        micro = per_rank // s.grad_accum
        total = torch.zeros((), dtype=torch.float64)
        for k in range(s.grad_accum):
            sl = slice(lo + k * micro, lo + (k + 1) * micro)
            x0, t, eps = (batch[key][sl].to(self.device) for key in ("x0", "t", "eps"))
            cond = {"class_labels": batch["labels"][sl].to(self.device)} if "labels" in batch else None
            sync = self.ddp is None or k == s.grad_accum - 1
            ctx = net.no_sync() if not sync else _null()
            with ctx, self._autocast():
                loss = diffusion_loss(net, self.prediction, self.process, x0, t.to(self.device), eps,
                                      weighting=s.weighting, cond=cond, sigma_data=self.config["sigma_data"],
                                      gamma=s.min_snr_gamma).mean()
            (loss / s.grad_accum).backward()
            total += loss.detach().double().cpu() / s.grad_accum
        if self.world > 1:
            dist.all_reduce(total)
            total /= self.world
        return float(total)

    def train_step(self) -> float:
        """One optimiser step on the global batch; returns the global mean loss."""
        s = self.settings
        value = self.accumulate_gradients()
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            last = latest_checkpoint(self.out_dir)
            kept = f"the last good checkpoint {last} is kept" if last else "no checkpoint had been written yet"
            raise TrainingDiverged(f"the loss became {value} at step {self.step}; training stopped and {kept}. "
                                   f"Lower training.lr, set training.grad_clip, or use precision fp32, then --resume.")
        if s.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        update_ema(self.ema, self.model, ema_decay(s.batch_size, self.step * s.batch_size,
                                                   s.ema_half_life_images, s.ema_rampup))
        return value

    # ----------------------------------------------------------------- loop
    def fit(self, steps: int | None = None) -> list[float]:
        """Train until ``steps`` (default ``settings.steps``) total steps; returns this call's losses."""
        s = self.settings
        end = s.steps if steps is None else steps
        losses: list[float] = []
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=end, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        last_ckpt, t_log, n_log, window = time.monotonic(), time.monotonic(), 0, []
        while self.step < end:
            loss = self.train_step()
            losses.append(loss)
            self.losses.append(loss)
            window.append(loss)
            n_log += s.batch_size
            if bar is not None:
                bar.update(1)
            if self.step % s.log_every == 0 or self.step == end:
                now = time.monotonic()
                ips = n_log / max(now - t_log, 1e-9)
                mean = sum(window) / len(window)
                if bar is not None:
                    bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{ips:.0f}")
                if self.rank == 0:
                    self._log({"step": self.step, "loss": mean, "images_per_s": ips, "lr": self.lr_at(self.step - 1),
                               "time": time.time()})
                t_log, n_log, window = now, 0, []
            due = (s.checkpoint_every_steps and self.step % s.checkpoint_every_steps == 0) or \
                  (s.checkpoint_every_seconds and time.monotonic() - last_ckpt >= s.checkpoint_every_seconds)
            if self.world > 1 and s.checkpoint_every_seconds and not s.checkpoint_every_steps:
                flag = torch.tensor([1.0 if due else 0.0])
                dist.broadcast(flag, 0)
                due = bool(flag.item())
            if due or self.step == end:
                if self.rank == 0:
                    self.save()
                last_ckpt = time.monotonic()
            if s.sample_every_steps and self.step % s.sample_every_steps == 0 and self.rank == 0:
                self.sample_grid()
        if bar is not None:
            bar.close()
        return losses

    def _log(self, record: dict[str, Any]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    @torch.no_grad()
    def sample_grid(self, n: int = 64) -> Path:
        """Sample ``n`` images from the EMA model (DPM-Solver++(2M), ``sample_nfe`` steps) into ``samples/``."""
        from ..api import generate
        from ..denoisers import Denoiser
        from ..imagegrid import save_image_grid

        c, r = int(self.data.images.shape[1]), int(self.data.images.shape[-1])
        den = Denoiser(self.ema, self.process, self.prediction, self.config["sigma_data"])
        x = generate(den, (c, r, r), range(n), "dpm++2m", self.settings.sample_nfe, device=self.device)
        return save_image_grid(x, self.out_dir / "samples" / f"step-{self.step:08d}.png")


def _adamw(params, **kw) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019) with the fused kernel where PyTorch has one (CPU and CUDA), else foreach."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, foreach=True, **kw)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
