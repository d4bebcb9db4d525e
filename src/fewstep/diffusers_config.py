"""What a diffusers ``scheduler_config.json`` means to fewstep, key by key.

:func:`read_scheduler_config` turns a DDPM-family or EDM-style scheduler config into the noise process, the
prediction type, the learned-variance type and the data-prediction clipping it describes, and records what
became of every key (:class:`KeyUse`):

* **honoured** - the key defines the process or the network's output, and fewstep follows it exactly
  (betas, ``num_train_timesteps``, ``prediction_type``, ``rescale_betas_zero_snr``, ``variance_type``, EDM's
  ``sigma_min`` / ``sigma_max`` / ``sigma_data``);
* **mapped** - fewstep offers it in another form: the clipping keys (``clip_sample``, ``thresholding``, ...)
  become an option that is off by default (``clipping="config"`` applies them);
* **ignored** - the key chooses diffusers' own sampling algorithm (``timestep_spacing``, ``steps_offset``,
  ``solver_order``, ``use_karras_sigmas``, ``lambda_min_clipped``, ...), which fewstep's solver, grid and
  ``t_start`` (:func:`fewstep.processes.well_conditioned_start`) replace.

Anything else - another kind of scheduler, a beta schedule or prediction type fewstep does not have, a key that
would change the process (flow sigmas, dynamic shifting), an eps-prediction model at zero terminal SNR, or a key
fewstep does not know set to a value that is not off - is refused with one line naming the key and what is
supported: nothing loads as a different process silently.  ``load_model`` and ``FewstepScheduler`` both read
configs here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .processes import EDM, NoiseProcess, VPDiscrete, well_conditioned_start
from .denoisers import ClipDataPrediction, DynamicThresholding

__all__ = ["KeyUse", "DiffusersSchedule", "read_scheduler_config", "UNetSpec", "read_unet_config", "UNET_CLASSES",
           "VP_SCHEDULERS", "EDM_SCHEDULERS", "PREDICTIONS", "CLIPPING_MODES"]

HONOURED, MAPPED, IGNORED = "honoured", "mapped", "ignored"

#: diffusers schedulers over DDPM betas: they differ only in their sampling algorithm, which fewstep replaces.
VP_SCHEDULERS = frozenset({
    "DDPMScheduler", "DDIMScheduler", "DDIMInverseScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverMultistepInverseScheduler", "DPMSolverSinglestepScheduler", "DEISMultistepScheduler",
    "UniPCMultistepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler", "DPMSolverSDEScheduler",
    "SASolverScheduler", "DDIMParallelScheduler", "DDPMParallelScheduler", "FewstepScheduler"})
#: EDM-style schedulers (Karras et al. 2022): alpha = 1, sigma = t, EDM preconditioning of the network.
EDM_SCHEDULERS = frozenset({"EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"})

#: diffusers prediction_type -> fewstep prediction type (DDPM family).
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
#: ``clipping`` option: "off" (fewstep's default: solve the model's own ODE) or "config" (apply the config's).
CLIPPING_MODES = ("off", "config")

# Keys that only choose diffusers' sampling algorithm; fewstep's solver, grid and t_start replace them.
_SAMPLING_KEYS = frozenset({
    "set_alpha_to_one", "skip_prk_steps", "solver_order", "algorithm_type", "solver_type", "lower_order_final",
    "euler_at_final", "final_sigmas_type", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
    "use_lu_lambdas", "interpolation_type", "predict_x0", "solver_p", "disable_corrector", "predictor_order",
    "corrector_order", "tau_func", "sigma_schedule", "rho", "s_noise", "sigma_min", "sigma_max"})
_SPACING_KEYS = frozenset({"timestep_spacing", "steps_offset"})
_CLIP_KEYS = ("clip_sample", "clip_sample_range", "thresholding", "dynamic_thresholding_ratio", "sample_max_value")
# Keys that would make the process a flow-matching one: refused unless off.
_FLOW_KEYS = {"use_flow_sigmas": False, "use_dynamic_shifting": False, "shift_terminal": None}
_FLOW_FOLLOWERS = frozenset({"flow_shift", "time_shift_type", "shift", "base_shift", "max_shift",
                             "base_image_seq_len", "max_image_seq_len"})
# FewstepScheduler's own keys (not diffusers').
_FEWSTEP_KEYS = frozenset({"solver", "grid", "solver_options", "clipping", "plan"})
_META = frozenset({"_class_name", "_diffusers_version", "_use_default_values", "_name_or_path"})

_SPACING_NOTE = ("diffusers' spacing of its own steps; fewstep's grids start at the process's t_start and are "
                 "spaced by the grid argument (--grid), with no leading offset")


@dataclass(frozen=True)
class KeyUse:
    """What became of one config key: ``use`` is "honoured", "mapped" or "ignored"; ``note`` says how."""

    key: str
    value: Any
    use: str
    note: str

    def line(self) -> str:
        value = self.value if not isinstance(self.value, list) else f"[{len(self.value)} values]"
        return f"{self.key}={value!r}: {self.use} - {self.note}"


@dataclass
class DiffusersSchedule:
    """A scheduler config read by :func:`read_scheduler_config`.

    ``process`` (its ``t_start`` set for ``prediction``), ``prediction`` (a fewstep prediction type),
    ``sigma_data`` (EDM), ``variance`` (``"learned"``, ``"learned_range"`` or ``None``), ``clipping`` (the
    config's data-prediction clipping as ``("clip", limit)`` or ``("threshold", ratio, max_value)``, applied only
    on request: :meth:`clipped`), ``scheduler`` (its ``_class_name``) and ``keys`` (what became of each key).
    """

    process: NoiseProcess
    prediction: str
    sigma_data: float = 0.5
    variance: str | None = None
    clipping: tuple | None = None
    scheduler: str | None = None
    keys: list[KeyUse] = field(default_factory=list)

    def uses(self, use: str) -> list[KeyUse]:
        return [k for k in self.keys if k.use == use]

    def clipped(self, denoiser: Any, mode: str = "off") -> Any:
        """``denoiser`` behind the config's clipping when ``mode == "config"`` (unchanged for "off" or none)."""
        if mode not in CLIPPING_MODES:
            raise ValueError(f"clipping={mode!r}; valid: {', '.join(CLIPPING_MODES)}")
        if mode == "off" or self.clipping is None:
            return denoiser
        if self.clipping[0] == "threshold":
            return DynamicThresholding(denoiser, ratio=self.clipping[1], max_value=self.clipping[2])
        return ClipDataPrediction(denoiser, self.clipping[1])

    def report(self) -> dict[str, Any]:
        """A JSON-serialisable record of the keys: ``{"scheduler": class, "honoured" | "mapped" | "ignored":
        {key: note}}`` (``load_model`` keeps it in ``denoiser.config["scheduler"]``; ``fewstep info`` shows it)."""
        return {"scheduler": self.scheduler, "clipping": list(self.clipping) if self.clipping else None,
                **{use: {k.key: k.note for k in self.uses(use)} for use in (HONOURED, MAPPED, IGNORED)}}


def _refuse(source: str, key: str, value: Any, supported: str) -> ValueError:
    return ValueError(f"{source}: {key}={value!r} is not supported; {supported}")


def read_scheduler_config(cfg: Mapping[str, Any], *, source: str = "scheduler_config.json") -> DiffusersSchedule:
    """Read a diffusers scheduler config (see the module docstring); raises ``ValueError`` naming the first key
    fewstep cannot honour."""
    cfg = dict(cfg)
    cls = cfg.get("_class_name")
    if cls is not None and cls not in VP_SCHEDULERS and cls not in EDM_SCHEDULERS:
        raise ValueError(f"{source}: _class_name={cls!r} is not a scheduler fewstep can load; supported: the "
                         f"DDPM-family schedulers over betas ({', '.join(sorted(VP_SCHEDULERS - {'FewstepScheduler'}))}) "
                         f"and the EDM-style ones ({', '.join(sorted(EDM_SCHEDULERS))})")
    for key, off in _FLOW_KEYS.items():
        if cfg.get(key, off) not in (off, False, None):
            raise _refuse(source, key, cfg[key], "fewstep loads DDPM-family and EDM processes from diffusers "
                                                 "folders, not flow-matching sigmas")
    keys: list[KeyUse] = []
    used: set[str] = set()

    def note(key: str, use: str, text: str) -> None:
        if key in cfg and key not in used:
            keys.append(KeyUse(key, cfg[key], use, text))
            used.add(key)

    # an in-memory diffusers config (scheduler.config) has no _class_name: EDM-style ones have sigma_data, no betas
    edm = cls in EDM_SCHEDULERS or (cls is None and "sigma_data" in cfg and "beta_schedule" not in cfg)
    if edm:
        result = _read_edm(cfg, source, note)
    else:
        result = _read_vp(cfg, source, note)
    result.scheduler = cls
    _read_clipping(cfg, result, note)
    for key in sorted(set(cfg) - used - _META):
        value = cfg[key]
        if key in _SPACING_KEYS:
            note(key, IGNORED, _SPACING_NOTE)
        elif key in _SAMPLING_KEYS:
            note(key, IGNORED, "diffusers' sampling algorithm; fewstep's solver and grid choose this")
        elif key in _FLOW_FOLLOWERS or key in _FLOW_KEYS:
            note(key, IGNORED, "a flow-matching setting, off here")
        elif key in _FEWSTEP_KEYS:
            note(key, HONOURED, "FewstepScheduler's own setting")
        elif value in (None, False):
            note(key, IGNORED, "unknown to fewstep, at its off value")
        else:
            raise _refuse(source, key, value, "fewstep does not know this key (this diffusers version may be newer "
                                              "than fewstep's); remove it or set it to its off value")
    result.keys = keys
    return result


def _read_vp(cfg: dict[str, Any], source: str, note: Any) -> DiffusersSchedule:
    n = int(cfg.get("num_train_timesteps", 1000))
    kind = cfg.get("beta_schedule", "linear")
    zero_snr = bool(cfg.get("rescale_betas_zero_snr", False))
    betas = cfg.get("trained_betas")
    if betas is not None:
        if len(betas) != n and "num_train_timesteps" in cfg:
            raise _refuse(source, "trained_betas", f"[{len(betas)} values]",
                          f"it needs num_train_timesteps={n} values (one beta per training step)")
        proc: NoiseProcess = VPDiscrete(betas, zero_terminal_snr=zero_snr)
        note("trained_betas", HONOURED, f"the process's {len(betas)} betas")
        for key in ("beta_schedule", "beta_start", "beta_end"):
            note(key, IGNORED, "trained_betas take precedence, as in diffusers")
    elif kind not in _BETA_SCHEDULES:
        raise _refuse(source, "beta_schedule", kind, f"valid: {', '.join(_BETA_SCHEDULES)}, or trained_betas")
    else:
        note("trained_betas", HONOURED, "none given: betas from beta_schedule")
        if kind == "squaredcos_cap_v2":
            proc = VPDiscrete.cosine(n, zero_terminal_snr=zero_snr)
            for key in ("beta_start", "beta_end"):
                note(key, IGNORED, "unused by squaredcos_cap_v2, as in diffusers")
        else:
            defaults = {"scaled_linear": (0.00085, 0.012)}.get(kind, (1e-4, 0.02))
            start, end = float(cfg.get("beta_start", defaults[0])), float(cfg.get("beta_end", defaults[1]))
            factory = {"linear": VPDiscrete.linear, "scaled_linear": VPDiscrete.scaled_linear,
                       "sigmoid": VPDiscrete.sigmoid}[kind]
            proc = factory(n, start, end, zero_terminal_snr=zero_snr)
            note("beta_start", HONOURED, f"{kind} betas from {start:g}")
            note("beta_end", HONOURED, f"{kind} betas to {end:g}")
        note("beta_schedule", HONOURED, {"squaredcos_cap_v2": "improved-DDPM cosine betas, capped at 0.999",
                                         "sigmoid": "GeoDiff sigmoid betas"}.get(kind, f"{kind} betas"))
    note("num_train_timesteps", HONOURED, f"training steps 0..{n - 1} are the process's times")
    pred_name = cfg.get("prediction_type", "epsilon")
    pred = PREDICTIONS.get(pred_name)
    if pred is None:
        raise _refuse(source, "prediction_type", pred_name, f"valid: {', '.join(PREDICTIONS)}")
    note("prediction_type", HONOURED, f"fewstep prediction {pred!r}")
    if getattr(proc, "zero_terminal_snr", False):
        if pred == "eps":
            what = "rescale_betas_zero_snr" if zero_snr else "trained_betas"
            raise _refuse(source, what, cfg.get(what) if zero_snr else "[last beta = 1]",
                          "at zero terminal SNR the data prediction of an epsilon model is undefined at t_max "
                          "(alpha = 0); Lin et al. 2024 pair it with prediction_type 'v_prediction' (or use 'sample')")
        note("rescale_betas_zero_snr", HONOURED, f"alpha({n - 1}) = 0 exactly (Lin et al. 2024)")
    else:
        note("rescale_betas_zero_snr", HONOURED, "off")
    variance = cfg.get("variance_type")
    if variance in ("learned", "learned_range"):
        note("variance_type", HONOURED, "the network returns 2C channels: solvers use the first C, DDPM ancestral "
                                        "sampling draws with the learned variance")
    elif variance in (None, "fixed_small", "fixed_small_log"):
        note("variance_type", HONOURED, "the posterior variance, as fewstep's ddpm solver draws")
        variance = None
    elif variance in ("fixed_large", "fixed_large_log"):
        note("variance_type", IGNORED, "diffusers' DDPMScheduler noise level; fewstep's ddpm solver draws with the "
                                       "posterior variance (fixed_small), its ODE solvers need none")
        variance = None
    else:
        raise _refuse(source, "variance_type", variance,
                      "valid: fixed_small, fixed_small_log, fixed_large, fixed_large_log, learned, learned_range")
    note("lambda_min_clipped", IGNORED, "diffusers' DPM-Solver's clip of its first timestep; fewstep starts at the "
                                        "process's t_start (fewstep info shows it and why)")
    proc.set_start(*well_conditioned_start(proc, pred))
    timestep_type = cfg.get("timestep_type", "discrete")
    if timestep_type != "discrete":
        raise _refuse(source, "timestep_type", timestep_type,
                      "fewstep feeds the network the training step index (valid: 'discrete')")
    note("timestep_type", HONOURED, "the network sees the training step index")
    return DiffusersSchedule(proc, pred, variance=variance)


def _read_edm(cfg: dict[str, Any], source: str, note: Any) -> DiffusersSchedule:
    lo, hi = float(cfg.get("sigma_min", 0.002)), float(cfg.get("sigma_max", 80.0))
    proc = EDM(lo, hi)
    sigma_data = float(cfg.get("sigma_data", 0.5))
    note("sigma_min", HONOURED, "the EDM process's t_min (sigma = t, alpha = 1)")
    note("sigma_max", HONOURED, "the EDM process's t_max, where sampling starts")
    note("sigma_data", HONOURED, "EDM preconditioning's sigma_data")
    pred_name = cfg.get("prediction_type", "epsilon")
    if pred_name != "epsilon":
        raise _refuse(source, "prediction_type", pred_name,
                      "EDM-style folders load with diffusers' 'epsilon' preconditioning (fewstep's 'edm')")
    note("prediction_type", HONOURED, "EDM preconditioning (Karras et al. 2022, Table 1): fewstep prediction 'edm'")
    note("num_train_timesteps", IGNORED, "unused by EDM-style schedulers")
    for key in ("sigma_schedule", "rho"):
        note(key, IGNORED, "diffusers' spacing; fewstep's default grid for EDM is Karras rho = 7 (--grid)")
    return DiffusersSchedule(proc, "edm", sigma_data=sigma_data)


def _read_clipping(cfg: dict[str, Any], result: DiffusersSchedule, note: Any) -> None:
    if cfg.get("thresholding", False):
        ratio, top = float(cfg.get("dynamic_thresholding_ratio", 0.995)), float(cfg.get("sample_max_value", 1.0))
        result.clipping = ("threshold", ratio, top)
        text = (f"dynamic thresholding (ratio {ratio:g}, max {top:g}) of the data prediction in diffusers; fewstep "
                f"solves the model's own ODE unless clipping='config' (--clipping config)")
        for key in ("thresholding", "dynamic_thresholding_ratio", "sample_max_value"):
            note(key, MAPPED, text)
        note("clip_sample", IGNORED, "thresholding takes precedence, as in diffusers")
    elif cfg.get("clip_sample", False):
        limit = float(cfg.get("clip_sample_range", 1.0))
        result.clipping = ("clip", limit)
        text = (f"diffusers clips the data prediction to +-{limit:g}; fewstep solves the model's own ODE unless "
                f"clipping='config' (--clipping config)")
        note("clip_sample", MAPPED, text)
        note("clip_sample_range", MAPPED, text)
    for key in _CLIP_KEYS:
        note(key, IGNORED, "clipping is off in this config")


#: diffusers network classes fewstep loads from a folder.
UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")


@dataclass
class UNetSpec:
    """What fewstep reads from a diffusers UNet ``config.json``: the class, one sample's shape ``(C, H, W)`` and
    the conditioning keywords the network needs (``cond={...}`` when sampling), each with a note."""

    cls: str
    sample_shape: tuple[int, int, int]
    conditioning: dict[str, str]

    @property
    def latent(self) -> bool:
        """A text-conditioned UNet2DConditionModel samples a VAE's latents (Stable Diffusion style)."""
        return self.cls == "UNet2DConditionModel"


def read_unet_config(cfg: Mapping[str, Any], schedule: DiffusersSchedule, *, source: str = "config.json") -> UNetSpec:
    """Check a UNet config against the scheduler's: its class, its output channels (``in_channels``, or twice that
    with a learned variance) and the conditioning it needs; refuses what does not fit with one line."""
    cls = cfg.get("_class_name")
    if cls not in UNET_CLASSES:
        raise ValueError(f"{source}: _class_name={cls!r} is not supported; fewstep loads {' and '.join(UNET_CLASSES)} "
                         f"folders (with their scheduler_config.json)")
    c_in = int(cfg.get("in_channels", 3 if cls == "UNet2DModel" else 4))
    c_out = int(cfg.get("out_channels", c_in))
    want = 2 * c_in if schedule.variance else c_in
    if c_out != want:
        if schedule.variance is None and c_out == 2 * c_in:
            raise ValueError(f"{source}: out_channels={c_out} is twice in_channels={c_in} (a learned variance), but the "
                             f"scheduler's variance_type is not 'learned_range' or 'learned'; set it in "
                             f"scheduler_config.json")
        what = f"variance_type {schedule.variance!r} needs" if schedule.variance else "fewstep needs"
        raise ValueError(f"{source}: out_channels={c_out} does not fit in_channels={c_in}; {what} out_channels={want}")
    size = cfg.get("sample_size", 64)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    cond: dict[str, str] = {}
    if cls == "UNet2DConditionModel":
        cond["encoder_hidden_states"] = (f"text-encoder states (batch, tokens, {cfg.get('cross_attention_dim')}); "
                                         f"the samples are VAE latents, decode them with the pipeline's VAE")
        if cfg.get("addition_embed_type"):
            cond["added_cond_kwargs"] = f"addition_embed_type {cfg['addition_embed_type']!r} inputs (e.g. SDXL's)"
        if cfg.get("time_cond_proj_dim"):
            cond["timestep_cond"] = "the guidance embedding of a guidance-distilled UNet"
    if cfg.get("class_embed_type") is not None or cfg.get("num_class_embeds"):
        cond["class_labels"] = f"class labels ({cfg.get('num_class_embeds')} classes)"
    return UNetSpec(cls, (c_in, h, w), cond)
