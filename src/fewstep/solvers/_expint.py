"""The exponential-integrator maths shared by DDIM, DPM-Solver(++), DEIS and UniPC.

With ``h = lam_t - lam_s`` the exact solution of the probability-flow ODE is
``x_t = (sigma_t/sigma_s) x_s + sigma_t int e^{lam} x0(lam) dlam`` in data-prediction form
(DPM-Solver++, Lu et al. 2022, eq. 9) and ``x_t = (alpha_t/alpha_s) x_s - alpha_t int e^{-lam}
eps(lam) dlam`` in noise-prediction form (DPM-Solver, eq. 3.4).  Coefficients are float64
python floats; ``h = inf`` (a step onto clean data) is handled exactly.
"""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

__all__ = ["phi", "data_step", "ddim_noise_split", "taylor_matrix", "taylor_factors", "expint_weights", "exp_combine",
           "lagrange_integral", "unipc_b", "unipc_rhs", "solve_vandermonde",
           "lagrange_weights"]


def phi(k: int, h: float) -> float:
    """``phi_k(h) = int_0^1 e^{(1-u) h} u^{k-1} / (k-1)! du`` (phi_0 = e^h), stable for small h."""
    if k == 0:
        return math.exp(h)
    if abs(h) < 1e-3:  # Taylor series: sum_j h^j / (j + k)!
        return sum(h**j / math.factorial(j + k) for j in range(6))
    value = math.expm1(h) / h  # phi_1
    for j in range(2, k + 1):
        value = (value - 1.0 / math.factorial(j - 1)) / h
    return value


def data_step(x: Tensor, x0: Tensor, alpha_t: float, sigma_s: float, sigma_t: float, h: float) -> Tensor:
    """First-order data-prediction step (DDIM / DPM-Solver++1): ``(s_t/s_s) x - a_t (e^{-h}-1) x0``."""
    return (sigma_t / sigma_s) * x - (alpha_t * math.expm1(-h)) * x0


def ddim_noise_split(sigma_t: float, h: float, eta: float) -> tuple[float, float]:
    """``(sqrt(sigma_t^2 - c^2), c)`` with ``c = eta sigma_t sqrt(1 - e^{-2h})`` (DDIM eq. 16).

    ``c`` is the standard deviation of the fresh noise of a DDIM step; ``eta = 1`` is DDPM's
    posterior ``q(x_t | x_s, x0)``.  ``eta = 0`` gives ``(sigma_t, 0)`` for any ``h``, also a negative one
    (a step towards noise, as in DDIM inversion).
    """
    if eta == 0:
        return sigma_t, 0.0
    c = eta * sigma_t * math.sqrt(-math.expm1(-2 * h)) if h != math.inf else eta * sigma_t
    return math.sqrt(max(sigma_t**2 - c**2, 0.0)), c


# --- multistep / singlestep exponential-integrator coefficients -------------------------------------------------------
#
# Interpolating the prediction (x0 or eps) by a polynomial ``P`` in ``u = (lam - lam_s) / h`` through values at
# nodes ``u_j`` (``u = 0`` the current point, ``u < 0`` past points, ``0 < u <= 1`` intermediate points of a
# singlestep method) and integrating it against the exponential weight gives (Lu et al. 2022, DPM-Solver eq. 3.6 and
# DPM-Solver++ eq. 10, with the Taylor terms ``int e^{-(h-tau)} tau^k/k! dtau = h^{k+1} phi_{k+1}(-h)``):
#   data:  x_t = (sigma_t/sigma_s) x_s + alpha_t sum_k h phi_{k+1}(-h) P^{(k)}(0)
#   noise: x_t = (alpha_t/alpha_s) x_s - sigma_t sum_k h phi_{k+1}(h) P^{(k)}(0)
# where ``P^{(k)}(0)`` (derivatives in ``u``, i.e. ``h^k d^k/dlam^k``) are linear in the values: Vandermonde.

def taylor_matrix(nodes: list[float]) -> list[list[float]]:
    """``M`` with ``P^{(k)}(0) = sum_j M[k][j] value_j`` for the interpolant through ``nodes`` (in u).

    Solves the Vandermonde system ``value_j = sum_k u_j^k / k! P^{(k)}(0)`` in float64.
    """
    u = np.asarray(nodes, dtype=np.float64)
    n = len(u)
    vander = np.stack([u**k / math.factorial(k) for k in range(n)], axis=1)  # (j, k)
    return np.linalg.inv(vander).tolist()


def taylor_factors(n: int, h: float, *, data: bool, rate: float = 1.0) -> list[float]:
    """The Taylor-term factors ``rate h phi_{k+1}(-rate h)`` (data) or ``h phi_{k+1}(h)`` (noise), ``k < n``.

    ``rate = 2`` is the data-prediction SDE (DPM-Solver++, Lu et al. 2022, appendix: the drift integral of the
    SDE carries ``e^{-2(h - tau)}``).
    """
    if data:
        return [rate * h * phi(k + 1, -rate * h) for k in range(n)]
    return [h * phi(k + 1, h) for k in range(n)]


def expint_weights(nodes: list[float], h: float, *, data: bool, rate: float = 1.0,
                   factors: list[float] | None = None) -> list[float]:
    """Weights ``w_j = sum_k factor_k M[k][j]`` of the exponential integral ``sum_j w_j value_j``.

    Multiply by ``alpha_t`` (data) or ``-sigma_t`` (noise): see :func:`exp_combine`.  ``factors``
    overrides :func:`taylor_factors` (e.g. the midpoint variant ``[h phi_1, h phi_1 / 2]``).
    """
    m = taylor_matrix(nodes)
    f = taylor_factors(len(nodes), h, data=data, rate=rate) if factors is None else factors
    return [sum(f[k] * m[k][j] for k in range(len(nodes))) for j in range(len(nodes))]


def exp_combine(x: Tensor, values: list[Tensor], weights: list[float], *, data: bool, alpha_s: float,
                sigma_s: float, alpha_t: float, sigma_t: float, h: float, decay: float = 1.0) -> Tensor:
    """``(sigma_t/sigma_s) decay x + alpha_t sum w_j v_j`` (data) or ``(alpha_t/alpha_s) x - sigma_t sum w_j v_j`` (noise).

    A step onto clean data (``h = inf``) must be first order with a single value: data form gives ``x0``,
    noise form the DDIM limit ``(x - sigma_s eps) / alpha_s``.
    """
    if h == math.inf:
        if len(values) != 1:
            raise ValueError("a step onto clean data (h = inf) must be first order")
        return values[0] if data else (x - sigma_s * values[0]) / alpha_s
    out = (sigma_t / sigma_s * decay) * x if data else (alpha_t / alpha_s) * x
    scale = alpha_t if data else -sigma_t
    for w, v in zip(weights, values):
        out = out + (scale * w) * v
    return out


def lagrange_integral(nodes_v: list[float], v_of_lam, lam_s: float, lam_t: float, *, data: bool,
                      points: int = 32) -> list[float]:
    """``int_{lam_s}^{lam_t} e^{-(lam_t - lam)} L_j(v(lam)) dlam`` (data) or ``e^{(lam_t-lam)}`` ... (noise), numerically.

    ``L_j`` is the Lagrange basis polynomial of ``nodes_v`` in the interpolation variable ``v`` (``v = t`` for
    DEIS's tAB, ``v = lam`` for its rho/log-rho AB; Zhang & Chen 2023, eq. 14); Gauss-Legendre in ``lam``.
    With ``v = lam`` this equals ``expint_weights`` of the nodes ``(v_j - lam_s) / h``.
    """
    g, gw = np.polynomial.legendre.leggauss(points)
    lam = lam_s + (g + 1) / 2 * (lam_t - lam_s)
    wq = gw * (lam_t - lam_s) / 2 * (np.exp(-(lam_t - lam)) if data else np.exp(lam_t - lam))
    v = np.asarray(v_of_lam(lam), dtype=np.float64)
    out = []
    for j, vj in enumerate(nodes_v):
        basis = np.ones_like(v)
        for k, vk in enumerate(nodes_v):
            if k != j:
                basis = basis * (v - vk) / (vj - vk)
        out.append(float((wq * basis).sum()))
    return out


def unipc_b(h: float, variant: str, *, data: bool) -> float:
    """UniPC's ``B(h)`` (Zhao et al. 2023, sec. 3.3): ``bh1``: ``B = hh``; ``bh2``: ``B = e^{hh} - 1`` with ``hh = -h`` (data) or ``h``."""
    hh = -h if data else h
    if variant == "bh1":
        return hh
    if variant == "bh2":
        return math.expm1(hh)
    raise ValueError(f"unknown UniPC variant {variant!r}; use 'bh1' or 'bh2'")


def unipc_rhs(h: float, order: int, variant: str, *, data: bool) -> list[float]:
    """UniPC's ``g_i(h) / B(h)`` for ``i = 1..order`` (Zhao et al. 2023, Theorem 3.1 / eq. 8):

    ``g_i = i! phi_{i+1}(hh) hh`` with ``hh = -h`` (data) or ``h`` (noise), so the order conditions are
    ``sum_m a_m r_m^{i-1} = g_i / B(h)``.
    """
    hh = -h if data else h
    b = unipc_b(h, variant, data=data)
    return [math.factorial(i) * phi(i + 1, hh) * hh / b for i in range(1, order + 1)]


def solve_vandermonde(rks: list[float], rhs: list[float]) -> list[float]:
    """Solve ``sum_m a_m r_m^{i-1} = rhs_i`` for ``a`` (UniPC's ``R a = b``)."""
    r = np.asarray(rks, dtype=np.float64)
    mat = np.stack([r**i for i in range(len(rks))])
    return np.linalg.solve(mat, np.asarray(rhs, dtype=np.float64)).tolist()


def lagrange_weights(nodes: list[float], at: float) -> list[float]:
    """Weights ``w_j = prod_{k != j} (at - v_k) / (v_j - v_k)``: the Lagrange interpolant through ``nodes`` at ``at``.

    ``sum_j w_j value_j`` is the polynomial through ``(nodes_j, value_j)`` evaluated at ``at`` (the compensated
    model output of DC-Solver, Zhao et al. 2024, sec. 3).  At a node the weights are exactly one-hot.
    """
    out = []
    for j, vj in enumerate(nodes):
        w = 1.0
        for k, vk in enumerate(nodes):
            if k != j:
                w *= (at - vk) / (vj - vk)
        out.append(w)
    return out
