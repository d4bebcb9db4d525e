"""Integer quantization maths (Jacob et al. 2018, eq. 1; Nagel et al. 2021, "A White Paper on Neural
Network Quantization", sec. 2.2).

Symmetric (zero point 0): ``q = clamp(round(x / s), -qmax, qmax)`` and ``x_hat = s q`` with
``qmax = 2^(bits-1) - 1``: the grid is symmetric (-128 is never used), so an int8 product of two
such tensors needs no zero-point correction.  Asymmetric (affine, Nagel et al. eq. 2-3):
``q = clamp(round(x / s) + z, 0, 2^bits - 1)``, ``x_hat = s (q - z)`` with ``s = (hi - lo) / (2^bits - 1)``
and integer zero point ``z = round(-lo / s)``: all ``2^bits`` levels cover ``[lo, hi]``, which for
a skewed input (e.g. after a SiLU, >= -0.28) is nearly twice as fine as a symmetric grid over
``[-hi, hi]``.  Rounding is round-half-to-even (``torch.round``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["qmax", "quantize", "dequantize", "fake_quantize", "affine_params", "fake_quantize_affine",
           "weight_scales", "quantize_weight", "clip_search", "range_search_affine"]


def qmax(bits: int) -> int:
    """The largest integer level of a signed symmetric ``bits``-bit grid (127 for 8 bits)."""
    if not 2 <= int(bits) <= 8:
        raise ValueError(f"bits must lie in 2..8 (int8 storage), got {bits}")
    return 2 ** (int(bits) - 1) - 1


def quantize(x: Tensor, scale: Tensor | float, bits: int = 8) -> Tensor:
    """``clamp(round(x / scale), -qmax, qmax)`` as int8; ``scale`` broadcasts against ``x``."""
    m = qmax(bits)
    return torch.clamp(torch.round(x / scale), -m, m).to(torch.int8)


def dequantize(q: Tensor, scale: Tensor | float, dtype: torch.dtype = torch.float32) -> Tensor:
    """``scale * q`` in ``dtype``."""
    return q.to(dtype) * scale


def fake_quantize(x: Tensor, scale: Tensor | float, bits: int = 8) -> Tensor:
    """``dequantize(quantize(x))`` computed in ``x``'s dtype (the simulated path)."""
    m = qmax(bits)
    return torch.clamp(torch.round(x / scale), -m, m) * scale


def affine_params(lo: Tensor, hi: Tensor, bits: int = 8) -> tuple[Tensor, Tensor]:
    """Scale and integer zero point of the asymmetric grid over ``[min(lo, 0), max(hi, 0)]`` (Nagel et al.
    2021, eq. 2; 0 is kept representable exactly, so zero padding stays zero).  Elementwise over tensors."""
    qmax(bits)
    lo, hi = torch.clamp(torch.as_tensor(lo, dtype=torch.float32), max=0), torch.clamp(torch.as_tensor(hi, dtype=torch.float32), min=0)
    width = hi - lo
    scale = torch.where(width > 0, width / (2 ** int(bits) - 1), torch.ones_like(width))
    return scale, torch.round(-lo / scale)


def fake_quantize_affine(x: Tensor, scale: Tensor | float, zero: Tensor | float, bits: int = 8) -> Tensor:
    """``s (clamp(round(x / s) + z, 0, 2^bits - 1) - z)``: asymmetric quantize-dequantize in ``x``'s dtype."""
    return (torch.clamp(torch.round(x / scale) + zero, 0, 2 ** int(bits) - 1) - zero) * scale


def weight_scales(weight: Tensor, bits: int = 8) -> Tensor:
    """Per-output-channel symmetric scales ``max|W[c]| / qmax`` (dim 0 is the output channel).

    An all-zero channel gets scale 1 (its levels are all 0 whatever the scale)."""
    amax = weight.detach().reshape(weight.shape[0], -1).abs().amax(dim=1).float()
    return torch.where(amax > 0, amax / qmax(bits), torch.ones_like(amax))


def quantize_weight(weight: Tensor, bits: int = 8) -> tuple[Tensor, Tensor]:
    """``(int8 levels shaped like weight, float32 scales of shape (out,))``."""
    s = weight_scales(weight, bits)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    return quantize(weight.detach().float(), s.reshape(shape), bits), s


def clip_search(sample: Tensor, amax: float, bits: int = 8, candidates: int = 40) -> float:
    """The clipping range ``c`` (scale ``c / qmax``) minimising the quantization MSE of ``sample``.

    Candidates are ``amax * k / candidates`` for ``k = candidates/4 .. candidates``, the usual grid
    search of an MSE range estimator (Nagel et al. 2021, sec. 3.1, "MSE").  ``sample`` holds
    observed activation values (any shape); ``amax`` is the largest ``|x|`` observed.
    """
    if amax <= 0:
        return 1.0
    x = sample.detach().reshape(-1).float()
    best, best_err = amax, float("inf")
    for k in range(max(1, candidates // 4), candidates + 1):
        c = amax * k / candidates
        err = float((fake_quantize(x, c / qmax(bits), bits) - x).pow(2).mean())
        if err < best_err:
            best, best_err = c, err
    return best


def range_search_affine(sample: Tensor, lo: float, hi: float, bits: int = 8, candidates: int = 40) -> tuple[float, float]:
    """The asymmetric range ``k (lo, hi)`` minimising the quantization MSE of ``sample``, for
    ``k = 1/4 .. 1`` in ``candidates`` steps: :func:`clip_search` on the affine grid."""
    if hi - lo <= 0:
        return lo, hi
    x = sample.detach().reshape(-1).float()
    best, best_err = (lo, hi), float("inf")
    for k in range(max(1, candidates // 4), candidates + 1):
        c = (lo * k / candidates, hi * k / candidates)
        scale, zero = affine_params(torch.tensor(c[0]), torch.tensor(c[1]), bits)
        err = float((fake_quantize_affine(x, scale, zero, bits) - x).pow(2).mean())
        if err < best_err:
            best, best_err = c, err
    return best
