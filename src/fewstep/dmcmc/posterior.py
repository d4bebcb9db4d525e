"""The noise level given the data, ``pi(level | x)``: exact for an exact mixture, or a trained classifier.

Either is a ``LevelPosterior``: ``log_posterior(x) -> (n, L)`` normalised log-probabilities over the levels of a
:class:`~.levels.NoiseLevels`.  Denoising MCMC's Gibbs step draws the level from it (Kim & Ye 2022, sec. 3.2:
a noise-level estimating network stands in for the intractable conditional of a trained model).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor, nn

from .levels import NoiseLevels

__all__ = ["LevelPosterior", "ExactLevelPosterior", "NetworkLevelPosterior", "LevelClassifier", "restrict_levels"]


class LevelPosterior(Protocol):
    levels: NoiseLevels

    def log_posterior(self, x: Tensor) -> Tensor: ...


class ExactLevelPosterior:
    """``pi(l | x) ∝ pi(l) p_{t_l}(x)`` for an exact mixture under ``process``: with ``x = alpha x0 + sigma eps``,
    ``p_t(x) = alpha^{-D} q_{sigma/alpha}(x / alpha)``, ``q_s`` the mixture's density under noise ``s``."""

    def __init__(self, mixture, process, levels: NoiseLevels) -> None:
        self.mixture, self.process, self.levels = mixture, process, levels

    def log_density(self, x: Tensor) -> Tensor:
        """``log p_{t_l}(x)`` for each level, ``(n, L)``, float64."""
        y = x.reshape(len(x), -1).to(torch.float64)
        cols = []
        for t in self.levels.times.tolist():
            a, s = float(self.process.alpha(t)), float(self.process.sigma(t))
            cols.append(self.mixture.log_prob(y / a, s / a) - y.shape[1] * math.log(a))
        return torch.stack(cols, 1)

    def log_posterior(self, x: Tensor) -> Tensor:
        return torch.log_softmax(self.log_density(x) + self.levels.log_prior, 1)


class LevelClassifier(nn.Module):
    """A small CNN: image ``(n, C, H, W)`` -> logits over ``L`` noise levels (the noise-level estimator)."""

    def __init__(self, channels: int, levels: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 3, 2, 1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, 1, 1), nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 3, 2, 1), nn.GroupNorm(8, 2 * w), nn.SiLU(),
            nn.Conv2d(2 * w, 4 * w, 3, 1, 1), nn.SiLU())
        # per-channel mean and log standard deviation of the features: noise shows in the spread, not the mean
        self.head = nn.Linear(8 * w + 2 * channels, levels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x)
        stats = [h.mean((2, 3)), torch.log(h.std((2, 3)) + 1e-4),
                 x.mean((2, 3)), torch.log(x.std((2, 3)) + 1e-4)]
        return self.head(torch.cat(stats, 1))


class NetworkLevelPosterior:
    """A trained :class:`LevelClassifier` as a level posterior.  Trained by cross-entropy on ``(x_{t_l}, l)``
    with ``l ~ pi``, its softmax is ``pi(l | x)`` at the optimum (:func:`~.train.train_level_classifier`)."""

    def __init__(self, net: LevelClassifier, levels: NoiseLevels) -> None:
        self.net, self.levels = net, levels
        self.calls = 0

    def log_posterior(self, x: Tensor) -> Tensor:
        self.calls += 1
        p = next(self.net.parameters())
        with torch.inference_mode():
            return torch.log_softmax(self.net(x.to(p.dtype)).double(), 1)


class _Restricted:
    """A posterior over the kept levels only: ``pi`` set to zero elsewhere, so ``pi(l | x)`` is renormalised over
    the kept ones (Bayes' rule with the smaller prior)."""

    def __init__(self, inner: LevelPosterior, keep: Tensor) -> None:
        self.inner, self.keep = inner, keep
        lv = inner.levels
        self.levels = NoiseLevels(lv.times[keep], torch.log_softmax(lv.log_prior[keep], 0))

    @property
    def calls(self):
        return getattr(self.inner, "calls", None)

    def log_posterior(self, x: Tensor) -> Tensor:
        return torch.log_softmax(self.inner.log_posterior(x)[:, self.keep], 1)


def restrict_levels(posterior: LevelPosterior, t_max: float) -> LevelPosterior:
    """``posterior`` with the chain kept to levels at times ``<= t_max`` (at least one must remain)."""
    keep = (posterior.levels.times <= t_max + 1e-9).nonzero().reshape(-1)
    if len(keep) == 0:
        raise ValueError(f"no noise level at or below t = {t_max:g} (the lowest is {float(posterior.levels.times[-1]):g})")
    return _Restricted(posterior, keep)
