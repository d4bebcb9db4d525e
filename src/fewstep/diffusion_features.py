"""Diffusion features: a denoising network's intermediate activations as image representations.

Xiang et al. 2023, *Denoising Diffusion Autoencoders are Unified Self-supervised Learners* (DDAE, ICCV):
noise a clean image to ``x_t = alpha_t x0 + sigma_t eps`` (eq. 1) at a chosen, small ``t``, run the denoiser
once, and take a block's output, global-average-pooled over space, as the image's feature vector; a linear
classifier on it measures how much the network learned about the data (sec. 4.1, linear probing).

The activations are read through the networks' *block taps* (:func:`fewstep.context.tap`: UNet ``in``,
``down.k``, ``deep``, ``mid``, ``up.k``; DiT ``block.k``) by a tap handler in the evaluation's
:class:`~fewstep.context.StepContext`, so no network code is copied.  The noise of image ``i`` comes from
its own seed, so its features do not depend on the batch it is in.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor

from .api import generators
from .context import StepContext
from .data import to_model_range
from .denoisers import DenoiserBase
from .grids import Schedule
from .solvers._common import Cond, randn_like

__all__ = ["diffusion_features", "dataset_features", "tap_names", "PIXELS"]

#: The tap name of the baseline: the clean image's pixels themselves, no network.
PIXELS = "pixels"


def _one_point(denoiser: DenoiserBase, t: float) -> Schedule:
    """The schedule of a single evaluation at ``t`` (what the context of that evaluation refers to)."""
    p = denoiser.process
    ts = torch.tensor([float(t)], dtype=torch.float64)
    return Schedule(p, ts, p.alpha(ts), p.sigma(ts), p.lam(ts), clean_end=False)


def _pool(h: Any, name: str, pool: str) -> Tensor:
    if isinstance(h, (tuple, list)):
        h = h[0]
    if not isinstance(h, Tensor):
        raise ValueError(f"tap {name!r} returned {type(h).__name__}, not a tensor")
    if pool == "none" or h.ndim == 2:
        return h
    if h.ndim == 4:  # (B, C, H, W): global average pooling (DDAE sec. 4.1)
        return h.mean(dim=(2, 3))
    if h.ndim == 3:  # (B, tokens, D): mean over tokens
        return h.mean(dim=1)
    raise ValueError(f"tap {name!r} has shape {tuple(h.shape)}; cannot pool it")


def diffusion_features(denoiser: DenoiserBase, x0: Tensor, t: float, taps: Sequence[str] = ("mid",), *,
                       seeds: Iterable[int] | None = None, cond: Cond = None,
                       pool: str = "mean") -> dict[str, Tensor]:
    """The outputs of blocks ``taps`` of the denoiser's network at ``(x_t, t)``, ``x_t`` noised from ``x0``.

    ``x0`` is a batch in the model range ``[-1, 1]``; ``t`` a time of the denoiser's process (e.g. 0..999 for a
    discrete VP model); image ``i`` is noised with seed ``seeds[i]`` (default ``0..B-1``: pass data-set
    indices for features independent of the batch).  ``pool="mean"`` averages each map over space into a
    ``(B, C)`` vector, ``"none"`` keeps it.  One network evaluation; the tap ``"pixels"`` is ``x0`` itself.
    """
    if pool not in ("mean", "none"):
        raise ValueError(f"pool must be 'mean' or 'none', got {pool!r}")
    taps = [taps] if isinstance(taps, str) else list(taps)
    if not taps:
        raise ValueError("taps is empty; name at least one block, e.g. taps=('mid',)")
    process = denoiser.process
    process.check_time(float(t))
    seeds = list(range(len(x0))) if seeds is None else list(seeds)
    if len(seeds) != len(x0):
        raise ValueError(f"got {len(seeds)} seeds for {len(x0)} images; pass one per image")
    wanted = [name for name in taps if name != PIXELS]
    found: dict[str, Tensor] = {}
    seen: list[str] = []

    def record(ctx: StepContext, name: str, compute: Callable[..., Any], *args: Any) -> Any:
        out = compute(*args)
        seen.append(name)
        if name in wanted:
            found[name] = _pool(out, name, pool)
        return out

    if wanted:
        a, s = float(process.alpha(t)), float(process.sigma(t))
        x_t = a * x0 + s * randn_like(x0, generators(seeds, x0.device))
        ctx = StepContext(_one_point(denoiser, t), 0, 0, {}, record)
        with torch.inference_mode():
            denoiser.predict(x_t, float(t), ctx=ctx, **(cond or {}))
        missing = [name for name in wanted if name not in found]
        if missing:
            have = ", ".join(dict.fromkeys(seen)) or "none (the network does not take a sampling context)"
            raise ValueError(f"the network has no block tap {missing[0]!r}; its taps: {have} (or 'pixels')")
    out = {}
    for name in taps:
        out[name] = x0.flatten(1) if name == PIXELS and pool == "mean" else (x0 if name == PIXELS else found[name])
    return out


def tap_names(denoiser: DenoiserBase) -> list[str]:
    """The block taps the denoiser's network marks, in the order one evaluation reaches them (one evaluation
    of a zero image; empty when the network takes no sampling context)."""
    if denoiser.sample_shape is None:
        raise ValueError("the denoiser declares no sample_shape; cannot build an input to list its taps")
    seen: list[str] = []

    def record(ctx: StepContext, name: str, compute: Callable[..., Any], *args: Any) -> Any:
        seen.append(name)
        return compute(*args)

    t = float(denoiser.process.t_min)
    device = next((p.device for net in denoiser.networks() for p in net.parameters()), torch.device("cpu"))
    ctx = StepContext(_one_point(denoiser, t), 0, 0, {}, record)
    with torch.inference_mode():
        denoiser.predict(torch.zeros(1, *denoiser.sample_shape, device=device), t, ctx=ctx)
    return list(dict.fromkeys(seen))


def dataset_features(denoiser: DenoiserBase | None, images: Tensor, t: float, taps: Sequence[str] = ("mid",), *,
                     seed: int = 0, batch_size: int = 256, labels: Tensor | None = None,
                     device: str | torch.device = "cpu", progress: bool = True) -> Tensor:
    """Pooled features of a uint8 image set ``(N, C, H, W)``, the taps concatenated: float32 ``(N, D)``.

    Image ``i`` is noised with seed ``seed + i``; ``labels`` (if given) condition a class-conditional model.
    ``denoiser`` may be ``None`` when the only tap is ``"pixels"``.
    """
    taps = [taps] if isinstance(taps, str) else list(taps)
    if denoiser is None and any(name != PIXELS for name in taps):
        raise ValueError("a model is needed for taps other than 'pixels'")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(images), desc="features", unit="img", dynamic_ncols=True)
    chunks = []
    try:
        for i in range(0, len(images), batch_size):
            x0 = to_model_range(images[i:i + batch_size]).to(device)
            if denoiser is None:
                feats = {PIXELS: x0.flatten(1)}
            else:
                cond = None if labels is None else {"class_labels": labels[i:i + batch_size].to(device)}
                feats = diffusion_features(denoiser, x0, t, taps, seeds=range(seed + i, seed + i + len(x0)),
                                           cond=cond)
            chunks.append(torch.cat([feats[name].float().flatten(1).cpu() for name in taps], dim=1))
            if bar is not None:
                bar.update(len(x0))
    finally:
        if bar is not None:
            bar.close()
    return torch.cat(chunks)
