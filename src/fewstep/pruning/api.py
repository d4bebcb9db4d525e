"""``prune``: score a fewstep UNet's units, remove the least important ones, save the smaller model, and the
fine-tune config that warm-starts the shared trainer from it (``objective.init_from``)."""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from .._io import atomic_dir
from ..checkpoint import FORMAT, FORMAT_VERSION, read_config, write_checksums
from ..denoisers import Denoiser
from ..nets import net_config
from ..training.settings import resolve_config
from .scores import ld_scores, taylor_scores
from .select import check_budget, check_ratio, select_global, select_per_block
from .structure import prune_unet
from .units import check_prunable, prunable_units, unit_macs

__all__ = ["METHODS", "PruneResult", "prune_denoiser", "save_pruned", "finetune_config", "count_parameters"]

#: ``--method``: how units are scored and chosen.
METHODS = ("ld", "taylor")


@dataclass
class PruneResult:
    """The pruned denoiser and what was done: scores of every unit, the removed ones, sizes before/after."""

    denoiser: Denoiser
    method: str
    ratio: float
    scores: dict[str, float]
    removed: list[str]
    params_before: int
    params_after: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The ``pruning`` section written into the pruned model's config."""
        return {"method": self.method, "ratio": self.ratio, "removed": self.removed,
                "params_before": self.params_before, "params_after": self.params_after,
                "score_seconds": round(self.seconds, 1), **self.details}


def count_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def prune_denoiser(den: Denoiser, x0: Tensor, ratio: float, method: str = "ld", *, levels: int = 4,
                   steps: int = 100, thr: float = 0.05, seed: int = 0, budget: str = "channels",
                   progress: Callable[[int], None] | None = None) -> PruneResult:
    """Prune ``den``'s UNet by ``ratio`` of its prunable channels (``budget="channels"``) or of their
    multiply-adds (``"macs"``), scored on the images ``x0`` (in [-1, 1]).

    ``method`` "ld": LD-Pruner's output-statistics scores at ``levels`` noise levels, units removed in one
    global ranking (whole ResBlock branches and attention blocks may go; with a "macs" budget ranked by score per
    multiply-add); "taylor": Diff-Pruning's Taylor importance over ``steps`` timesteps with threshold ``thr``, the
    same fraction of groups removed from each ResBlock (which is the same fraction of its multiply-adds, so both
    budgets agree).  Returns a new denoiser; ``den`` is unchanged.
    """
    check_ratio(ratio)
    check_budget(budget)
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; valid: {', '.join(METHODS)}")
    if not isinstance(den, Denoiser):
        raise ValueError(f"pruning needs a fewstep Denoiser, got {type(den).__name__}")
    net = check_prunable(den.net)
    units = prunable_units(net)
    start = time.process_time()
    details: dict[str, Any] = {"score_images": int(x0.shape[0]), "seed": seed, "budget": budget}
    macs = unit_macs(net, units, tuple(x0.shape[1:]))
    if method == "ld":
        scores = ld_scores(den, net, units, x0, levels=levels, seed=seed, progress=progress)
        chosen = select_global(units, scores, ratio, macs if budget == "macs" else None)
        details["levels"] = levels
    else:
        scores, used = taylor_scores(den, net, units, x0, steps=steps, thr=thr, seed=seed, progress=progress)
        chosen = select_per_block(units, scores, ratio)
        details.update({"steps": steps, "thr": thr, "steps_used": used})
    seconds = time.process_time() - start
    gone = {u.name for u in chosen}
    details["macs_removed"] = round(sum(c for u, c in zip(units, macs) if u.name in gone) / sum(macs), 4)
    small = prune_unet(net, chosen)
    pruned = Denoiser(small, den.process, den.prediction, den.sigma_data, sample_shape=den.sample_shape,
                      config=copy.deepcopy(den.config))
    return PruneResult(pruned, method, ratio, {u.name: float(s) for u, s in zip(units, scores)},
                       [u.name for u in chosen], count_parameters(net), count_parameters(small), seconds, details)


def _model_config(result: PruneResult, source: str) -> dict[str, Any]:
    base = copy.deepcopy(result.denoiser.config or {})
    missing = [k for k in ("network", "process", "prediction") if k not in base]
    if missing:
        raise ValueError(f"saving needs a denoiser loaded from a fewstep checkpoint (its config lacks {missing[0]!r})")
    for key in ("step", "images_seen", "quantization"):
        base.pop(key, None)
    base.update({"format": FORMAT, "format_version": FORMAT_VERSION, "network": net_config(result.denoiser.net),
                 "pruning": {"source": source, **result.record()}})
    return base


def save_pruned(result: PruneResult, out: str | os.PathLike, source: str) -> Path:
    """Write the pruned model as a checkpoint folder ``out`` (must not exist): ``config.json`` (the new widths
    under ``network``, what was done under ``pruning``) and ``ema.safetensors``, plus every unit's score in
    ``scores.json``; :func:`fewstep.load_model` reads it like any model."""
    from safetensors.torch import save_file

    cfg = _model_config(result, source)
    tensors = {k: v.detach().cpu().contiguous() for k, v in result.denoiser.net.state_dict().items()}
    with atomic_dir(out) as tmp:
        save_file(tensors, str(tmp / "ema.safetensors"))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        (tmp / "scores.json").write_text(json.dumps(result.scores, indent=1))
        write_checksums(tmp, ["ema.safetensors"])
    return Path(out)


def finetune_config(pruned_folder: str | os.PathLike, steps: int, *, lr: float | None = None,
                    data: str | None = None, teacher: str | None = None, teacher_weight: float = 1.0,
                    precision: str | None = None) -> dict[str, Any]:
    """The training config of the fine-tune: the source's own config (process, prediction, objective, data,
    optimiser) with the pruned network, warm-started from ``pruned_folder`` (``objective.init_from``), for
    ``steps`` steps, without preview grids; ``precision`` (e.g. ``"bf16"``) sets its ``training.precision``.
    With ``teacher`` (the unpruned model), the targets are its predictions, weighted ``teacher_weight`` against
    the data's (``objective.teacher``)."""
    if steps < 1:
        raise ValueError(f"fine-tune steps must be positive, got {steps}")
    cfg = read_config(pruned_folder)
    if "training" not in cfg or "data" not in cfg:
        raise ValueError(f"{pruned_folder}: the source model's config has no training/data section to fine-tune "
                         f"with; train the pruned model with 'fewstep train --config' and objective.init_from")
    cfg = {k: v for k, v in cfg.items() if k != "pruning"}
    config, *_ = resolve_config(cfg)
    config["objective"]["init_from"] = str(Path(pruned_folder).resolve())
    tr = config["training"]
    tr.update({"steps": int(steps), "warmup_steps": min(tr.get("warmup_steps", 0), max(1, steps // 10)),
               "sample_every_steps": 0, "checkpoint_every_seconds": 120.0})
    if lr is not None:
        tr["lr"] = float(lr)
    if precision is not None:
        tr["precision"] = precision
    if data is not None:
        config["data"]["spec"] = data
    if teacher is not None:
        config["objective"].update({"teacher": str(teacher), "teacher_weight": float(teacher_weight)})
    resolve_config(config)
    return config
