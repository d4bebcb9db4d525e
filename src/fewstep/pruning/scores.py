"""Importance of each prunable unit: LD-Pruner's output statistics and Diff-Pruning's Taylor importance.

* **LD-Pruner** (Castells et al. 2024, sec. 3): remove one operator at a time and compare the outputs of the
  modified network with the original's by their statistics over a set of inputs,
  ``score = ||mean(Y) - mean(Y')||_2 + ||std(Y) - std(Y')||_2`` (mean and std element-wise over the set).
  Task-agnostic: no loss and no labels.  Here the outputs are the data predictions at a few noise levels
  on a fixed batch of noised training images, the score summed over the levels.
* **Diff-Pruning** (Fang et al. 2023, eqs. 7-9): first-order Taylor importance ``|theta * g|`` summed over
  a unit's parameters, ``g`` the gradient of the denoising loss (the eps error, as in DDPM) accumulated over
  timesteps from the clean end upward, stopping at the first step whose loss falls below ``thr`` times the
  largest so far: the late, low-information steps are left out.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from ..denoisers import Denoiser
from ..nets.unet import UNet
from .units import Unit, blocks, removed

__all__ = ["ld_scores", "taylor_scores", "output_statistics_distance", "noised_batch"]


def noised_batch(den: Denoiser, x0: Tensor, t: float, seed: int) -> Tensor:
    """``alpha(t) x0 + sigma(t) eps`` with ``eps`` drawn from ``seed`` (the same noise at every call)."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(x0.shape, generator=g).to(x0)
    a, s = den.process.alpha_sigma(float(t))
    return a * x0 + s * eps


def output_statistics_distance(y: Tensor, y_mod: Tensor) -> float:
    """LD-Pruner's score between two output sets ``(n, ...)``: L2 distance of the element-wise means plus that
    of the element-wise standard deviations (over the set, dimension 0)."""
    y, y_mod = y.double(), y_mod.double()
    d_mean = (y.mean(0) - y_mod.mean(0)).norm()
    d_std = (y.std(0, unbiased=False) - y_mod.std(0, unbiased=False)).norm()
    return float(d_mean + d_std)


def _levels(den: Denoiser, n: int) -> list[float]:
    p = den.process
    return [p.t_min + (p.t_max - p.t_min) * (k + 0.5) / n for k in range(n)]


@torch.no_grad()
def ld_scores(den: Denoiser, net: UNet, units: Sequence[Unit], x0: Tensor, *, levels: int = 4, seed: int = 0,
              progress: Callable[[int], None] | None = None) -> list[float]:
    """LD-Pruner's score of each of ``units`` (removed one at a time), summed over ``levels`` noise levels
    spread evenly over the process's time range; a low score means removing it hardly moves the outputs."""
    ts = _levels(den, levels)
    inputs = [noised_batch(den, x0, t, seed + k) for k, t in enumerate(ts)]
    base = [den(x, t) for x, t in zip(inputs, ts)]
    scores = []
    for u in units:
        with removed(net, [u]):
            scores.append(sum(output_statistics_distance(b, den(x, t)) for b, x, t in zip(base, inputs, ts)))
        if progress:
            progress(1)
    return scores


def _unit_params(net: UNet, u: Unit) -> list[tuple[Tensor, Tensor | None]]:
    """``(parameter slice, its gradient slice)`` pairs that ``u`` owns."""
    res, attn = blocks(net)
    if u.kind == "attn":
        return [(p, p.grad) for p in attn[u.index].parameters()]
    b, sl = res[u.index], slice(u.start, u.stop)
    h = b.hidden
    rows = torch.cat([torch.arange(u.start, u.stop), torch.arange(u.start, u.stop) + h])
    pairs = [(b.conv1.weight[sl], _g(b.conv1.weight, sl)), (b.conv1.bias[sl], _g(b.conv1.bias, sl)),
             (b.norm2.weight[sl], _g(b.norm2.weight, sl)), (b.norm2.bias[sl], _g(b.norm2.bias, sl)),
             (b.emb.weight[rows], _g(b.emb.weight, rows)), (b.emb.bias[rows], _g(b.emb.bias, rows)),
             (b.conv2.weight[:, sl], None if b.conv2.weight.grad is None else b.conv2.weight.grad[:, sl])]
    return pairs


def _g(p: Tensor, index: slice | Tensor) -> Tensor | None:
    return None if p.grad is None else p.grad[index]


def taylor_scores(den: Denoiser, net: UNet, units: Sequence[Unit], x0: Tensor, *, steps: int = 100,
                  thr: float = 0.05, seed: int = 0, progress: Callable[[int], None] | None = None
                  ) -> tuple[list[float], int]:
    """Diff-Pruning's importance of each unit and the number of timesteps accumulated.

    ``steps`` times spread evenly from the clean end ``t_min`` to ``t_max`` are visited in that order; at each
    the eps-prediction MSE on ``x0`` noised with fixed noise is back-propagated (gradients add up), and the walk
    stops after the first step whose loss is below ``thr`` times the largest loss so far (``thr = 0`` visits all).
    """
    if not 0.0 <= thr < 1.0:
        raise ValueError(f"thr={thr}: the Diff-Pruning threshold must lie in [0, 1)")
    p = den.process
    ts = [p.t_min + (p.t_max - p.t_min) * k / max(1, steps - 1) for k in range(steps)]
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(x0.shape, generator=g).to(x0)
    was_training = net.training
    net.eval()
    net.zero_grad(set_to_none=True)
    loss_max, used = 0.0, 0
    with torch.enable_grad():
        for t in ts:
            a, s = p.alpha_sigma(float(t))
            loss = (den.predict(a * x0 + s * eps, t).eps - eps).square().mean()
            loss.backward()
            used += 1
            if progress:
                progress(1)
            value = float(loss.detach())
            loss_max = max(loss_max, value)
            if value < thr * loss_max:
                break
    scores = []
    for u in units:
        total = 0.0
        for w, grad in _unit_params(net, u):
            if grad is not None:
                total += float((w.detach() * grad).abs().sum())
        scores.append(total)
    net.zero_grad(set_to_none=True)
    net.train(was_training)
    return scores, used
