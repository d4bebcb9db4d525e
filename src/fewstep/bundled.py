"""``bundled:<name>``: the models and data shipped inside the package (``fewstep/assets/``)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["BUNDLED", "resolve_bundled"]

BUNDLED = {"fashion": "fashion", "fashion-v1": "fashion-v1", "fashion-cond": "fashion-cond", "fashion-cond-3500": "fashion-cond-3500", "fashion-cond-523": "fashion-cond-523", "fashion-sid": "fashion-sid", "fashion-fewstep": "fashion-fewstep", "fashion-fewstep-v1": "fashion-fewstep-v1", "fashion-fewstep-v2": "fashion-fewstep-v2", "fashion-fewstep-v3": "fashion-fewstep-v3", "fashion-fewstep-v4": "fashion-fewstep-v4"}


def resolve_bundled(name: str, table: dict[str, str] | None = None, what: str = "model") -> Path:
    """The asset folder of ``bundled:<name>`` shipped inside the package (``table``: name -> folder)."""
    table = BUNDLED if table is None else table
    key = name.split(":", 1)[1] if name.startswith("bundled:") else name
    if key not in table:
        raise ValueError(f"unknown bundled {what} {name!r}; available: {', '.join('bundled:' + k for k in table)}")
    path = Path(str(files("fewstep") / "assets" / table[key]))
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"the bundled model {name} is missing from this installation ({path}); reinstall fewstep")
    return path
