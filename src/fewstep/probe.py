"""Linear probes: multinomial logistic regression on frozen features, fitted by L-BFGS.

The standard linear-probing protocol (e.g. DDAE, Xiang et al. 2023, sec. 4.1): standardise each feature
with the training set's mean and standard deviation, then minimise the mean cross-entropy of
``softmax(W f + b)`` plus ``(l2 / 2) |W|^2``, a smooth convex problem that L-BFGS solves to convergence.
The L2 weight is chosen on a hold-out of the training features, never on the test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["LinearProbe", "fit_linear_probe", "select_l2", "L2_GRID"]

#: The L2 weights :func:`select_l2` tries.
L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class LinearProbe:
    """``argmax(W (f - mean) / std + b)``."""

    mean: Tensor
    std: Tensor
    weight: Tensor
    bias: Tensor
    l2: float

    def logits(self, features: Tensor) -> Tensor:
        f = (features.to(self.weight.dtype) - self.mean) / self.std
        return f @ self.weight.T + self.bias

    def predict(self, features: Tensor) -> Tensor:
        return self.logits(features).argmax(dim=1)

    def accuracy(self, features: Tensor, labels: Tensor) -> float:
        return float((self.predict(features) == labels.to(torch.long)).double().mean())


def _check(features: Tensor, labels: Tensor) -> None:
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        raise ValueError(f"features must be (N, D) and labels (N,), got {tuple(features.shape)} and "
                         f"{tuple(labels.shape)}")
    if len(features) < 2:
        raise ValueError("a linear probe needs at least 2 training examples")


def fit_linear_probe(features: Tensor, labels: Tensor, num_classes: int | None = None, *, l2: float = 1e-3,
                     max_iter: int = 500) -> LinearProbe:
    """Fit the probe on ``features`` ``(N, D)`` and integer ``labels`` ``(N,)`` (float64, full batch)."""
    _check(features, labels)
    x = features.detach().to(torch.float64).cpu()
    y = labels.detach().to(torch.long).cpu()
    k = int(num_classes if num_classes is not None else int(y.max()) + 1)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-8)
    x = (x - mean) / std
    w = torch.zeros(k, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-7,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, y) + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearProbe(mean, std, w.detach(), b.detach(), float(l2))


def select_l2(features: Tensor, labels: Tensor, num_classes: int | None = None, *,
              grid: Sequence[float] = L2_GRID, holdout: float = 0.1) -> tuple[float, dict[float, float]]:
    """The L2 weight of ``grid`` with the best accuracy on the last ``holdout`` fraction of the training set,
    and every weight's hold-out accuracy."""
    _check(features, labels)
    n_val = max(1, int(round(holdout * len(features))))
    if n_val >= len(features):
        raise ValueError("the hold-out would take every training example; use more training data")
    fit_x, fit_y, val_x, val_y = features[:-n_val], labels[:-n_val], features[-n_val:], labels[-n_val:]
    k = int(num_classes if num_classes is not None else int(labels.max()) + 1)
    scores = {float(l2): fit_linear_probe(fit_x, fit_y, k, l2=l2).accuracy(val_x, val_y) for l2 in grid}
    best = max(scores, key=lambda v: (scores[v], v))  # ties: the stronger regularisation
    return best, scores
