"""Any fewstep solver as a diffusers scheduler, so a diffusers pipeline runs it unchanged.

A diffusers pipeline owns the loop: it asks the scheduler for ``timesteps``, calls the network at
each and hands the output to ``scheduler.step``.  A fewstep solver is the opposite, one stateless
function that owns its loop and calls the denoiser when it needs it.  :class:`FewstepScheduler`
joins the two without rewriting any solver:

* ``set_timesteps(nfe)`` plans the solve (the same NFE plan as ``fewstep.sample``) and finds the
  times of *every* network evaluation, intermediate stages included, by a dry run of the solver
  with a free denoiser; those are the pipeline's ``timesteps`` (one per evaluation, so a pipeline
  with ``num_inference_steps = N`` spends exactly N evaluations whatever the solver's order).
* a tuned plan (:class:`~fewstep.plan.SamplingPlan`, e.g. an entry of ``fewstep tune``'s plan file) is run
  as it is: ``FewstepScheduler.from_plan(plan, pipe.scheduler.config)``; its times, TimeTuner network times
  (the pipeline's ``timesteps`` are then the tuned network times), solver options and start are kept in the
  scheduler config, so ``save_pretrained`` / ``from_pretrained`` keep the plan (and its data Gaussian, saved
  beside the config as ``data_gaussian.safetensors``).  A teleported start is applied in ``scale_model_input``
  at the first timestep, so it works in pipelines that call it (``StableDiffusionPipeline`` does); a pipeline
  that does not (``DDPMPipeline``) is refused at its first ``step`` with a clear error.
* the first ``step`` starts the solver in a worker thread on the pipeline's sample; whenever the
  solver evaluates the denoiser, the worker hands the point ``x`` back as ``prev_sample`` (the
  pipeline's next network input) and waits for the pipeline's next ``model_output``, which the
  prediction type's :class:`~fewstep.parametrization.Parametrization` turns into ``x0`` and ``eps``.
  The last ``step`` returns the solver's result.

Supported: DDPM-family processes (``beta_schedule`` linear, scaled_linear, squaredcos_cap_v2, sigmoid or
trained betas, any ``num_train_timesteps``, ``rescale_betas_zero_snr``) with ``prediction_type`` epsilon,
v_prediction or sample, networks with a learned variance (``variance_type`` learned / learned_range), and every
fixed-NFE solver (``dpm_adaptive`` chooses its times from the data and cannot be planned).  The config is read by
:func:`fewstep.diffusers_config.read_scheduler_config`, as ``load_model`` reads a folder's: keys fewstep cannot
honour are refused by name, also through ``from_config`` (which would otherwise drop unknown keys silently),
and ``config_report`` records what became of each.  Needs the optional extra: ``pip install 'fewstep[diffusers]'``.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import torch
from torch import Tensor

try:
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
except ImportError as err:  # pragma: no cover - the optional extra is missing
    raise ImportError("fewstep.diffusers_scheduler needs diffusers: pip install 'fewstep[diffusers]'") from err

import os
from pathlib import Path

from . import solvers
from .denoisers import DenoiserBase
from .diffusers_config import CLIPPING_MODES, VP_SCHEDULERS, read_scheduler_config
from .parametrization import Prediction, parametrization, split_variance
from .plan import SamplingPlan, make_plan

__all__ = ["FewstepScheduler"]

GAUSSIAN_FILE = "data_gaussian.safetensors"


class _Cancelled(Exception):
    """The pipeline abandoned the solve (a new ``set_timesteps``); the worker stops."""


class _TimeRecorder(DenoiserBase):
    """A free denoiser that records the time of each evaluation (the dry run that plans ``timesteps``)."""

    def __init__(self, process, gaussian: Any = None):
        self.process = process
        self.data_gaussian = gaussian
        self.times: list[float] = []

    def predict(self, x: Tensor, t: float | Tensor, *, ctx=None, **cond: Any) -> Prediction:
        self.times.append(float(t))
        return Prediction(torch.zeros_like(x), torch.zeros_like(x))


class _PipelineDenoiser(DenoiserBase):
    """The denoiser the solver sees in the worker: each evaluation is answered by the pipeline."""

    def __init__(self, process, prediction: str, requests: queue.Queue, answers: queue.Queue,
                 variance: str | None = None, gaussian: Any = None):
        self.process = process
        self.data_gaussian = gaussian
        self.param = parametrization(prediction, process)
        self.variance = variance
        self.requests, self.answers = requests, answers

    def predict(self, x: Tensor, t: float | Tensor, *, ctx=None, **cond: Any) -> Prediction:
        self.requests.put(("evaluate", x))
        out = self.answers.get()
        if out is None:
            raise _Cancelled
        mean, var = split_variance(out.to(x.dtype), x, self.variance)
        p = self.param.prediction(x, t, mean)
        p.variance = var
        return p


class FewstepScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler running ``solver`` (any fixed-NFE fewstep solver) on ``grid``.

    ``num_inference_steps`` is the number of network evaluations (NFE).  ``solver_options`` are
    the solver's options, checked like ``fewstep.sample``'s.  Build it from a pipeline's scheduler
    with ``FewstepScheduler.from_config(pipe.scheduler.config, solver="unipc")``, or run a tuned plan with
    :meth:`from_plan` (``plan`` in the config is then the stored plan and ``num_inference_steps`` must be its NFE).


    The DDPM-family keys are diffusers' and mean the same (``rescale_betas_zero_snr`` with an epsilon model is
    refused: its data prediction is undefined at SNR 0).  ``clip_sample`` / ``thresholding`` (and their ranges)
    are kept but applied only with ``clipping="config"``: fewstep solves the model's own ODE by default
    (docs/diffusers.md).  Sampling starts at the process's ``t_start`` (below ``t_max`` where the schedule's end is
    singular for the model).  ``timestep_spacing``, ``steps_offset`` and ``lambda_min_clipped`` are accepted and
    ignored: ``grid`` spaces the evaluations from ``t_start``, with no leading offset.
    """

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: list[float] | None = None,
                 prediction_type: str = "epsilon", solver: str = solvers.DEFAULT_SOLVER, grid: str | list[float] | None = None,
                 solver_options: dict[str, Any] | None = None, rescale_betas_zero_snr: bool = False,
                 variance_type: str | None = None, clip_sample: bool = False, clip_sample_range: float = 1.0,
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
                 lambda_min_clipped: float = -float("inf"), timestep_spacing: str = "trailing", steps_offset: int = 0,
                 clipping: str = "off", plan: dict[str, Any] | None = None):
        self.schedule = read_scheduler_config(dict(self.config), source="FewstepScheduler config")
        self.config_report = self.schedule.report()
        if clipping not in CLIPPING_MODES:
            raise ValueError(f"clipping={clipping!r}; valid: {', '.join(CLIPPING_MODES)}")
        self.process, self.prediction = self.schedule.process, self.schedule.prediction
        self.spec = solvers.get(solver)
        self.gaussian: Any = None  # the data Gaussian of a teleported plan (from_plan / from_pretrained)
        self._stored_plan = None
        if plan is not None:
            self._stored_plan = SamplingPlan.from_dict(plan)
            if self._stored_plan.solver != self.spec.name:
                raise ValueError(f"the stored plan is for {self._stored_plan.solver}, the scheduler's solver is {solver}")
            if solver_options or grid is not None:
                raise ValueError("a scheduler with a stored plan takes its grid and solver options from the plan; "
                                 "drop grid= and solver_options=")
        if not self.spec.fixed_nfe:
            raise ValueError(f"solver {solver!r} chooses its steps from the data; a diffusers pipeline needs them "
                             f"planned in advance: use a fixed-NFE solver")
        self.spec.check_options(dict(solver_options or {}))
        self.init_noise_sigma = self.process.prior_std
        self.timesteps = torch.empty(0)
        self.num_inference_steps: int | None = None
        self._schedule = None
        self._worker: threading.Thread | None = None
        self._requests: queue.Queue = queue.Queue()
        self._answers: queue.Queue = queue.Queue()

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        """diffusers' ``from_config``, after checking *every* key of ``config`` (diffusers drops the keys ``__init__``
        does not take): a key fewstep cannot honour is refused by name instead of being lost."""
        full = {**dict(config or {}), **kwargs}
        name = full.get("_class_name")
        if (name is not None and name not in VP_SCHEDULERS) or read_scheduler_config(full).prediction == "edm":
            raise ValueError(f"FewstepScheduler runs DDPM-family processes; {name or 'this EDM-style scheduler'} is not "
                             f"one (supported: {', '.join(sorted(VP_SCHEDULERS - {'FewstepScheduler'}))})")
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def from_plan(cls, plan: SamplingPlan, config: Any = None, gaussian: Any = None, **kwargs: Any) -> "FewstepScheduler":
        """A scheduler that runs ``plan`` (from :func:`fewstep.make_plan`, e.g. a tuned plan file's entry) inside a
        pipeline; ``config`` a diffusers scheduler config for the process (default: these defaults).  ``gaussian``:
        the data Gaussian of a teleported start (default: the one the plan names)."""
        plan.require("a diffusers scheduler", teleport=True, fixed_nfe=True)
        base = {k: v for k, v in dict(config or {}).items() if not k.startswith("_")}
        for key in ("solver", "grid", "solver_options", "plan"):
            base.pop(key, None)
        sched = cls.from_config({**base, **kwargs, "solver": plan.solver, "plan": plan.to_dict()})
        sched.gaussian = gaussian if gaussian is not None else plan.start.gaussian
        if plan.start.teleported and sched.gaussian is None:
            raise ValueError("the plan starts at a teleported time: pass the model's data Gaussian "
                             "(gaussian=denoiser.data_gaussian, or a gaussian.safetensors path)")
        if isinstance(sched.gaussian, (str, os.PathLike)):
            from .teleport import load_gaussian

            sched.gaussian = load_gaussian(sched.gaussian)
        return sched

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained``; a teleported plan's data Gaussian is saved beside the config."""
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        if self.gaussian is not None:
            from .teleport import save_gaussian

            save_gaussian(self.gaussian, Path(save_directory) / GAUSSIAN_FILE)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any = None, subfolder: str | None = None,
                        return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        """diffusers' ``from_pretrained`` (local folders); a saved plan's data Gaussian is loaded back."""
        out = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder,
                                      return_unused_kwargs=return_unused_kwargs, **kwargs)
        sched = out[0] if isinstance(out, tuple) else out
        path = Path(str(pretrained_model_name_or_path)) / (subfolder or "") / GAUSSIAN_FILE
        if path.exists():
            from .teleport import load_gaussian

            sched.gaussian = load_gaussian(path)
        return out

    @property
    def plan(self) -> SamplingPlan | None:
        """The plan of the current solve (after ``set_timesteps``), or the stored one."""
        return getattr(self, "_plan", None) or self._stored_plan

    # -- what a pipeline calls ---------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Plan a solve of ``num_inference_steps`` network evaluations; ``timesteps`` are their model times."""
        self._stop_worker()
        recorder = _TimeRecorder(self.process, self.gaussian)
        nfe = int(num_inference_steps)
        if self._stored_plan is not None:
            if nfe != self._stored_plan.nfe:
                raise ValueError(f"this scheduler runs a tuned plan of {self._stored_plan.nfe} evaluations; call the "
                                 f"pipeline with num_inference_steps={self._stored_plan.nfe} (got {nfe})")
            plan = self._stored_plan
        else:
            plan = make_plan(recorder, self.spec.name, nfe, self.config.grid, **(self.config.solver_options or {}))
        plan.require("a diffusers scheduler", teleport=True, fixed_nfe=True)
        if plan.start.teleported and self.gaussian is None and plan.start.gaussian is None:
            raise ValueError(f"the plan starts at a teleported time (t={plan.start.t:g}); give the scheduler the "
                             f"model's data Gaussian (FewstepScheduler.from_plan(plan, config, gaussian=...))")
        self._plan = plan
        self._schedule = plan.schedule(self.process)
        with torch.no_grad():
            plan.spec.fn(plan.bind(recorder), torch.zeros(1, 1, dtype=torch.float64), self._schedule,
                         generator=torch.Generator().manual_seed(0), **plan.options)
        times = torch.tensor(recorder.times, dtype=torch.float64)
        self.timesteps = self.process.model_time(times).to(device=device or "cpu", dtype=torch.float32)
        self.num_inference_steps = len(recorder.times)
        self._step_index = 0
        self._teleported_input = False

    def scale_model_input(self, sample: Tensor, timestep: Any = None) -> Tensor:
        """The network sees ``x_t`` itself (DDPM-family processes); before the first evaluation of a teleported plan,
        the prior draw carried to the plan's start by the data Gaussian's exact flow."""
        if self._schedule is not None and self._worker is None and self._plan.start.teleported:
            self._teleported_input = True
            return self._start_state(sample)
        return sample

    def _start_state(self, sample: Tensor) -> Tensor:
        holder = _TimeRecorder(self.process, self.gaussian)
        return self._plan.start_state(holder, sample)

    def step(self, model_output: Tensor, timestep: Any, sample: Tensor, generator: torch.Generator | None = None,
             return_dict: bool = True, **_: Any) -> SchedulerOutput | tuple[Tensor]:
        """Feed the network's output at the current evaluation; ``prev_sample`` is the next point to evaluate
        (or, after the last evaluation, the solver's result)."""
        if self._schedule is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if self._step_index >= self.num_inference_steps:
            raise ValueError(f"step() called {self._step_index + 1} times for {self.num_inference_steps} planned "
                             "evaluations; call set_timesteps again to start a new solve")
        if self._worker is None:
            if self._plan.start.teleported:
                if not self._teleported_input:
                    raise ValueError(f"this plan starts at a teleported time (t={self._plan.start.t:g}) and the pipeline "
                                     f"did not call scheduler.scale_model_input before its first network call, so its "
                                     f"first evaluation would be at the untransformed noise: use a plan without "
                                     f"teleport in this pipeline (e.g. DDPMPipeline), or a pipeline that calls it")
                sample = self._start_state(sample)
            self._start_worker(sample, generator)
            self._expect_request()
        self._answers.put(model_output)
        self._step_index += 1
        kind, value = self._requests.get()
        if kind == "error":
            self._worker = None
            raise value
        if kind == "done" and self._step_index != self.num_inference_steps:
            raise RuntimeError(f"the solver finished after {self._step_index} of {self.num_inference_steps} "
                               "planned evaluations")
        if kind == "done":
            self._worker = None
        prev = value.to(sample.dtype)
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``x_t = alpha(t) x0 + sigma(t) eps`` at the diffusers timesteps (for img2img-style pipelines)."""
        t = timesteps.to(torch.float64).reshape(-1).expand(original_samples.shape[0])
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        a = self.process.alpha(t).reshape(shape).to(original_samples)
        s = self.process.sigma(t).reshape(shape).to(original_samples)
        return a * original_samples + s * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # -- the worker ----------------------------------------------------------------------------------------------
    def _start_worker(self, x_T: Tensor, generator: torch.Generator | None) -> None:
        requests, answers = queue.Queue(), queue.Queue()
        self._requests, self._answers = requests, answers
        den = self._plan.bind(self.schedule.clipped(_PipelineDenoiser(self.process, self.prediction, requests,
                                                                      answers, self.schedule.variance),
                                                    self.config.clipping))
        spec, schedule, planned = self._plan.spec, self._schedule, self._plan.options

        def run() -> None:
            try:
                with torch.no_grad():
                    x = spec.fn(den, x_T, schedule, generator=generator, **planned)
                requests.put(("done", x))
            except _Cancelled:
                pass
            except Exception as err:  # handed to the pipeline's thread, raised from step()
                requests.put(("error", err))

        self._worker = threading.Thread(target=run, name="fewstep-solver", daemon=True)
        self._worker.start()

    def _expect_request(self) -> None:
        """The solver's first evaluation is at the pipeline's starting sample."""
        kind, value = self._requests.get()
        if kind == "error":
            self._worker = None
            raise value
        if kind != "evaluate":
            raise RuntimeError("the solver finished without evaluating the network")

    def _stop_worker(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            self._answers.put(None)
            self._worker.join(timeout=5)
        self._worker = None
