"""A class-conditional Gaussian mixture: exact conditional, unconditional and classifier quantities.

Each component of a :class:`~fewstep.exact.GaussianMixture` belongs to one class.  Under
``y = x0 + sigma_hat eps`` everything guidance needs is closed-form:

* the conditional denoiser ``E[x0 | y, c]``: the posterior mean of the sub-mixture of class ``c``;
* the unconditional denoiser ``E[x0 | y]``: the whole mixture's;
* the noisy classifier ``log p(c | y) = logsumexp_{k in c} l_k(y) - logsumexp_k l_k(y)`` with
  ``l_k = log w_k + log N(y; m_k, C_k + sigma_hat^2 I)`` (Bayes' rule on the component posteriors).

Tests use it to check guidance against the right answer: by Bayes' rule
``grad log p(y | c) = grad log p(y) + grad log p(c | y)``, so classifier guidance at scale 1 with
the exact classifier turns the exact unconditional denoiser into the exact conditional one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..context import StepContext
from ..denoisers import DenoiserBase, Prediction
from ..processes import NoiseProcess
from .gmm import GaussianMixture

__all__ = ["ClassConditionalMixture", "ExactConditionalDenoiser", "ExactClassifier"]


class ClassConditionalMixture:
    """``mixture`` with component ``k`` in class ``classes[k]`` (classes ``0 .. num_classes - 1``, each used)."""

    def __init__(self, mixture: GaussianMixture, classes: Tensor | list[int]):
        self.mixture = mixture
        self.classes = torch.as_tensor(classes, dtype=torch.long)
        k = mixture.means.shape[0]
        if self.classes.shape != (k,) or int(self.classes.min()) < 0:
            raise ValueError(f"classes must give a non-negative class for each of the {k} components")
        self.num_classes = int(self.classes.max()) + 1
        if set(self.classes.tolist()) != set(range(self.num_classes)):
            raise ValueError("every class 0 .. num_classes - 1 needs at least one component")
        self.dim = mixture.dim
        # (C, K) membership as a log mask: 0 for the class's components, -inf elsewhere
        member = self.classes[None, :] == torch.arange(self.num_classes)[:, None]
        self._log_member = torch.where(member, 0.0, float("-inf")).to(torch.float64)

    @property
    def class_prior(self) -> Tensor:
        """``p(c)``: the summed weights of each class's components."""
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, self.classes, self.mixture.weights)

    def component(self, c: int) -> GaussianMixture:
        """The conditional distribution ``p(x0 | c)`` as a mixture of its own."""
        idx = (self.classes == c).nonzero().reshape(-1)
        m = self.mixture
        return GaussianMixture(m.means[idx], m.eigvecs[idx], m.eigvals[idx], m.weights[idx], m.floor)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` exact draws ``(x0, labels)`` from the joint distribution."""
        x, k = self.mixture.sample_with_components(n, generator)
        return x, self.classes[k]

    def x0_at(self, y: Tensor, sigma_hat: float | Tensor, labels: Tensor | None = None) -> Tensor:
        """``E[x0 | y, c]`` per sample for ``labels`` (``num_classes`` = no class), ``E[x0 | y]`` without."""
        if labels is None:
            return self.mixture.x0_at(y, sigma_hat)
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1).expand(y.shape[0])
        if int(labels.min()) < 0 or int(labels.max()) > self.num_classes:
            raise ValueError(f"class labels must lie in [0, {self.num_classes}] ({self.num_classes} = no class)")
        table = torch.cat([self._log_member, torch.zeros(1, self._log_member.shape[1], dtype=torch.float64)])
        return self.mixture.posterior_mean(y, sigma_hat, table[labels])

    def class_log_posterior(self, y: Tensor, sigma_hat: float | Tensor) -> Tensor:
        """``log p(c | y)``, shape ``(batch, num_classes)``."""
        ll = self.mixture.component_log_likelihoods(y, sigma_hat)
        per_class = torch.logsumexp(ll[:, None, :] + self._log_member[None], dim=2)
        return per_class - torch.logsumexp(ll, dim=1, keepdim=True)

    def denoiser(self, process: NoiseProcess) -> "ExactConditionalDenoiser":
        return ExactConditionalDenoiser(self, process)

    def classifier(self) -> "ExactClassifier":
        return ExactClassifier(self)


class ExactConditionalDenoiser(DenoiserBase):
    """The exact denoiser of a :class:`ClassConditionalMixture`: conditional on ``class_labels`` if given
    (the label ``num_classes`` is the null class), unconditional otherwise.  Computed in float64."""

    def __init__(self, model: ClassConditionalMixture, process: NoiseProcess):
        self.model = model
        self.process = process
        self.num_classes = model.num_classes

    def predict(self, x: Tensor, t: float | Tensor, *, ctx: StepContext | None = None,
                class_labels: Tensor | None = None, **cond: Any) -> Prediction:
        a, s = self.process.alpha(t), self.process.sigma(t)
        shape = x.shape
        xd = x.reshape(shape[0], -1).to(torch.float64)
        if a.ndim:
            a, s = a.reshape(-1, 1), s.reshape(-1, 1)
        sigma_hat = (s / a).reshape(-1) if s.ndim else float(s / a)
        x0 = self.model.x0_at(xd / a, sigma_hat, class_labels)
        eps = (xd - a * x0) / s
        return Prediction(x0.to(x.dtype).reshape(shape), eps.to(x.dtype).reshape(shape))


class ExactClassifier:
    """The exact noisy classifier: ``logits(y, sigma_hat) = log p(c | y)`` (a :class:`~fewstep.guidance.NoisyClassifier`)."""

    def __init__(self, model: ClassConditionalMixture):
        self.model = model
        self.num_classes = model.num_classes

    def logits(self, y: Tensor, sigma_hat: float | Tensor) -> Tensor:
        return self.model.class_log_posterior(y.reshape(y.shape[0], -1).to(torch.float64), sigma_hat)
