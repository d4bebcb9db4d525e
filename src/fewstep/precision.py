"""Evaluating a denoiser's network in bfloat16 (mixed precision) while the solver's arithmetic keeps the state's dtype.

``precision="bf16"`` runs every network call under ``torch.autocast(dtype=torch.bfloat16)``: convolutions and
matrix products take bf16 inputs (float32 accumulation), normalisations and the rest stay in float32, and the
network's output is cast back to the state's dtype, so the parametrization (output -> ``x0``/``eps``), the grid
coefficients and every solver update are computed exactly as in float32.  This is the same autocast the trainer
uses with ``training.precision: bf16``.

Where it pays: GPUs with bf16 units, and CPUs with AMX tiles (Intel Xeon since Sapphire Rapids;
``torch.cpu._is_amx_tile_supported()``), on which oneDNN runs bf16 convolutions on the tiles.  Elsewhere on a CPU
bf16 emulation is usually *slower* than float32.  Measured speed and FID (``benchmarks/prune_speed.py --precision``,
``benchmarks/paired_fid.py features --precision``): docs/accel.md ("Precision").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .denoisers import DenoiserBase, accepts_context

__all__ = ["PRECISIONS", "AutocastNetwork", "set_precision", "fast_bf16_here"]

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
"""Names accepted by ``precision=`` / ``--precision``: ``fp32`` leaves the network as it is (its own dtype)."""


def fast_bf16_here(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matrix products are native on ``device``: CUDA with bf16 support, or a CPU with AMX tiles."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool(probe()) if probe is not None else False
    return False


class AutocastNetwork(torch.nn.Module):
    """``net`` evaluated under ``torch.autocast(dtype)`` on its input's device; the output cast to the input's dtype.

    Keeps ``net``'s step-context protocol (feature caches see the same taps) and adds no parameters: the state dict
    is ``net``'s under the prefix ``inner.``.
    """

    def __init__(self, net: torch.nn.Module, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.inner = net
        self.dtype = dtype
        self.accepts_step_context = accepts_context(net)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        available = getattr(torch.amp, "is_autocast_available", None)
        if available is not None and not available(x.device.type):
            raise ValueError(f"torch has no autocast on {x.device.type} here: sample with precision fp32")
        with torch.autocast(x.device.type, dtype=self.dtype):
            out = self.inner(x, *args, **kwargs)
        if isinstance(out, Tensor):
            return out.to(x.dtype)
        sample = getattr(out, "sample", None)  # a diffusers output object
        return sample.to(x.dtype) if isinstance(sample, Tensor) else out


def set_precision(denoiser: DenoiserBase, precision: str) -> DenoiserBase:
    """Evaluate every network of ``denoiser`` (through any wrappers) at ``precision`` (:data:`PRECISIONS`), in
    place; returns ``denoiser``.  ``"fp32"`` changes nothing; asking twice is a no-op."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return denoiser
    if not isinstance(denoiser, DenoiserBase) or next(denoiser.networks(), None) is None:
        raise ValueError(f"{type(denoiser).__name__} has no torch.nn.Module network to run in {precision} "
                         "(expected a fewstep Denoiser, possibly inside wrappers)")
    config = denoiser.config or {}
    if isinstance(config.get("quantization"), dict):
        raise ValueError(f"this model is int8-quantized (its own precision); precision {precision} applies to float "
                         "models: load the unquantized model, or sample this one with precision fp32")
    return denoiser.map_networks(lambda net: net if isinstance(net, AutocastNetwork) else AutocastNetwork(net, dtype))
