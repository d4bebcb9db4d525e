"""Checkpoint folders, the on-disk format shared by training and loading.

``config.json``, ``model.safetensors``, ``ema.safetensors``, optimizer and RNG state, and
``checksums.json``: the sha256 of every ``.safetensors`` file, so that data damaged behind a valid
header (which safetensors reads without complaint) is caught when the file is read back.

Only JSON and safetensors are written and read, so loading never unpickles code.  Each
checkpoint is written into a temporary folder and renamed into ``<run>/checkpoints/step-N``:
a kill at any moment leaves the previous checkpoints intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ._io import atomic_dir

__all__ = ["FORMAT", "FORMAT_VERSION", "CHECKSUMS", "CheckpointDamaged", "weights_identity", "write_checkpoint", "save_checkpoint",
           "latest_checkpoint", "checkpoint_folder", "list_checkpoints", "newest_readable_config",
           "remove_stale_temporaries", "read_config", "read_json", "load_tensors", "load_optimizer_state",
           "optimizer_tensors", "export_ema", "file_sha256", "write_checksums", "verify_checksum"]

FORMAT = "fewstep-checkpoint"
FORMAT_VERSION = 1
CHECKSUMS = "checksums.json"
_CHECKSUMS_FORMAT = "fewstep-checksums"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointDamaged(ValueError):
    """A checkpoint file exists but cannot be read (truncated, garbage, not what it should be)."""


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Record the sha256 of the files ``names`` of ``folder`` in ``folder/checksums.json`` (written last, into a
    folder that is still being built or renamed into place atomically)."""
    folder = Path(folder)
    sums = {name: file_sha256(folder / name) for name in sorted(names)}
    (folder / CHECKSUMS).write_text(json.dumps({"format": _CHECKSUMS_FORMAT, "sha256": sums}, indent=2) + "\n")


def _recorded_checksums(folder: Path) -> dict[str, str]:
    """``{file name: sha256}`` of ``folder/checksums.json``; empty when it has none (older checkpoints)."""
    path = folder / CHECKSUMS
    if not path.exists():
        return {}
    data = read_json(path)
    sums = data.get("sha256") if isinstance(data, dict) and data.get("format") == _CHECKSUMS_FORMAT else None
    if not isinstance(sums, dict):
        raise CheckpointDamaged(f"{path} is not a fewstep checksum file; the checkpoint is damaged")
    return sums


def weights_identity(folder: str | os.PathLike) -> str | None:
    """A short identity of the weights a checkpoint folder holds (from its ``checksums.json``, no hashing): the same
    string exactly when the recorded files and their sha256 are the same; None for a folder without checksums."""
    sums = _recorded_checksums(Path(folder))
    if not sums:
        return None
    text = "\n".join(f"{name}:{sums[name]}" for name in sorted(sums))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def verify_checksum(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointDamaged` naming ``path`` if its folder's ``checksums.json`` records a sha256 that the
    file's bytes do not have.  A file without a recorded checksum (an older checkpoint) passes."""
    path = Path(path)
    expected = _recorded_checksums(path.parent).get(path.name)
    if expected is not None and file_sha256(path) != expected:
        raise CheckpointDamaged(f"{path} does not match the sha256 recorded in {path.parent / CHECKSUMS} when it was "
                                f"saved; the file is damaged (if you replaced it on purpose, delete {CHECKSUMS})")


def state_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict as contiguous CPU tensors, ready for safetensors."""
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


def write_checkpoint(run_dir: str | os.PathLike, step: int, config: dict[str, Any],
                     tensors: dict[str, dict[str, torch.Tensor]], jsons: dict[str, Any] | None = None,
                     keep: int = 2) -> Path:
    """Write ``<run_dir>/checkpoints/step-<step>`` atomically and prune all but the newest ``keep`` (0: keep all).

    ``tensors`` maps file names to tensors (written with safetensors, in order), ``jsons`` file
    names to JSON values; ``config.json`` (with format, version and step), ``rng.safetensors`` and
    ``checksums.json`` (the sha256 of each ``.safetensors`` file) are added.
    """
    final = Path(run_dir) / "checkpoints" / f"step-{step:08d}"
    with atomic_dir(final) as tmp:
        for name, values in tensors.items():
            save_file(values, str(tmp / name))
        for name, value in (jsons or {}).items():
            (tmp / name).write_text(json.dumps(value))
        save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        full = {"format": FORMAT, "format_version": FORMAT_VERSION, **config, "step": step}
        (tmp / "config.json").write_text(json.dumps(full, indent=2))
        write_checksums(tmp, [*tensors, "rng.safetensors"])
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(run_dir: str | os.PathLike, step: int, config: dict[str, Any], model: nn.Module,
                    ema: nn.Module, optimizer: torch.optim.Optimizer | None = None, keep: int = 2) -> Path:
    """A denoiser's checkpoint: ``model``, ``ema`` and ``optimizer`` under their historical file names."""
    tensors = {"model.safetensors": state_tensors(model), "ema.safetensors": state_tensors(ema)}
    jsons = {}
    if optimizer is not None:
        tensors["optimizer.safetensors"], jsons["optimizer.json"] = optimizer_tensors(optimizer)
    return write_checkpoint(run_dir, step, config, tensors, jsons, keep)


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


def checkpoint_folder(folder: str | os.PathLike) -> Path:
    """``folder`` itself, or for a run folder (``checkpoints/`` and no ``config.json``) its newest checkpoint."""
    folder = Path(folder)
    if (folder / "checkpoints").is_dir() and not (folder / "config.json").exists():
        latest = latest_checkpoint(folder)
        if latest is None:
            raise FileNotFoundError(f"run folder {folder} holds no complete checkpoint yet")
        return latest
    return folder


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary ``.step-N.*.tmp`` folders a kill during a checkpoint write left behind."""
    root = Path(run_dir) / "checkpoints"
    stale = [p for p in root.iterdir() if p.name.startswith(".step-") and p.name.endswith(".tmp")] \
        if root.is_dir() else []
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def newest_readable_config(run_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """``(folder, config)`` of the newest checkpoint of a run whose ``config.json`` reads.

    Raises FileNotFoundError when the run has no checkpoint, :class:`CheckpointDamaged` naming
    every file when none reads.
    """
    found = list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"no checkpoint found under {Path(run_dir) / 'checkpoints'}")
    problems = []
    for folder in reversed(found):
        try:
            return folder, read_config(folder)
        except (CheckpointDamaged, FileNotFoundError) as err:
            problems.append(str(err))
    raise CheckpointDamaged(f"no intact checkpoint under {Path(run_dir) / 'checkpoints'}: {'; '.join(problems)}")


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and check a checkpoint's ``config.json`` (format and version)."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {folder} is not a fewstep checkpoint folder")
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise CheckpointDamaged(f"{path} is not a JSON object; the checkpoint is damaged")
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fewstep checkpoint config (format={cfg.get('format')!r})")
    version = cfg.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{folder} was written by a newer fewstep (checkpoint format {version}, this version "
                         f"reads up to {FORMAT_VERSION}); upgrade fewstep to load it")
    return cfg


def read_json(path: Path) -> Any:
    """Parse a checkpoint's JSON file; :class:`CheckpointDamaged` names the file if it does not parse."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; the checkpoint folder {path.parent} is incomplete")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointDamaged(f"{path} is not valid JSON ({err}); the checkpoint is damaged") from None


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; :class:`CheckpointDamaged` names the file if it is truncated, garbage or does not
    match the checksum recorded beside it."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; the checkpoint folder {path.parent} is incomplete")
    verify_checksum(path)
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise CheckpointDamaged(f"cannot read {path} ({err}); the file is damaged") from None


#: Weights an inference-only export keeps beside ``ema.safetensors``: a latent model's autoencoder (fewstep.latent).
_EXPORTED_BESIDE = ("latent-autoencoder.safetensors",)


def export_ema(checkpoint: str | os.PathLike, dest: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Copy a checkpoint's ``config.json`` (plus ``extra`` provenance) and ``ema.safetensors`` (and a latent
    model's autoencoder) into ``dest``.

    This is the inference-only form shipped as ``bundled:*``; ``dest`` is replaced atomically.
    """
    src, dest = Path(checkpoint), Path(dest)
    cfg = read_config(src)
    if extra:
        cfg["provenance"] = extra
    staging = dest.with_name(dest.name + ".new")
    if staging.exists():
        shutil.rmtree(staging)
    files = ["ema.safetensors"] + [n for n in _EXPORTED_BESIDE if (src / n).exists()]
    for name in files:
        verify_checksum(src / name)
    with atomic_dir(staging) as tmp:
        for name in files:
            shutil.copyfile(src / name, tmp / name)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        write_checksums(tmp, files)
    old = dest.with_name(dest.name + ".old")
    if dest.exists():
        os.rename(dest, old)
    os.rename(staging, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest
