"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models",
EDM2, sec. 3 and App. C): power-function EMA tracks, their snapshots, and the least-squares rebuild of an EMA
of any length after training.

* A power-function EMA with exponent ``gamma`` averages the weights seen up to time ``t`` with the profile
  ``p_{t,gamma}(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)`` on ``0 < tau < t`` (EDM2 sec. 3). Its discrete
  update at step ``t = 1, 2, ...`` is ``theta_hat_t = beta theta_hat_{t-1} + (1 - beta) theta_t`` with
  ``beta = (1 - 1/t)^(gamma + 1)`` (EDM2 sec. 3); it gives step ``i`` the weight
  ``(i^(gamma+1) - (i-1)^(gamma+1)) / t^(gamma+1)`` (:func:`power_weights`).
* The length of a profile is its standard deviation relative to ``t``:
  ``sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3))`` (EDM2 sec. 3); :func:`gamma_from_sigma_rel`
  takes the largest real root of the cubic ``gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma +
  (12 - sigma_rel^-2) = 0``.
* Snapshots of a few tracks (two, e.g. ``sigma_rel`` 0.05 and 0.10) are saved during training. After it, the
  profile of the EMA asked for is fitted, in the L2 sense over ``tau``, by a combination of the snapshots'
  profiles: ``A x = b`` with ``A_ij = <p_i, p_j>`` and ``b_i = <p_i, p_target>``, the inner products in closed
  form (:func:`profile_inner`), and the rebuilt weights are ``sum_i x_i theta_hat_i`` (EDM2 App. C.2).

The trainer keeps the tracks (``training.posthoc_ema_sigma_rels``) beside its half-life EMA, which stays the
default; ``fewstep ema`` (:func:`write_posthoc_checkpoint`) writes a rebuilt EMA as an ordinary checkpoint folder.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from .._io import atomic_dir, atomic_path
from ..checkpoint import newest_readable_config, write_checksums

__all__ = ["SIGMA_REL_MAX", "SNAPSHOT_DIR", "gamma_from_sigma_rel", "sigma_rel_from_gamma", "power_beta",
           "power_weights", "profile_inner", "solve_snapshot_weights", "Snapshot", "save_snapshot",
           "list_snapshots", "reconstruct", "write_posthoc_checkpoint", "check_sigma_rel"]

#: ``sigma_rel`` at ``gamma = 0`` (a uniform average of the whole run); longer profiles need ``gamma < 0``.
SIGMA_REL_MAX = 1.0 / (2.0 * math.sqrt(3.0))
#: Folder of a run that holds the snapshots.
SNAPSHOT_DIR = "posthoc-ema"


def check_sigma_rel(sigma_rel: float, what: str = "sigma_rel") -> None:
    """Refuse a ``sigma_rel`` outside ``(0, 1/(2 sqrt 3))`` (the profiles with ``gamma > 0``)."""
    if not isinstance(sigma_rel, (int, float)) or not 0.0 < float(sigma_rel) < SIGMA_REL_MAX:
        raise ValueError(f"{what} must lie in (0, {SIGMA_REL_MAX:.4f}) (EDM2's relative EMA length; 0.05-0.15 is "
                         f"usual), got {sigma_rel!r}")


def gamma_from_sigma_rel(sigma_rel: float) -> float:
    """The exponent ``gamma`` of the power-function profile whose relative std is ``sigma_rel`` (EDM2 sec. 3)."""
    check_sigma_rel(sigma_rel)
    s2 = 1.0 / float(sigma_rel) ** 2
    roots = np.roots([1.0, 7.0, 16.0 - s2, 12.0 - s2])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def sigma_rel_from_gamma(gamma: float) -> float:
    """``sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))`` (EDM2 sec. 3)."""
    return math.sqrt((gamma + 1.0) / ((gamma + 2.0) ** 2 * (gamma + 3.0)))


def power_beta(t: int, gamma: float) -> float:
    """Decay of the update at step ``t >= 1``: ``(1 - 1/t)^(gamma + 1)`` (EDM2 sec. 3; 0 at the first step)."""
    if t < 1:
        raise ValueError(f"power-function EMA steps count from 1, got {t}")
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


def power_weights(t: int, gamma: float) -> Tensor:
    """Weights ``(i^(gamma+1) - (i-1)^(gamma+1)) / t^(gamma+1)`` the tracked EMA gives steps ``i = 1..t`` (float64)."""
    i = torch.arange(1, t + 1, dtype=torch.float64)
    g1 = gamma + 1.0
    return (i**g1 - (i - 1) ** g1) / float(t) ** g1


def profile_inner(t_a: float, gamma_a: float, t_b: float, gamma_b: float) -> float:
    """``integral_0^inf p_{t_a,gamma_a}(tau) p_{t_b,gamma_b}(tau) dtau`` in closed form:
    ``(ga+1)(gb+1) T^(ga+gb+1) / ((ga+gb+1) t_a^(ga+1) t_b^(gb+1))`` with ``T = min(t_a, t_b)``."""
    ga, gb, T = gamma_a, gamma_b, min(t_a, t_b)
    log = (math.log(ga + 1) + math.log(gb + 1) + (ga + gb + 1) * math.log(T) - math.log(ga + gb + 1)
           - (ga + 1) * math.log(t_a) - (gb + 1) * math.log(t_b))
    return math.exp(log)


def solve_snapshot_weights(snapshots: Sequence[tuple[float, float]], target: tuple[float, float]) -> Tensor:
    """Least-squares coefficients ``x`` (float64) with ``sum_i x_i p_i ~ p_target`` for snapshot profiles
    ``(t_i, gamma_i)`` and the target ``(t, gamma)`` (EDM2 App. C.2)."""
    n = len(snapshots)
    A = torch.tensor([[profile_inner(*snapshots[i], *snapshots[j]) for j in range(n)] for i in range(n)],
                     dtype=torch.float64)
    b = torch.tensor([[profile_inner(*snapshots[i], *target)] for i in range(n)], dtype=torch.float64)
    return torch.linalg.lstsq(A, b, rcond=1e-12, driver="gelsd").solution[:, 0]


@dataclass(frozen=True)
class Snapshot:
    """One stored snapshot: ``path``, the weights file it stands for (``stem``, e.g. ``ema``), its step, track."""

    path: Path
    stem: str
    step: int
    sigma_rel: float
    gamma: float


def save_snapshot(run_dir: str | os.PathLike, stem: str, sigma_rel: float, step: int,
                  state: dict[str, Tensor]) -> Path:
    """Write the track ``sigma_rel`` of weights file ``stem`` at ``step`` under ``run_dir/posthoc-ema`` (atomic)."""
    from safetensors.torch import save_file

    path = Path(run_dir) / SNAPSHOT_DIR / f"{stem}-{sigma_rel:.4f}-step-{step:08d}.safetensors"
    meta = {"stem": stem, "step": str(step), "sigma_rel": repr(float(sigma_rel)),
            "gamma": repr(gamma_from_sigma_rel(sigma_rel))}
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=meta)
    return path


def list_snapshots(run_dir: str | os.PathLike) -> list[Snapshot]:
    """Every readable snapshot of a run, by (stem, step, sigma_rel); files without our metadata are skipped."""
    from safetensors import safe_open

    folder = Path(run_dir) / SNAPSHOT_DIR
    found = []
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            found.append(Snapshot(path, meta["stem"], int(meta["step"]), float(meta["sigma_rel"]),
                                  float(meta["gamma"])))
        except Exception:  # a foreign or damaged file: not a snapshot
            continue
    return sorted(found, key=lambda s: (s.stem, s.step, s.sigma_rel))


def reconstruct(snapshots: Iterable[Snapshot], sigma_rel: float, step: int | None = None
                ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The EMA of length ``sigma_rel`` at ``step`` (default: the newest snapshot's) from ``snapshots`` of one
    weights file; returns ``(state dict, info)`` with the coefficients used.  Weights are summed in float64."""
    from safetensors.torch import load_file

    check_sigma_rel(sigma_rel, "--sigma-rel")
    snaps = list(snapshots)
    if not snaps:
        raise ValueError("no post-hoc EMA snapshots to rebuild from")
    stems = {s.stem for s in snaps}
    if len(stems) != 1:
        raise ValueError(f"snapshots of several weights files ({', '.join(sorted(stems))}); pass one file's")
    last = max(s.step for s in snaps)
    step = last if step is None else step
    use = [s for s in snaps if s.step <= step]
    if not use:
        raise ValueError(f"no snapshot at or before step {step} (the first is at step {min(s.step for s in snaps)})")
    gamma = gamma_from_sigma_rel(sigma_rel)
    x = solve_snapshot_weights([(float(s.step), s.gamma) for s in use], (float(step), gamma))
    out: dict[str, Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for coef, snap in zip(x.tolist(), use):
        for k, v in load_file(str(snap.path)).items():
            if not v.is_floating_point():
                out[k], dtypes[k] = v, v.dtype  # integer buffers: kept as the newest snapshot has them
                continue
            dtypes[k] = v.dtype
            out[k] = out.get(k, torch.zeros(v.shape, dtype=torch.float64)) + coef * v.double()
    state = {k: v.to(dtypes[k]) for k, v in out.items()}
    info = {"sigma_rel": float(sigma_rel), "gamma": gamma, "step": int(step),
            "snapshots": [{"step": s.step, "sigma_rel": s.sigma_rel, "weight": c} for s, c in zip(use, x.tolist())]}
    return state, info


def write_posthoc_checkpoint(run_dir: str | os.PathLike, sigma_rel: float, out: str | os.PathLike, *,
                             step: int | None = None) -> tuple[Path, dict[str, Any]]:
    """Rebuild the EMA of length ``sigma_rel`` from a run's snapshots into an ordinary checkpoint folder ``out``
    (``config.json`` of the run's newest checkpoint + each rebuilt weights file, e.g. ``ema.safetensors``),
    which :func:`fewstep.load_model` reads.  ``out`` must not exist yet."""
    from safetensors.torch import save_file

    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} not found")
    snaps = list_snapshots(run)
    if not snaps:
        raise ValueError(f"{run} holds no post-hoc EMA snapshots ({run / SNAPSHOT_DIR} is missing or empty); train "
                         f"with training.posthoc_ema_sigma_rels (e.g. [0.05, 0.1]) and posthoc_ema_snapshot_every")
    check_sigma_rel(sigma_rel, "--sigma-rel")
    _, cfg = newest_readable_config(run)
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new --out folder")
    states, infos = {}, {}
    for stem in sorted({s.stem for s in snaps}):
        states[stem], infos[stem] = reconstruct([s for s in snaps if s.stem == stem], sigma_rel, step)
    info = infos.get("ema", next(iter(infos.values())))
    cfg = {**cfg, "step": info["step"], "provenance": {"posthoc_ema": info, "run": str(run)}}
    batch = cfg.get("training", {}).get("batch_size") if isinstance(cfg.get("training"), dict) else None
    if isinstance(batch, int):
        cfg["images_seen"] = info["step"] * batch
    with atomic_dir(out) as tmp:
        for stem, state in states.items():
            save_file(state, str(tmp / f"{stem}.safetensors"))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        write_checksums(tmp, [f"{stem}.safetensors" for stem in states])
    return out, info
