"""Computing DPM-Solver-v3's empirical model statistics by Jacobian-vector products (Zheng et al. 2023, sec. 3.2).

The statistics are stored by :class:`fewstep.solvers.dpm_v3.EMS` and used by the ``dpm_v3`` solver; computing them
from data is tuning, here.

Write ``y = x / alpha`` and ``x0 = x0_theta(y, lam)`` (the denoiser's data prediction).  The ODE is
``dy/dlam = x0 - y = -l y - f`` with ``f = (1 - l) y - x0`` (the paper's ``f_theta = (sigma eps - l x) / alpha``,
eq. 6, rewritten through the data prediction).

* ``l`` (eq. 9) minimises ``E ||d f / d y||_F^2 = E ||diag(1 - l) - J||_F^2`` with ``J = d x0 / d y``, so per
  element ``l = 1 - E[J_ii]``; the diagonal is estimated without bias by Hutchinson's ``E_v[v * (J v)]`` with
  Rademacher ``v`` (one JVP).
* ``s, b`` (eq. 10-11) are the per-element least-squares fit ``f' ~ s f + b`` of the total derivative along the
  ODE, ``f' = (1 - l) y' - l' y - x0'``, ``y' = x0 - y``, ``x0' = J y' + d x0 / d lam |_y``: ``s = Cov(f', f) /
  Var(f)``, ``b = E f' - s E f``.  ``J y'`` is a JVP; the explicit time dependence is a float64 central
  difference in ``lam`` (a network sees time through tables and python floats that forward-mode AD cannot
  follow), and ``l'`` the derivative of the spline through ``l`` that the solver uses.

Both fits need only per-element sums of ``y, x0, y', x0', J_ii-estimate`` and their products, gathered in one
pass per ``lam`` and saved atomically, so an interrupted computation resumes at the first missing ``lam``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._io import atomic_write_bytes, atomic_write_text
from ..denoisers import innermost
from ..fingerprint import model_fingerprint
from ..solvers.dpm_v3.stats import EMS

__all__ = ["compute_ems", "MOMENTS"]

#: Per-element sums gathered at each lambda (``n`` is the sample count).
MOMENTS = ("hutch", "y", "x0", "dy", "dx0", "yy", "yx0", "x0x0", "ydy", "ydx0", "x0dy", "x0dx0")


def _lambda_grid(process: Any, n_lambda: int) -> Tensor:
    lo, hi = float(process.lam(process.t_max)), float(process.lam(process.t_min))
    return torch.linspace(lo, hi, n_lambda + 1, dtype=torch.float64)


def _x0_at(denoiser: Any, y: Tensor, lam: float, cond: dict[str, Any]) -> Tensor:
    """``x0_theta`` at ``y = x / alpha`` and half log-SNR ``lam``."""
    p = denoiser.process
    t = float(p.t_of_lambda(torch.tensor(lam, dtype=torch.float64)))
    a = float(p.alpha(t))
    return denoiser.predict(a * y, t, **cond).x0


def _moments_at(denoiser: Any, x0_data: Tensor, eps: Tensor, v: Tensor, lam: float, lam_range: tuple[float, float],
                delta: float, cond: dict[str, Any]) -> dict[str, Tensor]:
    """Per-element sums over one batch at ``lam`` (float64)."""
    from torch.func import jvp

    y = x0_data + math.exp(-lam) * eps
    x0 = _x0_at(denoiser, y, lam, cond)
    dy = x0 - y
    # one JVP over the doubled batch: tangent v (Hutchinson) and y' (motion along the ODE)
    _, tang = jvp(lambda z: _x0_at(denoiser, z, lam, cond), (torch.cat([y, y]),), (torch.cat([v, dy]),))
    jv, jdy = tang.chunk(2)
    lo, hi = max(lam - delta, lam_range[0]), min(lam + delta, lam_range[1])
    dt = (_x0_at(denoiser, y, hi, cond) - _x0_at(denoiser, y, lo, cond)) / (hi - lo)
    y, x0, dy = y.double(), x0.double(), dy.double()
    dx0 = (jdy + dt).double()
    values = {"hutch": v.double() * jv.double(), "y": y, "x0": x0, "dy": dy, "dx0": dx0, "yy": y * y, "yx0": y * x0,
              "x0x0": x0 * x0, "ydy": y * dy, "ydx0": y * dx0, "x0dy": x0 * dy, "x0dx0": x0 * dx0}
    return {k: val.sum(0) for k, val in values.items()}


def _finish(lam: Tensor, sums: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """``l, s, b`` from the per-lambda sums (the closed forms in the module docstring)."""
    m = {k: torch.stack([s_[k] / s_["n"] for s_ in sums]) for k in MOMENTS}
    from scipy.interpolate import CubicSpline

    l = 1.0 - m["hutch"]  # noqa: E741
    # l' of the natural cubic spline through l: the very function the solver integrates (dpm_v3/coefficients.py)
    dl = torch.from_numpy(CubicSpline(lam.numpy(), l.numpy(), axis=0, bc_type="natural")(lam.numpy(), 1))
    a = 1.0 - l
    ef = a * m["y"] - m["x0"]
    edf = a * m["dy"] - dl * m["y"] - m["dx0"]
    eff = a * a * m["yy"] - 2 * a * m["yx0"] + m["x0x0"]
    efdf = (a * a * m["ydy"] - a * dl * m["yy"] - a * m["ydx0"] - a * m["x0dy"] + dl * m["yx0"] + m["x0dx0"])
    var = eff - ef * ef
    cov = efdf - ef * edf
    tiny = 1e-12 * (eff.abs() + 1e-300)
    s = torch.where(var > tiny, cov / torch.where(var > tiny, var, torch.ones_like(var)), torch.zeros_like(var))
    b = edf - s * ef
    return l, s, b


def _data_hash(data: Tensor) -> str:
    return hashlib.sha256(data.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def compute_ems(denoiser: Any, data: Tensor, *, n_lambda: int = 120, n_samples: int = 1024, batch_size: int = 64,
                seed: int = 0, progress: bool = True, state_dir: str | os.PathLike | None = None,
                cond: dict[str, Any] | None = None, delta: float = 1e-3) -> EMS:
    """Empirical model statistics of ``denoiser`` on clean samples ``data`` ``(N, *sample_shape)``.

    At each of the ``n_lambda + 1`` points of a uniform half log-SNR grid over the process's time range,
    ``n_samples`` points ``x = alpha x0 + sigma eps`` (``x0`` drawn from ``data``; all randomness from
    ``(seed, lambda index)``) give the per-element sums of :data:`MOMENTS`; ``state_dir`` keeps them (one
    atomically written file per lambda) so that a rerun with the same settings continues.  Computed in
    ``data``'s dtype (the model's); sums in float64.
    """
    if n_lambda < 2 or n_samples < 2 or batch_size < 1:
        raise ValueError("n_lambda and n_samples must be at least 2 and batch_size at least 1")
    data = torch.as_tensor(data)
    if data.ndim < 2 or len(data) == 0:
        raise ValueError("data must be a non-empty batch of samples (N, *sample_shape)")
    shape = getattr(denoiser, "sample_shape", None)
    if shape is not None and tuple(data.shape[1:]) != tuple(shape):
        raise ValueError(f"data samples have shape {tuple(data.shape[1:])} but the model makes {tuple(shape)}")
    process = denoiser.process
    lam = _lambda_grid(process, n_lambda)
    lam_range = (float(lam[0]), float(lam[-1]))
    settings = {"process": process.config(), "fingerprint": model_fingerprint(innermost(denoiser)), "n_lambda": n_lambda,
                "n_samples": n_samples, "seed": seed, "data_sha256": _data_hash(data), "n_data": len(data),
                "delta": delta}
    state = Path(state_dir) if state_dir is not None else None
    if state is not None:
        state.mkdir(parents=True, exist_ok=True)
        run_file = state / "run.json"
        if run_file.exists():
            old = json.loads(run_file.read_text())
            if old != settings:
                diff = sorted(k for k in settings if old.get(k) != settings[k])
                raise ValueError(f"the partial sums in {state} were computed with other settings ({', '.join(diff)}); "
                                 f"use the same ones or delete that folder")
        else:
            atomic_write_text(run_file, json.dumps(settings, indent=2, sort_keys=True))
    from safetensors.torch import load_file, save
    from tqdm.auto import tqdm

    device = next((q.device for net in denoiser.networks() for q in net.parameters()), data.device)
    sums: list[dict[str, Tensor]] = []
    bar = tqdm(total=len(lam), desc="ems", unit="lambda", disable=not progress, dynamic_ncols=True)
    for k, lam_k in enumerate(lam.tolist()):
        part = state / f"lam-{k:05d}.safetensors" if state is not None else None
        if part is not None and part.exists():
            sums.append(load_file(str(part)))
            bar.update(1)
            continue
        g = torch.Generator().manual_seed(seed * 1_000_003 + k)
        idx = torch.randint(len(data), (n_samples,), generator=g)
        eps = torch.randn((n_samples, *data.shape[1:]), generator=g, dtype=torch.float64)
        v = torch.randint(0, 2, eps.shape, generator=g, dtype=torch.float64) * 2 - 1
        acc: dict[str, Tensor] = {}
        for i in range(0, n_samples, batch_size):
            sl = slice(i, i + batch_size)
            x0_data, e, vv = (u.to(device=device, dtype=data.dtype) for u in (data[idx[sl]], eps[sl], v[sl]))
            with torch.no_grad():
                got = _moments_at(denoiser, x0_data, e, vv, lam_k, lam_range, delta, cond or {})
            got = {n: t.cpu() for n, t in got.items()}
            acc = got if not acc else {n: acc[n] + got[n] for n in acc}
        acc["n"] = torch.tensor(float(n_samples), dtype=torch.float64)
        if part is not None:
            atomic_write_bytes(part, save({n: t.contiguous() for n, t in acc.items()}))
        sums.append(acc)
        bar.update(1)
    bar.close()
    l, s, b = _finish(lam, sums)
    meta = {key: settings[key] for key in ("process", "fingerprint", "n_lambda", "n_samples", "seed", "data_sha256")}
    return EMS(lam, l, s, b, meta)
