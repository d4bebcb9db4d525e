"""``optimize_grids``: analytic, searched or TimeTuner grids for a solver at several NFEs, as grid-file entries."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from .. import solvers
from .files import GridEntry
from .gaussian import DEFAULT_DATA_STD, analytic_grid
from .search import ReferenceSet, search_grid
from .timetuner import tune_net_times

__all__ = ["METHODS", "optimize_grids", "expected_evaluations"]

METHODS = ("analytic", "search", "timetuner")


def expected_evaluations(solver: str, nfes: Sequence[int], rounds: int, candidates: int) -> int:
    """Scores a search or TimeTuner run computes (an upper bound: moves outside a bracket are skipped)."""
    spec = solvers.get(solver)
    return sum(rounds * 2 * candidates * spec.steps_for(n)[0] for n in nfes)


def _best_start(reference: ReferenceSet, solver: str, nfe: int, starts: Sequence[Any]) -> tuple[Any, float]:
    """The start grid with the lowest RMSE (grid names, times or a grid file)."""
    scored = [(reference.rmse(solver, nfe, s), i) for i, s in enumerate(starts)]
    best, i = min(scored)
    return starts[i], best


def optimize_grids(denoiser: Any, solver: str, nfes: Sequence[int], method: str = "analytic", *,
                   shape: Sequence[int] | None = None, seeds: Sequence[int] = range(64), reference_nfe: int = 200,
                   reference: ReferenceSet | None = None, rounds: int = 3, candidates: int = 2,
                   data_std: float | tuple[float, float] = DEFAULT_DATA_STD, start: Any = None,
                   on_eval: Callable[[float], None] | None = None, batch_size: int = 64) -> list[GridEntry]:
    """One :class:`GridEntry` per NFE.

    ``analytic`` needs no network evaluation (:mod:`fewstep.grids.gaussian`); ``search`` moves the
    interior times to lower the RMSE to a near-exact solve of ``seeds`` (:mod:`fewstep.grids.search`),
    from the best of ``start`` (default: the process's default grid, logSNR and the analytic grid);
    ``timetuner`` keeps that best start grid and tunes the network's time inputs instead
    (:mod:`fewstep.grids.timetuner`; pass a searched grid file as ``start`` to tune on it).
    """
    if method not in METHODS:
        raise ValueError(f"unknown grid method {method!r}; valid: {', '.join(METHODS)}")
    spec = solvers.get(solver)
    if spec.stochastic or not spec.fixed_nfe:
        raise ValueError(f"grid optimization needs a deterministic fixed-NFE solver; {spec.name!r} is not")
    for nfe in nfes:
        spec.steps_for(nfe)
    process = denoiser.process
    entries = []
    if method != "analytic" and reference is None:
        if shape is None:
            raise ValueError("a model-based grid method needs the sample shape")
        reference = ReferenceSet(denoiser, shape, seeds, nfe=reference_nfe, batch_size=batch_size)
    for nfe in nfes:
        t0 = time.perf_counter()
        steps, _ = spec.steps_for(nfe)
        analytic, bound = analytic_grid(process, spec.name, nfe, data_std=data_std)
        std = list(data_std) if isinstance(data_std, tuple) else data_std
        prov: dict[str, Any] = {"data_std": std}
        if method == "analytic":
            times, score, net_times = analytic, bound, None
            prov.update(score_kind="gaussian_error_bound")
        else:
            starts = [start] if start is not None else [None, "logsnr", analytic]
            first, first_score = _best_start(reference, spec.name, nfe, starts)
            from . import make_grid

            first = make_grid(process, steps, first, solver=spec.name, nfe=nfe)
            if method == "search":
                times, res = search_grid(reference, spec.name, nfe, first, rounds=rounds, candidates=candidates,
                                         on_eval=on_eval)
                net_times = None
            else:
                times = first
                net_times, res = tune_net_times(reference, spec.name, nfe, first, rounds=rounds,
                                                candidates=candidates, on_eval=on_eval)
            score = res.score
            prov.update(score_kind="rmse_to_reference", start_score=first_score, evaluations=res.evaluations,
                        reference=reference.description, rounds=rounds, candidates=candidates)
        prov["seconds"] = round(time.perf_counter() - t0, 2)
        entries.append(GridEntry(spec.name, nfe, steps, torch.as_tensor(times).tolist(), method, float(score),
                                 net_times, prov))
    return entries
