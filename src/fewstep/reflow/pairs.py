"""Noise / teacher-endpoint pairs for reflow (Liu et al. 2023, "Flow Straight and Fast", sec. 2.2-2.3).

Reflow trains on the coupling ``(z, x1 = ODE_teacher(z))``: each noise draw ``z`` and the endpoint
the teacher's probability-flow ODE carries it to, here solved with a chosen fewstep solver, NFE and
grid.  Pair ``i`` uses seed ``seed + i`` (:func:`fewstep.generators`), so the pairs do not depend on
the batch size, and a pair folder is *resumable*: complete shards (``shard-NNNNN.npz``: ``noise``,
``endpoint`` (float32, ``(m, C, H, W)``), ``seeds``) are written atomically and skipped when the
drawing starts again; ``pairs.json`` records the teacher, sampler and seeds, and a folder drawn with
other settings is refused rather than mixed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import solvers
from .._io import atomic_path, atomic_write_text
from ..api import generators, prior_noise, sample
from ..data import ImageData
from ..denoisers import DenoiserBase
from ..latent import require_pixel_space

__all__ = ["draw_pairs", "load_pairs", "pair_data", "PAIRS_FORMAT"]

PAIRS_FORMAT = "fewstep-reflow-pairs"


def _shard_path(folder: Path, k: int) -> Path:
    return folder / f"shard-{k:05d}.npz"


def _shard_count(folder: Path, k: int) -> int:
    """Pairs in shard ``k`` (0 if absent): a shorter last shard of an earlier, smaller ``n`` is drawn again."""
    path = _shard_path(folder, k)
    if not path.exists():
        return 0
    with np.load(path) as f:
        return len(f["seeds"])


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / "pairs.json"
    if not path.exists():
        return None
    try:
        man = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete the pair folder and draw again") from None
    if not isinstance(man, dict) or man.get("format") != PAIRS_FORMAT:
        raise ValueError(f"{path} is not a reflow pair manifest (format {PAIRS_FORMAT!r})")
    return man


def draw_pairs(teacher: DenoiserBase, folder: str | Path, n: int, *, solver: str = "dpm++2m", nfe: int = 10,
               grid: str | None = None, seed: int = 0, shard_size: int = 500, batch_size: int = 64,
               teacher_name: str = "", device: str | torch.device = "cpu", progress: bool = True) -> Path:
    """Draw ``n`` pairs ``(z, ODE(z))`` from ``teacher`` into ``folder`` (resuming a partial folder); returns it.

    ``z`` is the standard normal draw of seed ``seed + i`` (the solve starts from ``prior_std z``); the endpoint
    is ``fewstep.sample(teacher, prior_std z, solver, nfe, grid)``.  The solver must be deterministic: reflow
    couples each noise with one endpoint.
    """
    if solvers.get(solver).stochastic:
        raise ValueError(f"solver {solver!r} is stochastic; reflow pairs need an ODE solver (e.g. dpm++2m, heun)")
    if n < 1 or shard_size < 1 or batch_size < 1:
        raise ValueError(f"n, shard_size and batch_size must be >= 1, got {n}, {shard_size}, {batch_size}")
    require_pixel_space(teacher, "reflow")
    shape = teacher.sample_shape
    if shape is None:
        raise ValueError("the teacher does not declare its sample shape; load it with fewstep.load_model")
    folder = Path(folder)
    manifest = {"format": PAIRS_FORMAT, "teacher": teacher_name, "solver": solver, "nfe": int(nfe),
                "grid": grid, "seed": int(seed), "shard_size": int(shard_size), "shape": list(shape)}
    old = _read_manifest(folder)
    if old is not None:
        differ = [k for k in manifest if old.get(k) != manifest[k]]
        if differ:
            raise ValueError(f"{folder} holds pairs drawn with other settings ({', '.join(differ)}: "
                             f"{[old.get(k) for k in differ]} vs {[manifest[k] for k in differ]}); use another folder")
    atomic_write_text(folder / "pairs.json", json.dumps({**manifest, "n": max(int(n), int((old or {}).get("n", 0)))},
                                                        indent=2))
    shards = (n + shard_size - 1) // shard_size
    todo = [k for k in range(shards) if _shard_count(folder, k) != min(shard_size, n - k * shard_size)]
    bar = tqdm(total=n, desc="pairs", unit="pair", disable=not progress)
    bar.update(n - sum(min(shard_size, n - k * shard_size) for k in todo))
    for k in todo:
        seeds = list(range(seed + k * shard_size, seed + min(n, (k + 1) * shard_size)))
        noise, ends = [], []
        for j in range(0, len(seeds), batch_size):
            chunk = seeds[j:j + batch_size]
            gens = generators(chunk)
            z = prior_noise(teacher.process, shape, gens, device=device) / teacher.process.prior_std
            ends.append(sample(teacher, teacher.process.prior_std * z, solver, nfe, grid, gens).float().cpu())
            noise.append(z.float().cpu())
            bar.update(len(chunk))
        buf = io.BytesIO()
        np.savez(buf, noise=torch.cat(noise).numpy(), endpoint=torch.cat(ends).numpy(),
                 seeds=np.asarray(seeds, dtype=np.int64))
        with atomic_path(_shard_path(folder, k)) as tmp:
            tmp.write_bytes(buf.getvalue())
    bar.close()
    return folder


def load_pairs(folder: str | Path, n: int | None = None) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """``(noise, endpoint, manifest)`` of a pair folder (its first ``n`` pairs; all by default)."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"{folder} has no pairs.json; draw pairs first (fewstep reflow)")
    total = int(manifest["n"]) if n is None else int(n)
    size = int(manifest["shard_size"])
    noise, ends = [], []
    for k in range((total + size - 1) // size):
        path = _shard_path(folder, k)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the pairs are incomplete; resume drawing them (--resume)")
        with np.load(path) as f:
            noise.append(torch.from_numpy(f["noise"]))
            ends.append(torch.from_numpy(f["endpoint"]))
    return torch.cat(noise)[:total], torch.cat(ends)[:total], manifest


def pair_data(folder: str | Path, n: int | None = None) -> ImageData:
    """The trainer's dataset for a reflow run: one item per pair (the endpoints; the objective reads the pairs)."""
    return ImageData(load_pairs(folder, n)[1])
