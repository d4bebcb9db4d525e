"""The quantized checkpoint folder: ``config.json`` (the float checkpoint's config plus a
``quantization`` record: method, bits, calibration solver/NFE/seeds, per-step activation ranges) and
``int8.safetensors`` (int8 weights ``*.weight_int8``, their per-channel ``*.weight_scale``, float
biases and every float tensor of the layers that stay float).  JSON and safetensors only, no pickle;
written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .._io import atomic_dir
from ..checkpoint import FORMAT, FORMAT_VERSION, load_tensors, write_checksums
from ..nets import build_net
from .network import QuantizedNetwork
from .quantize import build_quantized, single_network

__all__ = ["WEIGHTS", "save_quantized", "load_quantized", "is_quantized"]

WEIGHTS = "int8.safetensors"


def is_quantized(config: dict[str, Any]) -> bool:
    """Whether a checkpoint config describes a quantized model."""
    return isinstance(config.get("quantization"), dict)


def save_quantized(denoiser: Any, out: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write a quantized denoiser as a checkpoint folder ``out`` (which must not exist), atomically.

    The denoiser must come from a fewstep checkpoint (its ``config`` names network, process and
    prediction); ``extra`` is recorded as the quantization's ``source``/provenance."""
    net = single_network(denoiser)
    if not isinstance(net, QuantizedNetwork):
        raise ValueError("this denoiser is not quantized; call fewstep.quant.quantize_denoiser first")
    base = dict(denoiser.config or {})
    missing = [k for k in ("network", "process", "prediction") if k not in base]
    if missing:
        raise ValueError(f"saving needs a denoiser loaded from a fewstep checkpoint (its config lacks {missing[0]!r})")
    base.pop("quantization", None)
    info = {**net.info, "kernels": net.kernels, **({"source": extra} if extra else {})}
    config = {**base, "format": FORMAT, "format_version": FORMAT_VERSION, "quantization": info}
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.net.state_dict().items()}
    with atomic_dir(out) as tmp:
        save_file(tensors, str(tmp / WEIGHTS))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        write_checksums(tmp, [WEIGHTS])
    return Path(out)


def load_quantized(folder: Path, config: dict[str, Any], load_state: Any) -> torch.nn.Module:
    """The :class:`QuantizedNetwork` stored in ``folder`` (``config`` already read and checked);
    ``load_state(net, tensors, path)`` loads a state dict with the loader's error messages."""
    info = config["quantization"]
    for key in ("bits", "quantized_layers", "levels", "level_groups", "ranges"):
        if key not in info:
            raise ValueError(f"{folder / 'config.json'}: the quantization record lacks {key!r}; the checkpoint is damaged")
    path = folder / WEIGHTS
    tensors = load_tensors(path)
    qnet = build_quantized(build_net(config["network"]), info)
    load_state(qnet.net, tensors, path)
    return qnet
