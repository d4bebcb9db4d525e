"""The sampling plan: everything a solve needs, resolved once from (denoiser, solver, NFE, grid).

A :class:`SamplingPlan` holds the solver and its NFE, the grid times, the start (:class:`Start`: the process's
start time, or a time below it reached by the training data Gaussian's exact flow, Wang & Vastola 2024, sec. 4),
the TimeTuner network times, the full solver options (the NFE plan's, a plan file entry's and the caller's), and
where each of them came from.  :func:`make_plan` is the one resolution: ``fewstep.sample`` / ``generate``, the
diffusers scheduler, inversion, restoration, eval and bench model all call it, and each refuses what it cannot
honour (:meth:`SamplingPlan.require`), naming the field.  :meth:`SamplingPlan.describe` is what sample-folder
manifests, eval and bench JSON and the HTML report record.

A plan file (``fewstep tune`` / ``fewstep grid optimize``, format in :mod:`fewstep.grids.files`) holds entries
per (solver, NFE).  An entry is used only for its own solver and NFE; borrowing another solver's times is an
explicit choice (``borrow="ipndm"``) and never carries that entry's start unless the caller asks for it with
``teleport=`` the same time.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import solvers
from .grids import GRIDS, GridSpec, Schedule, make_grid, make_schedule
from .grids.files import GridEntry, grid_entry, is_grid_file, read_grid_file
from .denoisers import wrapper_chain
from .processes import check_start
from .nettimes import time_tuned

__all__ = ["Start", "SamplingPlan", "make_plan", "start_time", "TUNED"]

TUNED = "tuned"
"""``grid="tuned"``: the plan file attached to the model (``plans.json`` beside its checkpoint)."""


@dataclass(frozen=True)
class Start:
    """Where a solve starts.

    ``kind="prior"``: the prior draw ``x_T`` is taken as the state at ``t`` (``t`` is the process's start time,
    or a grid's own first time, as diffusers' "leading" spacings do).  ``kind="gaussian"``: ``x_T`` is a draw at
    the process's ``t_max``, carried to ``t`` by the exact probability-flow map of the training data's Gaussian
    (:func:`fewstep.teleport.teleport`); ``gaussian`` is that Gaussian (a :class:`~fewstep.exact.GaussianMixture`
    or a path), ``None`` for the one attached to the model.
    """

    t: float
    kind: str = "prior"
    gaussian: Any = None
    source: str = "process"

    def __post_init__(self) -> None:
        if self.kind not in ("prior", "gaussian"):
            raise ValueError(f"a start's kind is 'prior' or 'gaussian', got {self.kind!r}")

    @property
    def teleported(self) -> bool:
        return self.kind == "gaussian"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": self.t, "kind": self.kind, "source": self.source}
        if self.teleported:
            g = self.gaussian
            out["gaussian"] = "model's data_gaussian" if g is None else (str(g) if isinstance(g, (str, os.PathLike))
                                                                         else "given")
        return out


@dataclass(frozen=True)
class SamplingPlan:
    """A resolved solve: ``solver`` at ``nfe`` evaluations over ``times`` from ``start``.

    ``times`` are the ``steps + 1`` grid times (float64, ``times[0] == start.t``); with ``clean_end`` the last
    one is replaced by clean data when the schedule is built.  ``net_times`` (TimeTuner) are the times the network
    sees at each step's main evaluation; ``options`` the keyword arguments the solver function gets (the NFE
    plan's included); ``sources`` says where the times, start, network times and tuned options came from.
    """

    solver: str
    nfe: int
    times: Tensor
    start: Start
    options: dict[str, Any]
    clean_end: bool = True
    net_times: tuple[float, ...] | None = None
    grid: str | None = None
    entry: dict[str, Any] | None = None
    sources: dict[str, str] = field(default_factory=dict)
    tuned_options: tuple[str, ...] = ()

    @property
    def spec(self) -> solvers.SolverSpec:
        return solvers.get(self.solver)

    @property
    def steps(self) -> int:
        return len(self.times) - 1

    def schedule(self, process: Any) -> Schedule:
        """The float64 :class:`~fewstep.grids.Schedule` along ``times`` (clean end as planned)."""
        return make_schedule(process, self.steps, self.times, clean_end=self.clean_end)

    def bind(self, denoiser: Any) -> Any:
        """``denoiser`` as the solver must see it: behind the plan's TimeTuner network times, if any."""
        return time_tuned(denoiser, self.times.tolist(), None if self.net_times is None else list(self.net_times))

    def start_state(self, denoiser: Any, x_T: Tensor, cond: dict[str, Any] | None = None) -> Tensor:
        """The solver's first state: ``x_T`` itself, or carried from ``t_max`` to ``start.t`` by the data Gaussian's
        exact flow; with ``cond={"class_labels": ...}`` each sample follows its class's Gaussian."""
        if not self.start.teleported:
            return x_T
        from .teleport import teleported_start

        return teleported_start(denoiser, x_T, self.start.t, self.start.gaussian, cond)

    def require(self, where: str, *, teleport: bool = False, net_times: bool = True, clean_end: bool | None = None,
                deterministic: bool = False, fixed_nfe: bool = False) -> "SamplingPlan":
        """Refuse what ``where`` cannot honour, naming the field; returns the plan."""
        if self.start.teleported and not teleport:
            raise ValueError(f"{where} cannot start from a teleported time (plan start: t={self.start.t:g} by the data "
                             f"Gaussian's flow, from {self.start.source}); use a plan without teleport here")
        if self.net_times is not None and not net_times:
            raise ValueError(f"{where} cannot apply TimeTuner network times (plan net_times from "
                             f"{self.sources.get('net_times', '?')}); use a plan without them")
        if clean_end is not None and self.clean_end != clean_end:
            raise ValueError(f"{where} needs a plan with clean_end={clean_end}")
        if deterministic and self.spec.stochastic:
            raise ValueError(f"{where} needs a deterministic solver; {self.solver!r} is stochastic")
        if fixed_nfe and not self.spec.fixed_nfe:
            raise ValueError(f"{where} needs a solver with a fixed number of evaluations; {self.solver!r} chooses its "
                             f"steps from the data")
        return self

    def to_dict(self) -> dict[str, Any]:
        """What rebuilds this plan (:meth:`from_dict`): solver, NFE, times, start time and kind, network times and
        the full solver options; JSON-ready (a diffusers scheduler config keeps it).  A start whose Gaussian is an
        object, or options that are not plain data, cannot be stored and are refused."""
        options = {k: (v.tolist() if isinstance(v, Tensor) else v) for k, v in self.options.items()}
        try:
            json.dumps(options)
        except TypeError:
            raise ValueError(f"the plan's solver options ({', '.join(sorted(self.options))}) hold objects; a stored "
                             f"plan keeps plain numbers and lists only") from None
        return {"solver": self.solver, "nfe": self.nfe, "times": [float(t) for t in self.times.tolist()],
                "start": {"t": self.start.t, "kind": self.start.kind}, "options": options,
                "net_times": None if self.net_times is None else list(self.net_times), "clean_end": self.clean_end,
                "grid": self.grid, "tuned_options": list(self.tuned_options)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], gaussian: Any = None) -> "SamplingPlan":
        """The plan :meth:`to_dict` stored (``gaussian``: the data Gaussian of a teleported start)."""
        missing = [k for k in ("solver", "nfe", "times", "start", "options") if k not in d]
        if missing:
            raise ValueError(f"a stored sampling plan lacks {', '.join(missing)}")
        spec = solvers.get(d["solver"])
        times = torch.tensor(d["times"], dtype=torch.float64)
        steps, _ = spec.steps_for(int(d["nfe"]), bool(d.get("clean_end", True)))
        if len(times) != steps + 1:
            raise ValueError(f"a stored plan for {spec.name} at nfe={d['nfe']} has {len(times) - 1} steps; it takes {steps}")
        start = Start(float(d["start"]["t"]), d["start"].get("kind", "prior"), gaussian, "stored plan")
        net = d.get("net_times")
        return cls(spec.name, int(d["nfe"]), times, start, dict(d["options"]), bool(d.get("clean_end", True)),
                   None if net is None else tuple(float(t) for t in net), d.get("grid"), None,
                   {"times": "stored plan"}, tuple(k for k in d.get("tuned_options", ()) if k in d["options"]))

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record of the resolved plan (manifests, eval/bench JSON, reports)."""
        out: dict[str, Any] = {"solver": self.solver, "nfe": self.nfe, "grid": self.grid,
                               "start": self.start.describe(), "times": [_num(t) for t in self.times.tolist()],
                               "clean_end": self.clean_end}
        if self.net_times is not None:
            out["net_times"] = [_num(t) for t in self.net_times]
        tuned = {k: self.options[k] for k in self.tuned_options}
        if tuned:
            out["tuned_options"] = _jsonable(tuned)
        if self.entry is not None:
            out["entry"] = self.entry
        out["sources"] = dict(self.sources)
        return out


def _num(v: float) -> float | None:
    return None if math.isnan(v) else round(float(v), 6)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Tensor):
        return _jsonable(v.tolist())
    return v if isinstance(v, (str, int, float, bool)) or v is None else repr(v)


def start_time(process: Any) -> float:
    """The time a solve starts at by default: the process's well-conditioned start (``t_start`` where the process
    declares one, e.g. a capped cosine schedule's), else ``t_max``."""
    return float(process.t_start)


def _check_teleport(process: Any, teleport: Any) -> float:
    if isinstance(teleport, bool) or not isinstance(teleport, (int, float)):
        raise TypeError(f"teleport must be a time (a number in the process's time units), got {teleport!r}")
    t = float(teleport)
    if not process.t_min < t <= process.t_max:
        raise ValueError(f"teleport={t:g} is outside the process's times ({process.t_min:g}, {process.t_max:g}]; pass "
                         f"the time the solve should start at, e.g. {0.7 * process.t_start + 0.3 * process.t_min:g}")
    return t


def make_plan(denoiser: Any, solver: str = solvers.DEFAULT_SOLVER, nfe: int = 10, grid: GridSpec | None = None, *,
              teleport: float | None = None, gaussian: Any = None, borrow: str | None = None,
              t_start: float | None = None, clean_end: bool = True, grid_options: dict[str, float] | None = None,
              **options: Any) -> SamplingPlan:
    """Resolve a :class:`SamplingPlan` for ``denoiser`` (its process) once, every argument checked.

    ``grid``: a name from ``fewstep.grids.GRIDS``, an explicit decreasing list of times, a plan (grid) file,
    ``"tuned"`` (the model's own plan file, attached by ``load_model``) or ``bundled:<model>`` (its entry for exactly this solver and NFE: times, start, network times, tuned options), or
    ``None`` for the process's ``default_grid``.  ``borrow``: with a plan file, use that solver's entry's *times*
    for this solver (its network times and options stay with it; its teleported start only when ``teleport`` asks
    for the same time).  ``teleport``: start at that time, reached from ``t_max`` by the data Gaussian's exact flow
    (``gaussian``: a saved Gaussian; default the model's).  ``t_start``: start a named grid there instead of the
    process's default start (a warning when above the well-conditioned start).  ``options``: the solver's own,
    checked (unknown ones, and ones the NFE plan sets, are refused); explicit ones win over an entry's.
    """
    process = denoiser.process
    spec = solvers.get(solver)
    spec.check_options(options)
    if spec.stochastic and not getattr(process, "gaussian_kernel", True):
        raise ValueError(f"{spec.name} injects Gaussian noise, but {process!r} perturbs with a non-Gaussian kernel "
                         f"(PFGM++): sample it with a deterministic solver (the ODE, Xu et al. 2023, sec. 4)")
    tuned_file = None
    by_model = grid is None and borrow is None and teleport is None and t_start is None and not grid_options \
        and _model_plans_cover(denoiser, spec.name, nfe)
    if by_model:
        grid = TUNED
    if isinstance(grid, str) and grid == TUNED:
        from .attachments import attached

        tuned_file = attached(denoiser, "plan_file")
        if tuned_file is None:
            raise ValueError("grid='tuned' (--plan tuned) uses the plans tuned for this model, and it has none: write "
                             "them with `fewstep tune --model M --data D --out <checkpoint>/plans.json`, or pass a plan "
                             "file")
        grid = str(tuned_file)
    steps, planned = spec.steps_for(nfe, clean_end)
    sources: dict[str, str] = {}
    grid_options = dict(grid_options or {})
    if teleport is not None:
        teleport = _check_teleport(process, teleport)
    entry: GridEntry | None = None
    if _is_file(grid):
        entry = grid_entry(grid, process, spec.name, nfe, steps, borrow=borrow)
        where = f"{grid} entry {entry.solver} nfe={entry.nfe}"
        if entry.teleport is not None and entry.solver != spec.name and teleport != entry.teleport:
            raise ValueError(f"{where} starts at a teleported time (t={entry.teleport:g}); borrowing its times for "
                             f"{spec.name} does not carry the teleport: pass teleport={entry.teleport:g} "
                             f"(--teleport {entry.teleport:g}) to run them with it")
        if teleport is not None and teleport != entry.times[0]:
            raise ValueError(f"teleport={teleport:g} but {where} starts at t={entry.times[0]:g}")
        times = torch.tensor(entry.times, dtype=torch.float64)
        sources["times"] = where
        if entry.teleport is not None:
            teleport = entry.teleport
            sources.setdefault("start", where)
    elif borrow is not None:
        raise ValueError("borrow= names a solver whose entry of a plan file gives the times; pass grid=PLAN_FILE too")
    else:
        if teleport is not None:
            grid_options.setdefault("t_max", teleport)
        elif t_start is not None or "t_max" not in grid_options:
            hi = start_time(process) if t_start is None else float(t_start)
            process.check_time(hi)
            _warn_start(process, hi)
            grid_options.setdefault("t_max", hi)
        times = make_grid(process, steps, grid, **grid_options)
        sources["times"] = f"grid {grid if isinstance(grid, str) else 'explicit' if grid is not None else process.default_grid!r}"
    if not isinstance(grid, str) and grid is not None and not _is_file(grid) and steps != len(times) - 1:
        raise ValueError(f"the explicit grid has {len(times) - 1} steps but {spec.name} needs {steps} for nfe={nfe}; "
                         f"pass {steps + 1} times")
    t0 = float(times[0])
    if entry is not None:  # a file tuned under another start rule may start above this process's trusted start
        if check_start(process, t0, "start"):
            warnings.warn(f"{where} starts at t={t0:g}, above the well-conditioned start t={process.t_start:g} "
                          f"(fewstep info shows why; it was tuned under another start rule): the model's data "
                          f"prediction cannot be trusted there; re-tune the plan (fewstep tune) to start below it",
                          stacklevel=3)
    elif teleport is not None:
        _warn_start(process, t0, "teleport")
    if teleport is not None:
        if abs(t0 - teleport) > 1e-6 * max(1.0, abs(teleport)):
            raise ValueError(f"teleport={teleport:g} but the grid starts at t={t0:g}; an explicit grid used with "
                             f"teleport must start at the teleport time")
        if not getattr(process, "gaussian_kernel", True):
            raise ValueError(f"teleport starts by the data Gaussian's exact flow under a Gaussian kernel, but "
                             f"{process!r} perturbs with a non-Gaussian one (PFGM++); start at the prior instead")
        start = Start(t0, "gaussian", gaussian, sources.get("start", "teleport argument"))
    else:
        if gaussian is not None:
            raise ValueError("gaussian= is the data Gaussian of a teleported start; pass teleport=T too")
        start = Start(t0, "prior", None, "process start" if t0 == start_time(process) else sources["times"])
    net_times, tuned = None, {}
    if entry is not None and entry.solver == spec.name:
        if entry.net_times is not None:
            net_times = tuple(entry.net_times)
            sources["net_times"] = sources["times"]
        tuned = {k: v for k, v in (entry.options or {}).items() if k != "teleport"}
        if tuned:
            spec.check_options(tuned)
            sources["options"] = sources["times"]
    kwargs = {**planned, **tuned, **options}
    desc_grid = str(grid) if isinstance(grid, (str, os.PathLike)) else ("explicit" if grid is not None
                                                                          else process.default_grid)
    if tuned_file is not None:
        desc_grid = f"tuned ({tuned_file})"
    if by_model:
        sources["default"] = "the model's config: sampling.grid = 'tuned' (its own plans are its default)"
    entry_desc = None if entry is None else {"solver": entry.solver, "nfe": entry.nfe, "method": entry.method,
                                             "borrowed": entry.solver != spec.name}
    _warn_outside_trained_nfe(denoiser, nfe)
    return SamplingPlan(spec.name, int(nfe), times, start, kwargs, clean_end, net_times, desc_grid, entry_desc, sources,
                        tuned_options=tuple(sorted(tuned)))


def _model_plans_cover(denoiser: Any, solver: str, nfe: int) -> bool:
    """Whether the model declares its attached plans its default (``config["sampling"]["grid"] == "tuned"``, e.g. a
    few-step generator whose 2-NFE intermediate time was chosen for it) and they hold an entry for this solver and
    NFE; other solvers and NFEs keep the process's default grid."""
    from .attachments import attached

    config = _model_config(denoiser)
    if not config or (config.get("sampling") or {}).get("grid") != TUNED:
        return False
    path = attached(denoiser, "plan_file")
    return path is not None and any((e.solver, e.nfe) == (solver, int(nfe)) for e in read_grid_file(path).entries)


def _model_config(denoiser: Any) -> dict[str, Any] | None:
    """The config of the model behind ``denoiser``'s wrappers (``None`` for one built in code)."""
    return next((c for d in wrapper_chain(denoiser) if isinstance(c := getattr(d, "config", None), dict)), None)


def _warn_outside_trained_nfe(denoiser: Any, nfe: int) -> None:
    """A few-step generator may declare the NFEs it is meant for (``config["sampling"]["nfe"]``, e.g. ``[1, 2]``): at
    any other NFE it is no accurate ODE model, and sampling it there warns instead of silently giving poor images."""
    trained = ((_model_config(denoiser) or {}).get("sampling") or {}).get("nfe")
    if isinstance(trained, list) and trained and int(nfe) not in trained:
        warnings.warn(f"this model is meant to be sampled at NFE {', '.join(str(k) for k in trained)} (its config's "
                      f"sampling.nfe); at nfe={nfe} expect poor samples: a few-step generator is not an accurate ODE "
                      f"model. Use one of those NFEs, or a model meant for more steps", stacklevel=3)


def _warn_start(process: Any, t: float, setting: str = "t_start") -> None:
    message = check_start(process, t, setting)
    if message:
        warnings.warn(message, stacklevel=4)


def _is_file(grid: GridSpec | None) -> bool:
    return isinstance(grid, (str, os.PathLike)) and str(grid) not in GRIDS and is_grid_file(grid)
