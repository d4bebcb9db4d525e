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
        os.replace(f, out / f.name)
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
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()  # no "install accelerate" / scheduler notices in the tables

    unet = UNet2DModel.from_pretrained(str(model), use_safetensors=True).eval()
    return unet, json.loads((model / "scheduler_config.json").read_text())


def seeded_noise(seeds, shape) -> torch.Tensor:
    """x_T per sample from its own seed: the same seed gives the same draw in any batch (fewstep.generate's rule)."""
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def diffusers_loop(unet, scheduler, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """The plain diffusers sampling loop over ``scheduler.timesteps`` (as in DDIMPipeline); one network call
    per entry of ``scheduler.timesteps``.  Only deterministic (ODE) schedulers are used here."""
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


# ----------------------------------------------------------------------------- judge classifier

class DigitsNet(nn.Module):
    """conv3x3(16)-conv3x3(16)-pool-conv3x3(32)-conv3x3(32)-pool-fc(64)-fc(10) on (B, 1, 16, 16) in [-1, 1].

    Features for the Frechet distance: the 64-d penultimate pre-activations, standardised with the train
    split's mean and std (buffers saved with the weights), as fewstep's Fashion-MNIST classifier does.
    """

    def __init__(self, width: int = 16, features: int = 64, classes: int = 10):
        super().__init__()
        w = width
        self.convs = nn.ModuleList([nn.Conv2d(1, w, 3, padding=1), nn.Conv2d(w, w, 3, padding=1),
                                    nn.Conv2d(w, 2 * w, 3, padding=1), nn.Conv2d(2 * w, 2 * w, 3, padding=1)])
        self.fc = nn.Linear(2 * w * (RES // 4) ** 2, features)
        self.head = nn.Linear(features, classes)
        self.register_buffer("feature_mean", torch.zeros(features))
        self.register_buffer("feature_scale", torch.ones(features))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i % 2 == 1:
                x = F.max_pool2d(x, 2)
        return self.fc(x.flatten(1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return (self.hidden(x) - self.feature_mean) / self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.dropout(F.relu(self.hidden(x)), 0.25, self.training))


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random +-1 pixel shifts (half a pixel of the 8x8 originals), background -1 filled in."""
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
    return torch.roll(F.pad(x, (1, 1, 1, 1), value=-1.0), (dy, dx), (2, 3))[:, :, 1:RES + 1, 1:RES + 1]


@torch.no_grad()
def _accuracy(net: DigitsNet, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    return float((net(x).argmax(1) == y).float().mean())


def train_classifier(out: Path, data: Path, epochs: int, lr: float, seed: int) -> None:
    from safetensors.torch import save_file

    from fewstep.metrics.features import sha256_file

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    xtr, ytr = load_split("train", data)
    xte, yte = load_split("test", data)
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    per_epoch = len(xtr) // 128
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * per_epoch)
    t0 = time.time()
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(per_epoch):
            idx = perm[i * 128:(i + 1) * 128]
            loss = F.cross_entropy(net(_shift(xtr[idx], g)), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            print(f"epoch {epoch + 1}: loss {loss.item():.3f}, test accuracy {_accuracy(net, xte, yte):.4f}, "
                  f"{time.time() - t0:.0f}s", flush=True)
    acc, train_acc = _accuracy(net, xte, yte), _accuracy(net, xtr, ytr)
    with torch.no_grad():
        h = net.hidden(xtr).double()
    net.feature_mean.copy_(h.mean(0))
    net.feature_scale.copy_(h.std(0).clamp(min=1e-6))
    weights, meta_path = out.with_suffix(".safetensors"), out.with_suffix(".json")
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(f".{weights.name}.tmp")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    os.replace(tmp, weights)
    meta = {"name": "digits16-classifier-v1", "arch": {"width": 16, "features": 64, "classes": 10},
            "test_accuracy": round(acc, 4), "train_accuracy": round(train_acc, 4),
            "train_set": f"{TRAIN_NPZ} (1500)", "test_set": f"{TEST_NPZ} ({N_TEST})",
            "recipe": {"optimizer": "Adam + OneCycle", "lr": lr, "batch": 128, "epochs": epochs,
                       "augmentation": "+-1 px shifts", "seed": seed},
            "input": "(B, 1, 16, 16) in [-1, 1]",
            "features": "64-d penultimate pre-activations, standardised with the train split's mean and std",
            "sha256": sha256_file(weights), "train_seconds": round(time.time() - t0, 1)}
    _write_json_atomic(meta_path, meta)
    print(f"test accuracy {acc:.4f} (train {train_acc:.4f}); wrote {weights} and {meta_path}")


def load_extractor(path: Path):
    """The judge as a fewstep feature extractor (features: :meth:`DigitsNet.embed`)."""
    from safetensors.torch import load_file

    from fewstep.metrics.features import FeatureExtractor

    meta = json.loads(path.with_suffix(".json").read_text())
    net = DigitsNet(**meta["arch"])
    net.load_state_dict(load_file(str(path.with_suffix(".safetensors"))))
    net.eval()

    class DigitsExtractor(FeatureExtractor):
        channels = (1,)

        def __init__(self):
            super().__init__()
            self.net, self.name, self.num_features = net, meta["name"], meta["arch"]["features"]

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.net.embed(images.float())

        def logits(self, images: torch.Tensor) -> torch.Tensor:
            return self.net(images.float())

    return DigitsExtractor(), meta


# ----------------------------------------------------------------------------- evaluation

def diffusers_rows(cfg: dict) -> list[tuple[str, object]]:
    """``(label, factory)`` for each deterministic diffusers scheduler built from the model's own config,
    plus 'trailing' variants of the common ones when the config does not already use trailing spacing."""
    import diffusers as d

    def make(cls, **over):
        return lambda: cls.from_config({**cfg, **over})

    rows = [("DDIM", make(d.DDIMScheduler)),
            ("DPM++2M", make(d.DPMSolverMultistepScheduler)),
            ("DPM++3M", make(d.DPMSolverMultistepScheduler, solver_order=3)),
            ("DPM++2S (singlestep)", make(d.DPMSolverSinglestepScheduler)),
            ("UniPC (bh2, order 2)", make(d.UniPCMultistepScheduler)),
            ("DEIS", make(d.DEISMultistepScheduler)),
            ("Euler", make(d.EulerDiscreteScheduler)),
            ("Heun", make(d.HeunDiscreteScheduler)),
            ("LMS", make(d.LMSDiscreteScheduler)),
            ("PNDM (PLMS)", make(d.PNDMScheduler, skip_prk_steps=True))]
    if cfg.get("timestep_spacing", "leading") != "trailing":
        rows += [(f"{name} [trailing]", make(cls, timestep_spacing="trailing"))
                 for name, cls in (("DDIM", d.DDIMScheduler), ("DPM++2M", d.DPMSolverMultistepScheduler),
                                   ("UniPC (bh2, order 2)", d.UniPCMultistepScheduler),
                                   ("Euler", d.EulerDiscreteScheduler))]
    return rows


def steps_for_nfe(factory, nfe: int) -> tuple[int, int]:
    """The most inference steps whose loop makes at most ``nfe`` network calls: ``(steps, calls)``."""
    for steps in range(nfe, 0, -1):
        s = factory()
        s.set_timesteps(steps)
        if len(s.timesteps) <= nfe:
            return steps, len(s.timesteps)
    raise ValueError(f"no step count fits in {nfe} network calls")


class MaxAbs:
    """A sample function wrapper that records the largest |value| of the raw (unclamped) samples."""

    def __init__(self, fn):
        self.fn, self.max_abs = fn, 0.0

    def __call__(self, seeds):
        x = self.fn(seeds)
        finite = x[torch.isfinite(x)]
        self.max_abs = max(self.max_abs, float(finite.abs().max()) if finite.numel() else float("nan"))
        if not bool(torch.isfinite(x).all()):
            self.max_abs = float("inf")
        return x


def score(sample_fn, n: int, extractor, refs: dict, batch: int) -> dict:
    """FD of ``n`` samples (seeds 0..n-1) to each reference, max |x|, seconds; errors become a message."""
    from fewstep.metrics.evaluate import sample_stats
    from fewstep.metrics.frechet import frechet_distance

    wrapped = MaxAbs(sample_fn)
    t0 = time.time()
    try:
        run = sample_stats(wrapped, n, extractor, seed=0, batch_size=batch, progress=False)
    except Exception as err:  # a failing sampler is a table cell, not a crash
        msg = f"{type(err).__name__}: {err}".replace("|", "/").replace("\n", " ")
        return {"error": msg[:160], "max_abs": wrapped.max_abs, "seconds": round(time.time() - t0, 1)}
    out = {name: frechet_distance(run.stats.mu, run.stats.sigma, r.mu, r.sigma) for name, r in refs.items()}
    return {**out, "max_abs": wrapped.max_abs, "seconds": round(time.time() - t0, 1)}


def evaluate_model(model: Path, nfes: list[int], n: int, classifier: Path, data: Path, batch: int,
                   results: Path | None, only: str | None, plans: Path | None = None, converged: int = 100) -> None:
    import diffusers

    import fewstep
    from fewstep.metrics.evaluate import images_stats
    from fewstep.metrics.features import sha256_file
    from fewstep.metrics.frechet import frechet_distance

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    extractor, meta = load_extractor(classifier)
    xtr, _ = load_split("train", data)
    xte, _ = load_split("test", data)
    refs = {"test": images_stats(extractor, xte, progress=False), "train": images_stats(extractor, xtr, progress=False)}
    unet, cfg = load_unet(model)
    shape = (unet.config.in_channels, RES, RES)
    print(f"model {model}: {cfg.get('beta_schedule')}, {cfg.get('prediction_type')}, "
          f"spacing {cfg.get('timestep_spacing')}, zero-SNR rescale {cfg.get('rescale_betas_zero_snr', False)}; "
          f"judge {meta['name']} (test accuracy {meta['test_accuracy']}); n = {n}, seeds 0..{n - 1}")
    # Floors: what real images score (finite-n bias of a 64-d Frechet distance included).
    g = torch.Generator().manual_seed(0)
    sub = xtr[torch.randperm(len(xtr), generator=g)[:min(n, len(xtr))]]
    s_sub = images_stats(extractor, sub, progress=False)
    print(f"floors: FD(train split, test split) = {frechet_distance(refs['train'].mu, refs['train'].sigma, refs['test'].mu, refs['test'].sigma):.3f}; "
          f"FD({len(sub)} train images, test split) = {frechet_distance(s_sub.mu, s_sub.sigma, refs['test'].mu, refs['test'].sigma):.3f}")

    # Diffusers rows are deterministic given the weights, judge, diffusers version and seeds: cached.
    # fewstep rows are always recomputed (the code under test changes).
    key_base = {"weights": sha256_file(model / "diffusion_pytorch_model.safetensors")[:16],
                "scheduler": cfg, "judge": meta["sha256"][:16], "diffusers": diffusers.__version__, "n": n}
    cache: dict = {}
    if results is not None and results.exists():
        saved = json.loads(results.read_text())
        if saved.get("key") == key_base:
            cache = saved.get("diffusers", {})
    table: dict[str, dict[int, dict]] = {}
    if converged:  # what the model gives when the sampler error is small: the yardstick for the few-step rows
        ck = f"converged|DDIM|{converged}"
        if ck not in cache:
            ddim = diffusers_rows(cfg)[0][1]
            fn = (lambda seeds: diffusers_loop(unet, ddim(), seeded_noise(seeds, shape), converged))
            cache[ck] = {**score(fn, n, extractor, refs, batch), "nfe_used": converged, "steps": converged}
            if results is not None:
                results.parent.mkdir(parents=True, exist_ok=True)
                _write_json_atomic(results, {"key": key_base, "diffusers": cache})
        print(f"converged: diffusers DDIM, {converged} steps, own config: {_cell(cache[ck])} "
              f"(max |x| {_fmt(cache[ck].get('max_abs'))})", flush=True)
    for nfe in nfes:
        for label, factory in diffusers_rows(cfg):
            name = f"diffusers {label}"
            if only and only not in name:
                continue
            ck = f"{label}|{nfe}"
            if ck not in cache:
                try:
                    steps, calls = steps_for_nfe(factory, nfe)
                    fn = (lambda seeds, f=factory, st=steps: diffusers_loop(unet, f(), seeded_noise(seeds, shape), st))
                    cache[ck] = {**score(fn, n, extractor, refs, batch), "nfe_used": calls, "steps": steps}
                except Exception as err:
                    cache[ck] = {"error": f"{type(err).__name__}: {err}"[:160]}
                if results is not None:
                    results.parent.mkdir(parents=True, exist_ok=True)
                    _write_json_atomic(results, {"key": key_base, "diffusers": cache})
            table.setdefault(name, {})[nfe] = cache[ck]
            print(f"  nfe {nfe:>2} {name}: {_cell(cache[ck])}", flush=True)
        den = None
        try:
            den = fewstep.load_model(model)
        except Exception as err:
            load_err = f"{type(err).__name__}: {err}"[:160]
        rows = [(f"default ({fewstep.solvers.DEFAULT_SOLVER}, default grid)", fewstep.solvers.DEFAULT_SOLVER, None)]
        rows += [(name, name, None) for name in ("dpm++2m", "unipc", "dpm++3m") if name != fewstep.solvers.DEFAULT_SOLVER]
        if plans is not None:  # `fewstep tune`'s plans (tuned on other seeds than these), where they hold this NFE
            from fewstep.grids.files import read_grid_file

            rows += [(f"tuned plan ({e.solver})", e.solver, str(plans)) for e in read_grid_file(plans).entries
                     if e.nfe == nfe]
        for label, solver, grid in rows:
            name = f"fewstep {label}"
            if only and only not in name:
                continue
            if den is None:
                res = {"error": load_err}
            else:
                fn = (lambda seeds, s=solver, g=grid: fewstep.generate(den, shape, seeds, solver=s, nfe=nfe, grid=g))
                res = {**score(fn, n, extractor, refs, batch), "nfe_used": nfe}
            table.setdefault(name, {})[nfe] = res
            print(f"  nfe {nfe:>2} {name}: {_cell(res)}", flush=True)
    print()
    print(f"Frechet distance in the judge's feature space, to the test split / to the train split "
          f"(n = {n}; lower is better; [k NFE]: the scheduler cannot spend exactly the budget):\n")
    print("| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |")
    print("|---|" + "---|" * len(nfes))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(_cell(row.get(k, {}), want=k) for k in nfes) + " |")
    print("\nmax |x| of the raw samples (data lie in [-1, 1]):\n")
    print("| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |")
    print("|---|" + "---|" * len(nfes))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(_fmt(row.get(k, {}).get("max_abs")) for k in nfes) + " |")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def _cell(res: dict, want: int | None = None) -> str:
    if not res:
        return "-"
    if "error" in res:
        return f"error: {res['error']}"
    used = res.get("nfe_used")
    note = f" [{used} NFE]" if want is not None and used is not None and used != want else ""
    return f"{res['test']:.2f} / {res['train']:.2f}{note}"


def _features(sample_fn, seeds: list[int], extractor, batch: int) -> torch.Tensor:
    """Per-sample features, the images quantized to 8 bits as in every FD of this benchmark (``sample_stats``)."""
    from fewstep.metrics.evaluate import quantize

    out = []
    for i in range(0, len(seeds), batch):
        with torch.no_grad():
            out.append(extractor(quantize(sample_fn(seeds[i:i + batch]).float())).double())
    return torch.cat(out)


def _sampler(spec: str, unet, cfg: dict, den, shape, nfe: int):
    """``fewstep:SOLVER`` (the default grid and start), ``fewstep:SOLVER@teleport=T[,grid=G]`` (a teleported
    start at ``T``, optionally on the named grid ``G``; ``nfe=N`` overrides the budget, e.g. a converged
    reference), or ``diffusers:LABEL`` (a row of :func:`diffusers_rows`)."""
    import fewstep
    from fewstep.plan import make_plan

    kind, _, name = spec.partition(":")
    if kind == "fewstep":
        name, _, extra = name.partition("@")
        kw: dict = {}
        for item in filter(None, extra.split(",")):
            key, _, value = item.partition("=")
            if key not in ("teleport", "grid", "nfe"):
                raise SystemExit(f"{spec}: after @ write teleport=T, grid=NAME and/or nfe=N, not {key!r}")
            kw[key] = float(value) if key == "teleport" else int(value) if key == "nfe" else value
        plan = make_plan(den, name, kw.pop("nfe", nfe), **kw)
        return lambda seeds: fewstep.generate(den, shape, seeds, plan)
    if kind == "diffusers":
        factory = dict(diffusers_rows(cfg))[name]
        steps, calls = steps_for_nfe(factory, nfe)
        if calls != nfe:
            raise SystemExit(f"{spec} cannot spend exactly {nfe} NFE ({calls})")
        return lambda seeds: diffusers_loop(unet, factory(), seeded_noise(seeds, shape), steps)
    raise SystemExit(f"sampler {spec!r}: write fewstep:SOLVER or diffusers:LABEL")


def paired(model: Path, nfes: list[int], a: str, b: str, n: int, seed: int, boot: int, classifier: Path, data: Path,
           batch: int) -> None:
    """FD(a) - FD(b) to the test split on the same seeds, with a paired bootstrap 95% interval
    (:func:`fewstep.metrics.frechet.paired_fd_difference`): the interval is of the difference, not of each FD."""
    import fewstep
    from fewstep.metrics.frechet import frechet_distance_to_moments as fd, paired_fd_difference

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    extractor, _ = load_extractor(classifier)
    xte, _ = load_split("test", data)
    with torch.no_grad():
        ref = extractor(xte).double()
    mu_r, cov_r = ref.mean(0), torch.cov(ref.T)
    unet, cfg = load_unet(model)
    den = fewstep.load_model(model)
    shape = (unet.config.in_channels, RES, RES)
    seeds = list(range(seed, seed + n))
    print(f"model {model}; seeds {seed}..{seed + n - 1}; FD to the test split; {boot} paired bootstrap resamples")
    print("| NFE | " + a + " | " + b + " | difference [95% interval] |\n|---:|---:|---:|---:|")
    for nfe in nfes:
        fa = _features(_sampler(a, unet, cfg, den, shape, nfe), seeds, extractor, batch)
        fb = _features(_sampler(b, unet, cfg, den, shape, nfe), seeds, extractor, batch)
        diff, lo, hi = paired_fd_difference(fa, fb, mu_r, cov_r, resamples=boot)
        print(f"| {nfe} | {fd(fa, mu_r, cov_r):.3f} | {fd(fb, mu_r, cov_r):.3f} | {diff:+.3f} [{lo:+.3f}, {hi:+.3f}] |",
              flush=True)


def teleport_plans(model: Path, entries: list[str], solver: str, rule: str, evidence: str, replace: bool) -> None:
    """Write teleported starts into ``MODEL/plans.json``: each ``NFE:T[:GRID]`` an entry of ``solver`` at ``NFE``
    from teleport time ``T`` on the named grid (default the process's), replacing any entry of that (solver, NFE)
    and keeping the others (all of them dropped with ``replace``).

    ``fewstep tune`` judges candidates by their error to the network's own ODE solution from its start; a teleported
    start follows another ODE above ``T`` (the data Gaussian's) and a better-placed prior, so that yardstick cannot
    say whether it is better.  These entries are chosen by ``rule`` and shipped on Frechet distance instead
    (``paired`` on fresh seeds, recorded in ``evidence``)."""
    import fewstep
    from fewstep.grids import make_grid
    from fewstep.grids.files import GridEntry, read_grid_file, write_grid_file

    den = fewstep.load_model(model)
    path = model / "plans.json"
    old = read_grid_file(path).entries if path.exists() and not replace else []
    new = []
    for item in entries:
        nfe_s, t_s, *grid = item.split(":")
        nfe, t = int(nfe_s), float(t_s)
        steps, _ = fewstep.solvers.get(solver).steps_for(nfe)
        times = make_grid(den.process, steps, grid[0] if grid else None, t_max=t).tolist()
        new.append(GridEntry(solver, nfe, steps, times, "teleport", None, None,
                             {"candidate": f"teleport {t:g}, {grid[0] if grid else den.process.default_grid} grid",
                              "chosen_by": rule, "shipped_by": "Frechet distance on fresh seeds", "evidence": evidence},
                             None, t))
    keep = [e for e in old if (e.solver, e.nfe) not in {(n.solver, n.nfe) for n in new}]
    head = json.loads(path.read_text()).get("provenance", {}) if path.exists() and not replace else {}
    head["teleport_plans"] = f"{solver} at {', '.join(e.split(':')[0] for e in entries)} NFE: {rule}"
    write_grid_file(path, den.process, keep + new, head)
    for e in new:
        print(f"{path}: {e.solver} {e.nfe} NFE, teleport {e.teleport:g} ({e.provenance['candidate']})")


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
    p = sub.add_parser("classifier", help="train the judge CNN on the train split (safetensors + json)")
    p.add_argument("--out", type=Path, default=MODELS / "digits_classifier")
    p.add_argument("--data", type=Path, default=MODELS)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("eval", help="diffusers schedulers vs fewstep samplers at few NFE")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--nfe", default="5,6,8,10")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--classifier", type=Path, default=MODELS / "digits_classifier")
    p.add_argument("--data", type=Path, default=MODELS)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--results", type=Path, default=None,
                   help="JSON cache of the diffusers rows (default benchmarks/results/digits_diffusers/<model>-n<N>.json)")
    p.add_argument("--only", default=None, help="only rows whose name contains this text (e.g. fewstep)")
    p.add_argument("--plans", type=Path, default=None, help="a plan file of `fewstep tune` for this model: adds its "
                   "plans as rows (the model folder needs the gaussian.safetensors tune wrote, for teleported starts)")
    p.add_argument("--converged", type=int, default=100,
                   help="also score diffusers DDIM at this many steps (own config), the near-converged yardstick; 0: off")
    p = sub.add_parser("paired", help="FD(a) - FD(b) on the same seeds with a paired bootstrap interval")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--nfe", default="5,6,8,10")
    p.add_argument("--a", required=True, help="fewstep:SOLVER (default grid and start), "
                   "fewstep:SOLVER@teleport=T[,grid=G][,nfe=N] or diffusers:LABEL")
    p.add_argument("--b", required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--boot", type=int, default=300)
    p.add_argument("--classifier", type=Path, default=MODELS / "digits_classifier")
    p.add_argument("--data", type=Path, default=MODELS)
    p.add_argument("--batch", type=int, default=250)
    p = sub.add_parser("teleport-plans", help="write teleported starts into MODEL/plans.json (judged by paired FD "
                       "on fresh seeds)")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--entry", action="append", required=True, help="NFE:T[:GRID], repeatable")
    p.add_argument("--solver", default="unipc")
    p.add_argument("--rule", required=True, help="how the teleport times were chosen (recorded)")
    p.add_argument("--evidence", required=True, help="where the paired FD comparison is recorded")
    p.add_argument("--replace", action="store_true", help="drop the file's other entries")
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
    elif args.cmd == "classifier":
        train_classifier(args.out, args.data, args.epochs, args.lr, args.seed)
    elif args.cmd == "eval":
        results = args.results or HERE / "results" / "digits_diffusers" / f"{args.model.name}-n{args.n}.json"
        evaluate_model(args.model, [int(v) for v in args.nfe.split(",")], args.n, args.classifier, args.data,
                       args.batch, results, args.only, args.plans, args.converged)
    elif args.cmd == "paired":
        paired(args.model, [int(v) for v in args.nfe.split(",")], args.a, args.b, args.n, args.seed, args.boot,
               args.classifier, args.data, args.batch)
    elif args.cmd == "teleport-plans":
        teleport_plans(args.model, args.entry, args.solver, args.rule, args.evidence, args.replace)
    elif args.cmd == "preview":
        preview(args.model, args.out, args.steps, args.n)


if __name__ == "__main__":
    main()
