"""Classifier guidance (Dhariwal & Nichol 2021, sec. 4) through fewstep's :class:`~fewstep.Prediction`.

With ``x = alpha x0 + sigma eps``, Tweedie's formula gives ``alpha x0_hat = x + sigma^2 grad log p(x)``
and ``eps_hat = -sigma grad log p(x)``.  Adding ``s grad_x log p(c | x)`` to the score gives the
guided pair (Dhariwal & Nichol 2021, eq. 14 and Algorithm 2 for eps)::

    eps_guided = eps - s sigma g,     x0_guided = x0 + s (sigma^2 / alpha) g,     g = grad_x log p(c | x_t)

which still satisfies ``x = alpha x0 + sigma eps``, so every solver (noise- or data-prediction)
samples the guided model.  At ``s = 1`` with the exact classifier this is Bayes' rule: the
unconditional denoiser becomes the conditional one.

A classifier is anything with ``num_classes`` and ``logits(y, sigma_hat)`` on the process-free
variable ``y = x_t / alpha = x0 + sigma_hat eps`` (:class:`NoisyClassifier`).  The log-probability
guided on is EluCD's (Ma et al. 2023, the released code's ``joint_temperature`` and
``margin_temperature_discount``)::

    G = tau_joint f_c(y) - logsumexp_j tau_marginal f_j(y)

which is ``log softmax(f)_c`` at ``tau_joint = tau_marginal = 1`` and temperature scaling
(``log softmax(f / T)_c``) at ``tau_joint = tau_marginal = 1 / T``.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import torch
from torch import Tensor

from ..context import StepContext
from ..denoisers import DenoiserBase, DenoiserWrapper, GuidanceInterval, Prediction, guidance_mix
from ..parametrization import alpha_sigma

__all__ = ["NoisyClassifier", "ClassifierGuidance", "guided_log_prob"]


class NoisyClassifier(Protocol):
    """``logits(y, sigma_hat) -> (batch, num_classes)`` for ``y = x0 + sigma_hat eps`` (image-shaped or flat)."""

    num_classes: int

    def logits(self, y: Tensor, sigma_hat: float | Tensor) -> Tensor: ...


def guided_log_prob(logits: Tensor, labels: Tensor, joint_temperature: float = 1.0,
                    marginal_temperature: float = 1.0) -> Tensor:
    """``tau_j f_c - logsumexp(tau_m f)`` per sample (EluCD's tempered joint/marginal split; ``log p(c|x)`` at 1, 1)."""
    chosen = logits.gather(1, labels.reshape(-1, 1)).squeeze(1)
    return joint_temperature * chosen - torch.logsumexp(marginal_temperature * logits, dim=1)


class ClassifierGuidance(DenoiserWrapper):
    """Guide ``inner`` towards ``class_labels`` with ``scale * grad log p(c | x_t)`` of ``classifier``.

    ``class_labels`` (in ``cond``) name the target classes; ``inner`` is called without them
    (unconditional: a class-conditional network then uses its null class) unless
    ``conditional_inner`` (classifier guidance on top of a conditional model, as in ADM).
    ``interval`` restricts guidance to noise levels ``sigma/alpha`` in ``(lo, hi]`` (Kynkaanniemi et al.
    2024); the gradient is taken with autograd even inside ``fewstep.sample``'s inference mode.
    """

    def __init__(self, inner: DenoiserBase, classifier: NoisyClassifier, scale: float, *,
                 interval: GuidanceInterval | Sequence[float] | str | None = None,
                 joint_temperature: float = 1.0, marginal_temperature: float = 1.0,
                 conditional_inner: bool = False):
        super().__init__(inner)
        self.classifier = classifier
        self.scale = float(scale)
        self.interval = GuidanceInterval.parse(interval)
        self.joint_temperature = float(joint_temperature)
        self.marginal_temperature = float(marginal_temperature)
        self.conditional_inner = conditional_inner

    def gradient(self, x: Tensor, t: float | Tensor, labels: Tensor) -> Tensor:
        """``grad_x G(x)`` at ``(x, t)`` for ``labels`` (``G`` as in :func:`guided_log_prob`), shaped like ``x``."""
        n = self.classifier.num_classes
        if int(labels.min()) < 0 or int(labels.max()) >= n:
            raise ValueError(f"class labels must lie in [0, {n - 1}] for this {n}-class classifier, "
                             f"got {int(labels.min())}..{int(labels.max())}")
        with torch.inference_mode(False), torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            tt = t.clone() if isinstance(t, Tensor) else t
            a, s = alpha_sigma(self.process, xg, tt)
            a = a.clone() if isinstance(a, Tensor) else a
            s = s.clone() if isinstance(s, Tensor) else s
            sigma_hat = s / a
            if isinstance(sigma_hat, Tensor):
                sigma_hat = sigma_hat.reshape(-1)
            logits = self.classifier.logits(xg / a, sigma_hat)
            g = guided_log_prob(logits, labels.clone().to(logits.device), self.joint_temperature,
                                self.marginal_temperature)
            (grad,) = torch.autograd.grad(g.sum(), xg)
        return grad.detach().to(x.dtype)

    def predict(self, x: Tensor, t: float | Tensor, *, ctx: StepContext | None = None, **cond: Any) -> Prediction:
        if "class_labels" not in cond or cond["class_labels"] is None:
            raise ValueError("classifier guidance needs the target classes: pass cond={'class_labels': labels}")
        labels = torch.as_tensor(cond["class_labels"]).long().reshape(-1).expand(x.shape[0])
        inner_cond = cond if self.conditional_inner else {k: v for k, v in cond.items() if k != "class_labels"}
        p = self.inner.predict(x, t, ctx=ctx, **inner_cond)
        active = True if self.interval is None else self.interval.active(self.process, t)
        if self.scale == 0.0 or active is False:
            return p
        g = self.gradient(x, t, labels)
        a, s = self.coefficients(x, t)
        guided = Prediction(p.x0 + self.scale * (s * s / a) * g, p.eps - self.scale * s * g, p.variance)
        return guidance_mix(guided, p, active)
