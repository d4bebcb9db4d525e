"""``fewstep bench gmm``: every solver x NFE x grid on an exact 64-d low-rank Gaussian mixture.

Two numbers per configuration, both exact up to Monte-Carlo error:

* trajectory RMSE to the float64 reference solution of the probability-flow ODE started from
  the same ``x_T`` (meaningful for deterministic solvers; stochastic ones follow other paths);
* the Frechet distance of the samples to the mixture's exact mean and covariance, next to the
  finite-sample floor (the distance of as many exact draws to the same moments).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import solvers
from ..api import generators, prior_noise, sample
from ..exact import GaussianMixture, reference_solution
from ..grids import GRIDS
from ..grids.files import is_grid_file
from ..processes import EDM, NoiseProcess, RectifiedFlow, VPDiscrete, VPLinear
from ..metrics.frechet import frechet_distance_to_moments
from .._io import atomic_write_text

__all__ = ["GMMBenchConfig", "run_gmm_bench", "bench_mixture", "BENCH_PROCESSES"]

BENCH_PROCESSES: dict[str, Any] = {
    "vp_linear_ddpm": lambda: VPDiscrete.linear(1000, 1e-4, 0.02),
    "vp_cosine_ddpm": lambda: VPDiscrete.cosine(1000),
    "vp_linear": lambda: VPLinear(),
    "edm": lambda: EDM(0.002, 80.0),
    "rectified_flow": lambda: RectifiedFlow(),
}


def bench_mixture() -> GaussianMixture:
    """The benchmark's data: 8 components of rank 4 in 64 dimensions (a fixed seed)."""
    return GaussianMixture.random_low_rank(dim=64, components=8, rank=4, floor=0.02, seed=0)


@dataclass
class GMMBenchConfig:
    solvers: list[str] | None = None
    nfes: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 8, 10, 15, 20])
    grids: list[str] = field(default_factory=lambda: ["logsnr", "uniform", "quadratic", "karras"])
    processes: list[str] = field(default_factory=lambda: ["vp_linear_ddpm", "edm"])
    n: int = 2000
    seed: int = 0
    out: str | None = "bench-gmm"
    floor_draws: int = 5


def _validate(cfg: GMMBenchConfig) -> list[str]:
    names = cfg.solvers or [s.name for s in solvers.specs() if s.fixed_nfe]
    for name in names:
        solvers.get(name)  # raises with the valid names
    for p in cfg.processes:
        if p not in BENCH_PROCESSES:
            raise ValueError(f"unknown bench process {p!r}; valid: {', '.join(BENCH_PROCESSES)}")
    for g in cfg.grids:
        if g not in GRIDS and not is_grid_file(g):
            raise ValueError(f"unknown grid {g!r}; valid grids: {', '.join(GRIDS)} or a grid file (.json)")
    if not cfg.nfes or min(cfg.nfes) < 1:
        raise ValueError("--nfe needs positive evaluation counts, e.g. 5,10,20")
    if cfg.n < 2 * 64:
        raise ValueError("--n must be at least 128 samples for a 64-d covariance estimate")
    return [solvers.get(n).name for n in names]


def finite_sample_floor(gmm: GaussianMixture, n: int, draws: int, seed: int) -> float:
    """Mean Frechet distance of ``n`` exact draws to the exact moments."""
    g = torch.Generator().manual_seed(10_000 + seed)
    return sum(frechet_distance_to_moments(gmm.sample(n, g), gmm.mean, gmm.covariance) for _ in range(draws)) / draws


def run_gmm_bench(cfg: GMMBenchConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Run the sweep, print the tables and write CSV, JSON and PNG into ``cfg.out``."""
    names = _validate(cfg)
    gmm = bench_mixture()
    mean, cov = gmm.mean, gmm.covariance
    floor = finite_sample_floor(gmm, cfg.n, cfg.floor_draws, cfg.seed)
    seeds = range(cfg.seed * cfg.n, (cfg.seed + 1) * cfg.n)
    jobs = [(p, s, g, nfe) for p in cfg.processes for s in names for g in cfg.grids for nfe in cfg.nfes
            if nfe >= solvers.get(s).min_nfe]
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(jobs), desc="bench gmm", disable=not progress, mininterval=1.0)
    for pname in cfg.processes:
        process: NoiseProcess = BENCH_PROCESSES[pname]()
        den = gmm.denoiser(process)
        x_T = prior_noise(process, (gmm.dim,), generators(seeds), dtype=torch.float64)
        bar.set_postfix_str(f"{pname}: reference ODE")
        ref = reference_solution(den, x_T, rtol=1e-9, atol=1e-9)
        for job in [j for j in jobs if j[0] == pname]:
            _, sname, grid, nfe = job
            bar.set_postfix_str(f"{pname} {sname} {grid} nfe={nfe}")
            spec = solvers.get(sname)
            start = time.perf_counter()
            note = ""
            try:
                out = sample(den, x_T, sname, nfe, grid, generators(seeds))
            except solvers.NonFiniteError as err:
                out, note = None, str(err).splitlines()[0]
            seconds = time.perf_counter() - start
            row = {"process": pname, "solver": sname, "grid": grid, "nfe": nfe, "stochastic": spec.stochastic,
                   "rmse": math.nan, "fd": math.nan, "fd_floor": floor, "seconds": seconds, "note": note}
            if out is not None:
                row["rmse"] = float((out - ref).pow(2).mean().sqrt())
                row["fd"] = frechet_distance_to_moments(out, mean, cov)
            rows.append(row)
            bar.update()
    bar.close()
    print(format_tables(rows, cfg, floor))
    if cfg.out:
        write_outputs(rows, cfg, floor)
    return rows


def best_by_solver(rows: list[dict[str, Any]], key: str = "fd") -> dict[tuple[str, str, int], dict[str, Any]]:
    """For each (process, solver, nfe), the row with the best ``key`` over grids."""
    best: dict[tuple[str, str, int], dict[str, Any]] = {}
    for r in rows:
        k = (r["process"], r["solver"], r["nfe"])
        if not math.isnan(r[key]) and (k not in best or r[key] < best[k][key]):
            best[k] = r
    return best


def format_tables(rows: list[dict[str, Any]], cfg: GMMBenchConfig, floor: float) -> str:
    """Plain-text tables: per process, the best-over-grids FD and RMSE of each solver at each NFE."""
    lines = []
    for key, title in [("fd", "Frechet distance to the exact moments"), ("rmse", "trajectory RMSE to the reference ODE solution")]:
        best = best_by_solver(rows, key)
        for pname in cfg.processes:
            lines.append(f"\n{title} — {pname}, best grid per cell"
                         + (f" (finite-sample floor {floor:.4f}, n={cfg.n})" if key == "fd" else ""))
            head = f"{'solver':<14}" + "".join(f"{'nfe=' + str(n):>18}" for n in cfg.nfes)
            lines.append(head)
            names = sorted({r["solver"] for r in rows if r["process"] == pname},
                           key=lambda s: [r["solver"] for r in rows].index(s))
            for s in names:
                cells = []
                for n in cfg.nfes:
                    r = best.get((pname, s, n))
                    cells.append(f"{'-':>18}" if r is None else f"{r[key]:>10.4f} {r['grid'][:7]:>7}")
                mark = "*" if solvers.get(s).stochastic else ""
                lines.append(f"{s + mark:<14}" + "".join(cells))
    lines.append("\n* stochastic solver: its RMSE is to the ODE solution, which it does not follow.")
    return "\n".join(lines)


def format_markdown(rows: list[dict[str, Any]], cfg: GMMBenchConfig, floor: float) -> str:
    """A Markdown table per process: the best-over-grids Frechet distance of each solver at each NFE."""
    best = best_by_solver(rows, "fd")
    parts = []
    for pname in cfg.processes:
        names = list(dict.fromkeys(r["solver"] for r in rows if r["process"] == pname))
        parts.append(f"Frechet distance to the exact moments, {pname}, n={cfg.n}, best of grids "
                     f"{'/'.join(cfg.grids)} (finite-sample floor {floor:.4f})\n")
        parts.append("| solver | " + " | ".join(f"NFE {n}" for n in cfg.nfes) + " |")
        parts.append("|---|" + "---:|" * len(cfg.nfes))
        for s in names:
            cells = [f"{best[(pname, s, n)]['fd']:.4f}" if (pname, s, n) in best else "-" for n in cfg.nfes]
            parts.append(f"| {s}{' (stochastic)' if solvers.get(s).stochastic else ''} | " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


def write_outputs(rows: list[dict[str, Any]], cfg: GMMBenchConfig, floor: float) -> None:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0]) if rows else []
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())
    payload = {"config": asdict(cfg), "fd_floor": floor, "mixture": "random_low_rank(dim=64, components=8, rank=4, floor=0.02, seed=0)",
               "rows": rows}
    atomic_write_text(out / "results.json", json.dumps(payload, indent=1, allow_nan=True))
    atomic_write_text(out / "results.md", format_markdown(rows, cfg, floor))
    plot_error_vs_nfe(rows, cfg, floor, out / "error_vs_nfe.png")
    print(f"\nwrote {out / 'results.csv'}, {out / 'results.json'}, {out / 'results.md'}, {out / 'error_vs_nfe.png'}")


def plot_error_vs_nfe(rows: list[dict[str, Any]], cfg: GMMBenchConfig, floor: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(cfg.processes), figsize=(6.5 * len(cfg.processes), 9), squeeze=False)
    for col, pname in enumerate(cfg.processes):
        for r_i, key in enumerate(["fd", "rmse"]):
            ax = axes[r_i][col]
            best = best_by_solver(rows, key)
            names = list(dict.fromkeys(r["solver"] for r in rows if r["process"] == pname))
            for s in names:
                pts = [(n, best[(pname, s, n)][key]) for n in cfg.nfes if (pname, s, n) in best]
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=3, label=s, ls="--" if solvers.get(s).stochastic else "-")
            if key == "fd":
                ax.axhline(floor, color="k", lw=1, ls=":", label="finite-sample floor")
            ax.set(xscale="log", yscale="log", xlabel="NFE", title=f"{pname}: {'Frechet distance' if key == 'fd' else 'trajectory RMSE'} (best grid)")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][col].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
