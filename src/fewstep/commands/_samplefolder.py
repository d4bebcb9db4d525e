"""A resumable folder of sample PNGs, one per seed, with a manifest saying what made them.

``DIR/fewstep-samples.json`` records the settings every image in ``DIR`` was drawn with; a rerun
with other settings is refused instead of mixing images, and each existing image is decoded
before it counts as finished (an empty or truncated file is drawn again).  Each PNG also carries
the manifest in a text chunk, so a damaged or lost manifest is rebuilt from the images themselves;
images from before that (which record nothing) are kept with ``--adopt``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .._io import atomic_write_text

__all__ = ["MANIFEST", "PNG_KEY", "image_name", "check_manifest", "write_manifest", "manifest_text",
           "is_valid_png"]

MANIFEST = "fewstep-samples.json"
PNG_KEY = "fewstep-samples"
"""The PNG text chunk holding the manifest the image was drawn under."""
_FORMAT = "fewstep-samples"
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def image_name(seed: int) -> str:
    """The file name of the image drawn from ``seed``."""
    return f"{seed:06d}.png"


class _Unreadable(ValueError):
    """The manifest exists but cannot be read (truncated, garbage, foreign)."""


def _read(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _Unreadable(f"cannot read {MANIFEST} ({err})") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise _Unreadable(f"{MANIFEST} is not a fewstep sample manifest")
    return data


def _recorded_in_images(folder: Path) -> tuple[dict[str, Any] | None, int, int]:
    """``(manifest, images recording it, images recording nothing)`` from the PNG text chunks of ``folder``'s
    images; the manifest is None unless every readable image records the same one.  Unreadable files (empty,
    truncated) are left out: they are drawn again."""
    from PIL import Image

    found: list[str] = []
    silent = 0
    for png in sorted(folder.glob("*.png")):
        try:
            with Image.open(png) as img:
                text = getattr(img, "text", {}).get(PNG_KEY)
        except Exception:  # Pillow raises OSError, ValueError, SyntaxError ... for broken files
            continue
        if text is None:
            silent += 1
        else:
            found.append(text)
    if not found or silent or len(set(found)) != 1:
        return None, len(found), silent
    try:
        data = json.loads(found[0])
    except json.JSONDecodeError:
        return None, len(found), silent
    return (data if isinstance(data, dict) and data.get("format") == _FORMAT else None), len(found), silent


_ADDED_LATER = {"cache": None, "guidance": None, "teleport": None, "plan": None, "precision": "fp32"}
"""Settings added after manifests were first written, with the value an older manifest implies."""

_COMPARED_WHEN_RECORDED = {"weights"}
"""Settings an older manifest cannot imply (which weights a bundled name held then): compared only when recorded."""


def check_manifest(folder: Path, expected: dict[str, Any], adopt: bool = False) -> bool:
    """Check that ``folder`` may receive images made with the ``expected`` settings.

    Only the keys of ``expected`` are compared, so a partial check can run before the model is
    loaded. Returns whether ``folder`` already has a manifest of these settings. Raises
    :class:`ValueError` naming every differing field when the folder holds images of other
    settings; a manifest of other settings without images is stale.  A damaged or missing
    manifest is rebuilt from the settings the images record (and written back); images that
    record none are refused unless ``adopt``, which takes them as drawn with ``expected``.
    """
    if not folder.is_dir():
        return False
    pngs = sum(1 for _ in folder.glob("*.png"))
    try:
        recorded = _read(folder)
        problem = None if recorded is not None else f"no {MANIFEST}"
    except _Unreadable as err:
        recorded, problem = None, str(err)
    if recorded is None and pngs:
        recorded, n, silent = _recorded_in_images(folder)
        if recorded is not None:
            atomic_write_text(folder / MANIFEST, json.dumps(recorded, indent=2) + "\n")
            print(f"{folder}: {problem}; rebuilt it from the settings its {n} image{'s' if n != 1 else ''} "
                  f"record", flush=True)
        elif adopt:
            return False  # the caller writes this command's manifest; broken images are drawn again
        else:
            files = f"{pngs} PNG file{'s' if pngs != 1 else ''}"
            why = (f"{'its ' + files if silent == pngs else f'{silent} of its {files}'} record"
                   f"{'s' if silent == 1 else ''} no settings (drawn before fewstep recorded them in each image, "
                   f"or not by fewstep)" if silent else
                   f"its {pngs} PNG files record different settings" if n else
                   f"none of its {pngs} PNG files is readable")
            raise ValueError(f"--out {folder}: {problem}, and it cannot be rebuilt: {why}. If these images were "
                             f"drawn with this command's settings, rerun it with --adopt to keep them (a new "
                             f"{MANIFEST} is written and broken images are drawn again); otherwise choose another "
                             f"--out")
    if recorded is None:
        return False  # no images: a missing or damaged manifest is simply replaced
    recorded = {**_ADDED_LATER, **recorded}
    diffs = [f"{key} {_show(recorded.get(key, '(missing)'))} there, {_show(value)} now"
             for key, value in expected.items() if _norm(recorded.get(key, "(missing)")) != _norm(value)
             and (key in recorded or key not in _COMPARED_WHEN_RECORDED)]
    if diffs and pngs:
        raise ValueError(f"--out {folder}: holds images made with other settings ({'; '.join(diffs)}); "
                         f"choose another --out, or delete the folder to start over")
    return not diffs  # no images yet: a manifest of other settings is simply replaced


def manifest_text(settings: dict[str, Any]) -> str:
    """The manifest of ``settings`` as written to ``MANIFEST`` and into each PNG's ``PNG_KEY`` text chunk."""
    return json.dumps({"format": _FORMAT, "format_version": 1, **settings}, indent=2) + "\n"


def write_manifest(folder: Path, settings: dict[str, Any]) -> None:
    """Write (atomically) the manifest of ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / MANIFEST, manifest_text(settings))


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
