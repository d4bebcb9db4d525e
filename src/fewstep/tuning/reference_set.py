"""``ReferenceSet``: fixed seeds, their prior noise and near-exact solution (:mod:`fewstep.tuning.reference`),
and the RMSE of any few-step solve to it: what grid search, TimeTuner and DC-Solver's tuning score against."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from ..api import generators, prior_noise, sample
from ..solvers._common import Cond
from .reference import ReferenceSettings, near_exact
from .reference_cache import reference_solutions

__all__ = ["ReferenceSet"]


class ReferenceSet:
    """Prior noise of fixed ``seeds`` and the near-exact solution from it, computed once: what grid search,
    TimeTuner and DC-Solver's tuning score candidates against.

    The reference is :func:`near_exact` with ``solver`` at ``nfe`` evaluations on ``grid`` (dpm++3m at 200 NFE
    on the logSNR grid by default); :meth:`rmse` scores any deterministic few-step solve against it.  With
    ``cache_dir`` (a contiguous seed range, no ``cond``) it is read from or written to the evaluation's
    on-disk cache (:class:`fewstep.tuning.NearExact`), so repeated optimizations (other solvers, NFEs, methods)
    and ``fewstep bench model --reference-cache`` share one computation.
    """

    def __init__(self, denoiser: Any, shape: Sequence[int], seeds: Iterable[int], *, solver: str = "dpm++3m",
                 nfe: int = 200, grid: str | None = "logsnr", batch_size: int = 64, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", cond: dict[str, Any] | None = None,
                 cache_dir: str | None = None, progress: bool = False):
        self.denoiser, self.seeds, self.batch_size, self.cond = denoiser, list(seeds), batch_size, cond
        if not self.seeds:
            raise ValueError("a reference set needs at least one seed")
        if grid is not None and not isinstance(grid, str):
            raise ValueError("the near-exact reference takes a named grid (e.g. logsnr), not explicit times")
        self.settings = ReferenceSettings(solver, nfe, grid, str(dtype).removeprefix("torch."))
        self.x_T = prior_noise(denoiser.process, shape, generators(self.seeds), dtype=dtype, device=device)
        self.description = {"solver": solver, "nfe": nfe, "grid": grid, "seeds": [self.seeds[0], self.seeds[-1] + 1]}
        if cache_dir is not None:
            self.reference = self._cached(shape, cache_dir, device, progress)
            self.description["near_exact"] = True
        else:
            self.reference = torch.cat([near_exact(denoiser, x, self.settings, cond=c) for x, c in self._batches()])

    def _cached(self, shape: Sequence[int], cache_dir: str, device: Any, progress: bool) -> Tensor:
        """The near-exact solutions of the seeds, through the on-disk cache."""
        if self.cond:
            raise ValueError("a cached reference (cache_dir) does not take conditioning; leave cache_dir unset")
        if self.seeds != list(range(self.seeds[0], self.seeds[0] + len(self.seeds))):
            raise ValueError("a cached reference needs a contiguous seed range (e.g. 10000:10064)")
        ref = reference_solutions(self.denoiser, shape, self.seeds, self.settings, cache_dir=cache_dir,
                                  batch_size=self.batch_size, device=device, progress=progress)
        return ref.to(self.x_T.device, self.x_T.dtype)

    def _batches(self) -> list[tuple[Tensor, Cond]]:
        """``(x_T, cond)`` batch by batch, the conditioning cut to each batch's samples."""
        out = []
        for a in range(0, len(self.x_T), self.batch_size):
            b = a + self.batch_size
            cond = {k: v[a:b] if isinstance(v, Tensor) else v for k, v in self.cond.items()} if self.cond else None
            out.append((self.x_T[a:b], cond))
        return out

    def solve(self, solver: str, nfe: int, grid: Any, denoiser: Any = None,
              options: dict[str, Any] | None = None) -> Tensor:
        """The few-step solve of every seed (optionally through another ``denoiser``, e.g. a TimeTuner,
        with solver ``options``, e.g. DC-Solver's ratios)."""
        den = self.denoiser if denoiser is None else denoiser
        return torch.cat([sample(den, x, solver, nfe, grid, cond=c, **(options or {})) for x, c in self._batches()])

    def rmse(self, solver: str, nfe: int, grid: Any, denoiser: Any = None,
             options: dict[str, Any] | None = None) -> float:
        """RMS distance of the few-step solve to the reference (inf when it diverges)."""
        out = self.solve(solver, nfe, grid, denoiser, options)
        err = float((out.double() - self.reference.double()).pow(2).mean().sqrt())
        return err if err == err else float("inf")
