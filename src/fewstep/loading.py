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
from .nets import build_net
from .onestep import OneStepGenerator
from .processes import NoiseProcess, VPDiscrete, process_from_config
from .quant.io import load_quantized

__all__ = ["load_model", "BUNDLED", "resolve_bundled", "process_from_diffusers"]

def load_model(path: str | os.PathLike, *, ema: bool = True, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> DenoiserBase:
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
    den = _load_diffusers(folder) if _is_diffusers(folder) else _load_fewstep(folder, ema)
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
    return Denoiser(net, process_from_config(cfg["process"]), cfg["prediction"], cfg.get("sigma_data", 0.5),
                    sample_shape=shape, config=cfg)


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
                if json.loads(cfg.read_text()).get("_class_name") == "UNet2DModel":
                    return unet, sched
            except json.JSONDecodeError:
                return None
    return None


def _is_diffusers(folder: Path) -> bool:
    if _diffusers_paths(folder) is not None:
        return True
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
    """Map a DDPM/DDIM-style ``scheduler_config.json`` to a fewstep process and prediction type."""
    n = int(sched.get("num_train_timesteps", 1000))
    kind = sched.get("beta_schedule", "linear")
    if sched.get("trained_betas"):
        proc: NoiseProcess = VPDiscrete(sched["trained_betas"])
    elif kind == "linear":
        proc = VPDiscrete.linear(n, sched.get("beta_start", 1e-4), sched.get("beta_end", 0.02))
    elif kind == "scaled_linear":
        proc = VPDiscrete.scaled_linear(n, sched.get("beta_start", 0.00085), sched.get("beta_end", 0.012))
    elif kind == "squaredcos_cap_v2":
        proc = VPDiscrete.cosine(n)
    else:
        raise ValueError(f"diffusers beta_schedule {kind!r} is not supported; valid: linear, scaled_linear, "
                         f"squaredcos_cap_v2, or trained_betas")
    pred = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}.get(sched.get("prediction_type", "epsilon"))
    if pred is None:
        raise ValueError(f"diffusers prediction_type {sched.get('prediction_type')!r} is not supported; "
                         f"valid: epsilon, v_prediction, sample")
    return proc, pred


def _load_diffusers(folder: Path) -> Denoiser:
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise ImportError("loading a diffusers folder needs the optional extra: pip install 'fewstep[diffusers]'") from None
    paths = _diffusers_paths(folder)
    assert paths is not None
    unet_dir, sched_path = paths
    if not (unet_dir / "diffusion_pytorch_model.safetensors").exists():
        raise FileNotFoundError(f"{unet_dir} has no diffusion_pytorch_model.safetensors; fewstep reads only "
                                f"safetensors weights (never pickled .bin files). Re-save with safe_serialization=True")
    proc, pred = process_from_diffusers(json.loads(sched_path.read_text()))
    unet = UNet2DModel.from_pretrained(str(unet_dir), use_safetensors=True)
    c = unet.config
    size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    return Denoiser(unet, proc, pred, sample_shape=(c.in_channels, size, size), config={"diffusers": str(unet_dir)})
