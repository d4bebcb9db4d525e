"""Grid files: optimized time grids (and TimeTuner network times) saved as JSON.

One grid::

    {"format": "fewstep-grid", "version": 1, "process": {...process config...},
     "solver": "unipc", "nfe": 6, "steps": 6, "times": [t_max, ..., t_min],
     "net_times": null | [one network time per step], "options": null | {...solver options...},
     "method": "search", "score": 0.031, "provenance": {...}}

Several grids (other NFEs or solvers) share the header and list the per-grid fields under
``"grids"``.  ``times`` are the decreasing grid times from the process's ``t_max``;
``net_times`` (TimeTuner) the time fed to the network at each step's main evaluation;
``options`` solver options tuned with the grid (e.g. DC-Solver's ``ratios``); ``start`` (optional)
``{"kind": "gaussian", "t": T}`` when the times begin at a teleported start (:mod:`fewstep.teleport`; files of
fewstep <= 0.1 kept it as ``options["teleport"]``, still read).  An entry is a *plan* for its own solver and NFE
(:func:`grid_entry`, :mod:`fewstep.plan`): another solver borrows its times only when asked to, and then without
its network times, options or teleported start.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..processes import NoiseProcess

__all__ = ["GridEntry", "GridFile", "FORMAT", "VERSION", "is_grid_file", "grid_file_path", "read_grid_file",
           "write_grid_file", "select_entry", "own_entry", "grid_entry"]

FORMAT = "fewstep-grid"
VERSION = 1
BUNDLED_GRIDS = "grids.json"  # the tuned grids shipped beside a bundled model's weights
_ENTRY_KEYS = ("solver", "nfe", "steps", "times", "net_times", "options", "method", "score", "start")


@dataclass
class GridEntry:
    """One optimized grid: ``steps + 1`` decreasing ``times`` for ``solver`` at ``nfe`` evaluations."""

    solver: str
    nfe: int
    steps: int
    times: list[float]
    method: str
    score: float | None = None
    net_times: list[float] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] | None = None
    teleport: float | None = None

    def __post_init__(self) -> None:
        if self.options and "teleport" in self.options:  # the start was an option before plans had a start field
            options = dict(self.options)
            legacy = options.pop("teleport")
            if self.teleport is None and legacy is not None:
                self.teleport = float(legacy)
            self.options = options or None
        if self.teleport is not None:
            self.teleport = float(self.teleport)
            if abs(self.teleport - self.times[0]) > 1e-6 * max(1.0, abs(self.teleport)):
                raise ValueError(f"grid entry {self.solver} nfe={self.nfe}: teleported start t={self.teleport:g} but "
                                 f"the times begin at {self.times[0]:g}")
        self.times = [float(t) for t in self.times]
        if len(self.times) != self.steps + 1:
            raise ValueError(f"grid entry {self.solver} nfe={self.nfe}: {len(self.times)} times for {self.steps} steps")
        if any(b >= a for a, b in zip(self.times, self.times[1:])):
            raise ValueError(f"grid entry {self.solver} nfe={self.nfe}: times must be strictly decreasing")
        if self.net_times is not None:
            self.net_times = [float(t) for t in self.net_times]
            if len(self.net_times) != self.steps:
                raise ValueError(f"grid entry {self.solver} nfe={self.nfe}: {len(self.net_times)} net_times for "
                                 f"{self.steps} steps")
        if self.options is not None and not isinstance(self.options, dict):
            raise ValueError(f"grid entry {self.solver} nfe={self.nfe}: options must be a mapping of solver options")

    @property
    def start(self) -> dict[str, Any] | None:
        """The entry's start as stored: ``{"kind": "gaussian", "t": T}`` for a teleported one, else None."""
        return None if self.teleport is None else {"kind": "gaussian", "t": self.teleport}


@dataclass
class GridFile:
    """The grids of one noise process."""

    process: dict[str, Any]
    entries: list[GridEntry]
    provenance: dict[str, Any] = field(default_factory=dict)


def is_grid_file(spec: Any) -> bool:
    """Whether ``spec`` names a grid file (a path ending in ``.json``, an existing file, or ``bundled:<model>``)."""
    if isinstance(spec, os.PathLike):
        return True
    return isinstance(spec, str) and (spec.endswith(".json") or spec.startswith("bundled:") or os.path.isfile(spec))


def grid_file_path(spec: str | os.PathLike) -> Path:
    """The file a grid-file spec names: a path, or ``bundled:<model>`` for the tuned grids shipped with a
    bundled model (``fewstep/assets/<model>/grids.json``)."""
    if isinstance(spec, str) and spec.startswith("bundled:"):
        from ..bundled import resolve_bundled

        path = resolve_bundled(spec) / BUNDLED_GRIDS
        if not path.is_file():
            raise ValueError(f"no tuned grids ship with {spec}; pass a grid file from `fewstep grid optimize`")
        return path
    return Path(spec)


def _entry_from(d: dict[str, Any], where: str) -> GridEntry:
    missing = [k for k in ("solver", "nfe", "steps", "times", "method") if k not in d]
    if missing:
        raise ValueError(f"{where}: a grid entry lacks {', '.join(missing)}")
    start = d.get("start")
    if start is not None and (not isinstance(start, dict) or start.get("kind") != "gaussian" or "t" not in start):
        raise ValueError(f"{where}: entry {d['solver']} nfe={d['nfe']} has start {start!r}; the one start kind a "
                         f"file records is {{\"kind\": \"gaussian\", \"t\": T}}")
    return GridEntry(str(d["solver"]), int(d["nfe"]), int(d["steps"]), d["times"], str(d["method"]),
                     d.get("score"), d.get("net_times"), dict(d.get("provenance") or {}), d.get("options"),
                     None if start is None else float(start["t"]))


_CACHE: dict[tuple[str, int, int], GridFile] = {}


def read_grid_file(path: str | os.PathLike) -> GridFile:
    """Read and check a grid file, or ``bundled:<model>`` (cached while the file is unchanged)."""
    p = grid_file_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"grid file {p} not found (write one with `fewstep grid optimize`)")
    st = p.stat()
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    if key in _CACHE:
        return _CACHE[key]
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"grid file {p} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{p} is not a fewstep grid file (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise ValueError(f"grid file {p} has version {data.get('version')}; this fewstep reads version {VERSION}")
    if not isinstance(data.get("process"), dict):
        raise ValueError(f"grid file {p} lacks its process config")
    raw = data["grids"] if "grids" in data else [data]
    entries = [_entry_from(d, str(p)) for d in raw]
    out = GridFile(data["process"], entries, dict(data.get("provenance") or {}))
    _CACHE[key] = out
    return out


def write_grid_file(path: str | os.PathLike, process: NoiseProcess | dict[str, Any], entries: Sequence[GridEntry],
                    provenance: dict[str, Any] | None = None) -> Path:
    """Write ``entries`` atomically (one entry: flat; several: under ``"grids"``)."""
    from .._io import atomic_write_text

    if not entries:
        raise ValueError("write_grid_file: no grids to write")
    config = process if isinstance(process, dict) else process.config()
    head: dict[str, Any] = {"format": FORMAT, "version": VERSION, "process": config}
    rows = [{**{k: v for k, v in asdict(e).items() if k in _ENTRY_KEYS or (k == "provenance" and v)},
             **({"start": e.start} if e.start is not None else {})} for e in entries]
    if len(rows) == 1:
        body = {**head, **rows[0], "provenance": {**(provenance or {}), **rows[0].pop("provenance", {})}}
    else:
        body = {**head, "provenance": provenance or {}, "grids": rows}
    atomic_write_text(path, json.dumps(body, indent=1) + "\n")
    return Path(path)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def check_process(grids: GridFile, process: NoiseProcess, path: Any) -> None:
    """Refuse a grid file written for another noise process."""
    if not _same(grids.process, process.config()):
        kind = grids.process.get("kind", "?")
        raise ValueError(f"grid file {path} was optimized for another noise process ({kind} "
                         f"{ {k: v for k, v in grids.process.items() if k not in ('kind', 'betas')} }) than the "
                         f"model's ({process!r})")


def _fits(grids: GridFile, steps: int, nfe: int | None) -> list[GridEntry]:
    return [e for e in grids.entries if e.steps == steps and (nfe is None or e.nfe == nfe)]


def own_entry(path: str | os.PathLike, process: NoiseProcess, steps: int, solver: str, nfe: int) -> GridEntry | None:
    """The entry of ``path`` optimized for ``solver`` itself at ``nfe`` (``steps`` steps), or None."""
    grids = read_grid_file(path)
    check_process(grids, process, path)
    return next((e for e in _fits(grids, steps, nfe) if e.solver == solver), None)


def grid_entry(path: str | os.PathLike, process: NoiseProcess, solver: str | None, nfe: int | None, steps: int,
               borrow: str | None = None) -> GridEntry:
    """The entry of ``path`` for exactly ``solver`` at ``nfe`` (``steps`` steps), or, with ``borrow``, the entry of
    that solver at ``nfe`` whose times ``solver`` borrows.  No entry: a clear error listing what the file holds."""
    grids = read_grid_file(path)
    check_process(grids, process, path)
    if solver is None or nfe is None:
        raise ValueError(f"plan file {path} holds one entry per solver and NFE; name both (solver=, nfe=)")
    owner = borrow or solver
    found = [e for e in grids.entries if e.solver == owner and e.nfe == nfe]
    have = ", ".join(f"{e.solver} nfe={e.nfe}" for e in sorted(grids.entries, key=lambda e: (e.solver, e.nfe)))
    if not found:
        hint = (" Borrow another solver's times explicitly (borrow=NAME, --borrow NAME), tune this solver "
                "(`fewstep tune`), or use a built-in grid.") if borrow is None else ""
        raise ValueError(f"plan file {path} has no entry for {owner} at nfe={nfe}; it holds: {have}.{hint}")
    entry = found[0]
    if entry.steps != steps:
        raise ValueError(f"plan file {path}: the entry for {owner} at nfe={nfe} has {entry.steps} steps but {solver} "
                         f"takes {steps} steps at nfe={nfe}")
    return entry


def select_entry(path: str | os.PathLike, process: NoiseProcess, steps: int, solver: str | None = None,
                 nfe: int | None = None) -> GridEntry:
    """A starting grid for a *search* (:mod:`fewstep.tuning.optimize`): the entry of ``path`` for ``solver`` at
    ``nfe`` if there is one, else another solver's grid with the same NFE and step count.  Sampling never uses
    this lenient lookup: it takes :func:`grid_entry` (an entry is used only for its own solver and NFE)."""
    grids = read_grid_file(path)
    check_process(grids, process, path)
    fits = _fits(grids, steps, nfe)
    if not fits:
        have = ", ".join(sorted({f"{e.solver} nfe={e.nfe}" for e in grids.entries}))
        want = f"nfe={nfe} ({steps} steps)" if nfe is not None else f"{steps} steps"
        raise ValueError(f"grid file {path} has no grid for {want}; it holds: {have}")
    exact = [e for e in fits if solver is not None and e.solver == solver]
    return (exact or fits)[0]
