"""``model_info``: what fewstep makes of a model (``fewstep info --model M``).

The noise process and prediction type, where sampling starts by default and why (the process's ``t_start``,
:func:`fewstep.processes.well_conditioned_start`), the learned variance and conditioning the network needs, the
data attached to it (the data Gaussian, DPM-Solver-v3 statistics, tuned grid plans) and, for a diffusers folder,
which scheduler config keys were honoured, mapped or ignored (:mod:`fewstep.diffusers_config`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .denoisers import find_attached
from .grids.files import read_grid_file
from .loading import load_model, resolve_bundled

__all__ = ["ModelInfo", "model_info"]


@dataclass
class ModelInfo:
    """A model as fewstep sees it; :meth:`lines` is the text of ``fewstep info``, :meth:`as_dict` its ``--json``."""

    source: str
    kind: str
    process: str
    prediction: str
    t_min: float
    t_max: float
    t_start: float
    start_reason: str
    sample_shape: tuple[int, ...] | None = None
    variance: str | None = None
    conditioning: dict[str, str] = field(default_factory=dict)
    attached: dict[str, str] = field(default_factory=dict)
    scheduler: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [f"model:        {self.source} ({self.kind})",
               f"process:      {self.process}",
               f"prediction:   {self.prediction}" + (f", learned variance ({self.variance}): solvers use the mean "
                                                      f"channels, ddpm draws with the variance" if self.variance else ""),
               f"times:        t_min={self.t_min:g}, t_max={self.t_max:g}",
               f"start:        t_start={self.t_start:g}: {self.start_reason}"]
        if self.sample_shape is not None:
            out.append(f"sample shape: {tuple(self.sample_shape)}")
        for key, note in self.conditioning.items():
            out.append(f"needs cond:   {key}: {note}")
        out += [f"attached:     {name}: {what}" for name, what in self.attached.items()] or ["attached:     nothing"]
        if self.scheduler is not None:
            out.append(f"scheduler:    {self.scheduler.get('scheduler') or 'scheduler_config.json'}")
            for use in ("honoured", "mapped", "ignored"):
                for key, note in self.scheduler.get(use, {}).items():
                    out.append(f"  {use:<9} {key}: {note}")
        return out


def model_info(model: Any, *, clipping: str = "off") -> ModelInfo:
    """:class:`ModelInfo` of ``model``: a path ``load_model`` accepts (``bundled:fashion``, a checkpoint, a
    diffusers folder) or a loaded denoiser."""
    if isinstance(model, (str, os.PathLike)):
        source = str(model)
        den = load_model(model, clipping=clipping)
        folder: Path | None = resolve_bundled(source) if source.startswith("bundled:") else Path(source)
    else:
        den, source, folder = model, type(model).__name__, None
    config = den.config or {}
    process = den.process
    inner = den
    while getattr(inner, "inner", None) is not None:
        inner = inner.inner
    if "diffusers" in config:
        kind = f"diffusers {config.get('unet', {}).get('class', 'UNet')}"
    elif "generator" in config:
        kind = "fewstep one-step generator"
    elif "quantization" in config:
        kind = "fewstep int8 checkpoint"
    elif config:
        kind = "fewstep checkpoint"
    else:
        kind = type(inner).__name__
    info = ModelInfo(source=source, kind=kind, process=repr(_short(process)), prediction=getattr(inner, "prediction", "?"),
                     t_min=float(process.t_min), t_max=float(process.t_max), t_start=float(process.t_start),
                     start_reason=process.start_reason, sample_shape=den.sample_shape,
                     variance=getattr(inner, "variance", None),
                     conditioning=dict(config.get("unet", {}).get("conditioning", {})),
                     scheduler=config.get("scheduler"))
    gaussian = find_attached(den, "data_gaussian")
    if gaussian is not None:
        info.attached["data_gaussian"] = (f"{gaussian.dim}-d, rank {gaussian.eigvals.shape[-1]} "
                                          f"(teleport, --cache gaussian)")
    classes = find_attached(den, "class_gaussians")
    if classes is not None:
        info.attached["class_gaussians"] = f"{len(classes.weights)} classes (class-conditional teleport)"
    space = find_attached(den, "latent_space")
    if space is not None:
        info.attached["latent_space"] = (f"autoencoder {'x'.join(map(str, space.image_shape))} <-> "
                                         f"{'x'.join(map(str, space.latent_shape))} latents, scale {space.scale:.4g} "
                                         f"(samples are decoded to images)")
    if find_attached(den, "ems") is not None:
        info.attached["ems"] = "DPM-Solver-v3 statistics (solver dpm_v3)"
    if folder is not None and (folder / "grids.json").is_file():
        entries = read_grid_file(folder / "grids.json").entries
        plans = ", ".join(sorted({f"{e.solver}@{e.nfe}" for e in entries}))
        grid = source if source.startswith("bundled:") else str(folder / "grids.json")
        default = ((getattr(den, "config", None) or {}).get("sampling") or {}).get("grid") == "tuned"
        info.attached["grids"] = (f"{len(entries)} tuned grid plans ({plans}): " +
                                  ("the model's default for these solvers and NFEs (config sampling.grid)" if default
                                   else f"--grid {grid}"))
    return info


class _short:
    """A process shown without its list of betas."""

    def __init__(self, process: Any):
        self.process = process

    def __repr__(self) -> str:
        cfg = {k: (f"[{len(v)} values]" if isinstance(v, list) else v) for k, v in self.process.config().items()
               if k != "kind"}
        return f"{type(self.process).__name__}({', '.join(f'{k}={v!r}' for k, v in cfg.items())})"
