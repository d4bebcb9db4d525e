"""Empirical model statistics (EMS) of DPM-Solver-v3 (Zheng et al. 2023, sec. 3.2): storage and identity.

``l, s, b`` are float64 tensors ``(n_lambda + 1, *sample_shape)`` on a uniform grid ``lam`` of the
half log-SNR, from the process's ``t_max`` (noisiest) to its ``t_min``.  A folder holds
``ems.safetensors`` (the tensors) and ``ems.json`` (the process config, the model fingerprint and how
the statistics were computed); nothing is pickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..._io import atomic_write_bytes, atomic_write_text
from ...denoisers import find_attached, innermost
from ...fingerprint import model_fingerprint

__all__ = ["EMS", "EMSMismatch", "find_ems", "FORMAT"]

FORMAT = "fewstep-ems"


class EMSMismatch(ValueError):
    """The statistics were computed for another model or another noise process."""


@dataclass
class EMS:
    """``l(lambda), s(lambda), b(lambda)`` per element, on the uniform grid ``lam`` (Zheng et al. 2023, eq. 9-11).

    ``meta`` records ``process`` (its config), ``fingerprint`` (:func:`~fewstep.fingerprint.model_fingerprint` of
    the model, :func:`~fewstep.denoisers.innermost`), ``n_samples``,
    ``seed`` and the data it was computed from.
    """

    lam: Tensor
    l: Tensor  # noqa: E741  (the paper's name)
    s: Tensor
    b: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lam = torch.as_tensor(self.lam, dtype=torch.float64)
        for name in ("l", "s", "b"):
            value = torch.as_tensor(getattr(self, name), dtype=torch.float64)
            if value.shape[0] != len(self.lam):
                raise ValueError(f"EMS {name} has {value.shape[0]} lambda points but the grid has {len(self.lam)}")
            setattr(self, name, value)
        steps = self.lam[1:] - self.lam[:-1]
        if len(self.lam) < 2 or not bool((steps > 0).all()):
            raise ValueError("the EMS lambda grid must increase (from noise to data) and hold at least 2 points")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.l.shape[1:])

    @classmethod
    def degenerate(cls, lam: Tensor, sample_shape: tuple[int, ...]) -> "EMS":
        """``l = 1, s = b = 0``: the solver reduces to multistep DPM-Solver++ (data prediction)."""
        shape = (len(lam), *sample_shape)
        return cls(lam, torch.ones(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64),
                   torch.zeros(shape, dtype=torch.float64), {"degenerate": True})

    def check(self, denoiser: Any) -> None:
        """Refuse statistics of another model, another process or another sample shape (one-line errors)."""
        if self.meta.get("degenerate"):
            return
        proc = denoiser.process.config()
        if self.meta.get("process") != proc:
            raise EMSMismatch(f"these DPM-Solver-v3 statistics were computed under the process {self.meta.get('process')} "
                              f"but the model uses {proc}; recompute them with `fewstep ems`")
        want = self.meta.get("fingerprint")
        have = model_fingerprint(innermost(denoiser))  # the model's statistics hold under any wrapper
        if want != have:
            raise EMSMismatch(f"these DPM-Solver-v3 statistics belong to another model (fingerprint {str(want)[:12]}, "
                              f"this model {have[:12]}); recompute them with `fewstep ems`")
        shape = getattr(denoiser, "sample_shape", None)
        if shape is not None and tuple(shape) != self.sample_shape:
            raise EMSMismatch(f"the statistics are for samples of shape {self.sample_shape}, the model makes {tuple(shape)}")

    def save(self, folder: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> Path:
        """Write ``ems.safetensors`` (``l, s, b`` in ``dtype``; the grid in float64) and ``ems.json`` atomically."""
        from safetensors.torch import save

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"lam": self.lam.contiguous()}
        tensors.update({n: getattr(self, n).to(dtype).contiguous() for n in ("l", "s", "b")})
        atomic_write_bytes(folder / "ems.safetensors", save(tensors))
        atomic_write_text(folder / "ems.json", json.dumps({"format": FORMAT, "format_version": 1, **self.meta},
                                                          indent=2, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "EMS":
        """Read a folder written by :meth:`save`."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "ems.safetensors").exists() or not (folder / "ems.json").exists():
            raise FileNotFoundError(f"{folder} holds no DPM-Solver-v3 statistics (ems.safetensors + ems.json); "
                                    f"compute them with `fewstep ems`")
        meta = json.loads((folder / "ems.json").read_text())
        if meta.pop("format", None) != FORMAT:
            raise ValueError(f"{folder / 'ems.json'} is not a fewstep EMS file")
        meta.pop("format_version", None)
        t = load_file(str(folder / "ems.safetensors"))
        return cls(t["lam"], t["l"], t["s"], t["b"], meta)


def find_ems(denoiser: Any) -> EMS | None:
    """The statistics attached to ``denoiser`` or to a denoiser it wraps (``.ems``, set by ``load_model``)."""
    return find_attached(denoiser, "ems")


def load_ems_file(path: str | os.PathLike) -> EMS:
    """The statistics whose ``ems.json`` is ``path`` (the model attachment ``ems``, :mod:`fewstep.attachments`)."""
    return EMS.load(Path(path).parent)
