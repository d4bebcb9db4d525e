"""The training loop shared by every objective: AdamW with warm-up, EMA, clipping, accumulation,
bf16 autocast, DDP, atomic checkpoints, logging.

What is trained (modules, losses, per-step randomness, preview) is an
:class:`~fewstep.training.objective.Objective`; the default is
:class:`~fewstep.training.denoising.DenoisingObjective`.

Every step's randomness (which images, which times, which noise, flips, dropout) is derived
from ``(seed, step)``, so a run resumed from a checkpoint reproduces the losses of an
uninterrupted run, and ``N`` DDP processes reproduce one process with the summed batch.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..checkpoint import (CheckpointDamaged, latest_checkpoint, list_checkpoints, load_optimizer_state, load_tensors,
                          optimizer_tensors, read_config, read_json, remove_stale_temporaries, state_tensors,
                          write_checkpoint)
from ..data import ImageData
from ..latent import LATENT_FILE, LatentData, encode_data
from ..precision import fast_bf16_here
from . import runlog
from .autoencoder import load_autoencoder
from .denoising import DenoisingObjective
from .ema import ema_decay, make_ema, update_ema
from .objective import Objective, Phase
from .posthoc_ema import gamma_from_sigma_rel, power_beta, save_snapshot
from .settings import TrainSettings, lr_factor, resolve_config

__all__ = ["Trainer", "TrainingDiverged", "init_distributed_from_env"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


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
    """Train ``objective`` (default: the config's ``objective.kind``, ``denoising``) on ``data``.

    ``config`` holds ``training`` (a :class:`TrainSettings` dict), ``objective`` (its kind and
    settings), ``data`` and the sections the objective reads (``network``, ``process``,
    ``prediction``, ``sigma_data`` for denoising); it is checked strictly and saved in every
    checkpoint.
    """

    def __init__(self, config: Mapping[str, Any], data: ImageData, out_dir: str | os.PathLike,
                 device: str | torch.device | None = None, progress: bool = True,
                 objective: type[Objective] | None = None):
        self.config, cls, settings, obj_settings = resolve_config(config, objective)
        self.settings: TrainSettings = settings
        s = settings
        self.progress = progress and _dist()[0] == 0
        self._data_shape = tuple(int(d) for d in data.images.shape[1:])  # of the images, also for a latent model
        self.data = self._latent_data(data, obj_settings) if "latent" in self.config else data
        self.out_dir = Path(out_dir)
        self.rank, self.world = _dist()
        if s.batch_size % (self.world * s.grad_accum):
            raise ValueError(f"batch_size {s.batch_size} must be divisible by processes x grad_accum "
                             f"({self.world} x {s.grad_accum})")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())  # set from LOCAL_RANK under torchrun
        torch.manual_seed(s.seed)
        self.objective: Objective = cls(self.config, obj_settings, self.data)
        self.modules: dict[str, nn.Module] = {k: m.to(self.device) for k, m in self.objective.modules().items()}
        for m in self.objective.frozen().values():
            m.to(self.device).eval().requires_grad_(False)
        self.phases: list[Phase] = self.objective.phases()
        unknown = sorted({m for p in self.phases for m in (p.module, *p.also)} - set(self.modules))
        if unknown:
            raise ValueError(f"{cls.__name__}.phases() names module(s) {', '.join(unknown)} that modules() lacks")
        self.emas: dict[str, nn.Module] = {k: make_ema(self.modules[k]) for k in self.objective.ema_modules()}
        # EDM2's power-function EMA tracks (post-hoc EMA), beside the half-life EMA: {(module, sigma_rel): copy}
        self.posthoc: dict[tuple[str, float], nn.Module] = {
            (k, r): make_ema(self.modules[k]) for k in self.emas for r in s.posthoc_ema_sigma_rels}
        self._posthoc_gamma = {r: gamma_from_sigma_rel(r) for r in s.posthoc_ema_sigma_rels}
        self._also: dict[str, list[str]] = {}  # modules stepped by another module's optimiser (Phase.also)
        for ph in self.phases:
            self._also.setdefault(ph.module, [])
            self._also[ph.module] += [m for m in ph.also if m not in self._also[ph.module]]
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self._opt_options: dict[str, dict[str, Any]] = {}
        for name in dict.fromkeys(p.module for p in self.phases):
            opts = {"lr": s.lr, "betas": tuple(s.adam_betas), "weight_decay": s.weight_decay,
                    **self.objective.optimizer_options(name)}
            self._opt_options[name] = opts
            groups = _param_groups(self.modules[name], self.objective.lr_scales(name))
            groups += [{"params": list(self.modules[m].parameters()), "lr_scale": 1.0} for m in self._also[name]]
            self.optimizers[name] = _adamw(groups, **opts)
        self.ddp: dict[str, nn.Module] = {}
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = {k: nn.parallel.DistributedDataParallel(self.modules[k], device_ids=ids) for k in self.optimizers}
        self.step = 0
        self._resumed: tuple[Path, int] | None = None  # (checkpoint, step) of the last resume
        self._perm_cache: tuple[int, Tensor] | None = None
        self.losses: list[float] = []
        self.loss_history: list[dict[str, float]] = []
        if self.rank == 0:
            for stale in remove_stale_temporaries(self.out_dir):
                warnings.warn(f"removed {stale}, left by a checkpoint write that was cut short", RuntimeWarning,
                              stacklevel=2)

    # ----------------------------------------------------------------- convenience
    @property
    def model(self) -> nn.Module:
        """The module the first phase trains (the denoiser for ``denoising``)."""
        return self.modules[self.phases[0].module]

    @property
    def ema(self) -> nn.Module:
        return self.emas[self.phases[0].module]

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.optimizers[self.phases[0].module]

    # ----------------------------------------------------------------- state
    def resume(self, checkpoint: str | os.PathLike | None = None) -> int:
        """Load every module, EMA, optimizer and the step from ``checkpoint``.

        Without ``checkpoint``, the newest intact checkpoint in ``out_dir``: damaged ones (a file
        truncated or garbage) are skipped with a warning naming them.
        """
        if checkpoint is not None:
            self._load(Path(checkpoint))
            self._resumed = (Path(checkpoint), self.step)
            return self.step
        found = list_checkpoints(self.out_dir)
        if not found:
            raise FileNotFoundError(f"--resume: no checkpoint found under {self.out_dir / 'checkpoints'}")
        problems, damaged = [], []
        for folder in reversed(found):
            try:
                self._load(folder)
            except (CheckpointDamaged, FileNotFoundError) as err:
                problems.append(str(err))
                damaged.append(folder)
                continue
            self._resumed = (folder, self.step)
            for bad, why in zip(damaged, problems):
                aside = self._set_aside(bad)
                warnings.warn(f"--resume: skipped the damaged checkpoint {bad} ({why}); resuming from {folder}"
                              + (f"; the damaged folder is now {aside}" if aside else ""), RuntimeWarning, stacklevel=2)
            return self.step
        raise CheckpointDamaged(f"--resume: no intact checkpoint under {self.out_dir / 'checkpoints'}: "
                                f"{'; '.join(problems)}. Start a new run, or repair one of these files")

    def _set_aside(self, folder: Path) -> Path | None:
        """Rename a damaged checkpoint to ``<name>.damaged[-k]`` (rank 0) so the resumed run can rewrite its step."""
        if self.rank != 0 or not folder.is_dir():
            return None
        aside, k = folder.with_name(folder.name + ".damaged"), 1
        while aside.exists():
            aside, k = folder.with_name(f"{folder.name}.damaged-{k}"), k + 1
        os.rename(folder, aside)
        return aside

    def _load(self, folder: Path) -> None:
        cfg = read_config(folder)
        kind = cfg.get("objective", {}).get("kind", DenoisingObjective.kind) if isinstance(cfg.get("objective"), dict) \
            else DenoisingObjective.kind
        if kind != self.objective.kind:
            raise ValueError(f"--resume: {folder} was trained with objective {kind!r}, this run is "
                             f"{self.objective.kind!r}")
        for key in (*self.objective.identity, "latent"):
            if cfg.get(key) != self.config.get(key):
                raise ValueError(f"--resume: the checkpoint's {key} differs from this run's config; "
                                 f"resume with the config stored in {folder / 'config.json'}")
        step = cfg.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise CheckpointDamaged(f"{folder / 'config.json'} has no valid step ({step!r}); the checkpoint is damaged")
        # Read everything before changing anything, so a damaged file leaves the trainer as it was.
        weights, emas, opts, tracks = {}, {}, {}, {}
        for name in self.modules:
            files = self.objective.checkpoint_files(name)
            weights[name] = (folder / files.weights, load_tensors(folder / files.weights))
            if name in self.emas:
                emas[name] = (folder / files.ema, load_tensors(folder / files.ema))
            for key in [k for k in self.posthoc if k[0] == name]:
                path = folder / _track_file(files.ema, key[1])
                tracks[key] = (path, load_tensors(path))
            if name in self.optimizers:
                stem = folder / files.optimizer
                opts[name] = (stem.with_name(stem.name + ".safetensors"),
                              load_tensors(stem.with_name(stem.name + ".safetensors")),
                              read_json(stem.with_name(stem.name + ".json")))
        for path, state in [*weights.values(), *emas.values(), *tracks.values()]:
            _check_finite(state, path)
        rng = load_tensors(folder / "rng.safetensors").get("torch")
        if rng is None:
            raise CheckpointDamaged(f"{folder / 'rng.safetensors'} lacks the torch RNG state; the checkpoint is damaged")
        try:
            for name, (path, state) in weights.items():
                _load_module(self.modules[name], state, path)
            for name, (path, state) in emas.items():
                _load_module(self.emas[name], state, path)
            for key, (path, state) in tracks.items():
                _load_module(self.posthoc[key], state, path)
            for name, (path, tensors, meta) in opts.items():
                load_optimizer_state(self.optimizers[name], tensors, meta)
                for group in self.optimizers[name].param_groups:  # settings may have changed (e.g. more steps)
                    group["weight_decay"] = self._opt_options[name]["weight_decay"]
            torch.set_rng_state(rng)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointDamaged(f"cannot restore {folder}: {err}") from None
        self.step = step

    def save(self) -> Path:
        """Write the checkpoint of the current step (a no-op if it already exists)."""
        existing = self.out_dir / "checkpoints" / f"step-{self.step:08d}"
        if existing.is_dir():
            return existing
        tensors: dict[str, dict[str, Tensor]] = {}
        jsons: dict[str, Any] = {}
        for name, module in self.modules.items():
            files = self.objective.checkpoint_files(name)
            tensors[files.weights] = state_tensors(module)
            if name in self.emas:
                tensors[files.ema] = state_tensors(self.emas[name])
            for (module, rel), track in self.posthoc.items():
                if module == name:
                    tensors[_track_file(files.ema, rel)] = state_tensors(track)
            if name in self.optimizers:
                tensors[files.optimizer + ".safetensors"], jsons[files.optimizer + ".json"] = \
                    optimizer_tensors(self.optimizers[name])
        if isinstance(self.data, LatentData) and self.data.space is not None:  # the model's decoder travels with it
            tensors[LATENT_FILE] = state_tensors(self.data.space.autoencoder)
        return write_checkpoint(self.out_dir, self.step, self._checkpoint_config(), tensors, jsons,
                                keep=self.settings.keep_checkpoints)

    def save_snapshots(self) -> list[Path]:
        """Write every post-hoc EMA track of the current step under ``out_dir/posthoc-ema`` (EDM2 sec. 3)."""
        out = []
        for (name, rel), track in self.posthoc.items():
            stem = Path(self.objective.checkpoint_files(name).ema).stem
            out.append(save_snapshot(self.out_dir, stem, rel, self.step, state_tensors(track)))
        return out

    def _checkpoint_config(self) -> dict[str, Any]:
        cfg = dict(self.config)
        cfg["images_seen"] = self.step * self.settings.batch_size
        cfg["data"] = {**cfg.get("data", {}), "channels": self._data_shape[0], "resolution": self._data_shape[-1]}
        return cfg

    def _latent_data(self, data: ImageData, obj_settings: Any) -> LatentData:
        """The data encoded by the ``latent`` section's autoencoder (:mod:`fewstep.latent`); the section then
        records the scale and the autoencoder's network (a resumed run must find the same autoencoder)."""
        section = self.config["latent"]
        if getattr(obj_settings, "hflip", False):
            raise ValueError("objective.hflip flips the training tensors, and a latent model's are latents (the latent "
                             "of a flipped image is not the flipped latent); set objective.hflip to false")
        for key in ("teacher", "align_encoder"):
            if getattr(obj_settings, key, ""):
                raise ValueError(f"objective.{key} with a latent section is not supported: it reads images, and this "
                                 f"run trains on latents")
        ae = load_autoencoder(section["autoencoder"])
        if "network" in section and section["network"] != ae.config.to_dict():
            raise ValueError(f"config latent.network differs from the autoencoder now in {section['autoencoder']}; "
                             f"the run was trained in another latent space")
        latent = encode_data(data, ae, section.get("scale"), source=section["autoencoder"], progress=self.progress)
        assert latent.space is not None
        self.config["latent"] = latent.space.describe()
        return latent

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
        """The global batch of ``step`` as the objective draws it, identical on every rank."""
        g = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + step)
        out = self.objective.draw(step, self.data, self._indices(step), g)
        b = self.settings.batch_size
        bad = [k for k, v in out.items() if not isinstance(v, Tensor) or v.ndim == 0 or v.shape[0] != b]
        if bad:
            raise ValueError(f"{type(self.objective).__name__}.draw() returned {', '.join(bad)} without the batch "
                             f"({b}) as first dimension")
        return out

    # ----------------------------------------------------------------- step
    def _autocast(self):
        p = self.settings.precision
        use = p == "bf16" or (p == "auto" and self.device.type == "cuda" and fast_bf16_here(self.device))
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use)

    def lr_at(self, step: int, module: str | None = None) -> float:
        """The learning rate at ``step`` (warm-up and ``lr_schedule``, :func:`lr_factor`) of
        ``module``'s optimizer if named, else of the base rate."""
        base = self._opt_options[module]["lr"] if module else self.settings.lr
        return base * lr_factor(step, self.settings)

    def accumulate_gradients(self, phase: int = 0, batch: dict[str, Tensor] | None = None) -> float:
        """Forward and backward of phase ``phase`` on this rank's share of the current step's batch
        (micro-batched for ``grad_accum``; DDP averages the gradients across ranks); returns the
        global mean loss.  Only the phase's module collects gradients."""
        s = self.settings
        ph = self.phases[phase]
        batch = self.batch(self.step) if batch is None else batch
        per_rank = s.batch_size // self.world
        lo = self.rank * per_rank
        torch.manual_seed(s.seed * 1_000_003 + self.step * 101 + self.rank + 104_729 * phase)  # dropout
        nets = {**self.objective.frozen(), **self.modules, ph.module: self.ddp.get(ph.module, self.modules[ph.module])}
        others = [m for k, m in self.modules.items() if k != ph.module and k not in ph.also]
        saved = [[p.requires_grad for p in m.parameters()] for m in others]
        for m in others:
            m.requires_grad_(False)
        for m in self.modules.values():
            m.train()
        self.optimizers[ph.module].zero_grad(set_to_none=True)
        micro = per_rank // s.grad_accum
        total = torch.zeros((), dtype=torch.float64)
        try:
            for k in range(s.grad_accum):
                sl = slice(lo + k * micro, lo + (k + 1) * micro)
                mb = {key: v[sl].to(self.device) for key, v in batch.items()}
                ddp = self.ddp.get(ph.module)
                ctx = ddp.no_sync() if ddp is not None and k < s.grad_accum - 1 else _null()
                with ctx, self._autocast():
                    loss = ph.loss(mb, nets).mean()
                (loss / s.grad_accum).backward()
                total += loss.detach().double().cpu() / s.grad_accum
        finally:
            for m, flags in zip(others, saved):
                for p, flag in zip(m.parameters(), flags):
                    p.requires_grad_(flag)
        if self.world > 1:
            dist.all_reduce(total)
            total /= self.world
            for name in ph.also:  # outside DDP's wrapper: average their gradients here
                for p in self.modules[name].parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= self.world
        return float(total)

    def train_step(self) -> float:
        """One training step (every phase of the objective, in order); returns the first phase's global mean loss.

        All phases' losses are appended to ``loss_history``.
        """
        s = self.settings
        batch = self.batch(self.step)
        values: dict[str, float] = {}
        for i, ph in enumerate(self.phases):
            value = self.accumulate_gradients(i, batch)
            opt = self.optimizers[ph.module]
            if not math.isfinite(value):
                opt.zero_grad(set_to_none=True)
                last = latest_checkpoint(self.out_dir)
                kept = f"the newest checkpoint {last} is kept" if last else "no checkpoint had been written yet"
                what = "the loss" if len(self.phases) == 1 else f"the {ph.label} loss"
                advice = "Lower training.lr, set training.grad_clip, or use precision fp32, then --resume."
                if self._resumed is not None and self._resumed[1] == self.step:  # resuming again would loop
                    advice = (f"It diverged on the first step after resuming from {self._resumed[0]}, so that "
                              f"checkpoint may be damaged: move it aside (--resume then takes the one before it), "
                              f"or lower training.lr, set training.grad_clip, or use precision fp32.")
                raise TrainingDiverged(f"{what} became {value} at step {self.step}; training stopped and {kept}. "
                                       f"{advice}")
            if s.grad_clip:
                params = [p for m in (ph.module, *self._also[ph.module]) for p in self.modules[m].parameters()]
                nn.utils.clip_grad_norm_(params, s.grad_clip)
            for group in opt.param_groups:
                group["lr"] = self.lr_at(self.step, ph.module) * group.get("lr_scale", 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            values[ph.label] = value
        self.step += 1
        decay = ema_decay(s.batch_size, self.step * s.batch_size, s.ema_half_life_images, s.ema_rampup)
        for name, ema in self.emas.items():
            update_ema(ema, self.modules[name], decay)
        for (name, rel), track in self.posthoc.items():
            update_ema(track, self.modules[name], power_beta(self.step, self._posthoc_gamma[rel]))
        self.loss_history.append(values)
        return values[self.phases[0].label]

    # ----------------------------------------------------------------- loop
    def fit(self, steps: int | None = None) -> list[float]:
        """Train until ``steps`` (default ``settings.steps``) total steps; returns this call's losses.

        The log keeps only the records of steps already done: a fresh run starts it afresh, a
        resumed one drops what the checkpoint does not cover and any line torn by a kill.
        """
        s = self.settings
        end = s.steps if steps is None else steps
        if self.rank == 0:
            runlog.trim(self.out_dir / "log.jsonl", self.step)
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
            window.append(self.loss_history[-1])
            n_log += s.batch_size
            if bar is not None:
                bar.update(1)
            if self.step % s.log_every == 0 or self.step == end:
                now = time.monotonic()
                ips = n_log / max(now - t_log, 1e-9)
                means = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                mean = means.get("loss", means[self.phases[0].label])  # the main loss, else the first phase's
                if bar is not None:
                    bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{ips:.0f}")
                if self.rank == 0:
                    record = {"step": self.step, "loss": mean, "images_per_s": ips,
                              "lr": self.lr_at(self.step - 1), "time": time.time()}
                    if len(means) > 1:
                        record["losses"] = means
                    self._log(record)
                t_log, n_log, window = now, 0, []
            due = (s.checkpoint_every_steps and self.step % s.checkpoint_every_steps == 0) or \
                  (s.checkpoint_every_seconds and time.monotonic() - last_ckpt >= s.checkpoint_every_seconds)
            if self.world > 1 and s.checkpoint_every_seconds and not s.checkpoint_every_steps:
                flag = torch.tensor([1.0 if due else 0.0])
                dist.broadcast(flag, 0)
                due = bool(flag.item())
            if self.posthoc and self.rank == 0 and (self.step % s.posthoc_ema_snapshot_every == 0 or self.step == end):
                self.save_snapshots()
            if due or self.step == end:
                if self.rank == 0:
                    self.save()
                last_ckpt = time.monotonic()
            if s.sample_every_steps and self.step % s.sample_every_steps == 0 and self.rank == 0:
                self.preview()
        if bar is not None:
            bar.close()
        return losses

    def _log(self, record: dict[str, Any]) -> None:
        runlog.append(self.out_dir / "log.jsonl", record)

    def preview(self) -> Path | None:
        """The objective's preview of the current state (the denoiser's EMA sample grid)."""
        return self.objective.preview(self)


def _track_file(ema_file: str, sigma_rel: float) -> str:
    """Checkpoint file of the post-hoc EMA track ``sigma_rel`` of the EMA in ``ema_file``."""
    return f"{Path(ema_file).stem}-posthoc-{sigma_rel:.4f}.safetensors"


def _load_module(module: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointDamaged(f"{path} does not fit the module ({str(err).splitlines()[0]}); the file is damaged "
                                f"or from another run") from None


def _check_finite(state: dict[str, Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinity (what damage behind a valid header may leave in a checkpoint written
    before checksums were recorded): training never saves them, since a non-finite loss stops it first."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointDamaged(f"{path} holds NaN or infinite values ({len(bad)} tensor{'s' if len(bad) != 1 else ''}, "
                                f"e.g. {bad[0]}); the file is damaged")


def _param_groups(module: nn.Module, scales: Mapping[str, float]) -> list[dict[str, Any]]:
    """``module``'s parameters in one AdamW group per learning-rate multiplier (``lr_scale``)."""
    groups: dict[float, list[nn.Parameter]] = {}
    for pname, param in module.named_parameters():
        scale = next((v for prefix, v in scales.items() if pname.startswith(prefix)), 1.0)
        groups.setdefault(float(scale), []).append(param)
    return [{"params": params, "lr_scale": scale} for scale, params in groups.items()]


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
