"""``load_model``: a ready :class:`~fewstep.Denoiser` from a checkpoint, a diffusers folder, or the bundled model.

Only JSON and safetensors files are read: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .attachments import attach_from
from .bundled import BUNDLED, resolve_bundled
from .checkpoint import checkpoint_folder, load_tensors, read_config
from .denoisers import Denoiser, DenoiserBase
from .devices import resolve_device
from .diffusers_config import CLIPPING_MODES, UNET_CLASSES, read_scheduler_config, read_unet_config
from .nets import build_net
from .consistency import ConsistencyModel
from .onestep import OneStepGenerator
from .processes import NoiseProcess, process_from_config, well_conditioned_start
from .quant.io import load_quantized

__all__ = ["load_model", "BUNDLED", "resolve_bundled", "process_from_diffusers", "denoiser_from_diffusers"]


def load_model(path: str | os.PathLike, *, ema: bool = True, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, clipping: str = "off") -> DenoiserBase:
    """Load a denoiser, in eval mode, declaring its ``sample_shape`` ``(C, H, W)`` and ``config``.

    ``path`` is ``bundled:fashion``, a fewstep checkpoint folder (``config.json`` +
    ``ema.safetensors``/``model.safetensors``), a run folder (its newest checkpoint), or a local
    diffusers folder holding a ``UNet2DModel`` and its ``scheduler_config.json``.
    ``ema=False`` loads the raw training weights of a checkpoint; a ``device`` this machine lacks is refused
    in one line (:func:`fewstep.devices.resolve_device`).  The declared attachments found beside the
    checkpoint (:mod:`fewstep.attachments`: DPM-Solver-v3's ``ems``, the ``data_gaussian`` and
    ``class_gaussians`` of :mod:`fewstep.teleport`, tuned plans as ``plan_file``) are attached.  A quantized folder (``fewstep
    quantize``) gives a Denoiser whose network is the int8 :class:`~fewstep.quant.QuantizedNetwork`.
    A one-step generator (``fewstep distill --method sid``; its config has a ``generator`` section)
    gives a :class:`~fewstep.onestep.OneStepGenerator`, sampled with ``nfe=1``.

    The process's ``t_start`` (where sampling starts by default) is set for the model's prediction type
    (:func:`fewstep.processes.well_conditioned_start`).  A diffusers folder's scheduler config is read by
    :func:`fewstep.diffusers_config.read_scheduler_config`: keys fewstep cannot honour are refused by name, and
    ``denoiser.config["scheduler"]`` records which keys were honoured, mapped or ignored (``fewstep info``).
    ``clipping="config"`` applies the config's clipping of the data prediction (diffusers' ``clip_sample`` /
    ``thresholding``), which fewstep leaves off by default (docs/diffusers.md).
    """
    device = resolve_device(device, flag="device=")  # a device this machine lacks: one line, before any loading
    spec = str(path)
    folder = resolve_bundled(spec) if spec.startswith("bundled:") else Path(spec)
    if not folder.exists():
        raise FileNotFoundError(f"model {spec} not found (give a checkpoint folder, a run folder, a diffusers "
                                f"UNet2DModel folder or bundled:fashion)")
    if not folder.is_dir():
        raise ValueError(f"model {spec} is a file; pass the folder that holds config.json and the .safetensors weights")
    folder = checkpoint_folder(folder)
    if clipping not in CLIPPING_MODES:
        raise ValueError(f"clipping={clipping!r}; valid: {', '.join(CLIPPING_MODES)}")
    if _is_diffusers(folder):
        den = _load_diffusers(folder, clipping)
    elif clipping != "off":
        raise ValueError(f"clipping={clipping!r} applies a diffusers scheduler config's clipping; {spec} is a fewstep "
                         f"checkpoint (wrap it in fewstep.ClipDataPrediction or DynamicThresholding instead)")
    else:
        den = _load_fewstep(folder, ema)
    for net in den.networks():
        net.to(device=device, dtype=dtype).eval()
    attach_from(den, folder)
    return den


def _load_fewstep(folder: Path, ema: bool) -> Denoiser:
    cfg = read_config(folder)
    for key in ("network", "process", "prediction"):
        if key not in cfg:
            raise ValueError(f"{folder / 'config.json'} lacks {key!r}; the checkpoint is damaged")
    if "quantization" in cfg:  # an int8 model written by fewstep.quant (docs/quantization.md)
        if not ema:
            raise ValueError(f"{folder} is a quantized model with one set of weights; it has no raw (non-EMA) weights")
        net = load_quantized(folder, cfg, _load_state)
    else:
        names = ["ema.safetensors", "model.safetensors"] if ema else ["model.safetensors"]
        weights = next((folder / n for n in names if (folder / n).exists()), None)
        if weights is None:
            raise FileNotFoundError(f"{folder} has no {' or '.join(names)}; the checkpoint is incomplete")
        net = build_net(cfg["network"])
        state = load_tensors(weights)  # checked against the checkpoint's checksums.json, where it has one
        _load_state(net, state, weights)
    n = cfg["network"]
    shape = (n.get("in_channels", 1), n.get("resolution", 28), n.get("resolution", 28))
    if "generator" in cfg:  # a one-step generator (fewstep distill --method sid/sida): sample it with nfe=1
        gen = cfg["generator"]
        if not isinstance(gen, dict) or not isinstance(gen.get("sigma_init"), (int, float)):
            raise ValueError(f"{folder / 'config.json'}: generator must be {{\"sigma_init\": <float>}}, got {gen!r}")
        return OneStepGenerator(net, process_from_config(cfg["process"]), cfg["prediction"],
                                cfg.get("sigma_data", 0.5), float(gen["sigma_init"]), sample_shape=shape, config=cfg)
    process = process_from_config(cfg["process"])
    process.set_start(*well_conditioned_start(process, cfg["prediction"], sigma_data=cfg.get("sigma_data", 0.5)))
    if "consistency" in cfg:  # a consistency model (fewstep distill --method ect): sample it with nfe=1 or cm at 2
        sec = cfg["consistency"]
        if not isinstance(sec, dict) or not isinstance(sec.get("sigma_min"), (int, float)):
            raise ValueError(f"{folder / 'config.json'}: consistency must be {{\"sigma_min\": <float>}}, got {sec!r}")
        return ConsistencyModel(net, process, cfg["prediction"], cfg.get("sigma_data", 0.5), sample_shape=shape,
                                config=cfg, sigma_min=float(sec["sigma_min"]))
    return Denoiser(net, process, cfg["prediction"], cfg.get("sigma_data", 0.5), sample_shape=shape, config=cfg)


def _load_state(net: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {k}: config {tuple(own[k].shape)}, "
                         f"weights {tuple(state[k].shape)})")
        raise ValueError(f"the config does not match the weights in {source}: tensors {'; '.join(parts)}. "
                         f"Use the config.json saved with these weights.")
    net.load_state_dict(state)


# ----------------------------------------------------------------------------- diffusers

def _diffusers_paths(folder: Path) -> tuple[Path, Path] | None:
    """``(unet_folder, scheduler_config)`` for a UNet folder or a pipeline folder, else None."""
    candidates = [(folder, folder / "scheduler_config.json"), (folder, folder / "scheduler" / "scheduler_config.json"),
                  (folder / "unet", folder / "scheduler" / "scheduler_config.json")]
    for unet, sched in candidates:
        cfg = unet / "config.json"
        if cfg.exists() and sched.exists():
            try:
                name = json.loads(cfg.read_text()).get("_class_name")
            except json.JSONDecodeError:
                return None
            if name in UNET_CLASSES:
                return unet, sched
            if name is not None:
                raise ValueError(f"{cfg}: _class_name={name!r} is not supported; fewstep loads "
                                 f"{' and '.join(UNET_CLASSES)} folders (with their scheduler_config.json)")
    return None


def _is_diffusers(folder: Path) -> bool:
    if _diffusers_paths(folder) is not None:
        return True
    if (folder / "model_index.json").exists():
        raise FileNotFoundError(f"{folder} is a diffusers pipeline folder without unet/config.json and "
                                f"scheduler/scheduler_config.json; fewstep loads its UNet and scheduler from those")
    cfg = folder / "config.json"
    if cfg.exists():
        try:
            if "_class_name" in json.loads(cfg.read_text()):
                raise FileNotFoundError(f"{folder} looks like a diffusers model but has no scheduler_config.json "
                                        f"beside it (or in scheduler/); save the scheduler with the UNet")
        except json.JSONDecodeError:
            pass
    return False


def process_from_diffusers(sched: dict[str, Any]) -> tuple[NoiseProcess, str]:
    """The fewstep process (its ``t_start`` set for the model) and prediction type of a diffusers
    ``scheduler_config.json`` (DDPM-family or EDM-style); :func:`fewstep.diffusers_config.read_scheduler_config`
    has the full record of what became of each key."""
    schedule = read_scheduler_config(sched)
    return schedule.process, schedule.prediction


def denoiser_from_diffusers(net: Any, schedule: Any, *, sample_shape: tuple[int, ...] | None = None,
                            config: dict[str, Any] | None = None, clipping: str = "off") -> DenoiserBase:
    """A :class:`Denoiser` for ``net`` (called like a diffusers UNet: ``net(x, t, **cond)``, returning a tensor
    or an object with ``.sample``) under ``schedule`` (a :class:`~fewstep.diffusers_config.DiffusersSchedule`):
    the loading path of every diffusers folder, also for stand-in networks in tests.  ``clipping="config"``
    applies the config's data-prediction clipping (off by default: docs/diffusers.md)."""
    den = Denoiser(net, schedule.process, schedule.prediction, schedule.sigma_data, sample_shape=sample_shape,
                   config=config, variance=schedule.variance)
    return schedule.clipped(den, clipping)


def _load_diffusers(folder: Path, clipping: str = "off") -> DenoiserBase:
    paths = _diffusers_paths(folder)
    assert paths is not None
    unet_dir, sched_path = paths
    schedule = read_scheduler_config(_read_json(sched_path), source=str(sched_path))
    unet_cfg = _read_json(unet_dir / "config.json")
    spec = read_unet_config(unet_cfg, schedule, source=str(unet_dir / "config.json"))
    if not (unet_dir / "diffusion_pytorch_model.safetensors").exists():
        raise FileNotFoundError(f"{unet_dir} has no diffusion_pytorch_model.safetensors; fewstep reads only "
                                f"safetensors weights (never pickled .bin files). Re-save with safe_serialization=True")
    try:
        import diffusers
    except ImportError:
        raise ImportError("loading a diffusers folder needs the optional extra: pip install 'fewstep[diffusers]'") from None
    from importlib.util import find_spec

    # without accelerate diffusers prints a warning and falls back to low_cpu_mem_usage=False: ask for that directly
    unet = getattr(diffusers, spec.cls).from_pretrained(str(unet_dir), use_safetensors=True,
                                                        low_cpu_mem_usage=find_spec("accelerate") is not None)
    config = {"diffusers": str(unet_dir), "unet": {"class": spec.cls, "conditioning": spec.conditioning},
              "scheduler": schedule.report()}
    return denoiser_from_diffusers(DiffusersUNet(unet, spec.cls, spec.conditioning), schedule,
                                   sample_shape=spec.sample_shape, config=config, clipping=clipping)


class DiffusersUNet(torch.nn.Module):
    """A diffusers UNet called the way fewstep calls networks, ``net(x, t, **cond) -> tensor``; a conditioning
    keyword the UNet needs and ``cond`` lacks is refused by name (instead of diffusers' traceback)."""

    def __init__(self, unet: torch.nn.Module, cls: str, conditioning: dict[str, str]):
        super().__init__()
        self.unet, self.cls, self.conditioning = unet, cls, dict(conditioning)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        missing = [k for k in self.conditioning if k not in cond and k != "timestep_cond"]
        if missing:
            raise ValueError(f"this {self.cls} needs cond={{'{missing[0]}': ...}}: {self.conditioning[missing[0]]}")
        return self.unet(x, t, **cond).sample


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-save the diffusers folder") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data
