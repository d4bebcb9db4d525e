"""``model_fingerprint``: one SHA-256 of what a denoiser computes, the identity every saved result is keyed by.

The near-exact reference cache (:mod:`fewstep.tuning.reference_cache`) keys its files by the fingerprint of the
denoiser it solved with (wrappers included: guidance changes the ODE), DPM-Solver-v3's statistics record the
fingerprint of the model they were computed for (:class:`fewstep.solvers.dpm_v3.EMS`; checked against
``model_fingerprint(innermost(denoiser))``, the model under any counting, caching or guidance wrapper).
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .attachments import declared
from .denoisers import NFECounter, wrapper_chain

__all__ = ["model_fingerprint"]

#: Per network: (a key that changes when a weight tensor is replaced or updated in place, the weights' digest).
_WEIGHTS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def _feed(h: "hashlib._Hash", value: Any, depth: int = 0) -> None:
    """Hash ``value``'s content: plain values, tensors and arrays, containers, and the public attributes of
    plain objects (networks are skipped: their weights are hashed separately)."""
    if isinstance(value, (torch.nn.Module, NFECounter)):
        return
    if isinstance(value, Tensor):
        t = value.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, np.ndarray):
        h.update(f"A{value.dtype}{value.shape}".encode() + np.ascontiguousarray(value).tobytes())
    elif value is None or isinstance(value, (str, int, float, bool)):
        h.update(repr(value).encode())
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for v in value:
            _feed(h, v, depth)
        h.update(b"]")
    elif isinstance(value, dict):
        h.update(b"{")
        for k in sorted(value, key=str):
            h.update(str(k).encode())
            _feed(h, value[k], depth)
        h.update(b"}")
    elif depth < 4 and hasattr(value, "__dict__"):
        h.update(type(value).__qualname__.encode())
        for k in sorted(vars(value)):
            if not k.startswith("_"):
                h.update(k.encode())
                _feed(h, vars(value)[k], depth + 1)
    else:
        h.update(type(value).__qualname__.encode())


def _weights_digest(net: torch.nn.Module) -> str:
    """SHA-256 of a network's weights and buffers (``_orig_mod.`` of ``torch.compile`` removed), remembered while
    no tensor is replaced or changed in place (``torch`` counts in-place updates; writes through ``.data``
    bypass that count, so change weights through ``torch.no_grad()`` or ``load_state_dict``)."""
    state = {k.replace("_orig_mod.", ""): v for k, v in net.state_dict(keep_vars=True).items()}
    key = tuple((k, v.data_ptr(), v._version, v.dtype, tuple(v.shape)) for k, v in sorted(state.items()))
    known = _WEIGHTS.get(net)
    if known is not None and known[0] == key:
        return known[1]
    h = hashlib.sha256()
    _feed(h, {k: v.detach() for k, v in state.items()})
    digest = h.hexdigest()
    _WEIGHTS[net] = (key, digest)
    return digest


def model_fingerprint(denoiser: Any) -> str:
    """SHA-256 of what ``denoiser`` computes: the networks' weights and buffers, and the plain attributes of the
    denoiser and of every wrapper around it (process, prediction type, config, guidance scale, an exact model's
    parameters).  :class:`~fewstep.denoisers.NFECounter` is transparent (counting evaluations changes nothing),
    and so is the data attached beside the model (:mod:`fewstep.attachments`).  Stable across
    processes and ``torch.compile``; changes when any weight does."""
    h, attached_data = hashlib.sha256(), declared()
    for node in wrapper_chain(denoiser):
        if isinstance(node, NFECounter):
            continue
        h.update(type(node).__qualname__.encode())
        _feed(h, {k: v for k, v in vars(node).items() if k != "inner" and k not in attached_data})
    for net in denoiser.networks():
        h.update(_weights_digest(net).encode())
    return h.hexdigest()
