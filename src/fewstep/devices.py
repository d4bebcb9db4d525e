"""Turn a ``--device`` string into a usable :class:`torch.device`, or one clear error."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]

_KINDS = ("cpu", "cuda", "mps", "xpu")
_CHOICES = "cpu, cuda, cuda:N, mps or xpu"


def resolve_device(spec: str | torch.device | None = None, *, flag: str = "--device ") -> torch.device:
    """The device ``spec`` names, checked to exist on this machine.

    ``None``, ``""`` or ``"auto"`` give CUDA when available, else the CPU. A malformed name or a
    device this PyTorch build or machine lacks raises a one-line :class:`ValueError` that says
    what to pass instead. ``flag`` is how the errors spell the setting: ``"--device "`` for a
    command's flag, ``"device="`` for a library argument (``load_model(..., device="cuda")``).
    """
    if spec is None or str(spec).strip().lower() in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(spec).strip().lower()
    shown, cpu = f"{flag}{text}", f"{flag}cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"{shown}: not a device name; use {_CHOICES}") from None
    if device.type not in _KINDS:
        raise ValueError(f"{shown}: fewstep runs on {_CHOICES}, not {device.type}")
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        _check_cuda(shown, cpu, device.index)
    elif not _available(device.type):
        raise ValueError(f"{shown}: {device.type} is not available with this PyTorch build or machine "
                         f"(torch {torch.__version__}); use {cpu}")
    return device


def _check_cuda(shown: str, cpu: str, index: int | None) -> None:
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        raise ValueError(f"{shown}: this PyTorch build has no CUDA (torch {torch.__version__}); "
                         f"use {cpu}, or install a CUDA build of PyTorch")
    if not torch.cuda.is_available():
        raise ValueError(f"{shown}: no CUDA GPU is usable (torch {torch.__version__} was built with CUDA "
                         f"but found no working GPU or driver); use {cpu}")
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise ValueError(f"{shown}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                         f"(cuda:0..cuda:{count - 1}); use one of those")


def _available(kind: str) -> bool:
    if kind == "mps":
        return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    backend = getattr(torch, kind, None)
    return bool(backend is not None and backend.is_available())
