"""The prunable units of a fewstep UNet, and removing them temporarily (for scoring) without rebuilding it.

A unit is either one GroupNorm group of a ResBlock's hidden channels (the output of ``conv1``, the
scale/shift rows of ``emb``, ``norm2``, the input of ``conv2``: local to the block) or one whole attention
block (residual, so removing it leaves the identity).  Removing every group of a ResBlock removes its
residual branch: the block becomes its skip path (``hidden = 0``).  Because GroupNorm normalises each
group on its own, masking a group's channels at the input of ``conv2`` computes exactly what the narrower
network computes, which :func:`removed` uses to score a removal on the unchanged network.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn

from ..nets.unet import AttnBlock, ResBlock, UNet

__all__ = ["Unit", "blocks", "prunable_units", "unit_macs", "removed", "check_prunable"]


@dataclass(frozen=True)
class Unit:
    """``kind`` "res": group ``group`` of ResBlock ``index`` (build order), channels ``[start, stop)``;
    ``kind`` "attn": attention block ``index`` (build order), ``width`` its channels."""

    kind: str
    index: int
    group: int = 0
    start: int = 0
    stop: int = 0
    width: int = 0

    @property
    def name(self) -> str:
        return f"res{self.index}.g{self.group}" if self.kind == "res" else f"attn{self.index}"

    @property
    def size(self) -> int:
        """Channels this unit removes (its share of a pruning ratio)."""
        return self.stop - self.start if self.kind == "res" else self.width


def blocks(net: UNet) -> tuple[list[ResBlock], list[nn.Module]]:
    """The ResBlocks and the attention slots (an AttnBlock, or the identity where one was removed), in the
    build order the config's ``res_hidden`` and ``attn_removed`` use."""
    res: list[ResBlock] = []
    attn: list[nn.Module] = []
    for group in (*net.down, net.mid, *net.up):
        items = group if isinstance(group, nn.ModuleList) else [group]
        for m in items:
            if isinstance(m, ResBlock):
                res.append(m)
            elif isinstance(m, (AttnBlock, nn.Identity)):
                attn.append(m)
    return res, attn


def check_prunable(net: object) -> UNet:
    """``net`` as a UNet with at least one unit, or a ValueError naming what is supported."""
    if type(net) is not UNet:
        raise ValueError(f"structured pruning supports fewstep UNet networks; this model's network is "
                         f"{type(net).__name__} (DiT, MaskUNet, diffusers and quantized networks are not prunable)")
    if not prunable_units(net):
        raise ValueError("this UNet has no prunable blocks left (every residual branch and attention block is "
                         "already removed)")
    return net


def prunable_units(net: UNet) -> list[Unit]:
    """Every unit of ``net``: the GroupNorm groups of each ResBlock with a residual branch, then each attention block."""
    res, attn = blocks(net)
    units = []
    for i, block in enumerate(res):
        if block.hidden:
            g = block.norm2.num_groups
            size = block.hidden // g
            units += [Unit("res", i, k, k * size, (k + 1) * size) for k in range(g)]
    units += [Unit("attn", j, width=int(a.qkv.in_channels)) for j, a in enumerate(attn) if isinstance(a, AttnBlock)]
    return units


def unit_macs(net: UNet, units: Iterable[Unit], shape: tuple[int, ...]) -> list[int]:
    """Multiply-adds per sample that removing each unit saves, for inputs of ``shape`` ``(C, H, W)``.

    A ResBlock group of ``n`` channels at ``H x W``: its rows of ``conv1`` (``9 C_in n`` per pixel), its
    columns of ``conv2`` (``9 n C_out`` per pixel) and its ``2n`` rows of the embedding projection; an attention
    block of width ``C`` over ``P = H W`` positions: the ``qkv`` and output projections (``4 C^2 P``) and the
    attention products (``2 P^2 C``).  Normalisations and activations are not counted.
    """
    res, attn = blocks(net)
    pixels: dict[int, int] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, key=id(m): pixels.__setitem__(key, args[0].shape[-2]
                                                                                          * args[0].shape[-1]))
             for m in (*res, *(a for a in attn if isinstance(a, AttnBlock)))]
    try:
        p = next(net.parameters())
        with torch.no_grad():
            net(torch.zeros(1, *shape, dtype=p.dtype, device=p.device), torch.zeros(1, device=p.device))
    finally:
        for h in hooks:
            h.remove()
    costs = []
    for u in units:
        if u.kind == "res":
            b = res[u.index]
            per_pixel = 9 * u.size * (b.conv1.in_channels + b.conv2.out_channels)
            costs.append(per_pixel * pixels[id(b)] + 2 * u.size * b.emb.in_features)
        else:
            n, c = pixels[id(attn[u.index])], u.width
            costs.append(4 * c * c * n + 2 * n * n * c)
    return costs


@contextlib.contextmanager
def removed(net: UNet, units: Iterable[Unit]) -> Iterator[None]:
    """Within the block, ``net`` computes what it computes with ``units`` removed (hooks; no weight changes)."""
    res, attn = blocks(net)
    masks: dict[int, Tensor] = {}
    handles = []
    for u in units:
        if u.kind == "res":
            m = masks.setdefault(u.index, torch.ones(res[u.index].hidden))
            m[u.start:u.stop] = 0.0
        else:
            handles.append(attn[u.index].register_forward_hook(lambda mod, args, out: args[0]))
    for i, mask in masks.items():
        block = res[i]
        if not mask.any():  # the whole residual branch goes, conv2's bias with it
            handles.append(block.register_forward_hook(lambda mod, args, out: mod.skip(args[0])))
        else:
            w = mask.to(block.conv2.weight)[None, :, None, None]
            handles.append(block.conv2.register_forward_pre_hook(lambda mod, args, w=w: (args[0] * w,)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
