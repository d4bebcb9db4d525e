"""Sample functions: what the metrics evaluate.

A sample function maps a list of per-sample seeds to images in ``[-1, 1]`` shaped
``(len(seeds), C, H, W)``, and the same seed gives the same image whatever batch it is in.
Solvers, one-step generators, diffusers scheduler loops and (later) cached or quantized samplers
are all evaluated through this one interface; :func:`solver_sample_fn` builds one for a fewstep
solver and counts the network evaluations it spends.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..api import generate
from ..compose import compose_sampler
from ..denoisers import NFECounter
from ..guidance.build import class_cycle, num_classes
from ..latent import to_images
from ..plan import make_plan
from ..solvers import DEFAULT_SOLVER, DivergedError
from ..solvers._common import NonFiniteError

__all__ = ["SampleFn", "SolverSampleFn", "solver_sample_fn", "KeepFirst", "DivergedError"]

SampleFn = Callable[[list[int]], Tensor]
"""``sample_fn(seeds) -> images`` in ``[-1, 1]``, shape ``(len(seeds), C, H, W)``."""


class SolverSampleFn:
    """``fewstep.generate`` with a fixed solver, NFE and grid, as a sample function.

    ``nfe_used`` is the mean number of network evaluations per call (per batch), counted by
    :class:`fewstep.denoisers.NFECounter`; it differs from ``nfe`` only for adaptive solvers.
    ``description`` is what identifies the sampler in saved results; ``plan`` the resolved
    :class:`~fewstep.plan.SamplingPlan` it runs (``plan.describe()`` is what results record).  ``cache`` (a spec string such
    as ``"deepcache:3"``, see :mod:`fewstep.accel`) wraps the denoiser in a feature cache; the
    description then records it and :attr:`evals_used` what the evaluations really cost.
    """

    def __init__(self, denoiser: Any, shape: Sequence[int], solver: str = DEFAULT_SOLVER, nfe: int = 10,
                 grid: Any = None, device: str | torch.device = "cpu", *, cache: Any = None, guidance: Any = None,
                 class_label: Any = None, first_seed: int = 0, precision: str = "fp32", **options: Any):
        composed = compose_sampler(denoiser, cache=cache, guidance=guidance, precision=precision)
        self.precision = precision
        self.cache, self.cached, self.guidance = composed.cache_spec, composed.cache, guidance
        self.counter = NFECounter(composed.denoiser)
        self.denoiser = denoiser
        self.shape = tuple(int(v) for v in shape)
        self.solver, self.nfe, self.device, self.options = solver, int(nfe), torch.device(device), options
        self.grid = denoiser.process.default_grid if grid is None else grid
        self.plan = make_plan(denoiser, solver, self.nfe, grid, **options)  # resolved once, checked before any work
        self.class_label, self.first_seed, self.labels = class_label, int(first_seed), None
        if class_label is not None:
            classes = num_classes(denoiser) or (guidance.classifier.num_classes if guidance is not None
                                                and guidance.classifier is not None else 0)
            self.labels = class_cycle(class_label, classes)
        self.calls = 0

    @property
    def description(self) -> dict[str, Any]:
        grid = self.grid if isinstance(self.grid, str) else [float(t) for t in self.grid]
        cache = {"cache": str(self.cache)} if self.cache is not None else {}
        if self.guidance is not None:
            g = self.guidance
            cache["guidance"] = {"method": g.method, "scale": g.scale, "interval": g.interval,
                                 **({"classifier": getattr(g.classifier, "source", repr(g.classifier))}
                                    if g.classifier is not None else {}), **g.options}
        if self.class_label is not None:
            cache["class_label"] = self.class_label
        if self.precision != "fp32":
            cache["precision"] = self.precision
        return {"solver": self.solver, "nfe": self.nfe, "grid": grid, **cache,
                **{k: v if isinstance(v, (str, int, float, bool)) or v is None else repr(v)
                   for k, v in sorted(self.options.items())}}

    @property
    def nfe_used(self) -> float | None:
        """Network evaluations per batch, averaged over the calls so far (None before the first)."""
        return self.counter.count / self.calls if self.calls else None

    @property
    def evals_used(self) -> dict[str, float] | None:
        """Full and cached (partial) network evaluations per batch with a cache (None without one or
        before the first call)."""
        if self.cached is None or not self.calls:
            return None
        return {"full_evals": self.cached.full_evals / self.calls, "cached_evals": self.cached.cached_evals / self.calls}

    def __call__(self, seeds: list[int]) -> Tensor:
        self.calls += 1
        try:
            cond = None
            if self.labels is not None:
                labels = [self.labels[(s - self.first_seed) % len(self.labels)] for s in seeds]
                cond = {"class_labels": torch.tensor(labels, dtype=torch.long, device=self.device)}
            # a latent model's samples are decoded here, at the edge where images leave the sampler (fewstep.latent)
            return to_images(self.denoiser, generate(self.counter, self.shape, seeds, self.plan, device=self.device,
                                                     cond=cond))
        except NonFiniteError as err:
            raise DivergedError(f"{self.solver} at nfe={self.nfe} diverged: {err}") from err


def solver_sample_fn(denoiser: Any, shape: Sequence[int], solver: str = DEFAULT_SOLVER, nfe: int = 10, grid: Any = None,
                     device: str | torch.device = "cpu", *, cache: Any = None, guidance: Any = None,
                     class_label: Any = None, first_seed: int = 0, **options: Any) -> SolverSampleFn:
    """A sample function running ``solver`` at ``nfe`` on ``grid`` (None: the process's default grid), composed
    by :func:`fewstep.compose.compose_sampler`: through the feature cache ``cache`` names (e.g. ``"deepcache:3"``)
    and the ``guidance`` (a :class:`fewstep.compose.Guidance`); ``class_label`` (a class, a list or ``"all"``)
    conditions seed ``first_seed + i`` on the ``i``-th class, cycled."""
    return SolverSampleFn(denoiser, shape, solver, nfe, grid, device, cache=cache, guidance=guidance,
                          class_label=class_label, first_seed=first_seed, **options)


class KeepFirst:
    """Wrap a sample function and keep the first ``k`` images it returns (e.g. for a sample grid).

    Other attributes (``nfe_used``, ``description``) are the wrapped function's.
    """

    def __init__(self, sample_fn: SampleFn, k: int):
        self.sample_fn, self.k = sample_fn, int(k)
        self.kept: list[Tensor] = []

    @property
    def images(self) -> Tensor | None:
        """The kept images on the CPU, or None when there are none."""
        return torch.cat(self.kept) if self.kept else None

    def __call__(self, seeds: list[int]) -> Tensor:
        x = self.sample_fn(seeds)
        room = self.k - sum(len(t) for t in self.kept)
        if room > 0:
            self.kept.append(x[:room].detach().float().cpu())
        return x

    def __getattr__(self, name: str) -> Any:
        if name in ("sample_fn", "k", "kept"):
            raise AttributeError(name)
        return getattr(self.sample_fn, name)
