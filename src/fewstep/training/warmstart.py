"""Warm start: initialise a network being trained from a trained model's weights (fine-tuning).

Parameters present in both with equal shapes are copied; a class table the source lacks
(``embed.classes``: fine-tuning an unconditional model into a conditional one) starts at zero,
so the new network first computes exactly the source's denoiser for every label and learns the
class offsets from there; modules a network declares new (``fresh_prefixes``, MaskUNet's mask generator) keep
their own initialisation. Anything else that does not match is refused, naming the parameters.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..denoisers import Denoiser
from ..loading import load_model

__all__ = ["load_teacher", "warm_start"]

_ZERO_INIT_SUFFIXES = ("embed.classes.weight",)


def _check_same_process(den: Any, source: str, config: Mapping[str, Any], role: str) -> None:
    src_cfg = den.config or {}
    for key in ("process", "prediction") if role == "init_from" else ("process",):
        if key in src_cfg and key in config and src_cfg[key] != config[key]:
            advice = (f"fine-tune with the source's {key}" if role == "init_from" else
                      f"distil from a teacher trained with this run's {key}")
            raise ValueError(f"{role} {source}: its {key} {src_cfg[key]!r} differs from this run's "
                             f"{config[key]!r}; {advice}")


def load_teacher(source: str, config: Mapping[str, Any]) -> Any:
    """The distillation teacher: model ``source`` as a :class:`~fewstep.denoisers.Denoiser` of one network, frozen.

    Its process must be the run's (its predictions are targets at the run's noise levels); its parametrisation
    may differ (the targets are converted through its data and noise predictions)."""
    den = load_model(source)
    _check_same_process(den, source, config, "teacher")
    if not isinstance(den, Denoiser):
        raise ValueError(f"teacher {source}: expected a plain denoiser of one network, got {type(den).__name__}")
    den.net.eval().requires_grad_(False)
    return den


def warm_start(net: nn.Module, source: str, config: Mapping[str, Any]) -> list[str]:
    """Copy the weights of model ``source`` (anything :func:`fewstep.load_model` reads) into ``net``.

    ``config`` is the run's config: its ``process`` and ``prediction`` must equal the source's
    (a network trained for another process or parametrisation predicts something else).
    Returns the names of the parameters that were zero-initialised instead of copied.
    """
    den = load_model(source)
    _check_same_process(den, source, config, "init_from")
    nets = list(den.networks())
    if len(nets) != 1:
        raise ValueError(f"init_from {source}: expected one network, found {len(nets)}")
    src_state = nets[0].state_dict()
    own = net.state_dict()
    zeroed, bad = [], []
    fresh = tuple(getattr(net, "fresh_prefixes", ()))  # modules the network adds (MaskUNet's mask generator)
    for name, value in own.items():
        if fresh and name.startswith(fresh) and name not in src_state:
            continue
        if name in src_state and src_state[name].shape == value.shape:
            own[name] = src_state[name].to(value.dtype)
        elif name.endswith(_ZERO_INIT_SUFFIXES) and name not in src_state:
            own[name] = torch.zeros_like(value)
            zeroed.append(name)
        else:
            got = tuple(src_state[name].shape) if name in src_state else "missing"
            bad.append(f"{name} (here {tuple(value.shape)}, source {got})")
    extra = sorted(set(src_state) - set(own))
    if bad or extra:
        detail = "; ".join(bad + [f"{n} (only in the source)" for n in extra][:8])
        raise ValueError(f"init_from {source}: the network does not match the source's architecture: {detail}. "
                         f"Use the source's network settings (only num_classes may be added)")
    net.load_state_dict(own)
    return zeroed
