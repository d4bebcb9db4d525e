"""Where files that belong to a model (``ems/``, ``gaussian.safetensors``) go by default: its checkpoint folder."""

from __future__ import annotations

from pathlib import Path

__all__ = ["beside_checkpoint"]


def beside_checkpoint(model: str, name: str, use_instead: str) -> Path:
    """``<checkpoint>/<name>`` for a checkpoint folder, or a run folder's newest checkpoint.

    A bundled model lives inside the installed package and is refused, with ``use_instead`` saying what to do.
    """
    if model.startswith("bundled:"):
        raise ValueError(f"{model} is shipped inside the package and read-only; {use_instead}")
    path = Path(model)
    if (path / "checkpoints").is_dir() and not (path / "config.json").exists():
        from ..checkpoint import latest_checkpoint

        path = latest_checkpoint(path) or path
    return path / name
