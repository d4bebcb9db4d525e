"""``quantize_denoiser``: post-training int8 quantization of a denoiser's network with temporal calibration
(TFMQ-DM, Huang et al. 2024): calibrate per-step activation ranges on the float model's own
trajectories, then swap the conv/linear layers (outside the time-embedding path) for int8 ones."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..denoisers import DenoiserBase
from .calibrate import CalibrationSettings, calibrate
from .layers import KERNELS, GroupSelector
from .maths import qmax
from .network import SUPPORTED, QuantizedNetwork, check_supported, is_time_path, quantizable_layers, replace_layers

__all__ = ["METHOD", "quantize_denoiser", "build_quantized", "set_kernels", "single_network"]

METHOD = "tfmq-ptq"


def single_network(denoiser: Any) -> torch.nn.Module:
    """The one ``nn.Module`` behind ``denoiser`` (through wrappers); a one-line error otherwise."""
    if not isinstance(denoiser, DenoiserBase):
        raise TypeError(f"expected a fewstep denoiser, got {type(denoiser).__name__}; quantization supports {SUPPORTED}")
    nets = list(denoiser.networks())
    if len(nets) != 1:
        raise ValueError(f"quantization needs a denoiser with exactly one network, this one has {len(nets)}")
    return nets[0]


def build_quantized(net: torch.nn.Module, info: dict[str, Any]) -> QuantizedNetwork:
    """Turn float ``net`` (in place) into the :class:`QuantizedNetwork` that ``info`` (config.json's
    ``quantization`` record) describes; the int8 weights are quantized from ``net``'s own weights."""
    check_supported(net)
    names = list(info["quantized_layers"])
    groups = max(info["level_groups"]) + 1
    selector = GroupSelector(info.get("kernels", "simulated"))
    device = next(net.parameters()).device
    replace_layers(net, names, int(info["bits"]), groups, selector)
    qnet = QuantizedNetwork(net, info["levels"], info["level_groups"], selector, info).to(device)
    layers = dict(qnet.quant_layers())
    lows = info.get("ranges_low")
    for name in names:
        clips = info["ranges"].get(name)
        low = None if lows is None else lows.get(name)
        if clips is None or len(clips) != groups or (lows is not None and (low is None or len(low) != groups)):
            raise ValueError(f"the quantization record lacks {groups} activation ranges for layer {name}")
        if low is None:
            layers[name].set_clips(torch.tensor(clips))
        else:
            layers[name].set_ranges(torch.tensor(low), torch.tensor(clips))
    return qnet


def quantize_denoiser(denoiser: DenoiserBase, settings: CalibrationSettings | None = None, *, bits: int = 8,
                      kernels: str = "simulated", keep_float: Sequence[str] = (), device: str | torch.device = "cpu",
                      progress: bool = False) -> DenoiserBase:
    """Calibrate and quantize ``denoiser``'s network in place (``map_networks``); returns ``denoiser``.

    Weights: int8 (``bits``-bit levels), symmetric, one scale per output channel.  Activations (each
    quantized layer's input): symmetric per tensor, a static range per timestep group chosen on
    ``settings.n`` calibration trajectories of ``settings.solver`` at ``settings.nfe``.  The
    time-embedding path stays float (see :mod:`fewstep.quant.network`), and so do the layers named
    in ``keep_float`` (e.g. ``("conv_in", "conv_out")``, the first and last layers, as Q-Diffusion
    and most PTQ work keep them).  ``settings.activations='asymmetric'`` gives every input an
    affine range ``[lo, hi]`` with a zero point (simulated kernels only).  ``kernels`` picks the
    execution ('simulated' float kernels or 'int8' ``torch._int_mm``), recorded as the default.
    """
    settings = settings or CalibrationSettings()
    qmax(bits)
    if kernels not in KERNELS:
        raise ValueError(f"unknown quantized kernels {kernels!r}; valid: {', '.join(KERNELS)}")
    net = single_network(denoiser)
    check_supported(net)
    layers = quantizable_layers(net)
    unknown = [n for n in keep_float if n not in layers]
    if unknown:
        raise ValueError(f"keep_float: {', '.join(unknown)} is not a quantizable layer; valid: {', '.join(layers)}")
    if settings.activations == "asymmetric" and kernels == "int8":
        raise ValueError("asymmetric activation ranges run with the simulated kernels only; use kernels='simulated'")
    layers = {n: m for n, m in layers.items() if n not in set(keep_float)}
    calib = calibrate(denoiser, layers, settings, bits, device=device, progress=progress)
    kept = sorted(name for name, m in net.named_modules()
                  if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and name not in layers)
    info = {
        "method": METHOD,
        "paper": "TFMQ-DM (Huang et al. 2024), per-timestep activation ranges; time-embedding path kept float",
        "bits": int(bits),
        "weights": "per-output-channel symmetric, int8 storage",
        "activations": f"per-tensor {settings.activations}, static range per timestep group (nearest calibrated "
                       "noise level)",
        "kernels": kernels,
        "calibration": settings.to_dict(),
        "quantized_layers": list(layers),
        "float_layers": kept,
        "time_path_float": [n for n in kept if is_time_path(n)],
        "levels": calib.levels,
        "steps": calib.steps,
        "level_groups": calib.level_groups,
        "ranges": calib.clips,
        **({"ranges_low": calib.lows} if calib.lows is not None else {}),
    }
    denoiser.map_networks(lambda n: build_quantized(n, info))
    return denoiser


def set_kernels(denoiser: DenoiserBase, kernels: str) -> DenoiserBase:
    """Run every quantized network of ``denoiser`` with ``kernels`` ('simulated' or 'int8'); returns it."""
    found = [n for n in denoiser.networks() if isinstance(n, QuantizedNetwork)]
    if not found:
        raise ValueError("this denoiser has no quantized network; quantize it first (fewstep quantize)")
    if kernels == "int8" and any(layer.asymmetric for net in found for _, layer in net.quant_layers()):
        raise ValueError("this model has asymmetric activation ranges, which run with the simulated kernels only")
    for net in found:
        net.kernels = kernels
    return denoiser
