"""``fewstep bench model``: sample quality against NFE and wall time for a trained model.

For every grid x solver x NFE: ``n`` samples from the same seeds, their FID (plus KID and
precision/recall) against reference statistics, their error (RMSE, PSNR) to the near-exact ODE
solution from the same seeds (:mod:`fewstep.metrics.near_exact`, cached on disk; on by default),
and the sampling wall time.  Writes a text/markdown table, CSV, JSON, PNG plots of FID and of the
error against NFE and against wall time, and a self-contained HTML report with a sample grid for
each configuration.
"""

from __future__ import annotations

import csv
import math
import io
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import solvers
from .._io import atomic_write_text
from ..metrics.near_exact import ReferenceSettings
from .report import image_grid_png, write_html_report, write_png

__all__ = ["ModelBenchConfig", "run_model_bench", "format_table"]

COLUMNS = ["solver", "grid", "nfe", "nfe_used", "fid", "rmse", "rmse_median", "rmse_se", "psnr", "kid", "precision",
           "recall", "sample_s", "ms_per_image", "role"]
REFERENCE_CACHE = "reference-cache"  # the near-exact solutions' default cache folder, inside --out
LIMIT_SOLVER = "dpm++2m"


@dataclass
class ModelBenchConfig:
    model: str = "bundled:fashion"
    solvers: list[str] | None = None
    nfes: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 8, 10, 15, 20])
    grids: list[str] = field(default_factory=lambda: ["default"])  # "default": the process's grid
    n: int = 10_000
    ref: str | None = None
    extractor: str = "auto"
    inception: str | None = None
    batch_size: int | None = None  # None: 64 on a CPU, 500 on a GPU
    compile: bool = False
    limit_nfe: int = 0  # > 0: also a near-exact ODE solve (dpm++2m at this NFE), the FID the solvers converge to
    seed: int = 0
    device: str | None = None
    shape: list[int] | None = None
    grid_images: int = 64
    out: str | None = "bench-model"
    reference: bool = True  # the error (RMSE, PSNR) to the near-exact ODE solution from the same seeds
    reference_solver: str = ReferenceSettings.solver
    reference_nfe: int = ReferenceSettings.nfe
    reference_grid: str | None = ReferenceSettings.grid  # None: the process's default grid
    reference_cache: str | None = None  # None: <out>/reference-cache (in memory only without out)
    generators: list[str] = field(default_factory=list)  # one-step models (fewstep distill) scored beside the solvers


GENERATOR_ROLE = "one-step generator"


def _plan(cfg: ModelBenchConfig) -> tuple[list[tuple[str, str, int]], list[str]]:
    names = solvers.available() if not cfg.solvers or cfg.solvers == ["all"] else [solvers.get(s).name for s in cfg.solvers]
    if cfg.n < 2:
        raise ValueError(f"n must be at least 2, got {cfg.n}")
    if not cfg.nfes or min(cfg.nfes) < 1:
        raise ValueError(f"NFE values must be positive integers, got {cfg.nfes}")
    from ..grids import GRIDS

    from ..grids.files import is_grid_file

    bad = [g for g in cfg.grids if g not in GRIDS and g != "default" and not is_grid_file(g)]
    if bad:
        raise ValueError(f"unknown grid(s) {', '.join(bad)}; valid: default, {', '.join(GRIDS)}")
    runs, skipped = [], []
    for grid in cfg.grids:
        for name in names:
            for nfe in cfg.nfes:
                if nfe < solvers.get(name).min_nfe:
                    skipped.append(f"{name} nfe={nfe} (needs >= {solvers.get(name).min_nfe})")
                else:
                    runs.append((name, grid, nfe))
        if cfg.limit_nfe > 0 and (LIMIT_SOLVER, grid, cfg.limit_nfe) not in runs:
            runs.append((LIMIT_SOLVER, grid, cfg.limit_nfe))
    return runs, skipped


def run_model_bench(cfg: ModelBenchConfig, denoiser: Any = None, progress: bool = True) -> list[dict[str, Any]]:
    """Run the sweep on ``denoiser`` (default: ``fewstep.load_model(cfg.model)``) and write the outputs.

    Every configuration goes through :func:`fewstep.metrics.evaluate.evaluate`; finished ones are
    saved in ``<out>/evaluations.json`` (:class:`~fewstep.metrics.resume.EvalStore`) and read back by a rerun.
    """
    from ..metrics.distributed import default_batch_size, default_device, shard, world
    from ..metrics.evaluate import DivergedError, evaluate
    from ..metrics.extractors import get_extractor
    from ..metrics.models import load_denoiser, reference_stats, sample_shape
    from ..metrics.near_exact import NearExact
    from ..metrics.resume import EvalStore, evaluation_key, finished
    from ..metrics.sampling import KeepFirst, solver_sample_fn

    runs, skipped = _plan(cfg)
    device = cfg.device or default_device()
    extractor = get_extractor(cfg.extractor, cfg.inception, device)
    ref = reference_stats(cfg.ref, extractor)
    denoiser = load_denoiser(cfg.model if denoiser is None else denoiser, device)
    shape = sample_shape(denoiser, cfg.shape)
    if _is_generator(denoiser):  # a one-step generator has one configuration and no ODE to compare with
        runs, skipped = [(solvers.get(cfg.solvers[0]).name if cfg.solvers else "ddim", "default", 1)], []
        cfg = replace(cfg, nfes=[1], reference=False, limit_nfe=0)
        if progress and world()[0] == 0:
            print(f"bench model: {cfg.model} is a one-step generator; scoring it at nfe=1 only, without the "
                  f"near-exact reference")
    runs = [(name, denoiser.process.default_grid if grid == "default" else grid, nfe) for name, grid, nfe in runs]
    batch_size = cfg.batch_size or default_batch_size(device)
    rank0 = world()[0] == 0
    near = None
    if cfg.reference:  # fingerprinted before compiling
        cache = cfg.reference_cache or (str(Path(cfg.out) / REFERENCE_CACHE) if cfg.out else None)
        near = NearExact(denoiser, shape, range(cfg.seed, cfg.seed + cfg.n),
                         ReferenceSettings(cfg.reference_solver, cfg.reference_nfe, cfg.reference_grid),
                         cache_dir=cache, batch_size=batch_size, device=device, progress=progress and rank0)
    if cfg.compile:
        from ..compiling import compile_denoiser

        compile_denoiser(denoiser)
    t0 = time.perf_counter()
    store = EvalStore(Path(cfg.out) / STORE_FILE, writable=rank0) if cfg.out else None

    def key(name: str, grid: str, nfe: int) -> dict[str, Any]:
        return evaluation_key(cfg.model, solver_sample_fn(denoiser, shape, name, nfe, grid).description, cfg.n,
                              cfg.seed, extractor, ref, near.description if near is not None else None)

    done = {r: store.get(key(*r)) for r in runs} if store is not None else {}
    done = {r: row for r, row in done.items() if row is not None and finished(row)}
    todo = [r for r in runs if r not in done]
    per_eval = _warm_up(denoiser, shape, todo, batch_size, cfg.n, device) if todo else None
    my_seeds = shard(range(cfg.seed, cfg.seed + cfg.n), *world())  # the seeds this process samples
    missing = sum(b - a for a, b in near.missing(my_seeds)) if near is not None and todo else 0
    if progress and rank0:
        print(plan_summary(len(runs), len(done), [nfe for _, _, nfe in todo], cfg.n, per_eval, str(device),
                           reference=(missing, len(my_seeds), cfg.reference_nfe) if near is not None and todo
                           else None),
              flush=True)
    if missing:  # the near-exact solutions first, so that no configuration's timing includes them
        try:
            near.prepare(my_seeds)
        except DivergedError as err:
            print(f"warning: no error to the near-exact solution: {err}")
            near = None
    per_rank = len(my_seeds)  # the samples this process makes per configuration
    overall = tqdm(total=len(todo) * per_rank, desc="all configurations", unit="img",
                   disable=not progress or not rank0 or not todo, position=0)
    rows, grids = [], {}
    for name, grid, nfe in runs:
        label = {"solver": name, "grid": grid, "nfe": nfe}
        png_path = Path(cfg.out) / "samples" / _grid_name(name, grid, nfe) if cfg.out else None
        if cfg.limit_nfe > 0 and (name, nfe) == (LIMIT_SOLVER, cfg.limit_nfe):
            label["role"] = "ODE limit"
        if (name, grid, nfe) in done:
            rows.append(_row(label, done[(name, grid, nfe)]))
            if png_path is not None and png_path.is_file():
                grids[(name, grid, nfe)] = png_path.read_bytes()
            continue
        before = overall.n
        sample_fn = KeepFirst(solver_sample_fn(denoiser, shape, name, nfe, grid, device), cfg.grid_images)
        try:
            result = evaluate(sample_fn, cfg.n, extractor, ref, seed=cfg.seed, batch_size=batch_size,
                              progress=progress, desc=f"{name} nfe={nfe}", on_batch=overall.update, reference=near)
        except (DivergedError, RuntimeError) as err:  # diverged: inf; could not run (e.g. budget): nan
            print(f"warning: {name} nfe={nfe}: {err}")
            result = {"n": cfg.n, "note": str(err), "fid": float("inf") if isinstance(err, DivergedError) else float("nan")}
        overall.update(per_rank - (overall.n - before))  # a failed configuration counts as done
        rows.append(_row(label, result))
        if sample_fn.images is not None:
            grids[(name, grid, nfe)] = image_grid_png(sample_fn.images)
            if png_path is not None and rank0:
                write_png(png_path, grids[(name, grid, nfe)])
        if store is not None:
            store.put(key(name, grid, nfe), {**result, "device": str(device)})
    overall.close()
    for spec in cfg.generators:
        rows.append(_generator_row(spec, cfg, shape, extractor, ref, batch_size, device, store, grids, progress))
    wall = time.perf_counter() - t0
    if cfg.out and rank0:
        meta = {"model": str(cfg.model), "extractor": f"{extractor.name} ({extractor.fingerprint()[:12]})",
                "reference": cfg.ref or "shipped Fashion-MNIST test-set statistics", "reference_n": ref.n,
                "samples per configuration": cfg.n, "first seed": cfg.seed, "device": str(device),
                "wall time of this run (s)": round(wall, 1),
                "sampling + feature time, all configurations (s)": round(
                    sum(r.get("sample_s", 0.0) + r.get("feature_s", 0.0) for r in rows), 1),
                "batch size": batch_size, "torch.compile": cfg.compile, "skipped": ", ".join(skipped) or "none",
                "error reference": _reference_meta(near)}
        write_outputs(Path(cfg.out), cfg, rows, grids, meta)
    return rows


STORE_FILE = "evaluations.json"


def _is_generator(denoiser: Any) -> bool:
    from ..distill.generator import OneStepGenerator

    inner = denoiser
    while hasattr(inner, "inner"):
        inner = inner.inner
    return isinstance(inner, OneStepGenerator)


def _generator_row(spec: str, cfg: ModelBenchConfig, shape: tuple[int, ...], extractor: Any, ref: Any,
                   batch_size: int, device: Any, store: Any, grids: dict, progress: bool) -> dict[str, Any]:
    """Score the one-step model ``spec`` on the sweep's seeds (one step from ``t_max``): a row beside the solvers."""
    from ..metrics.evaluate import evaluate
    from ..metrics.models import load_denoiser
    from ..metrics.resume import evaluation_key, finished
    from ..metrics.sampling import KeepFirst, solver_sample_fn

    gen = load_denoiser(spec, device)
    if not _is_generator(gen):
        raise ValueError(f"--generators {spec} is not a one-step generator (a `fewstep distill --method sid` run); "
                         f"bench a diffusion model with --model")
    fn = solver_sample_fn(gen, shape, "ddim", 1, None, device)
    label = {"solver": f"{spec} (1 step)", "grid": "-", "nfe": 1, "role": GENERATOR_ROLE}
    key = evaluation_key(spec, fn.description, cfg.n, cfg.seed, extractor, ref, None)
    row = store.get(key) if store is not None else None
    if row is None or not finished(row):
        _warm_up(gen, shape, [("ddim", gen.process.default_grid, 1)], batch_size, cfg.n, device)
        sample_fn = KeepFirst(fn, cfg.grid_images)
        row = evaluate(sample_fn, cfg.n, extractor, ref, seed=cfg.seed, batch_size=batch_size, progress=progress,
                       desc=f"{spec} (1 step)")
        if sample_fn.images is not None:
            grids[(f"{spec}-1step", "-", 1)] = image_grid_png(sample_fn.images)
        if store is not None:
            store.put(key, {**row, "device": str(device)})
    return _row(label, row)


def _reference_meta(near: Any) -> str:
    """One line describing the near-exact solution the errors are measured against."""
    if near is None:
        return "none (--no-reference)"
    d = near.description
    where = f"cache {near.folder}" if near.folder is not None else "not cached"
    return (f"near-exact ODE solution x0_hat(x(t_min), t_min): {d['solver']}, {d['nfe']} NFE, {d['grid']} grid, "
            f"{d['dtype']}; RMSE/PSNR of samples clamped to [-1, 1], PSNR with data range 2; {where}")


def _row(label: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """A table row: the configuration, then its metrics and timings."""
    role = {"role": label["role"]} if "role" in label else {}
    config = {k: v for k, v in label.items() if k != "role"}
    return {**config, **{k: v for k, v in result.items() if k not in label and k != "device"}, **role}


def _warm_up(denoiser: Any, shape: tuple[int, ...], todo: list[tuple[str, str, int]], batch_size: int, n: int,
             device: Any) -> float | None:
    """Run two batches of the first configuration: the first (kernel selection, allocations) so that
    its timing is fair, the second timed; return its seconds per image-evaluation (None on failure)."""
    from ..metrics.sampling import solver_sample_fn

    name, grid, nfe = todo[0]
    fn = solver_sample_fn(denoiser, shape, name, nfe, grid, device)
    seeds = list(range(min(batch_size, n)))
    try:
        with torch.no_grad():
            fn(seeds)
            start = time.perf_counter()
            fn(seeds)
    except (ValueError, FloatingPointError, RuntimeError):
        return None  # a diverging first configuration is reported in its row
    return (time.perf_counter() - start) / (len(seeds) * max(1.0, fn.nfe_used or nfe))


def plan_summary(configs: int, resumed: int, nfes: list[int], n: int, per_eval: float | None, device: str,
                 reference: tuple[int, int, int] | None = None) -> str:
    """What the sweep will run and about how long it will take (from the warm-up batch).

    ``reference``: ``(samples still to compute, samples in all, NFE)`` of the near-exact solution, if measured.
    """
    samples = len(nfes) * n
    evals = n * sum(nfes)
    text = (f"bench model: {configs} configurations x {n} samples; {resumed} already done, {len(nfes)} to run: "
            f"{samples:,} samples, {evals:,} image-evaluations")
    if reference is not None:
        todo, total, ref_nfe = reference
        text += (f", plus the near-exact reference: {todo:,} samples x {ref_nfe} NFE to compute "
                 f"({total - todo:,} cached)" if todo else ", plus the near-exact reference (all cached)")
        evals += todo * ref_nfe
    if per_eval is None:
        return text + "; no time estimate (the warm-up batch failed)"
    hours = evals * per_eval / 3600
    text += f"; estimated {_duration(evals * per_eval)} on {device} ({1000 * per_eval:.2f} ms per image-evaluation)"
    if hours > 1:
        text += (". That is long: fewer --nfe values, --solvers or a smaller --n (e.g. 1000) make a quick look, "
                 "and a rerun with the same --out resumes where this one stops")
    return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _grid_name(name: str, grid: str, nfe: int) -> str:
    return f"{name}_{grid}_nfe{nfe}.png".replace("/", "-")


def format_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    """The results as an aligned text table or a markdown table."""
    cols = [c for c in COLUMNS if any(c in r for r in rows)]

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    body = [[cell(r.get(c, "")) for c in cols] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body]) + "\n"
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*cols)] + [fmt.format(*b) for b in body]) + "\n"


def _plot(rows: list[dict[str, Any]], x: str, xlabel: str, path: Path, title: str, metric: str = "fid",
          ylabel: str = "FID (lower is better)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ["-", "--", ":", "-."]
    grids = list(dict.fromkeys(r["grid"] for r in rows))
    for gi, grid in enumerate(grids):
        for name in dict.fromkeys(r["solver"] for r in rows):
            pts = sorted((r[x], r[metric]) for r in rows if r["solver"] == name and r["grid"] == grid
                         and x in r and _finite(r.get(metric)) and "role" not in r)
            if pts:
                label = name if len(grids) == 1 else f"{name} ({grid})"
                ax.plot(*zip(*pts), styles[gi % 4], marker="o", ms=3, label=label)
    for r in rows:  # one-step generators: a single point each, beside the solvers' curves
        if r.get("role") == GENERATOR_ROLE and _finite(r.get(metric)) and _finite(r.get(x)):
            ax.plot([r[x]], [r[metric]], marker="*", ms=11, ls="none", label=r["solver"])
    for r in rows:  # the near-exact solve: the value every solver tends to as NFE grows
        if r.get("role") == "ODE limit" and _finite(r.get(metric)) and r[metric] > 0:
            ax.axhline(r[metric], color="k", ls=":", lw=1,
                       label=f"ODE limit ({r['solver']}, {r['nfe']} NFE{'' if len(grids) == 1 else ', ' + r['grid']})")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    if ax.lines:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_png(path, buf.getvalue())


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def write_outputs(out: Path, cfg: ModelBenchConfig, rows: list[dict[str, Any]], grids: dict, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "results.json", json.dumps({"config": asdict(cfg), "meta": meta, "rows": rows}, indent=2) + "\n")
    atomic_write_text(out / "results.md", format_table(rows, markdown=True))
    for (name, grid, nfe), png in grids.items():
        write_png(out / "samples" / _grid_name(name, grid, nfe), png)
    plots = [out / "fid_vs_nfe.png", out / "fid_vs_time.png"]
    _plot(rows, "nfe", "network evaluations (NFE)", plots[0], f"{cfg.model}: FID vs NFE")
    _plot(rows, "ms_per_image", "sampling wall time per image (ms)", plots[1], f"{cfg.model}: FID vs wall time")
    if any(_finite(r.get("rmse")) for r in rows):
        plots += [out / "rmse_vs_nfe.png", out / "rmse_vs_time.png"]
        ylabel = "RMSE to the near-exact solution"
        _plot(rows, "nfe", "network evaluations (NFE)", plots[2], f"{cfg.model}: error vs NFE", "rmse", ylabel)
        _plot(rows, "ms_per_image", "sampling wall time per image (ms)", plots[3],
              f"{cfg.model}: error vs wall time", "rmse", ylabel)
    write_html_report(out / "report.html", f"fewstep bench model: {cfg.model}", meta, rows,
                      [c for c in COLUMNS if any(c in r for r in rows)], plots, grids)
    print(format_table(rows))
    print(f"wrote {out}/results.csv, results.json, results.md, {', '.join(p.name for p in plots)}, report.html")
