"""The adversarial term of path distillation: the few-step solve's samples against the teacher's endpoints.

Regression onto the pairs (:mod:`fewstep.reflow.path`) fits each noise's endpoint, but a network of limited capacity
fits them on average, and the average of possible endpoints is blurred.  Adversarial distillation (ADD, Sauer et al.
2023; DMD2, Yin et al. 2024, who also pair it with a regression loss) adds a discriminator that tells the student's
samples from the teacher's and trains the student to fool it: a distribution-level signal that does not average.
Here the "real" images are the teacher's own endpoints (other pairs of the same folder, so no dataset is needed and the
target stays the teacher's distribution), the discriminator is a small
:class:`~fewstep.nets.discriminator.PatchDiscriminator`, and the losses are the non-saturating GAN losses
(Goodfellow et al. 2014) with the R1 penalty on real images (Mescheder et al. 2018, eq. 9):

    L_D = E softplus(-D(x_real)) + E softplus(D(x_fake)) + gamma / 2 E ||grad_x D(x_real)||^2 ,
    L_G = E softplus(-D(x_fake))                 (added to the path loss with weight ``adv_weight``).

``D`` is averaged over its patch logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["discriminator_loss", "generator_adversarial_loss"]


def _at_least_float32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))  # bf16 under autocast -> float32; float64 kept


def _logits(disc: nn.Module, x: Tensor) -> Tensor:
    return _at_least_float32(disc(x)).mean(dim=1)


def discriminator_loss(disc: nn.Module, real: Tensor, fake: Tensor, r1_gamma: float = 0.0) -> Tensor:
    """Per-sample ``softplus(-D(real)) + softplus(D(fake)) + r1_gamma / 2 ||grad_real D(real)||^2``, shape
    ``(batch,)`` (``fake`` carries no gradient; the penalty's gradient reaches ``disc`` by double backpropagation)."""
    real = real.detach().requires_grad_(r1_gamma > 0)
    d_real = _logits(disc, real)
    loss = F.softplus(-d_real) + F.softplus(_logits(disc, fake.detach()))
    if r1_gamma > 0:
        (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
        loss = loss + r1_gamma / 2 * _at_least_float32(grad).square().flatten(1).sum(1)
    return loss


def generator_adversarial_loss(disc: nn.Module, fake: Tensor) -> Tensor:
    """Per-sample non-saturating generator loss ``softplus(-D(fake))``, shape ``(batch,)``."""
    return F.softplus(-_logits(disc, fake))
