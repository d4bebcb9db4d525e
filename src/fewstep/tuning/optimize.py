"""``optimize_grids``: analytic, searched, TimeTuner or DC-Solver-tuned grids for a solver at several NFEs, as
grid-file entries."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .. import solvers
from ..grids import GRIDS, make_grid
from ..grids.files import GridEntry, is_grid_file, select_entry
from ..nettimes import time_tuned
from .dc import search_ratios
from .gaussian import DEFAULT_DATA_STD, analytic_grid
from .reference_set import ReferenceSet
from .search import search_grid
from .timetuner import tune_net_times

__all__ = ["METHODS", "optimize_grids", "expected_evaluations"]

METHODS = ("analytic", "search", "timetuner", "dc")
DC_SOLVER = "dc_solver"


def expected_evaluations(solver: str, nfes: Sequence[int], rounds: int, candidates: int) -> int:
    """Scores a search or TimeTuner run computes (an upper bound: moves outside a bracket are skipped)."""
    spec = solvers.get(solver)
    return sum(rounds * 2 * candidates * spec.steps_for(n)[0] for n in nfes)


@dataclass
class _Start:
    """A start grid: its times and the solver options / network times tuned with it (from a grid file)."""

    times: Tensor
    options: dict[str, Any] | None = None
    net_times: list[float] | None = None


def _resolve_start(process: Any, spec: Any, nfe: int, steps: int, start: Any, teleport: float | None = None) -> _Start:
    """Times of a grid name or explicit times; a grid file's entry for the solver with its options and network
    times (DC-Solver, which is UniPC's loop, starts from UniPC's entry when the file has none of its own).
    ``teleport``: a grid name starts at that time, and the start carries the option."""
    if isinstance(start, (str, os.PathLike)) and str(start) not in GRIDS and is_grid_file(start):
        entry = select_entry(start, process, steps, spec.name, nfe)
        if entry.solver != spec.name and spec.name == DC_SOLVER:
            entry = select_entry(start, process, steps, "unipc", nfe)
        own = entry.solver == spec.name
        start = {"teleport": entry.teleport} if entry.teleport is not None else {}
        options = {**(entry.options or {}), **start} if own else start
        options = options or None
        return _Start(torch.as_tensor(entry.times, dtype=torch.float64), options, entry.net_times if own else None)
    if teleport is None:
        return _Start(make_grid(process, steps, start, solver=spec.name, nfe=nfe))
    times = make_grid(process, steps, start, solver=spec.name, nfe=nfe, t_max=teleport)  # explicit times keep theirs
    return _Start(times, {"teleport": float(times[0])})


def _score(reference: ReferenceSet, solver: str, nfe: int, s: _Start) -> float:
    return reference.rmse(solver, nfe, s.times, time_tuned(reference.denoiser, s.times.tolist(), s.net_times),
                           s.options)


def _best_start(reference: ReferenceSet, solver: str, nfe: int, starts: Sequence[_Start]) -> tuple[_Start, float]:
    """The start with the lowest RMSE."""
    scored = [(_score(reference, solver, nfe, s), i) for i, s in enumerate(starts)]
    best, i = min(scored)
    return starts[i], best


def _dc_ratios(reference: ReferenceSet, nfe: int, first: _Start, first_score: float, reference_nfe: int,
               shape: Sequence[int]) -> tuple[dict[str, Any] | None, float, int]:
    """DC-Solver's ratios searched on ``first``'s grid (:func:`fewstep.tuning.dc.search_ratios`) against a
    ``reference_nfe`` solve of the reference seeds; kept only when they lower the RMSE to the reference."""
    ratios = search_ratios(reference.denoiser, shape, nfe, reference.seeds, reference_nfe=reference_nfe,
                           grid=first.times, dtype=reference.x_T.dtype, device=reference.x_T.device,
                           teleport=(first.options or {}).get("teleport"))
    options = {**(first.options or {}), "ratios": ratios}
    score = _score(reference, DC_SOLVER, nfe, _Start(first.times, options, first.net_times))
    return (options, score, 1) if score < first_score else (first.options, first_score, 1)


def optimize_grids(denoiser: Any, solver: str, nfes: Sequence[int], method: str = "analytic", *,
                   shape: Sequence[int] | None = None, seeds: Sequence[int] = range(64), reference_nfe: int = 200,
                   reference: ReferenceSet | None = None, rounds: int = 3, candidates: int = 2,
                   data_std: float | tuple[float, float] = DEFAULT_DATA_STD, start: Any = None,
                   on_eval: Callable[[float], None] | None = None, batch_size: int = 64,
                   reference_cache: str | None = None, teleport: float | None = None) -> list[GridEntry]:
    """One :class:`GridEntry` per NFE.

    ``analytic`` needs no network evaluation (:mod:`fewstep.tuning.gaussian`); ``search`` moves the
    interior times to lower the RMSE to a near-exact solve of ``seeds`` (:mod:`fewstep.tuning.search`),
    from the best of ``start`` (default: the process's default grid, logSNR and the analytic grid);
    ``timetuner`` keeps that best start grid and tunes the network's time inputs instead
    (:mod:`fewstep.tuning.timetuner`; pass a searched grid file as ``start`` to tune on it).
    ``dc`` (solver ``dc_solver``) keeps the start grid (a grid file's UniPC entry when it has no DC-Solver
    entry) and searches DC-Solver's compensation ratios on it (:func:`fewstep.tuning.dc.search_ratios`,
    against a ``reference_nfe`` solve of ``seeds``); they travel in the entry's ``options``, and a later
    ``timetuner`` run with that file as ``start`` tunes network times on top of them.
    ``reference_cache``: a folder caching the near-exact reference (see :class:`ReferenceSet`).
    ``teleport``: model-based starts begin at that time, reached by the data Gaussian's exact flow
    (:mod:`fewstep.teleport`); ``search`` then moves the start time too, and the entry's options record it.
    """
    if method not in METHODS:
        raise ValueError(f"unknown grid method {method!r}; valid: {', '.join(METHODS)}")
    spec = solvers.get(solver)
    if spec.stochastic or not spec.fixed_nfe:
        raise ValueError(f"grid optimization needs a deterministic fixed-NFE solver; {spec.name!r} is not")
    for nfe in nfes:
        spec.steps_for(nfe)
    if method == "dc" and spec.name != DC_SOLVER:
        raise ValueError(f"method dc searches DC-Solver's ratios; use solver {DC_SOLVER}, not {spec.name!r}")
    process = denoiser.process
    if teleport is not None and method == "analytic":
        raise ValueError("the analytic grid spans the whole time range; teleport applies to the model-based methods "
                         "(search, timetuner, dc)")
    entries = []
    if method != "analytic" and reference is None:
        if shape is None:
            raise ValueError("a model-based grid method needs the sample shape")
        reference = ReferenceSet(denoiser, shape, seeds, nfe=reference_nfe, batch_size=batch_size,
                                 cache_dir=reference_cache, progress=on_eval is not None)
    for nfe in nfes:
        t0 = time.perf_counter()
        steps, _ = spec.steps_for(nfe)
        analytic, bound = analytic_grid(process, spec.name, nfe, data_std=data_std)
        std = list(data_std) if isinstance(data_std, tuple) else data_std
        prov: dict[str, Any] = {"data_std": std}
        if method == "analytic":
            times, score, net_times, options = analytic, bound, None, None
            prov.update(score_kind="gaussian_error_bound")
        else:
            cands = [start] if start is not None else [None, "logsnr"] + ([analytic] if teleport is None else [])
            first, first_score = _best_start(reference, spec.name, nfe,
                                             [_resolve_start(process, spec, nfe, steps, c, teleport) for c in cands])
            times, net_times, options = first.times, first.net_times, first.options
            if method == "search":
                times, res = search_grid(reference, spec.name, nfe, first.times, rounds=rounds,
                                         candidates=candidates, on_eval=on_eval, options=first.options)
                net_times = None  # network times tuned for the old grid do not carry over
                if options and options.get("teleport") is not None:  # the searched start time
                    options = {**options, "teleport": float(times[0])}
                score, evaluations = res.score, res.evaluations
            elif method == "timetuner":
                net_times, res = tune_net_times(reference, spec.name, nfe, first.times, rounds=rounds,
                                                candidates=candidates, on_eval=on_eval, options=first.options)
                score, evaluations = res.score, res.evaluations
            else:  # dc
                options, score, evaluations = _dc_ratios(reference, nfe, first, first_score,
                                                         reference.description["nfe"], shape or reference.x_T.shape[1:])
            prov.update(score_kind="rmse_to_reference", start_score=first_score, evaluations=evaluations,
                        reference=reference.description, rounds=rounds, candidates=candidates)
        prov["seconds"] = round(time.perf_counter() - t0, 2)
        entries.append(GridEntry(spec.name, nfe, steps, torch.as_tensor(times).tolist(), method, float(score),
                                 net_times, prov, options))
    return entries
