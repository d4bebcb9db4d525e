"""Finished evaluations on disk, so that long sweeps resume instead of sampling again.

One JSON file holds every finished evaluation as ``{"key": ..., "result": ...}``; the key is what
must match for a result to be reused (:func:`evaluation_key`: model, sampler description, n,
first seed, extractor name and hash, reference statistics' hash, and the near-exact solution's
description when the error to it is measured).  The file is rewritten
atomically after each finished configuration, so a crash loses at most the one in progress.

    {"format": "fewstep-evaluations-1", "meta": {...}, "entries": [{"key": {...}, "result": {...}}, ...]}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

from .._io import atomic_write_text
from .features import FeatureExtractor
from .models import reference_id
from .stats import FeatureStats

__all__ = ["FORMAT", "evaluation_key", "EvalStore", "finished"]

FORMAT = "fewstep-evaluations-1"


def evaluation_key(model: str, sampler: dict[str, Any], n: int, seed: int, extractor: FeatureExtractor | str,
                   reference: FeatureStats | str, solution: dict[str, Any] | None = None) -> dict[str, Any]:
    """What must match for a saved evaluation to stand for a new one.

    ``sampler`` describes the sample function (e.g. ``SolverSampleFn.description``: solver, NFE,
    grid, options); ``extractor`` and ``reference`` may be given as their identifiers.
    ``solution`` describes the reference images the error was measured against (e.g.
    ``NearExact.description``); without it the key has no such entry (and matches keys saved
    before the error existed).
    """
    ext = extractor if isinstance(extractor, str) else f"{extractor.name}:{extractor.fingerprint()}"
    ref = reference if isinstance(reference, str) else reference_id(reference)
    key = {"model": str(model), "sampler": sampler, "n": int(n), "seed": int(seed), "extractor": ext,
           "reference": ref}
    if solution is not None:
        key["solution"] = solution
    return key


def _canonical(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True)


def finished(result: dict[str, Any]) -> bool:
    """Whether a saved result is final: scored, or diverged (FID inf); not one that could not run (FID nan)."""
    fid = result.get("fid")
    return isinstance(fid, (int, float)) and not math.isnan(fid)


class EvalStore:
    """The finished evaluations in ``path`` (a JSON file; created on the first :meth:`put`)."""

    def __init__(self, path: str | Path, writable: bool = True):
        self.path, self.writable = Path(path), writable
        self.meta: dict[str, Any] = {}
        self._entries: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        if self.path.is_file():
            self._read()

    def _read(self) -> None:
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read the saved evaluations {self.path} ({err}); move it aside to start "
                             f"afresh") from None
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise ValueError(f"{self.path} is not a fewstep evaluations file (format {FORMAT}); move it aside to "
                             f"start afresh")
        self.meta = dict(saved.get("meta", {}))
        for entry in saved.get("entries", []):
            self._entries[_canonical(entry["key"])] = (entry["key"], entry["result"])

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """``(key, result)`` pairs in the order they were first saved."""
        return iter(list(self._entries.values()))

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The saved result for ``key`` (whatever its outcome), or None."""
        found = self._entries.get(_canonical(key))
        return dict(found[1]) if found else None

    def put(self, key: dict[str, Any], result: dict[str, Any]) -> None:
        """Save ``result`` under ``key`` (replacing an earlier one) and rewrite the file atomically."""
        self._entries[_canonical(key)] = (key, dict(result))
        self.save()

    def save(self) -> None:
        if not self.writable:
            return
        entries = [{"key": k, "result": r} for k, r in self._entries.values()]
        atomic_write_text(self.path, json.dumps({"format": FORMAT, "meta": self.meta, "entries": entries},
                                                indent=1) + "\n")
