"""A resumable folder of sample PNGs, one per seed, with a manifest saying what made them.

``DIR/fewstep-samples.json`` records the settings every image in ``DIR`` was drawn with; a rerun
with other settings is refused instead of mixing images, and each existing image is decoded
before it counts as finished (an empty or truncated file is drawn again).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .._io import atomic_write_text

__all__ = ["MANIFEST", "image_name", "check_manifest", "write_manifest", "is_valid_png"]

MANIFEST = "fewstep-samples.json"
_FORMAT = "fewstep-samples"
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def image_name(seed: int) -> str:
    """The file name of the image drawn from ``seed``."""
    return f"{seed:06d}.png"


def _read(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--out {folder}: cannot read {MANIFEST} ({err}); delete the folder to start over, "
                         f"or choose another --out") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(f"--out {folder}: {MANIFEST} is not a fewstep sample manifest; choose another --out")
    return data


_ADDED_LATER = {"cache": None, "guidance": None, "teleport": None, "plan": None}
"""Settings added after manifests were first written, with the value an older manifest implies."""


def check_manifest(folder: Path, expected: dict[str, Any]) -> bool:
    """Check that ``folder`` may receive images made with the ``expected`` settings.

    Only the keys of ``expected`` are compared, so a partial check can run before the model is
    loaded. Returns whether ``folder`` already has a manifest of these settings. Raises
    :class:`ValueError` naming every differing field when the folder holds images of other
    settings, or PNGs of unknown origin; a manifest of other settings without images is stale.
    """
    if not folder.is_dir():
        return False
    recorded = _read(folder)
    pngs = sum(1 for _ in folder.glob("*.png"))
    if recorded is None:
        if pngs:
            raise ValueError(f"--out {folder}: holds {pngs} PNG file{'s' if pngs != 1 else ''} but no {MANIFEST}, "
                             f"so what made them is unknown; choose another --out, or delete the folder")
        return False
    recorded = {**_ADDED_LATER, **recorded}
    diffs = [f"{key} {_show(recorded.get(key, '(missing)'))} there, {_show(value)} now"
             for key, value in expected.items() if _norm(recorded.get(key, "(missing)")) != _norm(value)]
    if diffs and pngs:
        raise ValueError(f"--out {folder}: holds images made with other settings ({'; '.join(diffs)}); "
                         f"choose another --out, or delete the folder to start over")
    return not diffs  # no images yet: a manifest of other settings is simply replaced


def write_manifest(folder: Path, settings: dict[str, Any]) -> None:
    """Write (atomically) the manifest of ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / MANIFEST, json.dumps({"format": _FORMAT, "format_version": 1, **settings},
                                                    indent=2) + "\n")


def is_valid_png(path: Path, shape: Sequence[int]) -> bool:
    """Whether ``path`` decodes completely as a PNG of ``shape`` ``(C, H, W)`` in the mode fewstep writes."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            c, h, w = shape
            return img.format == "PNG" and img.size == (w, h) and img.mode == _MODES.get(c)
    except Exception:  # Pillow raises OSError, ValueError, SyntaxError ... for empty, truncated or foreign files
        return False


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _show(value: Any) -> str:
    return json.dumps(_norm(value))
