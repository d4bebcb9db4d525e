"""The noise-level estimator of Denoising MCMC: training, saving and loading (Kim & Ye 2022, sec. 3.2).

A :class:`~.posterior.LevelClassifier` is trained by cross-entropy to tell which of ``L`` noise levels an
image ``x_{t_l} = alpha(t_l) x0 + sigma(t_l) eps`` was noised to, with ``x0`` from the training data and ``l``
drawn from the levels' prior: at the optimum its softmax is the Gibbs conditional ``pi(l | x)``.  A small
dedicated trainer (Adam, cosine learning-rate decay); every step's randomness comes from ``(seed, step)``, and a
resume file written atomically every ``every`` steps makes an interrupted run continue exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .._io import atomic_dir, atomic_path
from .levels import NoiseLevels
from .posterior import LevelClassifier, NetworkLevelPosterior

__all__ = ["train_level_classifier", "save_estimator", "load_estimator", "level_batch"]

CONFIG_FILE, WEIGHTS_FILE, FORMAT = "estimator.json", "estimator.safetensors", "fewstep-level-estimator"


def level_batch(process, images: Tensor, levels: NoiseLevels, gen: torch.Generator, batch_size: int
                ) -> tuple[Tensor, Tensor]:
    """A training batch: noised images ``(B, C, H, W)`` and their level indices ``(B,)``, drawn from ``gen``
    (images in ``[-1, 1]``; levels from the prior)."""
    idx = torch.randint(len(images), (batch_size,), generator=gen)
    lvl = torch.multinomial(levels.log_prior.exp(), batch_size, replacement=True, generator=gen)
    t = levels.times[lvl]
    a = torch.as_tensor(process.alpha(t), dtype=torch.float32).reshape(-1, 1, 1, 1)
    s = torch.as_tensor(process.sigma(t), dtype=torch.float32).reshape(-1, 1, 1, 1)
    x0 = images[idx].float()
    return a * x0 + s * torch.randn(x0.shape, generator=gen), lvl


def train_level_classifier(process, images: Tensor, levels: NoiseLevels, *, steps: int = 3000,
                           batch_size: int = 128, lr: float = 2e-3, width: int = 16, seed: int = 0,
                           resume_file: str | Path | None = None, every: int = 250,
                           progress: bool = True) -> tuple[LevelClassifier, dict]:
    """Train a level classifier on ``images`` (float ``[-1, 1]``, ``(N, C, H, W)``); returns it and a log
    (``loss`` and ``accuracy`` of the last 100 steps, ``seconds``)."""
    from tqdm.auto import tqdm

    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError("training the noise-level estimator needs steps >= 1, batch_size >= 1 and lr > 0")
    torch.manual_seed(seed)
    net = LevelClassifier(images.shape[1], len(levels), width)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    start, hist, seconds = 0, [], 0.0
    resume = Path(resume_file) if resume_file else None
    if resume is not None and resume.is_file():
        state = torch.load(resume, weights_only=True)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        start, seconds = int(state["step"]), float(state["seconds"])
        hist = [tuple(h) for h in state["hist"].tolist()]
    t0 = time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="noise-level estimator", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        x, lvl = level_batch(process, images, levels, gen, batch_size)
        logits = net(x)
        loss = F.cross_entropy(logits, lvl)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist = (hist + [(loss.item(), (logits.argmax(1) == lvl).float().mean().item())])[-100:]
        if resume is not None and ((step + 1) % every == 0 or step + 1 == steps):
            with atomic_path(resume) as tmp:
                torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                            "seconds": seconds + time.time() - t0, "hist": torch.tensor(hist)}, tmp)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(h[0] for h in hist) / len(hist):.3f}")
    net.eval()
    log = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
           "loss": sum(h[0] for h in hist) / max(1, len(hist)),
           "accuracy": sum(h[1] for h in hist) / max(1, len(hist)), "seconds": seconds + time.time() - t0}
    return net, log


def save_estimator(path: str | Path, net: LevelClassifier, levels: NoiseLevels, info: dict) -> Path:
    """Write ``estimator.json`` + ``estimator.safetensors`` into a new folder, atomically."""
    from safetensors.torch import save_file

    with atomic_dir(path) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp / WEIGHTS_FILE))
        cfg = {"format": FORMAT, "channels": net.body[0].in_channels, "width": net.body[0].out_channels,
               "levels": levels.to_dict(), **info}
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    return Path(path)


def load_estimator(path: str | Path) -> NetworkLevelPosterior:
    """A saved estimator as a level posterior (:class:`~.posterior.NetworkLevelPosterior`); ``.info`` holds its
    config."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a noise-level estimator folder (no {CONFIG_FILE} / {WEIGHTS_FILE}); "
                                f"train one with fewstep dmcmc train-estimator")
    cfg = json.loads((path / CONFIG_FILE).read_text())
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{path / CONFIG_FILE} is not a noise-level estimator (format {FORMAT!r} expected)")
    levels = NoiseLevels.from_dict(cfg["levels"])
    net = LevelClassifier(int(cfg["channels"]), len(levels), int(cfg["width"]))
    net.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    net.eval()
    post = NetworkLevelPosterior(net, levels)
    post.info = cfg
    return post
