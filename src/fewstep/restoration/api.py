"""``restore``: solve an inverse problem ``y = A(x) + sigma_y n`` with a diffusion model as the prior."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from ..api import generators, prior_noise
from ..denoisers import DenoiserBase
from ..grids import GRIDS, GridSpec, make_schedule
from ..latent import require_pixel_space
from ..solvers._common import Callback, Cond
from .methods import get_method

__all__ = ["restore", "restore_nfe"]


def restore_nfe(method: str, nfe: int, **options: Any) -> int:
    """The evaluations :func:`restore` spends for ``nfe`` (RePaint spends at most ``nfe``: whole resampling blocks)."""
    spec = get_method(method)
    spec.check_options(options)
    return spec.plan(nfe, options)[1]


def restore(denoiser: DenoiserBase, y: Tensor, operator, seeds: Iterable[int], method: str = "dps", nfe: int = 50,
            grid: GridSpec | None = None, *, shape: tuple[int, ...] | None = None, cond: Cond = None,
            callback: Callback = None, **options: Any) -> Tensor:
    """Restore images from measurements ``y`` (one per seed) of ``operator`` with ``method``
    (``repaint``, ``dps`` or ``reddiff``; its options as keywords, e.g. ``zeta=1.0``, ``jump=5, resample=4``,
    ``lam=0.25, lr=0.1``) in about ``nfe`` network evaluations on ``grid`` (default: the process's).

    Each image draws its noise from its own seed, so the result does not depend on the batch size.
    ``shape`` is the image shape ``(C, H, W)`` (default: ``denoiser.sample_shape``).
    """
    spec = get_method(method)
    spec.check_options(options)
    spec.check_task(operator)
    require_pixel_space(denoiser, "restoration")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("restore: seeds is empty; pass one seed per measurement")
    if len(seeds) != len(y):
        raise ValueError(f"restore: {len(y)} measurements but {len(seeds)} seeds; pass one seed per measurement")
    shape = shape or getattr(denoiser, "sample_shape", None)
    if shape is None:
        raise ValueError("restore: this denoiser declares no sample_shape; pass shape=(C, H, W)")
    shape = tuple(shape)
    check = getattr(operator, "check", None)
    if check is not None:
        check(shape)
    steps, _ = spec.plan(nfe, options)
    if isinstance(grid, str) and grid not in GRIDS:
        raise ValueError(f"restoration takes a named grid ({', '.join(GRIDS)}) or explicit times, not {grid!r}: the "
                         f"entries of a plan file are tuned for a solver and NFE, and {spec.name} is not a solver")
    schedule = make_schedule(denoiser.process, steps, grid, clean_end=spec.clean_end)
    gens = generators(seeds)
    x_T = prior_noise(denoiser.process, shape, gens, dtype=y.dtype, device=y.device)
    expect = operator(torch.zeros_like(x_T[:1]))
    if tuple(expect.shape[1:]) != tuple(y.shape[1:]):
        raise ValueError(f"measurements have shape {tuple(y.shape[1:])} but the operator makes {tuple(expect.shape[1:])} "
                         f"from {shape} images; measure with the same operator")
    run = lambda: spec.fn(denoiser, x_T, schedule, y, operator, generator=gens, callback=callback, cond=cond,  # noqa: E731
                          **options)
    if spec.backprop or spec.name == "reddiff":
        return run()
    with torch.inference_mode():
        x = run()
    return x.clone()
