"""Mixtures of Gaussians with exact posterior means under every noise process."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._base import ExactModel

__all__ = ["GaussianMixture"]


class GaussianMixture(ExactModel):
    """``sum_k w_k N(m_k, V_k diag(s_k) V_k^T + floor^2 I)`` with orthonormal ``V_k`` of shape ``(dim, rank)``.

    Full covariances are the case ``rank = dim``.  The posterior mean under ``y = x0 + sigma eps``
    is ``sum_k r_k(y) (y - sigma^2 (C_k + sigma^2 I)^{-1} (y - m_k))`` (Tweedie's formula per
    component), with responsibilities ``r_k`` from ``N(y; m_k, C_k + sigma^2 I)``; the low-rank
    structure gives the inverse and log-determinant in O(dim * rank).
    """

    def __init__(self, means: Tensor, eigvecs: Tensor, eigvals: Tensor, weights: Tensor | None = None,
                 floor: float = 0.0):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.eigvecs = torch.as_tensor(eigvecs, dtype=torch.float64)
        self.eigvals = torch.as_tensor(eigvals, dtype=torch.float64)
        k, d = self.means.shape
        if self.eigvecs.shape[:2] != (k, d) or self.eigvals.shape != (k, self.eigvecs.shape[2]):
            raise ValueError("eigvecs must be (K, dim, rank) and eigvals (K, rank) for K means of size dim")
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or bool((w <= 0).any()):
            raise ValueError("weights must be K positive numbers")
        self.weights = w / w.sum()
        self.floor = float(floor)
        if self.eigvecs.shape[2] < d and self.floor <= 0:
            raise ValueError("a low-rank mixture needs floor > 0 for a density; use a small floor such as 1e-2")
        self.dim = d

    @classmethod
    def from_covariances(cls, means: Tensor, covs: Tensor, weights: Tensor | None = None) -> "GaussianMixture":
        """A mixture with full covariance matrices ``covs`` of shape ``(K, dim, dim)``."""
        vals, vecs = torch.linalg.eigh(torch.as_tensor(covs, dtype=torch.float64))
        return cls(means, vecs, vals.clamp(min=0), weights)

    @classmethod
    def random_low_rank(cls, dim: int = 64, components: int = 8, rank: int = 4, *, spread: float = 1.0,
                        scale: float = 0.5, floor: float = 0.02, seed: int = 0) -> "GaussianMixture":
        """A reproducible random mixture: means ~ N(0, spread^2/dim I), rank-``rank`` covariances."""
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(components, dim, generator=g, dtype=torch.float64) * spread
        vecs = torch.linalg.qr(torch.randn(components, dim, rank, generator=g, dtype=torch.float64))[0]
        vals = (scale * (0.5 + torch.rand(components, rank, generator=g, dtype=torch.float64))) ** 2
        weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
        return cls(means, vecs, vals, weights, floor)

    @property
    def mean(self) -> Tensor:
        return self.weights @ self.means

    @property
    def covariance(self) -> Tensor:
        mu = self.mean
        comp = torch.einsum("kdr,kr,ker->kde", self.eigvecs, self.eigvals, self.eigvecs)
        second = comp + torch.einsum("kd,ke->kde", self.means, self.means)
        return torch.einsum("k,kde->de", self.weights, second) + self.floor**2 * torch.eye(self.dim, dtype=torch.float64) - torch.outer(mu, mu)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact draws, float64 ``(n, dim)``."""
        return self.sample_with_components(n, generator)[0]

    def sample_with_components(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` exact draws and the component each came from."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.eigvals.shape[1], generator=generator, dtype=torch.float64)
        white = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        low = torch.einsum("ndr,nr->nd", self.eigvecs[k], z * self.eigvals[k].sqrt())
        return self.means[k] + low + self.floor * white, k

    def _terms(self, y: Tensor, sigma_hat: float | Tensor):
        """Log-likelihood terms via matrix products only (no ``(batch, K, dim)`` tensor)."""
        s2 = torch.as_tensor(sigma_hat, dtype=torch.float64) ** 2
        s2 = s2.reshape(-1, 1) if s2.ndim else s2  # (B, 1) or 0-d
        tau = self.floor**2 + s2
        k, d, r = self.eigvecs.shape
        v_flat = self.eigvecs.permute(1, 0, 2).reshape(d, k * r)  # (d, K r)
        proj = (y @ v_flat).reshape(-1, k, r) - torch.einsum("kd,kdr->kr", self.means, self.eigvecs)  # V_k^T (y - m_k)
        sq = (y * y).sum(1, keepdim=True) - 2 * y @ self.means.T + (self.means * self.means).sum(1)  # |y - m_k|^2
        shrink = self.eigvals / (self.eigvals + tau[..., None])  # s / (s + tau)
        quad = (sq - (proj * proj * shrink).sum(-1)) / tau
        logdet = torch.log(self.eigvals + tau[..., None]).sum(-1) + (d - r) * torch.log(tau)
        ll = torch.log(self.weights) - 0.5 * (quad + logdet + d * math.log(2 * math.pi))
        return ll, proj, shrink, s2, tau, v_flat

    def x0_at(self, y: Tensor, sigma_hat: float | Tensor) -> Tensor:
        return self.posterior_mean(y, sigma_hat)

    def component_log_likelihoods(self, y: Tensor, sigma_hat: float | Tensor) -> Tensor:
        """``log w_k + log N(y; m_k, C_k + sigma_hat^2 I)``, shape ``(batch, K)``."""
        return self._terms(y, sigma_hat)[0]

    def posterior_mean(self, y: Tensor, sigma_hat: float | Tensor, log_mask: Tensor | None = None) -> Tensor:
        """``E[x0 | y]`` with the component weights multiplied by ``exp(log_mask)`` (``(batch, K)``, ``-inf``
        drops a component): a sub-mixture's exact denoiser from the same maths."""
        ll, proj, shrink, s2, tau, v_flat = self._terms(y, sigma_hat)
        resp = torch.softmax(ll if log_mask is None else ll + log_mask, dim=1)  # (B, K)
        # sum_k r_k (C_k + s^2 I)^{-1} (y - m_k) = (y - resp m - sum_k r_k V_k (proj_k * shrink_k)) / tau
        low = (resp[..., None] * proj * shrink).reshape(len(y), -1) @ v_flat.T
        return y - (s2 / tau) * (y - resp @ self.means - low)

    def flow(self, y: Tensor, sigma_from: float, sigma_to: float, component: Tensor | None = None) -> Tensor:
        """The exact probability-flow ODE map of one Gaussian from noise level ``sigma_from`` to ``sigma_to``.

        In ``y = x / alpha``, ``s = sigma / alpha`` the ODE is ``dy/ds = (y - E[x0 | y]) / s``; for
        ``N(m, C)`` each eigen-direction of ``C`` with variance ``c`` solves to
        ``(y - m)_c(s') = sqrt((c + s'^2) / (c + s^2)) (y - m)_c(s)`` (Wang & Vastola 2024, "The Unreasonable
        Effectiveness of Gaussian Score Approximation for Diffusion Models", eq. 8-9).  The directions outside
        the low-rank part have variance ``floor^2``.  ``y``: float64 ``(batch, dim)``.  ``component``: for a
        mixture, the component whose Gaussian carries each sample (``(batch,)`` indices, e.g. its class when
        each class is one component); ``None`` needs a single Gaussian.  :meth:`flow_vp` with ``alpha = 1``.
        """
        return self.flow_vp(y, 1.0, sigma_from, 1.0, sigma_to, component)

    def flow_vp(self, x: Tensor, alpha_from: float, sigma_from: float, alpha_to: float, sigma_to: float,
                component: Tensor | None = None) -> Tensor:
        """:meth:`flow` for ``x = alpha x0 + sigma eps`` in the state's own scale: each eigen-direction solves to
        ``(x' - alpha' m)_c = sqrt((alpha'^2 c + sigma'^2) / (alpha^2 c + sigma^2)) (x - alpha m)_c`` (eq. 8-9
        multiplied through by ``alpha``), finite at ``alpha = 0``: a draw at a zero-terminal-SNR end is carried
        without dividing by ``alpha``.  ``x``: float64 ``(batch, dim)``."""
        if component is None:
            if len(self.means) != 1:
                raise ValueError(f"the closed-form flow is for one Gaussian; this mixture has {len(self.means)} "
                                 f"components: say which carries each sample (component=...)")
            component = torch.zeros(len(x), dtype=torch.long)
        component = torch.as_tensor(component, dtype=torch.long).reshape(-1).cpu()
        if component.shape != (len(x),) or int(component.min()) < 0 or int(component.max()) >= len(self.means):
            raise ValueError(f"component must give one index in 0..{len(self.means) - 1} per sample")
        a0, s0, a1, s1 = (float(v) for v in (alpha_from, sigma_from, alpha_to, sigma_to))
        f2 = self.floor ** 2

        def gain(c: Tensor | float) -> Tensor | float:  # the ratio of marginal standard deviations, direction c
            return ((a1 * a1 * c + s1 * s1) / (a0 * a0 * c + s0 * s0)) ** 0.5

        out = torch.empty(x.shape, dtype=torch.float64)
        for k in component.unique().tolist():
            rows = (component == k).nonzero().reshape(-1)
            m, v, c = self.means[k], self.eigvecs[k], self.eigvals[k]
            d = x[rows].to(torch.float64) - a0 * m
            proj = d @ v
            rest = d - proj @ v.T  # the part outside the low-rank span (zero for full covariances)
            low = (proj * gain(c + f2)) @ v.T
            out[rows] = a1 * m + low + (rest * gain(f2) if a0 * a0 * f2 + s0 * s0 > 0 else 0.0)
        return out

    def log_prob(self, y: Tensor, sigma_hat: float | Tensor = 0.0) -> Tensor:
        """Log density of ``y = x0 + sigma_hat eps``."""
        return torch.logsumexp(self._terms(y, sigma_hat)[0], dim=1)
