"""Checkpoint folders, the on-disk format shared by training and loading.

``config.json``, ``model.safetensors``, ``ema.safetensors``, optimizer and RNG state.

Only JSON and safetensors are written and read, so loading never unpickles code.  Each
checkpoint is written into a temporary folder and renamed into ``<run>/checkpoints/step-N``:
a kill at any moment leaves the previous checkpoints intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ._io import atomic_dir

__all__ = ["FORMAT", "FORMAT_VERSION", "save_checkpoint", "latest_checkpoint", "list_checkpoints",
           "read_config", "load_optimizer_state", "optimizer_tensors"]

FORMAT = "fewstep-checkpoint"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _state_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state into tensors (for safetensors) and JSON (param groups)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            tensors[f"{idx}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run_dir: str | os.PathLike, step: int, config: dict[str, Any], model: nn.Module,
                    ema: nn.Module, optimizer: torch.optim.Optimizer | None = None, keep: int = 2) -> Path:
    """Write ``<run_dir>/checkpoints/step-<step>`` atomically and prune all but the newest ``keep``."""
    final = Path(run_dir) / "checkpoints" / f"step-{step:08d}"
    with atomic_dir(final) as tmp:
        save_file(_state_tensors(model), str(tmp / "model.safetensors"))
        save_file(_state_tensors(ema), str(tmp / "ema.safetensors"))
        if optimizer is not None:
            tensors, meta = optimizer_tensors(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "optimizer.json").write_text(json.dumps(meta))
        save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        full = {"format": FORMAT, "format_version": FORMAT_VERSION, **config, "step": step}
        (tmp / "config.json").write_text(json.dumps(full, indent=2))
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (temporary folders are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and check a checkpoint's ``config.json`` (format and version)."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {folder} is not a fewstep checkpoint folder")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the checkpoint is damaged") from None
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fewstep checkpoint config (format={cfg.get('format')!r})")
    version = cfg.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{folder} was written by a newer fewstep (checkpoint format {version}, this version "
                         f"reads up to {FORMAT_VERSION}); upgrade fewstep to load it")
    return cfg


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; the checkpoint folder {path.parent} is incomplete")
    return load_file(str(path))


def export_ema(checkpoint: str | os.PathLike, dest: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Copy a checkpoint's ``config.json`` (plus ``extra`` provenance) and ``ema.safetensors`` into ``dest``.

    This is the inference-only form shipped as ``bundled:*``; ``dest`` is replaced atomically.
    """
    src, dest = Path(checkpoint), Path(dest)
    cfg = read_config(src)
    if extra:
        cfg["provenance"] = extra
    staging = dest.with_name(dest.name + ".new")
    if staging.exists():
        shutil.rmtree(staging)
    with atomic_dir(staging) as tmp:
        shutil.copyfile(src / "ema.safetensors", tmp / "ema.safetensors")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    old = dest.with_name(dest.name + ".old")
    if dest.exists():
        os.rename(dest, old)
    os.rename(staging, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest
