"""What an ``--out`` names (``fewstep sample``'s grid image, ``.npz`` or folder; another command's file or folder)
and whether it can be written.

Every command that writes a result checks its ``--out`` before any work (loading a model, sampling, searching),
so a bad ``--out`` fails in a second, not after the work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Destination", "parse_destination", "check_writable", "check_output"]

from ..imagegrid import IMAGE_FORMATS

# Pillow format -> the optional Pillow feature it needs (PNG is always built in).
_FEATURES = {"JPEG": "jpg", "WEBP": "webp"}
_CHOICES = ("a grid image (.png, .jpg, .jpeg, .webp), an array (.npz), or a folder of PNGs "
            "(no suffix, or a trailing /)")


@dataclass(frozen=True)
class Destination:
    """``kind`` is ``grid`` (one tiled image), ``npz`` (an array file), ``folder`` (one PNG per seed, or a folder
    of results) or ``file`` (any other single file: JSON, statistics)."""

    path: Path
    kind: Literal["grid", "npz", "folder", "file"]

    @property
    def folder(self) -> Path:
        """The folder the files are written into (created if missing)."""
        return self.path if self.kind == "folder" else self.path.parent


def parse_destination(text: str) -> Destination:
    """Classify ``--out`` by its suffix; refuse a suffix that names no format fewstep writes."""
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir() or not path.suffix:
        return Destination(path, "folder")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return Destination(path, "npz")
    if suffix in IMAGE_FORMATS:
        fmt = IMAGE_FORMATS[suffix]
        feature = _FEATURES.get(fmt)
        if feature is not None:
            from PIL import features

            if not features.check(feature):
                raise ValueError(f"--out {text}: this Pillow build cannot write {fmt}; use a .png grid instead")
        return Destination(path, "grid")
    raise ValueError(f"--out {text}: fewstep does not write {suffix} files; give {_CHOICES}")


def check_writable(dest: Destination) -> None:
    """Raise a one-line error naming the path unless ``dest`` can be created and written."""
    shown = dest.path
    if dest.kind == "folder" and dest.path.exists() and not dest.path.is_dir():
        raise ValueError(f"--out {shown}: exists and is a file, not a folder; choose another --out")
    if dest.kind != "folder" and dest.path.is_dir():
        raise ValueError(f"--out {shown}: is a folder; give a file name")
    existing = dest.folder
    while not existing.exists():  # the nearest ancestor that exists: everything below it is created
        if existing.parent == existing:
            break
        existing = existing.parent
    existing = existing if str(existing) else Path(".")
    if not existing.is_dir():
        raise ValueError(f"--out {shown}: cannot create a folder under {existing}, which is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {shown}: cannot write to {existing} (permission denied or read-only); "
                         f"choose another --out")


def check_output(text: str | os.PathLike, kind: Literal["file", "folder"] = "file") -> Path:
    """Check before any work that ``--out`` (one file, or a folder of results) can be written; return its path."""
    path = Path(text)
    check_writable(Destination(path, kind))
    return path
