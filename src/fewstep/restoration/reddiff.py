"""RED-diff: restoration as variational optimisation, with the diffusion model as a score-matching regulariser."""

from __future__ import annotations

import torch
from torch import Tensor

from ..context import bind
from ..denoisers import DenoiserBase
from ..grids import Schedule
from ..solvers._common import Callback, Cond, Generator, randn_like, step_done

__all__ = ["reddiff", "reddiff_loss", "adam_step"]

BETAS = (0.9, 0.99)


def reddiff_loss(mu: Tensor, y: Tensor, operator, eps_hat: Tensor, eps: Tensor, weight: float) -> Tensor:
    """``sum_b [ ||y_b - A(mu_b)||^2 / 2 + weight * (sg[eps_hat_b - eps_b])^T mu_b ]`` (Mardani et al. 2023,
    eq. 10, multiplied through by ``sigma_y^2``: ``weight = lam * sigma_t / alpha_t`` with ``lam`` the paper's
    ``lambda * sigma_y^2``).  A sum over the batch, so each sample's gradient is its own."""
    fit = 0.5 * (y - operator(mu)).pow(2).flatten(1).sum(1)
    reg = weight * ((eps_hat - eps).detach() * mu).flatten(1).sum(1)
    return (fit + reg).sum()


def adam_step(mu: Tensor, grad: Tensor, m: Tensor, v: Tensor, k: int, lr: float, betas: tuple[float, float] = BETAS,
              eps: float = 1e-8) -> Tensor:
    """One Adam update (Kingma & Ba 2015, Algorithm 1) of ``mu`` in place of ``torch.optim.Adam``, whose first
    step imports ``torch._dynamo`` (seconds): ``m``, ``v`` are updated in place, ``k`` is the step number from 1.
    Element-wise, so each image's update is its own."""
    b1, b2 = betas
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    m_hat, v_hat = m / (1 - b1**k), v / (1 - b2**k)
    return mu - lr * m_hat / (v_hat.sqrt() + eps)


def reddiff(denoiser: DenoiserBase, x: Tensor, schedule: Schedule, y: Tensor, operator, *,
            generator: Generator = None, callback: Callback = None, cond: Cond = None,
            lam: float = 0.25, lr: float = 0.1) -> Tensor:
    """RED-diff (Mardani et al. 2023, Algorithm 1): optimise the mean ``mu`` of a variational posterior.

    At each point ``t_i`` of ``schedule`` (descending, sec. 4.3: "denoise from large to small noise"),
    draw ``eps``, form ``x_t = alpha_t mu + sigma_t eps``, evaluate ``eps_hat(x_t, t)`` once (no gradient through
    the network) and take one Adam step (:func:`adam_step`, betas 0.9, 0.99) on :func:`reddiff_loss` with the SNR weighting
    ``lambda_t = lam * sigma_t / alpha_t = lam / sqrt(SNR_t)`` (sec. 5.1).  ``mu`` starts at the pseudo-inverse
    ``A^+ y`` when the operator has one (``x``, the prior draw, otherwise).  The regulariser's gradient is
    ``lam * sigma_t / alpha_t * (eps_hat - eps)``, so ``lam`` trades it against the data fit; with
    ``lam = 0`` RED-diff is Adam on least squares.  One network evaluation per point.
    """
    if lam < 0 or lr <= 0:
        raise ValueError(f"RED-diff needs lam >= 0 and lr > 0, got lam={lam}, lr={lr}")
    if schedule.clean_end:
        raise ValueError("RED-diff evaluates the network at every point of its schedule; build it with clean_end=False")
    model = bind(denoiser, schedule, cond)
    ts, a, s = schedule.t.tolist(), schedule.alpha.tolist(), schedule.sigma.tolist()
    pinv = getattr(operator, "pinv", None)
    with torch.inference_mode(False), torch.enable_grad():
        y = y.detach().clone()
        mu = (pinv(y) if pinv is not None else x).detach().clone().to(x.dtype)
        m, v = torch.zeros_like(mu), torch.zeros_like(mu)
        for i in range(len(ts)):
            eps = randn_like(mu, generator)
            with torch.no_grad():
                eps_hat = model.eps(a[i] * mu + s[i] * eps, ts[i], i)
            mu.requires_grad_(True)
            (grad,) = torch.autograd.grad(reddiff_loss(mu, y, operator, eps_hat, eps, lam * s[i] / a[i]), mu)
            with torch.no_grad():
                mu = adam_step(mu.detach(), grad, m, v, i + 1, lr)
            step_done(min(i, schedule.steps - 1), schedule, mu, None, callback)
    return mu
