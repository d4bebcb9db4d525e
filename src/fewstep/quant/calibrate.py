"""Temporal calibration: activation ranges per sampling step, recorded on the model's own trajectories.

TFMQ-DM (Huang et al. 2024, sec. 3 and 4.2) and TDQ (So et al. 2023) observe that a diffusion
network's activation ranges drift strongly with the timestep, so one static range for all steps
either clips early (noisy) steps or wastes levels at late ones.  Here the float model is sampled with
the solver, NFE and grid that will be used (``settings``) from calibration seeds disjoint from the
usual evaluation seeds; every quantized layer's input is observed at each evaluation, keyed by the
evaluation's noise level (and recorded with its ``StepContext`` ``step``/``stage``), and one clipping
range per layer and timestep group is chosen by an MSE search (:func:`~fewstep.quant.maths.clip_search`)
or as the observed maximum.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..api import generate
from ..context import StepContext
from ..denoisers import accepts_context
from ..nets._layers import broadcast_time
from .maths import clip_search, range_search_affine

__all__ = ["CalibrationSettings", "Calibration", "calibrate", "ESTIMATORS", "ACTIVATIONS"]

ESTIMATORS = ("mse", "max", "percentile")
ACTIVATIONS = ("symmetric", "asymmetric")


@dataclass
class CalibrationSettings:
    """How to calibrate: the sampler (``solver``, ``nfe``, ``grid``), ``n`` trajectories from seeds
    ``seed .. seed + n - 1``, ``groups`` timestep groups (None: one per calibrated evaluation),
    the range ``estimator`` ('max', 'mse' or 'percentile': the ``percentile``-th percentile of
    ``|x|``, or of ``x`` and ``-x`` when asymmetric, over the kept values), ``activations``
    ('symmetric' ranges ``[-c, c]`` or 'asymmetric' ``[lo, hi]`` with a zero point) and how many
    activation values each layer keeps per call."""

    solver: str = "dpm++2m"
    nfe: int = 10
    grid: str | None = None
    n: int = 64
    seed: int = 1_000_000
    batch_size: int = 64
    groups: int | None = None
    estimator: str = "max"
    samples_per_call: int = 4096
    activations: str = "symmetric"
    percentile: float = 99.99

    def __post_init__(self) -> None:
        if self.n < 1 or self.nfe < 1 or self.batch_size < 1 or self.samples_per_call < 1:
            raise ValueError("calibration n, nfe, batch_size and samples_per_call must be positive")
        if self.groups is not None and self.groups < 1:
            raise ValueError(f"groups must be positive (or None: one per step), got {self.groups}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown range estimator {self.estimator!r}; valid: {', '.join(ESTIMATORS)}")
        if self.activations not in ACTIVATIONS:
            raise ValueError(f"unknown activation scheme {self.activations!r}; valid: {', '.join(ACTIVATIONS)}")
        if not 50 < self.percentile <= 100:
            raise ValueError(f"percentile must lie in (50, 100], got {self.percentile}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Calibration:
    """What calibration found: each calibrated evaluation's network noise ``levels`` (solve order) and
    ``steps`` (``[step, stage]``), its timestep group, and per layer one clipping range per group
    (``clips``: ``c`` of ``[-c, c]``, or the upper end ``hi`` when asymmetric) and, when
    asymmetric, the lower ends ``lows``."""

    levels: list[float]
    steps: list[list[int]]
    level_groups: list[int]
    clips: dict[str, list[float]] = field(default_factory=dict)
    lows: dict[str, list[float]] | None = None

    @property
    def groups(self) -> int:
        return max(self.level_groups) + 1


class _Recorder(nn.Module):
    """Wraps the float network during calibration: notes which calibrated evaluation is running."""

    accepts_step_context = True

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.index: dict[float, int] = {}
        self.steps: list[list[int]] = []
        self.current = -1

    def forward(self, x: Tensor, noise_level: Tensor | float, *args: Any, ctx: StepContext | None = None,
                **kwargs: Any) -> Tensor:
        lv = broadcast_time(noise_level, x.shape[0], x.device)
        if not bool((lv == lv[0]).all()):
            raise ValueError("calibration needs one noise level per batch (a solver's evaluation), got several")
        key = round(float(lv[0]), 6)
        if key not in self.index:
            self.index[key] = len(self.index)
            self.steps.append([ctx.step, ctx.stage] if ctx is not None else [len(self.steps), 0])
        self.current = self.index[key]
        if ctx is not None and accepts_context(self.net):
            return self.net(x, noise_level, *args, ctx=ctx, **kwargs)
        return self.net(x, noise_level, *args, **kwargs)


def _groups(count: int, groups: int | None) -> list[int]:
    """Contiguous equal-as-possible groups of ``count`` evaluations in solve order."""
    g = count if groups is None else min(groups, count)
    return [i * g // count for i in range(count)]


@torch.no_grad()
def calibrate(denoiser: Any, layers: dict[str, nn.Module], settings: CalibrationSettings, bits: int = 8,
              device: str | torch.device = "cpu", progress: bool = False) -> Calibration:
    """Sample ``settings.n`` calibration trajectories with the float ``denoiser`` and choose each layer's
    input clipping range per timestep group.  ``layers`` are modules inside the denoiser's network."""
    shape = denoiser.sample_shape
    if shape is None:
        raise ValueError("calibration needs the model's sample shape; load it with fewstep.load_model")
    recorder: _Recorder | None = None

    def wrap(net: nn.Module) -> nn.Module:
        nonlocal recorder
        recorder = _Recorder(net)
        return recorder

    gen = torch.Generator().manual_seed(settings.seed)
    amax: dict[tuple[str, int], float] = {}
    lo: dict[tuple[str, int], float] = {}
    hi: dict[tuple[str, int], float] = {}
    kept: dict[tuple[str, int], list[Tensor]] = {}

    def hook(name: str):
        def record(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            x = inputs[0].detach().reshape(-1).float()
            key = (name, recorder.current)
            amax[key] = max(amax.get(key, 0.0), float(x.abs().max()))
            lo[key] = min(lo.get(key, 0.0), float(x.min()))
            hi[key] = max(hi.get(key, 0.0), float(x.max()))
            idx = torch.randint(0, x.numel(), (min(settings.samples_per_call, x.numel()),), generator=gen)
            kept.setdefault(key, []).append(x[idx.to(x.device)].cpu())
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    denoiser.map_networks(wrap)
    seeds = list(range(settings.seed, settings.seed + settings.n))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(seeds), desc="calibrate", unit="traj", dynamic_ncols=True)
    try:
        for i in range(0, len(seeds), settings.batch_size):
            chunk = seeds[i:i + settings.batch_size]
            generate(denoiser, shape, chunk, settings.solver, settings.nfe, settings.grid, device=device)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        for h in handles:
            h.remove()
        denoiser.map_networks(lambda net: net.net if isinstance(net, _Recorder) else net)
        if bar is not None:
            bar.close()
    assert recorder is not None
    levels = list(recorder.index)
    level_groups = _groups(len(levels), settings.groups)
    result = Calibration([float(v) for v in levels], recorder.steps, level_groups)
    asym = settings.activations == "asymmetric"
    if asym:
        result.lows = {}
    for name in layers:
        clips, lows = [], []
        for g in range(result.groups):
            members = [i for i, gi in enumerate(level_groups) if gi == g]
            top = max(amax[(name, i)] for i in members)
            low, high = min(lo[(name, i)] for i in members), max(hi[(name, i)] for i in members)
            values = (lambda: torch.cat([t for i in members for t in kept[(name, i)]]))
            q = settings.percentile / 100
            if asym:
                if settings.estimator == "max":
                    r = (low, high)
                elif settings.estimator == "percentile":
                    v = values()
                    r = (min(float(torch.quantile(v, 1 - q)), 0.0), max(float(torch.quantile(v, q)), 0.0))
                else:
                    r = range_search_affine(values(), low, high, bits)
                if r[1] - r[0] <= 0:
                    r = (-1.0, 1.0)
                lows.append(r[0])
                clips.append(r[1])
            elif settings.estimator == "max":
                clips.append(top if top > 0 else 1.0)
            elif settings.estimator == "percentile":
                c = float(torch.quantile(values().abs(), q))
                clips.append(c if c > 0 else (top if top > 0 else 1.0))
            else:
                clips.append(clip_search(values(), top, bits))
        result.clips[name] = clips
        if asym:
            result.lows[name] = lows
    return result
