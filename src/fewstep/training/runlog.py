"""``log.jsonl``: one JSON record per logged step, appended as training goes.

A kill can leave a torn last line; :func:`trim` drops it (and any record past the step the run
restarts from), so the log always describes exactly the steps the model went through.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from .._io import atomic_write_text

__all__ = ["append", "read", "trim"]


def append(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append ``record`` as one line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _parse(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    records, torn = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            torn += 1
            continue
        if isinstance(value, dict):
            records.append((line, value))
        else:
            torn += 1
    return records, torn


def read(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a log, skipping lines that do not parse (a write cut short by a kill)."""
    path = Path(path)
    return [r for _, r in _parse(path)[0]] if path.exists() else []


def trim(path: str | os.PathLike, step: int) -> None:
    """Keep only the records of steps ``<= step`` (none for a fresh run) and drop torn lines, atomically."""
    path = Path(path)
    if not path.exists():
        return
    records, torn = _parse(path)
    if torn:
        warnings.warn(f"{path}: skipped {torn} unreadable line(s) (a write cut short by a kill)", RuntimeWarning,
                      stacklevel=2)
    keep = [line for line, r in records if isinstance(r.get("step", 0), int) and r.get("step", 0) <= step]
    if not keep:
        path.unlink()
    elif torn or len(keep) != len(records):
        atomic_write_text(path, "".join(line + "\n" for line in keep))
