"""``fewstep bench model``: sample quality against NFE and wall time for a trained model.

For every grid x solver x NFE: ``n`` samples from the same seeds, their FID (plus KID and
precision/recall) against reference statistics, their error (RMSE, PSNR) to the near-exact ODE
solution from the same seeds (:mod:`fewstep.tuning.reference_cache`, cached on disk; on by default),
and the sampling wall time.  Writes a text/markdown table, CSV, JSON, PNG plots of FID and of the
error against NFE and against wall time, and a self-contained HTML report with a sample grid for
each configuration.

*Variants* put cheaper-evaluation methods on the same axes as the plain solvers: each ``caches``
spec (feature caches and step-aware schedules, :mod:`fewstep.accel`) and each extra model in
``models`` (e.g. an int8 model from ``fewstep quantize``) runs ``variant_solvers`` at ``variant_nfes``,
scored against the same seeds, FID reference and near-exact solution (that of the main model).
With ``timing_rounds`` > 0 every configuration's wall time is re-measured after the sweep in
rounds of one ``timing_batch``-image batch, the order reversed every other round, and the
median taken: all methods are then timed with the same batch, threads and (interleaved) load.
The configurations that no other beats in both wall time and FID (and wall time and error) form
the Pareto front (:func:`pareto_front`), marked in the table, the plots and ``pareto.md``.
"""

from __future__ import annotations

import csv
import math
import io
import json
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import solvers
from .._io import atomic_write_text
from ..accel import parse_cache
from ..compose import compose_sampler
from ..denoisers import innermost
from ..grids import GRIDS
from ..grids.files import is_grid_file, own_entry
from ..metrics.distributed import default_batch_size, default_device, shard, world
from ..metrics.evaluate import DivergedError, evaluate
from ..metrics.extractors import get_extractor
from ..metrics.models import load_denoiser, reference_stats, sample_shape
from ..metrics.resume import EvalStore, evaluation_key, finished
from ..metrics.sampling import KeepFirst, solver_sample_fn
from ..onestep import OneStepGenerator
from ..tuning import NearExact, ReferenceSettings
from .report import image_grid_png, write_html_report, write_png

__all__ = ["ModelBenchConfig", "run_model_bench", "format_table", "pareto_front", "pareto_table"]

COLUMNS = ["solver", "grid", "nfe", "model", "cache", "nfe_used", "full_evals", "cached_evals", "fid", "rmse", "rmse_median", "rmse_se", "psnr", "kid", "precision",
           "recall", "sample_s", "ms_per_image", "pareto", "role"]
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
    caches: list[str] = field(default_factory=list)  # variants: cache / step-schedule specs on the main model
    models: list[str] = field(default_factory=list)  # variants: other models (e.g. quantized), plain
    variant_nfes: list[int] | None = None  # NFEs of the variants (None: nfes)
    variant_solvers: list[str] | None = None  # solvers of the variants (None: solvers)
    timing_rounds: int = 0  # > 0: re-time every configuration in interleaved rounds, median
    timing_batch: int | None = None  # images per timing batch (None: batch_size)
    generators: list[str] = field(default_factory=list)  # one-step models (fewstep distill) scored beside the solvers


GENERATOR_ROLE = "one-step generator"


Run = tuple[str, str, int, str, str]  # solver, grid, nfe, model ("" = the main one), cache ("" = none)


def _variants(cfg: ModelBenchConfig) -> list[tuple[str, str]]:
    """``(model, cache)`` of each variant; specs are parsed (and so checked) here, before any model loads."""
    out: list[tuple[str, str]] = []
    for spec in cfg.caches:
        parsed = parse_cache(spec)
        if parsed is not None:
            out.append(("", str(parsed)))
    out += [(m, "") for m in cfg.models if m != cfg.model]
    return list(dict.fromkeys(out))


def _plan(cfg: ModelBenchConfig) -> tuple[list[Run], list[str]]:
    names = solvers.available() if not cfg.solvers or cfg.solvers == ["all"] else [solvers.get(s).name for s in cfg.solvers]
    if cfg.n < 2:
        raise ValueError(f"n must be at least 2, got {cfg.n}")
    if not cfg.nfes or min(cfg.nfes) < 1:
        raise ValueError(f"NFE values must be positive integers, got {cfg.nfes}")


    bad = [g for g in cfg.grids if g not in GRIDS and g != "default" and not is_grid_file(g)]
    if bad:
        raise ValueError(f"unknown grid(s) {', '.join(bad)}; valid: default, {', '.join(GRIDS)}")
    if cfg.timing_rounds < 0 or (cfg.timing_batch is not None and cfg.timing_batch < 1):
        raise ValueError("timing rounds must be >= 0 and the timing batch positive")
    variants = [("", "")] + _variants(cfg)
    vnames = names if not cfg.variant_solvers else [solvers.get(s).name for s in cfg.variant_solvers]
    runs, skipped = [], []
    for grid in cfg.grids:
        for model, cache in variants:
            nfes = cfg.nfes if (model, cache) == ("", "") else (cfg.variant_nfes or cfg.nfes)
            for name in (names if (model, cache) == ("", "") else vnames):
                for nfe in nfes:
                    if nfe < solvers.get(name).min_nfe:
                        skipped.append(f"{name} nfe={nfe} (needs >= {solvers.get(name).min_nfe})")
                    else:
                        runs.append((name, grid, nfe, model, cache))
        if cfg.limit_nfe > 0 and (LIMIT_SOLVER, grid, cfg.limit_nfe, "", "") not in runs:
            runs.append((LIMIT_SOLVER, grid, cfg.limit_nfe, "", ""))
    return runs, skipped


def run_model_bench(cfg: ModelBenchConfig, denoiser: Any = None, progress: bool = True) -> list[dict[str, Any]]:
    """Run the sweep on ``denoiser`` (default: ``fewstep.load_model(cfg.model)``) and write the outputs.

    Every configuration goes through :func:`fewstep.metrics.evaluate.evaluate`; finished ones are
    saved in ``<out>/evaluations.json`` (:class:`~fewstep.metrics.resume.EvalStore`) and read back by a rerun.
    """
    runs, skipped = _plan(cfg)
    device = cfg.device or default_device()
    extractor = get_extractor(cfg.extractor, cfg.inception, device)
    ref = reference_stats(cfg.ref, extractor)
    denoiser = load_denoiser(cfg.model if denoiser is None else denoiser, device)
    shape = sample_shape(denoiser, cfg.shape)
    if _is_generator(denoiser):  # a one-step generator has one configuration and no ODE to compare with
        runs, skipped = [(solvers.get(cfg.solvers[0]).name if cfg.solvers else "ddim", "default", 1, "", "")], []
        cfg = replace(cfg, nfes=[1], reference=False, limit_nfe=0)
        if progress and world()[0] == 0:
            print(f"bench model: {cfg.model} is a one-step generator; scoring it at nfe=1 only, without the "
                  f"near-exact reference")
    runs = [(name, denoiser.process.default_grid if grid == "default" else grid, nfe, m, c) for name, grid, nfe, m, c in runs]
    runs, no_entry = _tuned_runs(runs, denoiser.process)
    skipped += no_entry
    models = {"": denoiser, **{m: load_denoiser(m, device) for m in dict.fromkeys(r[3] for r in runs) if m}}
    batch_size = cfg.batch_size or default_batch_size(device)
    rank0 = world()[0] == 0
    near = None
    if cfg.reference:  # fingerprinted before compiling
        cache = cfg.reference_cache or (str(Path(cfg.out) / REFERENCE_CACHE) if cfg.out else None)
        near = NearExact(denoiser, shape, range(cfg.seed, cfg.seed + cfg.n),
                         ReferenceSettings(cfg.reference_solver, cfg.reference_nfe, cfg.reference_grid),
                         cache_dir=cache, batch_size=batch_size, device=device, progress=progress and rank0)
    if cfg.compile:  # composed as every command composes (fewstep.compose); caches in the sample functions
        compose_sampler(denoiser, compile=True)
    t0 = time.perf_counter()
    store = EvalStore(Path(cfg.out) / STORE_FILE, writable=rank0) if cfg.out else None

    def sampler(run: Run) -> Any:
        name, grid, nfe, model, cache = run
        return solver_sample_fn(models[model], shape, name, nfe, grid, device, cache=cache or None)

    def key(run: Run) -> dict[str, Any]:
        return evaluation_key(run[3] or cfg.model, sampler(run).description, cfg.n,
                              cfg.seed, extractor, ref, near.description if near is not None else None)

    done = {r: store.get(key(r)) for r in runs} if store is not None else {}
    done = {r: row for r, row in done.items() if row is not None and finished(row)}
    todo = [r for r in runs if r not in done]
    per_eval = _warm_up(sampler(todo[0]), todo[0][2], batch_size, cfg.n) if todo else None
    my_seeds = shard(range(cfg.seed, cfg.seed + cfg.n), *world())  # the seeds this process samples
    missing = sum(b - a for a, b in near.missing(my_seeds)) if near is not None and todo else 0
    if progress and rank0:
        print(plan_summary(len(runs), len(done), [r[2] for r in todo], cfg.n, per_eval, str(device),
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
    for run in runs:
        name, grid, nfe, model, cache = run
        label = {"solver": name, "grid": grid, "nfe": nfe, **({"model": model} if model else {}),
                 **({"cache": cache} if cache else {})}
        plan = sampler(run).plan  # the resolved plan each row records: start, times and where they came from
        label["start"] = f"t={plan.start.t:g} ({plan.start.kind})"
        label["times_from"] = plan.sources["times"]
        png_path = Path(cfg.out) / "samples" / _grid_name(*run) if cfg.out else None
        if cfg.limit_nfe > 0 and (name, nfe, model, cache) == (LIMIT_SOLVER, cfg.limit_nfe, "", ""):
            label["role"] = "ODE limit"
        if run in done:
            rows.append(_row(label, done[run]))
            if png_path is not None and png_path.is_file():
                grids[run] = png_path.read_bytes()
            continue
        before = overall.n
        inner = sampler(run)
        sample_fn = KeepFirst(inner, cfg.grid_images)
        try:
            result = evaluate(sample_fn, cfg.n, extractor, ref, seed=cfg.seed, batch_size=batch_size,
                              progress=progress, desc=_label(label), on_batch=overall.update, reference=near)
            result.update(inner.evals_used or {})
        except (DivergedError, RuntimeError, ValueError) as err:  # diverged: inf; could not run (e.g. a cache
            # the network does not support, a budget): nan
            print(f"warning: {name} nfe={nfe}: {err}")
            result = {"n": cfg.n, "note": str(err), "fid": float("inf") if isinstance(err, DivergedError) else float("nan")}
        overall.update(per_rank - (overall.n - before))  # a failed configuration counts as done
        rows.append(_row(label, result))
        if sample_fn.images is not None:
            grids[run] = image_grid_png(sample_fn.images)
            if png_path is not None and rank0:
                write_png(png_path, grids[run])
        if store is not None:
            store.put(key(run), {**result, "device": str(device)})
    overall.close()
    if cfg.timing_rounds > 0:
        retime(rows, [sampler(r) for r in runs], cfg.timing_rounds, cfg.timing_batch or batch_size, cfg.seed,
               progress and rank0)
    for spec in cfg.generators:  # one-step generators: timed by their own evaluation, not re-timed
        rows.append(_generator_row(spec, cfg, shape, extractor, ref, batch_size, device, store, grids, progress))
    mark_pareto(rows)
    wall = time.perf_counter() - t0
    if cfg.out and rank0:
        meta = {"model": str(cfg.model), "extractor": f"{extractor.name} ({extractor.fingerprint()[:12]})",
                "reference": cfg.ref or "shipped Fashion-MNIST test-set statistics", "reference_n": ref.n,
                "samples per configuration": cfg.n, "first seed": cfg.seed, "device": str(device),
                "wall time of this run (s)": round(wall, 1),
                "sampling + feature time, all configurations (s)": round(
                    sum(r.get("sample_s", 0.0) + r.get("feature_s", 0.0) for r in rows), 1),
                "batch size": batch_size, "torch.compile": cfg.compile,
                "torch threads": torch.get_num_threads(),
                "wall time": (f"median of {cfg.timing_rounds} interleaved rounds of one {cfg.timing_batch or batch_size}"
                              f"-image batch per configuration (order reversed every other round)"
                              if cfg.timing_rounds > 0 else "the evaluation's own sampling time"), "skipped": ", ".join(skipped) or "none",
                "error reference": _reference_meta(near)}
        write_outputs(Path(cfg.out), cfg, rows, grids, meta)
    return rows


STORE_FILE = "evaluations.json"


def _tuned_runs(runs: list[tuple[Any, ...]], process: Any) -> tuple[list[tuple[Any, ...]], list[str]]:
    """Keep the runs on a grid file only where the file holds a grid optimized for that solver at that NFE
    (a tuned configuration; other solvers' grids are not benchmarked under its name)."""
    kept, skipped = [], []
    for run in runs:  # (solver, grid, nfe, ...)
        name, grid, nfe = run[:3]
        if isinstance(grid, str) and grid not in GRIDS and is_grid_file(grid):
            if own_entry(grid, process, solvers.get(name).steps_for(nfe)[0], name, nfe) is None:
                skipped.append(f"{name} nfe={nfe} on {grid} (no grid optimized for it there)")
                continue
        kept.append(run)
    return kept, skipped


def _is_generator(denoiser: Any) -> bool:
    return isinstance(innermost(denoiser), OneStepGenerator)


def _generator_row(spec: str, cfg: ModelBenchConfig, shape: tuple[int, ...], extractor: Any, ref: Any,
                   batch_size: int, device: Any, store: Any, grids: dict, progress: bool) -> dict[str, Any]:
    """Score the one-step model ``spec`` on the sweep's seeds (one step from ``t_max``): a row beside the solvers."""
    gen = load_denoiser(spec, device)
    if not _is_generator(gen):
        raise ValueError(f"--generators {spec} is not a one-step generator (a `fewstep distill --method sid` run); "
                         f"bench a diffusion model with --model")
    fn = solver_sample_fn(gen, shape, "ddim", 1, None, device)
    label = {"solver": f"{spec} (1 step)", "grid": "-", "nfe": 1, "role": GENERATOR_ROLE}
    key = evaluation_key(spec, fn.description, cfg.n, cfg.seed, extractor, ref, None)
    row = store.get(key) if store is not None else None
    if row is None or not finished(row):
        _warm_up(fn, 1, batch_size, cfg.n)
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


def _label(row: dict[str, Any]) -> str:
    """A configuration's short name: ``solver nfe=N [+ cache] [model]``."""
    text = f"{row['solver']} nfe={row['nfe']}"
    if row.get("cache"):
        text += f" + {row['cache']}"
    if row.get("model"):
        text += f" [{Path(str(row['model'])).name}]"
    return text


def retime(rows: list[dict[str, Any]], samplers: list[Any], rounds: int, batch: int, seed: int,
           progress: bool = False) -> None:
    """Re-measure each row's ``ms_per_image``: ``rounds`` rounds, each timing one ``batch``-image call
    of every sampler (seeds ``seed..``), in reversed order every other round; the median per row.

    The evaluation's own time stays as ``eval_ms_per_image``; ``ms_spread`` is (max - min) / median."""
    seeds = list(range(seed, seed + batch))
    times: list[list[float]] = [[] for _ in rows]
    order = list(range(len(rows)))
    bar = tqdm(total=rounds * len(rows), desc="timing rounds", unit="batch", disable=not progress)
    with torch.no_grad():
        for r in range(rounds):
            for i in (order if r % 2 == 0 else order[::-1]):
                if not _finite(rows[i].get("fid")):
                    bar.update()
                    continue
                start = time.perf_counter()
                samplers[i](seeds)
                times[i].append(1000 * (time.perf_counter() - start) / batch)
                bar.update()
    bar.close()
    for row, ts in zip(rows, times):
        if ts:
            med = statistics.median(ts)
            row["eval_ms_per_image"] = row.get("ms_per_image")
            row.update(ms_per_image=med, ms_spread=(max(ts) - min(ts)) / med, timing_rounds=len(ts))


def pareto_front(rows: list[dict[str, Any]], x: str = "ms_per_image", y: str = "fid") -> list[int]:
    """Indices of the rows no other row beats: none has ``x`` <= and ``y`` <= with one strictly less
    (both minimised; rows without finite values are left out).  Sorted by ``x``."""
    pts = [(r[x], r[y], i) for i, r in enumerate(rows) if _finite(r.get(x)) and _finite(r.get(y))]
    front = [i for xi, yi, i in pts
             if not any(xj <= xi and yj <= yi and (xj < xi or yj < yi) for xj, yj, _ in pts)]
    return sorted(front, key=lambda i: (rows[i][x], rows[i][y]))


def mark_pareto(rows: list[dict[str, Any]]) -> None:
    """Set each row's ``pareto`` to ``fid``, ``rmse``, ``fid+rmse`` or ``""`` (wall time against each)."""
    fronts = {m: set(pareto_front(rows, "ms_per_image", m)) for m in ("fid", "rmse")}
    for i, row in enumerate(rows):
        row["pareto"] = "+".join(m for m in ("fid", "rmse") if i in fronts[m])


def pareto_table(rows: list[dict[str, Any]], metric: str = "fid") -> str:
    """The Pareto front of wall time against ``metric`` as a markdown table."""
    front = pareto_front(rows, "ms_per_image", metric)
    other = "rmse" if metric == "fid" else "fid"
    lines = [f"| configuration | ms / image | {metric.upper()} | {other.upper()} |", "|---|---:|---:|---:|"]
    for i in front:
        r = rows[i]
        lines.append(f"| {_label(r)} | {r['ms_per_image']:.1f} | {r[metric]:.4g} | "
                     f"{r[other]:.4g} |" if _finite(r.get(other)) else
                     f"| {_label(r)} | {r['ms_per_image']:.1f} | {r[metric]:.4g} | |")
    return "\n".join(lines) + "\n"


def _warm_up(fn: Any, nfe: int, batch_size: int, n: int) -> float | None:
    """Run two batches of the first configuration: the first (kernel selection, allocations) so that
    its timing is fair, the second timed; return its seconds per image-evaluation (None on failure)."""
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


def _grid_name(name: str, grid: str, nfe: int, model: str = "", cache: str = "") -> str:
    extra = (f"_{cache}" if cache else "") + (f"_{Path(model).name}" if model else "")
    return f"{name}_{grid}_nfe{nfe}{extra}.png".replace("/", "-").replace(":", "-").replace(",", "-").replace("=", "")


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

    fig, ax = plt.subplots(figsize=(8, 5) if any(r.get("cache") or r.get("model") for r in rows) else (7, 4.5))
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h"]
    grids = list(dict.fromkeys(r["grid"] for r in rows))
    variants = list(dict.fromkeys((r.get("model", ""), r.get("cache", "")) for r in rows))
    for gi, grid in enumerate(grids):
        for vi, (model, cache) in enumerate(variants):
            for name in dict.fromkeys(r["solver"] for r in rows):
                pts = sorted((r[x], r[metric]) for r in rows if r["solver"] == name and r["grid"] == grid
                             and (r.get("model", ""), r.get("cache", "")) == (model, cache)
                             and x in r and _finite(r.get(metric)) and "role" not in r)
                if pts:
                    label = name + (f" + {cache}" if cache else "") + (f" [{Path(model).name}]" if model else "")
                    label += "" if len(grids) == 1 else f" ({grid})"
                    ax.plot(*zip(*pts), styles[(gi + (vi > 0)) % 4], marker=markers[vi % len(markers)],
                            ms=3 if vi == 0 else 5, lw=1.2 if vi == 0 else 0.8, label=label)
    for r in rows:  # one-step generators: a single point each, beside the solvers' curves
        if r.get("role") == GENERATOR_ROLE and _finite(r.get(metric)) and _finite(r.get(x)):
            ax.plot([r[x]], [r[metric]], marker="*", ms=11, ls="none", label=r["solver"])
    for r in rows:  # the near-exact solve: the value every solver tends to as NFE grows
        if r.get("role") == "ODE limit" and _finite(r.get(metric)) and r[metric] > 0:
            ax.axhline(r[metric], color="k", ls=":", lw=1,
                       label=f"ODE limit ({r['solver']}, {r['nfe']} NFE{'' if len(grids) == 1 else ', ' + r['grid']})")
    if x == "ms_per_image":  # the Pareto front of wall time against the metric
        front = [rows[i] for i in pareto_front(rows, x, metric)]
        if len(front) > 1:
            ax.step([r[x] for r in front], [r[metric] for r in front], where="post", color="k", lw=2.2, alpha=0.35,
                    label="Pareto front", zorder=0)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    if ax.lines:
        ax.legend(fontsize=6 if len(ax.lines) > 12 else 7, ncol=2)
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
    for run, png in grids.items():
        write_png(out / "samples" / _grid_name(*run), png)
    plots = [out / "fid_vs_nfe.png", out / "fid_vs_time.png"]
    _plot(rows, "nfe", "network evaluations (NFE)", plots[0], f"{cfg.model}: FID vs NFE")
    _plot(rows, "ms_per_image", "sampling wall time per image (ms)", plots[1], f"{cfg.model}: FID vs wall time")
    if any(_finite(r.get("rmse")) for r in rows):
        plots += [out / "rmse_vs_nfe.png", out / "rmse_vs_time.png"]
        ylabel = "RMSE to the near-exact solution"
        _plot(rows, "nfe", "network evaluations (NFE)", plots[2], f"{cfg.model}: error vs NFE", "rmse", ylabel)
        _plot(rows, "ms_per_image", "sampling wall time per image (ms)", plots[3],
              f"{cfg.model}: error vs wall time", "rmse", ylabel)
    pareto = "".join(f"Pareto front, wall time against {m.upper()}:\n\n" + pareto_table(rows, m) + "\n"
                     for m in ("fid", "rmse") if any(_finite(r.get(m)) for r in rows) and
                     any(_finite(r.get("ms_per_image")) for r in rows))
    if pareto:
        atomic_write_text(out / "pareto.md", pareto)
    write_html_report(out / "report.html", f"fewstep bench model: {cfg.model}", meta, rows,
                      [c for c in COLUMNS if any(c in r for r in rows)], plots,
                      {(_label({"solver": name, "nfe": 0, "model": m, "cache": c}).replace(" nfe=0", ""), grid, nfe): png
                       for (name, grid, nfe, m, c), png in grids.items()})
    print(format_table(rows))
    if pareto:
        print(pareto)
    print(f"wrote {out}/results.csv, results.json, results.md, {', '.join(p.name for p in plots)}, "
          f"{'pareto.md, ' if pareto else ''}report.html")
