"""DPM-Solver-v3's step coefficients from the EMS, by numerical integration over lambda (Zheng et al. 2023, eq. 12-15).

In ``y = x / alpha`` the ODE is ``dy/dlam = -l y - f`` with ``f = (1 - l) y - x0``, so with ``L = int l``,
``S = int s``, ``Bc = int e^{-S} b`` (from the grid start) the exact step from ``s`` to ``t`` is (eq. 12)

    y_t = e^{-(L_t - L_s)} y_s - int_s^t e^{-(L_t - L_lam)} f(lam) dlam,

and with ``g(lam) = e^{-(S_lam - S_s)} f(lam) - e^{S_s} (Bc_lam - Bc_s)`` (eq. 13; ``g' = e^{S_s - S}(f' - s f - b)``,
small when the EMS fit ``f' ~ s f + b`` is good) and ``g`` replaced by its Taylor polynomial at ``s``:

    y_t = e^{-(L_t - L_s)} y_s - sum_k A_k g^{(k)}(s) - Bterm,
    A_k = int_s^t e^{(L + S)(lam) - L_t - S_s} (lam - lam_s)^k / k! dlam,
    Bterm = int_s^t e^{(L + S)(lam) - L_t} (Bc_lam - Bc_s) dlam.

``l, s, b`` between the EMS grid points are natural cubic splines (C^2, so the Taylor expansion of ``g`` is
valid to third order); ``L`` and ``S`` are their exact antiderivatives; the integrals are Gauss-Legendre on each
EMS grid cell a step covers.  With ``l = 1, s = b = 0``: ``A_k = h^{k+1} phi_{k+1}(-h)``, DPM-Solver++.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .stats import EMS

__all__ = ["EMSFunctions", "StepCoefficients"]


@dataclass
class StepCoefficients:
    """The per-element coefficients of one step ``s -> t`` (float64 arrays ``(D,)``; ``A[k]`` for ``k <= order``)."""

    decay: np.ndarray
    A: list[np.ndarray]
    bterm: np.ndarray


class EMSFunctions:
    """``l, s, b`` as smooth functions of lambda, with ``L, S, Bc`` and the step integrals (one job: the maths)."""

    def __init__(self, ems: EMS, nodes: int = 8):
        from scipy.interpolate import CubicSpline

        self.knots = ems.lam.numpy()
        flat = lambda t: t.reshape(len(self.knots), -1).numpy()  # noqa: E731
        self.shape = ems.sample_shape
        self.l = CubicSpline(self.knots, flat(ems.l), axis=0, bc_type="natural")
        self.s = CubicSpline(self.knots, flat(ems.s), axis=0, bc_type="natural")
        self.b = CubicSpline(self.knots, flat(ems.b), axis=0, bc_type="natural")
        self.L, self.S = self.l.antiderivative(), self.s.antiderivative()
        self.b_zero = not bool(np.any(flat(ems.b)))
        self.gl = np.polynomial.legendre.leggauss(nodes)
        if not self.b_zero:  # Bc at the knots: cell by cell
            x, w = self._nodes_on(self.knots[:-1], self.knots[1:])
            cells = (w[..., None] * self._eSb(x)).sum(1)
            self.bc_knots = np.concatenate([np.zeros_like(cells[:1]), np.cumsum(cells, 0)])

    @property
    def range(self) -> tuple[float, float]:
        return float(self.knots[0]), float(self.knots[-1])

    def _nodes_on(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gauss-Legendre nodes and weights on each interval ``[lo_i, hi_i]``: arrays ``(P, nodes)``."""
        g, gw = self.gl
        lo, hi = np.asarray(lo, dtype=np.float64)[:, None], np.asarray(hi, dtype=np.float64)[:, None]
        return lo + (g + 1) / 2 * (hi - lo), gw * (hi - lo) / 2

    def _eSb(self, lam: np.ndarray) -> np.ndarray:
        return np.exp(-self.S(lam)) * self.b(lam)

    def bc(self, lam: np.ndarray) -> np.ndarray:
        """``Bc(lam) = int_{lam_0}^{lam} e^{-S} b`` at each point, ``(P, D)``."""
        lam = np.asarray(lam, dtype=np.float64)
        if self.b_zero:
            return np.zeros((len(lam), self.l.c.shape[-1]))
        cell = np.clip(np.searchsorted(self.knots, lam, side="right") - 1, 0, len(self.knots) - 2)
        x, w = self._nodes_on(self.knots[cell], lam)
        return self.bc_knots[cell] + (w[..., None] * self._eSb(x)).sum(1)

    def _pieces(self, a: float, b: float) -> np.ndarray:
        inner = self.knots[(self.knots > a) & (self.knots < b)]
        return np.concatenate([[a], inner, [b]])

    def step(self, lam_s: float, lam_t: float, n_terms: int) -> StepCoefficients:
        """The coefficients of the step ``lam_s -> lam_t`` (finite, increasing) with ``A_0 .. A_{n_terms-1}``."""
        edges = self._pieces(lam_s, lam_t)
        x, w = self._nodes_on(edges[:-1], edges[1:])
        x, w = x.reshape(-1), w.reshape(-1)
        L_s, L_t = self.L(lam_s), self.L(lam_t)
        S_s = self.S(lam_s)
        e = np.exp(self.L(x) + self.S(x) - L_t - S_s) * w[:, None]  # (Q, D), weights folded in
        u = x - lam_s
        A = [(e * (u**k / math.factorial(k))[:, None]).sum(0) for k in range(n_terms)]
        if self.b_zero:
            bterm = np.zeros_like(L_s)
        else:
            bterm = (e * np.exp(S_s) * (self.bc(x) - self.bc(np.array([lam_s])))).sum(0)
        return StepCoefficients(np.exp(-(L_t - L_s)), A, bterm)

    def to_g(self, lam_s: float, lam_j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(scale_j, shift_j)`` with ``g_j = scale_j f_j - shift_j`` relative to the base ``lam_s`` (eq. 13)."""
        lam_j = np.asarray(lam_j, dtype=np.float64)
        S_s = self.S(lam_s)
        scale = np.exp(S_s - self.S(lam_j))
        shift = np.exp(S_s) * (self.bc(lam_j) - self.bc(np.array([lam_s])))
        return scale, shift
