"""Calibrating a noisy classifier for guidance (the "calibrated" classifier guidance of EluCD).

Ma et al. 2023 ("Elucidating the design space of classifier-guided diffusion generation", sec. 3)
take calibration - how well a classifier's confidence matches its accuracy, measured by the
expected calibration error (ECE) - as the guideline for a good guiding classifier, since guidance
follows ``grad log p(c | x_t)`` and an over- or under-confident ``p`` scales that gradient wrongly.
Here the calibration is fitted on held-out noisy data per noise level with temperature scaling
(Guo et al. 2017, sec. 4.2): at each ``sigma_hat`` of a grid, the temperature ``T`` minimising the
negative log-likelihood of ``softmax(f / T)`` on ``y = x0 + sigma_hat eps``; between grid points
``T`` is interpolated linearly in ``log sigma_hat`` (held constant beyond the ends).

The NLL is convex in ``beta = 1 / T`` with derivative ``E_softmax(beta f)[f] - f_c`` (averaged),
increasing in ``beta``, so ``beta`` is found by bisection to machine precision.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from .._io import atomic_write_text
from .classifier import NoisyClassifier

__all__ = ["fit_temperature", "expected_calibration_error", "TemperatureCalibrated", "CalibrationRow",
           "calibrate", "save_calibration", "load_calibration"]


def fit_temperature(logits: Tensor, labels: Tensor, lo: float = 1e-3, hi: float = 1e3, iters: int = 100) -> float:
    """The temperature ``T`` minimising ``NLL(softmax(logits / T), labels)`` (Guo et al. 2017, temperature scaling)."""
    f = logits.detach().to(torch.float64)
    fc = f.gather(1, labels.reshape(-1, 1).to(f.device)).squeeze(1)

    def slope(beta: float) -> float:  # d NLL / d beta
        return float((torch.softmax(beta * f, dim=1) * f).sum(1).sub(fc).mean())

    b_lo, b_hi = 1.0 / hi, 1.0 / lo
    if slope(b_lo) >= 0:
        return hi
    if slope(b_hi) <= 0:
        return lo
    for _ in range(iters):  # bisection in log beta
        mid = math.sqrt(b_lo * b_hi)
        if slope(mid) < 0:
            b_lo = mid
        else:
            b_hi = mid
    return 1.0 / math.sqrt(b_lo * b_hi)


def expected_calibration_error(logits: Tensor, labels: Tensor, bins: int = 15) -> float:
    """ECE (Guo et al. 2017, eq. 3): ``sum_b |B_b|/n |acc(B_b) - conf(B_b)|`` over equal-width confidence bins."""
    p = torch.softmax(logits.detach().to(torch.float64), dim=1)
    conf, pred = p.max(dim=1)
    correct = (pred == labels.to(pred.device)).to(torch.float64)
    idx = torch.clamp((conf * bins).ceil().long() - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += float(m.sum()) / len(conf) * abs(float(correct[m].mean()) - float(conf[m].mean()))
    return total


class TemperatureCalibrated:
    """``classifier`` with logits divided by a temperature ``T(sigma_hat)`` (linear in ``log sigma_hat``)."""

    def __init__(self, classifier: NoisyClassifier, sigmas: Sequence[float], temperatures: Sequence[float]):
        s = torch.as_tensor(list(sigmas), dtype=torch.float64)
        tt = torch.as_tensor(list(temperatures), dtype=torch.float64)
        if s.ndim != 1 or s.shape != tt.shape or len(s) == 0 or bool((s <= 0).any()) or bool((tt <= 0).any()):
            raise ValueError("calibration needs matching lists of positive noise levels and temperatures")
        if len(s) > 1 and bool((s[1:] <= s[:-1]).any()):
            raise ValueError("calibration noise levels must increase")
        self.classifier = classifier
        self.num_classes = classifier.num_classes
        self.sigmas, self.temperatures = s, tt

    def temperature(self, sigma_hat: float | Tensor) -> Tensor:
        """``T`` at ``sigma_hat`` (float64, shaped like ``sigma_hat``)."""
        x = torch.log(torch.as_tensor(sigma_hat, dtype=torch.float64)).clamp(float(self.sigmas[0].log()),
                                                                             float(self.sigmas[-1].log()))
        if len(self.sigmas) == 1:
            return self.temperatures[0].expand_as(x)
        xs = self.sigmas.log()
        i = torch.searchsorted(xs, x.reshape(-1), right=True).clamp(1, len(xs) - 1)
        w = (x.reshape(-1) - xs[i - 1]) / (xs[i] - xs[i - 1])
        return ((1 - w) * self.temperatures[i - 1] + w * self.temperatures[i]).reshape(x.shape)

    def logits(self, y: Tensor, sigma_hat: float | Tensor) -> Tensor:
        f = self.classifier.logits(y, sigma_hat)
        temp = self.temperature(sigma_hat.detach() if isinstance(sigma_hat, Tensor) else sigma_hat)
        temp = temp.to(f.device, f.dtype)
        return f / (temp.reshape(-1, 1) if temp.ndim else temp)


@dataclass
class CalibrationRow:
    """One noise level of a calibration: the fitted temperature, accuracy, NLL and ECE before and after."""

    sigma_hat: float
    temperature: float
    accuracy: float
    nll: float
    nll_calibrated: float
    ece: float
    ece_calibrated: float


@torch.no_grad()
def calibrate(classifier: NoisyClassifier, x0: Tensor, labels: Tensor, sigmas: Sequence[float], *,
              seed: int = 0, batch_size: int = 500, progress: bool = False
              ) -> tuple[TemperatureCalibrated, list[CalibrationRow]]:
    """Fit a temperature per noise level on held-out ``(x0, labels)`` (``x0`` in the model's range).

    ``y = x0 + sigma_hat eps`` with noise from ``seed`` (the same noise at every level).  Returns
    the calibrated classifier and one :class:`CalibrationRow` per level.
    """
    if len(x0) != len(labels) or len(x0) == 0:
        raise ValueError("calibration needs as many labels as images, and at least one image")
    sigmas = sorted(float(s) for s in sigmas)
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    rows, temps = [], []
    it = sigmas
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(sigmas, desc="calibrate", unit="level", dynamic_ncols=True)
    for s in it:
        f = torch.cat([classifier.logits(x0[i:i + batch_size] + s * eps[i:i + batch_size], s).double().cpu()
                       for i in range(0, len(x0), batch_size)])
        temp = fit_temperature(f, labels)
        lab = labels.reshape(-1, 1).to(f.device)
        nll = float(-torch.log_softmax(f, 1).gather(1, lab).mean())
        nll_c = float(-torch.log_softmax(f / temp, 1).gather(1, lab).mean())
        acc = float((f.argmax(1) == labels.to(f.device)).double().mean())
        rows.append(CalibrationRow(s, temp, acc, nll, nll_c, expected_calibration_error(f, labels),
                                   expected_calibration_error(f / temp, labels)))
        temps.append(temp)
    return TemperatureCalibrated(classifier, sigmas, temps), rows


def save_calibration(path: str | os.PathLike, rows: Sequence[CalibrationRow], meta: dict[str, Any] | None = None) -> Path:
    """Write a calibration (its rows and ``meta``) as JSON, atomically."""
    data = {"format": "fewstep-calibration", "meta": meta or {}, "rows": [vars(r) for r in rows]}
    path = Path(path)
    atomic_write_text(path, json.dumps(data, indent=2))
    return path


def load_calibration(path: str | os.PathLike, classifier: NoisyClassifier) -> TemperatureCalibrated:
    """``classifier`` calibrated with the temperatures saved by :func:`save_calibration`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"calibration file {path} not found; write one with fewstep.guidance.calibrate "
                                f"(see docs/guidance.md)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not a calibration file: {err}") from None
    if not isinstance(data, dict) or data.get("format") != "fewstep-calibration":
        raise ValueError(f"{path} is not a fewstep calibration file")
    rows = data["rows"]
    return TemperatureCalibrated(classifier, [r["sigma_hat"] for r in rows], [r["temperature"] for r in rows])
