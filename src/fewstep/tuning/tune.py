"""``fewstep.tune``: tune sampling plans for a user's model, then keep only those that win on fresh seeds.

For each solver x NFE (a *step*) the candidates are built on *tuning* seeds, as ``benchmarks/seed_samplers_fashion.py``
and ``benchmarks/teleport.py`` did by hand:

1. a teleported start (:mod:`fewstep.teleport`, Wang & Vastola 2024): the process's default grid from each of a
   few start times is scored against the near-exact solution; the best start (or ``t_max``) wins;
2. a searched grid (:func:`fewstep.tuning.search.search_grid`, Align-Your-Steps style) from the best start grid,
   moving the teleport time as one more coordinate;
3. DC-Solver's compensation ratios on that grid (``dc_solver``; :func:`fewstep.solvers.dc.search_ratios`);
4. TimeTuner network times on top of the best so far (:func:`fewstep.tuning.timetuner.tune_net_times`);
5. ``dpm_v3``: DPM-Solver-v3 with the model's empirical statistics (computed from ``data`` when cheap enough);
   a solver outside the standard set is also tried on its best named grid.

A stage's output becomes a candidate only when it lowers the tuning error.  Every candidate is then validated
on *validation* seeds that no choice saw (:mod:`fewstep.tuning.validate`) against the best standard solver x
named grid at the same NFE, and kept only when the bootstrap interval of its error ratio lies below 1; the
best kept candidate of a step is its plan, written as a grid file entry (the statistics in its provenance), and
a report (JSON and Markdown) says why every other candidate was dropped.

Each finished step, the baseline of each NFE and the near-exact references are saved atomically in
``<out stem>.tune/``; a rerun with the same settings reads them back instead of recomputing.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from .. import solvers
from .. import solvers as registry  # where a parameter is named `solvers`
from .._io import atomic_write_text
from .._version import __version__
from ..api import generators, prior_noise
from ..data import load_data, to_model_range
from ..denoisers import DenoiserWrapper
from ..fingerprint import model_fingerprint
from ..grids import GRIDS, make_grid
from ..grids.files import GridEntry, read_grid_file, write_grid_file
from ..nettimes import time_tuned
from ..solution_error import per_sample_rmse
from ..solvers._common import NonFiniteError
from ..solvers.dpm_v3 import EMS, find_ems
from ..teleport import GAUSSIAN_FILE, find_gaussian, gaussian_of, load_gaussian, save_gaussian, truncate
from .dc import search_ratios
from .ems import compute_ems
from .reference import ReferenceSettings
from .reference_cache import NearExact
from .reference_set import ReferenceSet
from .search import search_grid
from .timetuner import tune_net_times
from .validate import best_standard, check_disjoint, compare, judge

__all__ = ["tune", "TuneReport", "STANDARD_SOLVERS", "START_NOISE_LEVELS", "default_starts"]

FORMAT = "fewstep-tune-1"
STANDARD_SOLVERS = ("ipndm", "unipc", "dpm++3m")
"""The standard solvers of the baseline (each on every named grid): the best ones at 5-10 NFE in docs/solvers.md."""
START_NOISE_LEVELS = (80.0, 40.0, 25.0, 15.0, 10.0, 6.0)
"""Teleport starts scanned by default, as noise levels ``sigma / alpha`` (DDPM linear: t = 930, 853, 796, 730,
674, 595; the best on bundled:fashion were 700 at 5-6 NFE and 900 at 8-10, docs/solvers.md)."""
DC_SOLVER = "dc_solver"
EMS_EVALS_PER_SAMPLE = 8  # one forward, a JVP of a doubled batch, two forwards for the time derivative


def default_starts(process: Any) -> list[float]:
    """The times of :data:`START_NOISE_LEVELS` that lie inside the process's range, decreasing."""
    out = []
    for s in START_NOISE_LEVELS:
        t = float(process.t_of_lambda(torch.tensor(-math.log(s), dtype=torch.float64)))
        if process.t_min < t < process.t_start and all(abs(t - u) > 1e-6 * max(1.0, abs(u)) for u in out):
            out.append(t)
    return sorted(out, reverse=True)


# --------------------------------------------------------------------------------------------------- report

@dataclass
class TuneReport:
    """What :func:`tune` found: per step (solver, NFE) every candidate with its validation statistics and verdict,
    the plan kept (if any), the baseline of each NFE, and notes on what was skipped and why."""

    plans: Path | None                 # the grid file of kept plans (None when nothing won)
    report_json: Path
    report_md: Path
    steps: list[dict[str, Any]]
    baselines: dict[int, dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0               # wall time of this call
    cpu_seconds: float = 0.0           # CPU time of this process during it (all threads)

    @property
    def kept(self) -> list[tuple[str, int, str, float]]:
        """``(solver, nfe, candidate, ratio to the best standard solver)`` of every plan written."""
        out = []
        for s in self.steps:
            c = next((c for c in s["candidates"] if c["name"] == s.get("plan")), None)
            if c is not None:
                out.append((s["solver"], s["nfe"], c["name"], c["validation"]["ratio"]))
        return out

    def table(self) -> str:
        """The validation table (Markdown)."""
        lines = ["| solver | NFE | candidate | RMSE | ratio to best standard [interval] | worse | verdict |",
                 "|---|---:|---|---:|---:|---:|---|"]
        for s in self.steps:
            for c in s["candidates"]:
                v = c.get("validation")
                if v is None:
                    lines.append(f"| {s['solver']} | {s['nfe']} | {c['name']} | - | - | - | {c['reason']} |")
                    continue
                mark = "**plan**" if c["name"] == s.get("plan") else ("kept" if c["kept"] else "dropped")
                lines.append(f"| {s['solver']} | {s['nfe']} | {c['name']} | {v['mean']:.4f} | {v['ratio']:.3f} "
                             f"[{v['low']:.3f}, {v['high']:.3f}] | {100 * v['worse']:.0f}% | {mark}: {c['reason']} |")
            for sk in s.get("skipped", []):
                lines.append(f"| {s['solver']} | {s['nfe']} | {sk['name']} | - | - | - | skipped: {sk['reason']} |")
        best = ", ".join(f"NFE {n} {b['name']} {b['mean']:.4f}" for n, b in sorted(self.baselines.items()))
        text = "\n".join(lines) + f"\n\nbest standard solver (chosen on the validation seeds): {best}\n"
        if self.notes:
            text += "\n" + "\n".join(f"- {n}" for n in self.notes) + "\n"
        return text


# --------------------------------------------------------------------------------------------------- state

class _State:
    """The resumable state in ``<out stem>.tune/``: ``run.json`` (the settings), ``baseline-<nfe>.json``,
    ``step-<solver>-<nfe>.json`` and the near-exact reference cache ``reference/``."""

    def __init__(self, folder: Path, settings: dict[str, Any], resume: bool):
        self.folder = folder
        run = folder / "run.json"
        if run.is_file() and resume:
            old = json.loads(run.read_text())
            if old != settings:
                diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                raise ValueError(f"{folder} holds a tuning run with other settings ({', '.join(diff)}); rerun with the "
                                 f"same ones to resume, or start afresh (resume=False / --no-resume)")
        elif folder.exists() and not resume:
            for p in list(folder.glob("step-*.json")) + list(folder.glob("baseline-*.json")) + [run]:
                p.unlink(missing_ok=True)
        self.write("run.json", settings)

    def read(self, name: str) -> dict[str, Any] | None:
        p = self.folder / name
        return json.loads(p.read_text()) if p.is_file() else None

    def write(self, name: str, value: dict[str, Any]) -> None:

        atomic_write_text(self.folder / name, json.dumps(value, indent=1) + "\n")

    def steps(self) -> list[dict[str, Any]]:
        """Every finished step, by solver and NFE."""
        found = [json.loads(p.read_text()) for p in self.folder.glob("step-*.json")]
        return sorted(found, key=lambda s: (s["solver"], s["nfe"]))


def _step_file(solver: str, nfe: int) -> str:
    return f"step-{solver.replace('+', 'p')}-{nfe}.json"


# --------------------------------------------------------------------------------------------------- candidates

@dataclass
class _Candidate:
    """One sampling configuration: solver, grid times, optional network times, solver options, teleport start."""

    name: str
    solver: str
    times: list[float]
    net_times: list[float] | None = None
    options: dict[str, Any] | None = None
    teleport: float | None = None
    tuning_score: float | None = None

    def sample_options(self) -> dict[str, Any]:
        return {**(self.options or {}), **({"teleport": self.teleport} if self.teleport is not None else {})}

    def key(self) -> str:
        """Identifies what is computed (DC-Solver without ratios is UniPC)."""
        solver = "unipc" if self.solver == DC_SOLVER and not (self.options or {}).get("ratios") else self.solver
        return json.dumps([solver, [round(t, 9) for t in self.times], self.net_times, self.options, self.teleport],
                          sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "solver": self.solver, "times": self.times, "net_times": self.net_times,
                "options": self.options, "teleport": self.teleport, "tuning_score": self.tuning_score}


def _entry(solver: str, nfe: int, steps: int, times: Sequence[float], *, net_times: Sequence[float] | None,
           options: dict[str, Any] | None, teleport: float | None, score: float | None,
           provenance: dict[str, Any]) -> Any:
    """The plan file entry of a plan: its own solver and NFE, the teleported start as the entry's ``start``."""
    return GridEntry(solver, nfe, steps, [float(t) for t in times], "tune", score,
                     None if net_times is None else [float(t) for t in net_times], provenance, options or None,
                     None if teleport is None else float(teleport))


# --------------------------------------------------------------------------------------------------- the run

class _Run:
    """Everything one :func:`tune` call shares: model, references (built when first needed), memo, budget, bar."""

    def __init__(self, den: Any, plain: Any, shape: tuple[int, ...], state: _State, *, tuning: list[int],
                 validation: list[int], reference_nfe: int, standard: Sequence[str], starts: list[float],
                 rounds: int, candidates: int, level: float, dc_seeds: int, batch_size: int, device: Any,
                 budget_s: float, timetuner: bool, progress: bool, has_gaussian: bool):
        self.den, self.plain, self.shape, self.state = den, plain, shape, state
        self.tuning, self.validation, self.reference_nfe = tuning, validation, reference_nfe
        self.standard, self.starts, self.rounds, self.candidates = list(standard), starts, rounds, candidates
        self.level, self.dc_seeds, self.batch_size, self.device = level, dc_seeds, batch_size, device
        self.budget_s, self.timetuner, self.progress = budget_s, timetuner, progress
        self.has_gaussian = has_gaussian  # teleported candidates need the data Gaussian
        self.stage_text = ""
        self.t0 = time.perf_counter()
        self.clamp = len(shape) == 3  # images live in [-1, 1]; an exact mixture's vectors do not
        self._refs: dict[str, Any] = {}
        self.memo: dict[tuple, Any] = {}
        self.errors: dict[str, list[float]] = {}  # validation errors by candidate key
        self.bar: Any = None

    # -- references ------------------------------------------------------------------------------------
    def reference(self, which: str) -> Any:
        """The :class:`ReferenceSet` of the tuning or validation seeds (near-exact solutions cached on disk)."""
        if which not in self._refs:

            seeds = self.tuning if which == "tuning" else self.validation
            self._stage(f"near-exact reference of the {which} seeds")
            ref = ReferenceSet(self.plain, self.shape, seeds, nfe=self.reference_nfe, batch_size=self.batch_size,
                               device=self.device, cache_dir=str(self.state.folder / "reference"),
                               progress=self.progress)
            ref.denoiser = self.den  # solves see the attached Gaussian / statistics; the cache key stays the model's
            self._refs[which] = ref
        return self._refs[which]

    def over_budget(self) -> bool:
        return time.perf_counter() - self.t0 > self.budget_s

    def _stage(self, text: str) -> None:
        self.stage_text = text
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)

    def on_eval(self, score: float) -> None:
        """Called after each scored solve of a search: the bar shows the score."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.stage_text}, score {score:.4g}", refresh=False)

    # -- scoring -----------------------------------------------------------------------------------------
    def tuning_score(self, c: _Candidate, nfe: int) -> float:
        """RMS distance of ``c``'s solves of the tuning seeds to their near-exact solutions (inf if it diverges)."""

        ref = self.reference("tuning")
        try:
            return ref.rmse(c.solver, nfe, torch.tensor(c.times, dtype=torch.float64),
                            time_tuned(self.den, c.times, c.net_times), c.sample_options())
        except NonFiniteError:
            return math.inf

    def validation_errors(self, c: _Candidate, nfe: int) -> list[float]:
        """Per-sample RMSE of ``c`` to the near-exact solution on the validation seeds (inf where it diverges)."""

        key = c.key() + f"|{nfe}"
        if key not in self.errors:
            ref = self.reference("validation")
            try:
                out = ref.solve(c.solver, nfe, torch.tensor(c.times, dtype=torch.float64),
                                time_tuned(self.den, c.times, c.net_times), c.sample_options())
                err = per_sample_rmse(out, ref.reference, clamp=self.clamp).numpy()
                err = np.where(np.isfinite(err), err, np.inf)
            except NonFiniteError:
                err = np.full(len(self.validation), np.inf)
            self.errors[key] = [float(v) for v in err]
        return self.errors[key]

    # -- the baseline of one NFE ------------------------------------------------------------------------
    def baseline(self, nfe: int) -> dict[str, Any]:
        """Per-sample validation errors of every standard solver x named grid at ``nfe`` and the best of them."""

        name = f"baseline-{nfe}.json"
        saved = self.state.read(name)
        if saved is not None:
            return saved
        errors: dict[str, list[float]] = {}
        for solver in self.standard:
            steps, _ = solvers.get(solver).steps_for(nfe)
            for grid in GRIDS:
                self._stage(f"NFE {nfe}: baseline {solver} @ {grid}")
                c = _Candidate(f"{solver} @ {grid}", solver, make_grid(self.den.process, steps, grid).tolist())
                errors[c.name] = self.validation_errors(c, nfe)
        best = best_standard(errors)
        out = {"nfe": nfe, "name": best, "mean": float(np.mean(errors[best])), "errors": errors}
        self.state.write(name, out)
        return out


def _grid(process: Any, steps: int, kind: Any = None, t_max: float | None = None) -> list[float]:

    return make_grid(process, steps, kind, **({"t_max": t_max} if t_max is not None else {})).tolist()


def _scan_name(kind: str, t: float | None) -> str:
    return f"{kind}@{'t_max' if t is None else f'{t:g}'}"


def _tune_step(run: _Run, solver: str, nfe: int) -> dict[str, Any]:
    """Build the candidates of one solver x NFE on the tuning seeds, validate them, choose the plan."""

    t0 = time.perf_counter()
    spec = solvers.get(solver)
    steps, _ = spec.steps_for(nfe)
    process = run.den.process
    loop = "unipc" if spec.name == DC_SOLVER else spec.name  # DC-Solver without ratios is UniPC: share its grids
    cands: list[_Candidate] = []
    skipped: list[dict[str, str]] = []
    teleports = run.has_gaussian

    def stage(text: str) -> None:
        run._stage(f"{spec.name}@{nfe}: {text}")

    # 1. the start: the default and the logSNR grid, each from t_max and from each teleport start, scored on the
    #    tuning seeds (the memo is shared with DC-Solver, whose loop is UniPC's)
    kinds = list(dict.fromkeys([process.default_grid, "logsnr"]))
    scan_key = ("scan", loop, nfe)
    if scan_key not in run.memo:
        stage("start scan")
        scores = {}
        for kind in kinds:
            for t in [None] + (run.starts if teleports else []):
                c = _Candidate("", loop, _grid(process, steps, kind, t), teleport=t)
                scores[_scan_name(kind, t)] = run.tuning_score(c, nfe)
        run.memo[scan_key] = scores
    scan = run.memo[scan_key]

    def scanned(kind: str, t: float | None) -> _Candidate:
        name = f"teleport {t:g}, {kind} grid" if t is not None else f"{kind} grid"
        return _Candidate(name, spec.name, _grid(process, steps, kind, t), teleport=t,
                          tuning_score=scan[_scan_name(kind, t)])

    start = min((scanned(k, None) for k in kinds), key=lambda c: c.tuning_score)
    if not teleports:
        skipped.append({"name": "teleport", "reason": "no data Gaussian (the model has none and no data was given)"})
    else:
        tele = min((scanned(k, t) for k in kinds for t in run.starts), key=lambda c: c.tuning_score)
        if tele.tuning_score < start.tuning_score:
            cands.append(tele)
            start = tele
        else:
            skipped.append({"name": "teleport", "reason": f"no start beat t_max on the tuning seeds (scanned "
                                                          f"{', '.join(f'{t:g}' for t in run.starts)})"})

    # a solver outside the standard set (e.g. dpm_v3 with its statistics) on its own best named grid
    if spec.name not in run.standard and spec.name != DC_SOLVER:
        stage("named grids")
        named = [_Candidate(f"{g} grid", spec.name, _grid(process, steps, g)) for g in GRIDS]
        for c in named:
            c.tuning_score = run.tuning_score(c, nfe)
        cands.append(min(named, key=lambda c: c.tuning_score))
        start = min([start, cands[-1]], key=lambda c: c.tuning_score)

    # 2. the searched grid (the teleport time moves with it)
    best = start
    search_key = ("search", loop, nfe)
    if search_key in run.memo:
        found = run.memo[search_key]
    elif run.over_budget():
        found = {"skip": "over the time budget"}
    else:

        stage("grid search")
        base = _Candidate("start", loop, start.times, teleport=start.teleport)
        times, res = search_grid(run.reference("tuning"), loop, nfe, torch.tensor(start.times, dtype=torch.float64),
                                 rounds=run.rounds, candidates=run.candidates, on_eval=run.on_eval,
                                 options=base.sample_options() or None)
        found = {"times": times.tolist(), "score": res.score, "start_score": res.start_score,
                 "teleport": float(times[0]) if start.teleport is not None else None}
        run.memo[search_key] = found
    if "skip" in found:
        skipped.append({"name": "searched grid", "reason": found["skip"]})
    elif found["score"] < start.tuning_score:
        name = ("teleport + searched grid" if found["teleport"] is not None else "searched grid")
        searched = _Candidate(name, spec.name, found["times"], teleport=found["teleport"], tuning_score=found["score"])
        cands.append(searched)
        best = searched
    else:
        skipped.append({"name": "searched grid", "reason": "the search found no grid better than its start on the "
                                                           "tuning seeds"})

    # 3. DC-Solver's ratios on the best grid so far
    if spec.name == DC_SOLVER:
        if run.over_budget():
            skipped.append({"name": f"{best.name} + DC ratios", "reason": "over the time budget"})
        else:

            stage("DC ratios")
            ref = run.reference("tuning")
            ratios = search_ratios(run.den, run.shape, nfe, run.tuning[:run.dc_seeds],
                                   reference_nfe=run.reference_nfe, grid=torch.tensor(best.times, dtype=torch.float64),
                                   dtype=ref.x_T.dtype, device=ref.x_T.device, teleport=best.teleport)
            dc = _Candidate(f"{best.name} + DC ratios", DC_SOLVER, best.times, options={"ratios": ratios},
                            teleport=best.teleport)
            dc.tuning_score = run.tuning_score(dc, nfe)
            if dc.tuning_score < best.tuning_score:
                cands.append(dc)
                best = dc
            else:
                skipped.append({"name": dc.name, "reason": "the ratios did not lower the tuning error"})

    # 4. TimeTuner's network times on top
    tt_name = f"{best.name} + TimeTuner"
    if not run.timetuner:
        skipped.append({"name": tt_name, "reason": "left out to fit the time budget"})
    elif run.over_budget():
        skipped.append({"name": tt_name, "reason": "over the time budget"})
    else:

        tt_key = ("timetuner", best.key(), nfe)  # DC-Solver without ratios kept is UniPC: tuned once
        if tt_key not in run.memo:
            stage("TimeTuner")
            net, res = tune_net_times(run.reference("tuning"), best.solver, nfe,
                                      torch.tensor(best.times, dtype=torch.float64), rounds=run.rounds,
                                      candidates=run.candidates, on_eval=run.on_eval,
                                      options=best.sample_options() or None)
            run.memo[tt_key] = (net, res.score)
        net, score = run.memo[tt_key]
        if score < best.tuning_score and net != best.times[:-1]:
            cands.append(_Candidate(tt_name, best.solver, best.times, net, best.options, best.teleport, score))
        else:
            skipped.append({"name": tt_name, "reason": "the network times did not lower the tuning error"})

    # 5. validation on fresh seeds against the best standard solver at this NFE
    base = run.baseline(nfe)
    rows, seen = [], {}
    for c in cands:
        row = c.to_dict()
        if c.key() in seen:
            row.update(validation=None, kept=False, reason=f"the same sampler as {seen[c.key()]}")
            rows.append(row)
            continue
        seen[c.key()] = c.name
        stage(f"validating {c.name}")
        errors = run.validation_errors(c, nfe)
        comp = compare(errors, base["errors"][base["name"]], level=run.level)
        kept, why = judge(comp)
        row.update(validation={**comp.to_dict(), "baseline": base["name"]}, kept=kept, reason=why)
        rows.append(row)
    kept_rows = [r for r in rows if r["kept"]]
    plan = min(kept_rows, key=lambda r: r["validation"]["mean"])["name"] if kept_rows else None
    for r in kept_rows:
        if r["name"] != plan:
            r["reason"] += f"; not the plan: {plan} errs less"
    return {"solver": spec.name, "nfe": nfe, "steps": steps, "scan": scan, "candidates": rows, "skipped": skipped,
            "plan": plan, "seconds": round(time.perf_counter() - t0, 1),
            "memo": {"search": run.memo.get(search_key)}}


# --------------------------------------------------------------------------------------------------- data

def _contiguous(seeds: Iterable[int], what: str) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds or seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise ValueError(f"the {what} seeds must be a non-empty contiguous range (e.g. 10000:10048); their near-exact "
                         f"solutions are cached by range")
    return seeds


def _load_images(data: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """``data`` as samples in the model's range: a tensor as given, or a data spec loaded and scaled to [-1, 1]."""
    if isinstance(data, torch.Tensor):
        if tuple(data.shape[1:]) != tuple(shape):
            raise ValueError(f"data samples have shape {tuple(data.shape[1:])}, the model samples {tuple(shape)}")
        return data

    images = load_data(str(data), resolution=shape[-1], channels=shape[0]).images
    if tuple(images.shape[1:]) != tuple(shape):
        raise ValueError(f"data {data!r} has images of {tuple(images.shape[1:])}, the model samples {tuple(shape)}")
    return to_model_range(images)


def _gaussian(denoiser: Any, data: Any, shape: tuple[int, ...], folder: Path, rank: int,
              notes: list[str]) -> Any:
    """The data Gaussian to attach (None when the model has its own or there is none): loaded from
    ``folder/gaussian.safetensors`` when an earlier run saved it, else fitted to ``data`` and saved there."""

    if find_gaussian(denoiser) is not None:
        notes.append("data Gaussian: the model's own")
        return None
    path = folder / GAUSSIAN_FILE
    dim = math.prod(shape)
    if path.is_file():
        g = load_gaussian(path)
        if g.dim != dim:
            raise ValueError(f"{path} is a data Gaussian of dimension {g.dim}, the model samples {dim} values; move "
                             f"it aside or write the plans into another folder")
        if isinstance(data, str) and g.meta.get("data") not in (None, data):
            raise ValueError(f"{path} was fitted to {g.meta['data']!r}, not {data!r}; move it aside or write the "
                             f"plans into another folder")
        notes.append(f"data Gaussian: {path} (saved earlier, from {g.meta.get('data', '?')})")
        return g
    if data is None:
        notes.append("data Gaussian: none (the model has none and no data was given), so no teleported candidates")
        return None
    g = gaussian_of(_load_images(data, shape))
    if dim > rank:
        g = truncate(g, rank)
    what = data if isinstance(data, str) else f"{len(data)} samples given as a tensor"
    save_gaussian(g, path, {"data": what, "shape": list(shape), "rank": min(rank, dim), "made_by": "fewstep tune"})
    notes.append(f"data Gaussian: fitted to {what} (rank {min(rank, dim)}), saved as {path}; copy it into the "
                 f"checkpoint folder so that load_model attaches it")
    return load_gaussian(path)  # the stored (float32) values, exactly what sampling will load


def _ems(denoiser: Any, data: Any, shape: tuple[int, ...], folder: Path, seconds_per_eval: float, left_s: float,
         n_lambda: int, n_samples: int, batch_size: int, progress: bool, notes: list[str]) -> tuple[Any, str | None]:
    """``(statistics to attach or None, reason dpm_v3 is skipped or None)``."""

    if find_ems(denoiser) is not None:
        notes.append("dpm_v3: the model's own empirical statistics")
        return None, None
    path = folder / "ems"
    if (path / "ems.json").is_file():
        ems = EMS.load(path)
        ems.check(denoiser)
        notes.append(f"dpm_v3: statistics from {path} (computed earlier)")
        return ems, None
    if data is None:
        return None, "no empirical statistics and no data to compute them from"
    cost = (n_lambda + 1) * n_samples * EMS_EVALS_PER_SAMPLE * seconds_per_eval
    if cost > left_s:
        return None, (f"computing its statistics ({n_lambda + 1} log-SNR points x {n_samples} samples) would take "
                      f"about {cost / 60:.0f} min, more than the budget leaves ({max(0.0, left_s) / 60:.0f} min); "
                      f"compute them once with `fewstep ems` and rerun")
    ems = compute_ems(denoiser, _load_images(data, shape), n_lambda=n_lambda, n_samples=n_samples,
                      batch_size=batch_size, progress=progress, state_dir=path / "partial")
    ems.save(path)
    shutil.rmtree(path / "partial", ignore_errors=True)
    notes.append(f"dpm_v3: statistics computed ({n_lambda + 1} x {n_samples}) and saved in {path}; copy the folder "
                 f"into the checkpoint as ems/ so that load_model attaches it")
    return EMS.load(path), None


def _seconds_per_eval(denoiser: Any, shape: tuple[int, ...], batch: int, device: Any) -> float:
    """Seconds of one network evaluation of one sample, timed on a batch (the second of two calls)."""

    x = prior_noise(denoiser.process, shape, generators(range(batch)), device=device)
    t = float(denoiser.process.t_of_lambda(torch.tensor(0.0, dtype=torch.float64)))
    with torch.inference_mode():
        denoiser.predict(x, t)
        t0 = time.perf_counter()
        denoiser.predict(x, t)
    return max((time.perf_counter() - t0) / batch, 1e-9)


# --------------------------------------------------------------------------------------------------- tune

def tune(denoiser: Any, data: Any, solvers: Sequence[str], nfes: Sequence[int], out: str | Path, *,
         tuning_seeds: Iterable[int] = range(10_000, 10_048), validation_seeds: Iterable[int] = range(20_000, 20_128),
         reference_nfe: int = 100, budget_minutes: float = 30.0, starts: Sequence[float] | None = None,
         resume: bool = True, progress: bool = True, standard: Sequence[str] = STANDARD_SOLVERS,
         rounds: int = 1, candidates: int = 2, level: float = 0.95, dc_seeds: int = 24, batch_size: int = 64,
         device: str | torch.device | None = None, shape: Sequence[int] | None = None, gaussian_rank: int = 128,
         ems_lambdas: int = 40, ems_samples: int = 256, model_name: str | None = None,
         on_step: Callable[[dict[str, Any]], None] | None = None) -> TuneReport:
    """Tune sampling plans of ``denoiser`` for each of ``solvers`` x ``nfes`` and write the winners to ``out``.

    ``data``: the training data (a ``fewstep train --data`` spec or a tensor of samples in the model's range), used
    for the data Gaussian (teleport) when the model has none attached, and for DPM-Solver-v3's statistics; ``None``
    skips what needs it.  ``tuning_seeds`` build the candidates; ``validation_seeds`` (disjoint, refused
    otherwise) judge them against the best of ``standard`` x named grids at equal NFE; a candidate is kept when
    the ``level`` bootstrap interval of its mean-error ratio lies below 1 (:mod:`fewstep.tuning.validate`).
    Errors are per-sample RMSE to the near-exact solution (dpm++3m at ``reference_nfe``, logSNR grid).
    ``starts``: teleport start times scanned (default :func:`default_starts`).  ``budget_minutes``: TimeTuner is
    left out when the estimate exceeds it, DPM-Solver-v3's statistics are skipped when they would not fit, and
    tuning stages started after it ran out are skipped (validation always runs).  ``rounds``/``candidates``: the
    coordinate descent of the grid search and TimeTuner.  ``out`` (a ``.json`` grid file) gets one entry per
    solver x NFE that won, ``<out stem>.report.json`` / ``.report.md`` the validation table; the state (finished
    steps, references) lives in ``<out stem>.tune/`` and a rerun resumes from it (``resume=False`` starts afresh).
    """

    t_start, cpu_start = time.perf_counter(), time.process_time()
    out = Path(out)
    if out.suffix != ".json":
        raise ValueError(f"out {out}: the plans are a grid file and end in .json")
    names = []
    for s in solvers:
        spec = registry.get(s)
        if spec.stochastic or not spec.fixed_nfe:
            raise ValueError(f"tune needs deterministic fixed-NFE solvers; {spec.name!r} is not")
        names.append(spec.name)
    nfes = [int(n) for n in nfes]
    if not names or not nfes:
        raise ValueError("tune needs at least one solver and one NFE")
    for s in list(names) + list(standard):
        for n in nfes:
            registry.get(s).steps_for(n)
    standard = [registry.get(s).name for s in standard]
    tuning, validation = _contiguous(tuning_seeds, "tuning"), _contiguous(validation_seeds, "validation")
    check_disjoint(tuning, validation)
    if len(validation) < 16:
        raise ValueError(f"{len(validation)} validation seeds are too few for an interval; give at least 16 "
                         f"(128 or more resolve ratios of a few percent)")
    if budget_minutes <= 0 or rounds < 1 or candidates < 1 or reference_nfe < 2:
        raise ValueError("budget_minutes, rounds, candidates must be positive and reference_nfe at least 2")
    shape = tuple(int(v) for v in (shape if shape is not None else (getattr(denoiser, "sample_shape", None) or ())))
    if not shape:
        raise ValueError("the model does not declare its sample shape; pass shape=(C, H, W)")
    process = denoiser.process
    starts = sorted({float(t) for t in starts}, reverse=True) if starts is not None else default_starts(process)
    for t in starts:
        if not process.t_min < t < process.t_max:
            raise ValueError(f"teleport start {t:g} is outside the process's times "
                             f"({process.t_min:g}, {process.t_max:g})")
    device = torch.device(device) if device is not None else \
        next((p.device for net in denoiser.networks() for p in net.parameters()), torch.device("cpu"))

    folder = out.with_name(out.stem + ".tune")
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"format": FORMAT, "model": model_fingerprint(denoiser), "shape": list(shape),
                "tuning_seeds": [tuning[0], tuning[-1] + 1], "validation_seeds": [validation[0], validation[-1] + 1],
                "reference_nfe": reference_nfe, "standard": standard, "starts": starts, "rounds": rounds,
                "candidates": candidates, "level": level, "dc_seeds": dc_seeds}
    state = _State(folder, settings, resume)
    notes: list[str] = []
    todo = [(s, n) for s in _order(names) for n in nfes if state.read(_step_file(s, n)) is None]
    base_todo = [n for n in nfes if state.read(f"baseline-{n}.json") is None]
    budget_s = 60.0 * budget_minutes

    # (a) the data Gaussian and DPM-Solver-v3's statistics, attached to a wrapper (the user's denoiser is untouched)
    den = DenoiserWrapper(denoiser)
    gaussian = _gaussian(denoiser, data, shape, out.parent, gaussian_rank, notes) if todo else None
    if gaussian is not None:
        den.data_gaussian = gaussian

    has_gaussian = find_gaussian(den) is not None
    seconds = _seconds_per_eval(denoiser, shape, min(batch_size, len(tuning)), device) if (todo or base_todo) else 0.0
    unipc_nfes = {n for s, n in todo if s == "unipc"} | {s["nfe"] for s in state.steps() if s["solver"] == "unipc"}
    reference_evals = _missing_reference(denoiser, shape, [tuning, validation], reference_nfe,
                                         folder / "reference") if (todo or base_todo) else 0

    def estimate_s(timetuner: bool) -> float:
        return _estimate(todo, base_todo, settings, seconds=seconds, timetuner=timetuner, n_tune=len(tuning),
                         n_val=len(validation), n_starts=len(starts), n_standard=len(standard), dc_seeds=dc_seeds,
                         reference_evals=reference_evals, unipc_nfes=unipc_nfes)

    skipped_solvers: dict[str, str] = {}
    if "dpm_v3" in [s for s, _ in todo]:
        ems, why = _ems(denoiser, data, shape, out.parent, seconds, budget_s - estimate_s(True), ems_lambdas,
                        ems_samples, batch_size, progress, notes)
        if ems is not None:
            den.ems = ems
        if why is not None:
            skipped_solvers["dpm_v3"] = why
            notes.append(f"dpm_v3 skipped: {why}")

    # the time estimate, and what the budget leaves out
    timetuner = True
    estimate = estimate_s(True)
    if estimate > budget_s:
        timetuner = False
        estimate = estimate_s(False)
        notes.append(f"TimeTuner left out: with it the estimate exceeded the budget of {budget_minutes:g} min")
    if progress and (todo or base_todo):
        done = len(names) * len(nfes) - len(todo)
        print(f"fewstep tune: {len(names)} solver(s) x NFE {','.join(map(str, nfes))}"
              f"{f' ({done} step(s) done earlier)' if done else ''}; {len(tuning)} tuning and {len(validation)} "
              f"validation seeds, reference dpm++3m at {reference_nfe} NFE; about {estimate / 60:.1f} min at "
              f"{1000 * seconds:.2f} ms per sample-evaluation (budget {budget_minutes:g} min)", flush=True)

    run = _Run(den, denoiser, shape, state, tuning=tuning, validation=validation, reference_nfe=reference_nfe,
               standard=standard, starts=starts, rounds=rounds, candidates=candidates, level=level,
               dc_seeds=min(dc_seeds, len(tuning)), batch_size=batch_size, device=device,
               budget_s=budget_s - (time.perf_counter() - t_start), timetuner=timetuner, progress=progress,
               has_gaussian=has_gaussian)
    for s in state.steps():  # grids searched in earlier runs serve DC-Solver (UniPC's loop) again
        loop = "unipc" if s["solver"] == DC_SOLVER else s["solver"]
        if s.get("scan") is not None:
            run.memo[("scan", loop, s["nfe"])] = s["scan"]
        if s.get("memo", {}).get("search") is not None:
            run.memo[("search", loop, s["nfe"])] = s["memo"]["search"]
    if todo or base_todo:
        from tqdm.auto import tqdm

        run.bar = tqdm(total=len(todo) + len(base_todo), desc="tune", unit="step", disable=not progress,
                       dynamic_ncols=True)
    try:
        for n in base_todo:
            run.baseline(n)
            run.bar.update()
        for s, n in todo:
            if s in skipped_solvers:
                result = {"solver": s, "nfe": n, "steps": registry.get(s).steps_for(n)[0], "scan": None,
                          "candidates": [], "skipped": [{"name": s, "reason": skipped_solvers[s]}], "plan": None,
                          "seconds": 0.0, "memo": {}}
            else:
                result = _tune_step(run, s, n)
            state.write(_step_file(s, n), result)
            if on_step is not None:
                on_step(result)
            run.bar.update()
    finally:
        if run.bar is not None:
            run.bar.close()
    if run.over_budget():
        notes.append(f"the budget of {budget_minutes:g} min ran out; stages after it were skipped (see the table)")
    return _write(out, folder, state, process, notes, time.perf_counter() - t_start,
                  time.process_time() - cpu_start, model_name, settings)


def _order(names: list[str]) -> list[str]:
    """UniPC before DC-Solver, so that DC-Solver starts from UniPC's searched grid (the same loop)."""
    return sorted(names, key=lambda s: (s == DC_SOLVER, names.index(s)))


def _estimate(todo: list[tuple[str, int]], base_todo: list[int], settings: dict[str, Any], *, seconds: float,
              timetuner: bool, n_tune: int, n_val: int, n_starts: int, n_standard: int, dc_seeds: int,
              reference_evals: int, unipc_nfes: set[int]) -> float:
    """Seconds the remaining work takes (an upper bound on the searches), from the time of one evaluation;
    ``unipc_nfes``: the NFEs whose UniPC scan and search DC-Solver reuses."""

    r, c, ref = settings["rounds"], settings["candidates"], settings["reference_nfe"]
    evals = reference_evals + sum(n_standard * len(GRIDS) * n * n_val for n in base_todo)
    for s, n in todo:
        steps = solvers.get(s).steps_for(n)[0]
        descent = r * 2 * c * steps * n * n_tune
        if not (s == DC_SOLVER and n in unipc_nfes):
            evals += 2 * (n_starts + 1) * n * n_tune + descent  # the start scan and the grid search
        evals += (descent if timetuner else 0) + 4 * n * n_val  # TimeTuner, validation
        if s == DC_SOLVER:
            evals += min(dc_seeds, n_tune) * (n * 14 + ref)
    return evals * seconds


def _missing_reference(denoiser: Any, shape: tuple[int, ...], seed_sets: Sequence[list[int]], reference_nfe: int,
                       cache: Path) -> int:
    """Evaluations the near-exact references of ``seed_sets`` still need (their chunks not cached yet)."""

    total = 0
    for seeds in seed_sets:
        near = NearExact(denoiser, shape, seeds, ReferenceSettings("dpm++3m", reference_nfe, "logsnr"),
                         cache_dir=cache, progress=False)
        total += sum(b - a for a, b in near.missing()) * reference_nfe
    return total


def _write(out: Path, folder: Path, state: _State, process: Any, notes: list[str], seconds: float,
           cpu_seconds: float, model_name: str | None, settings: dict[str, Any]) -> TuneReport:
    """The grid file of every finished step's plan and the report (JSON, Markdown) beside it."""

    steps = state.steps()
    baselines = {}
    for p in sorted(folder.glob("baseline-*.json")):
        b = json.loads(p.read_text())
        baselines[int(b["nfe"])] = {"name": b["name"], "mean": b["mean"]}
    entries = []
    for s in steps:
        c = next((c for c in s["candidates"] if c["name"] == s.get("plan")), None)
        if c is None:
            continue
        v = c["validation"]
        prov = {"tuned_by": "fewstep tune", "candidate": c["name"],
                "validation": {k: v[k] for k in ("mean", "baseline_mean", "ratio", "low", "high", "worse", "n", "level",
                                                 "baseline")},
                "validation_seeds": settings["validation_seeds"], "tuning_seeds": settings["tuning_seeds"],
                "tuning_score": c["tuning_score"], "reference": {"solver": "dpm++3m", "nfe": settings["reference_nfe"],
                                                                 "grid": "logsnr"}}
        entries.append(_entry(c["solver"], s["nfe"], s["steps"], c["times"], net_times=c["net_times"],
                              options=c["options"], teleport=c["teleport"], score=v["mean"], provenance=prov))
    head = {"model": model_name, "made_by": "fewstep tune", "fewstep_version": __version__,
            "report": out.stem + ".report.md"}
    plans: Path | None = None
    if entries:
        plans = write_grid_file(out, process, entries, head)
    elif out.is_file():  # an earlier run's plans that no longer stand
        try:
            if read_grid_file(out).provenance.get("made_by") == "fewstep tune":
                out.unlink()
        except (ValueError, OSError):
            pass
    report = TuneReport(plans, out.with_name(out.stem + ".report.json"), out.with_name(out.stem + ".report.md"),
                        [{k: v for k, v in s.items() if k != "memo"} for s in steps], baselines, notes,
                        round(seconds, 1), round(cpu_seconds, 1))
    atomic_write_text(report.report_json, json.dumps(
        {"plans": str(plans) if plans else None, "model": model_name, "settings": settings, "notes": notes,
         "baselines": baselines, "steps": report.steps, "seconds": report.seconds,
         "cpu_seconds": report.cpu_seconds}, indent=1) + "\n")
    atomic_write_text(report.report_md, f"# fewstep tune: {model_name or 'model'}\n\n" + report.table())
    return report
