"""Build the genuinely smaller UNet with some units removed, its weights sliced from the original's."""

from __future__ import annotations

import dataclasses
from typing import Iterable

import torch

from ..nets.unet import UNet
from .units import Unit, blocks

__all__ = ["prune_unet"]


@torch.no_grad()
def prune_unet(net: UNet, units: Iterable[Unit]) -> UNet:
    """A new UNet without ``units``: its config records each ResBlock's hidden width and GroupNorm groups and
    the removed attention blocks, so :func:`fewstep.nets.build_net` rebuilds it; kept channels keep their
    weights, so it computes exactly what :func:`~fewstep.pruning.units.removed` computes on ``net``."""
    units = list(units)
    res, attn = blocks(net)
    gone: dict[int, set[int]] = {}
    for u in units:
        if u.kind == "res":
            if not (0 <= u.index < len(res) and res[u.index].hidden and u.stop <= res[u.index].hidden):
                raise ValueError(f"unit {u.name} is not in this network")
            gone.setdefault(u.index, set()).update(range(u.start, u.stop))
    hidden, groups, keep = [], [], {}
    for i, block in enumerate(res):
        if not block.hidden:
            hidden.append(0)
            groups.append(1)
            continue
        kept = [c for c in range(block.hidden) if c not in gone.get(i, ())]
        g = block.norm2.num_groups
        size = block.hidden // g
        if len(kept) % size:
            raise ValueError(f"ResBlock {i}: remove whole GroupNorm groups of {size} channels, not single channels")
        hidden.append(len(kept))
        groups.append(max(1, len(kept) // size))
        keep[i] = torch.tensor(kept, dtype=torch.long)
    attn_removed = sorted({j for j, a in enumerate(attn) if not hasattr(a, "qkv")}
                          | {u.index for u in units if u.kind == "attn"})
    cfg = dataclasses.replace(net.config, res_hidden=hidden, res_groups=groups, attn_removed=attn_removed)
    new = UNet(cfg)
    ref = next(net.parameters())
    new.to(device=ref.device, dtype=ref.dtype)
    new_res, _ = blocks(new)
    old_names = {id(b): n for n, b in net.named_modules()}
    sliced: dict[str, torch.Tensor] = {}
    for i, (old, nb) in enumerate(zip(res, new_res)):
        if not nb.hidden:
            continue
        k = keep[i].to(ref.device)
        both = torch.cat([k, k + old.hidden])  # emb holds the scale rows, then the shift rows
        p = old_names[id(old)] + "."
        sliced.update({p + "conv1.weight": old.conv1.weight[k], p + "conv1.bias": old.conv1.bias[k],
                       p + "emb.weight": old.emb.weight[both], p + "emb.bias": old.emb.bias[both],
                       p + "norm2.weight": old.norm2.weight[k], p + "norm2.bias": old.norm2.bias[k],
                       p + "conv2.weight": old.conv2.weight[:, k]})
    old_state = net.state_dict()
    state = {name: sliced.get(name, old_state[name]) for name in new.state_dict()}
    new.load_state_dict(state)
    new.train(net.training)
    return new
