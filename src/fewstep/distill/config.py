"""The training config of a distillation run, built from the teacher's own config."""

from __future__ import annotations

import copy
from typing import Any

from .base import load_teacher
from ..consistency import default_sigma_min
from ..onestep import DEFAULT_SIGMA_INIT
from ..processes import process_from_config

__all__ = ["METHODS", "distill_config"]

#: ``--method`` -> objective kind.
METHODS = ("sid", "sida", "mmd", "ect")

#: Trainer settings for distillation (SiD sec. 4 / App.: Adam with beta1 = 0, no clipping, a short EMA);
#: the rate and batch are scaled down from the paper's (1e-5 at batch 256) for small CPU runs.
TRAINING_DEFAULTS: dict[str, Any] = {
    "steps": 2000, "batch_size": 32, "lr": 2e-5, "adam_betas": [0.0, 0.999], "warmup_steps": 0,
    "grad_clip": None, "ema_half_life_images": 5000, "ema_rampup": 0.05, "checkpoint_every_seconds": 300,
    "sample_every_steps": 200, "log_every": 10, "precision": "fp32",
}

#: ECT (Geng et al. 2024) tunes one network by plain consistency training: Adam's usual betas (the paper uses
#: RAdam, lr 1e-4 at batch 128; halved here for batch 32 on CPU).
METHOD_TRAINING: dict[str, dict[str, Any]] = {"ect": {"lr": 5e-5, "adam_betas": [0.9, 0.999]}}


def distill_config(teacher: str, method: str, data: str | None = None, *, objective: dict[str, Any] | None = None,
                   training: dict[str, Any] | None = None, sigma_init: float = DEFAULT_SIGMA_INIT) -> dict[str, Any]:
    """``{teacher, network, process, prediction, sigma_data, [generator], data, objective, training}``.

    ``data`` defaults to the teacher's training data; ``objective`` and ``training`` override the
    method's and :data:`TRAINING_DEFAULTS` entries.
    """
    if method not in METHODS:
        raise ValueError(f"unknown distillation method {method!r}; valid: {', '.join(METHODS)}")
    _, tcfg = load_teacher(teacher)
    net = tcfg["network"]
    spec = data or (tcfg.get("data") or {}).get("spec")
    if not spec:
        raise ValueError(f"the teacher {teacher} does not name its training data; pass --data")
    cfg: dict[str, Any] = {
        "teacher": teacher, "network": copy.deepcopy(net), "process": copy.deepcopy(tcfg["process"]),
        "prediction": tcfg["prediction"], "sigma_data": float(tcfg.get("sigma_data", 0.5)),
        "data": {"spec": spec, "resolution": net.get("resolution", 28), "channels": net.get("in_channels", 1)},
        "objective": {"kind": method, **(objective or {})},
        "training": {**TRAINING_DEFAULTS, **METHOD_TRAINING.get(method, {}), **(training or {})},
    }
    if method in ("sid", "sida"):
        cfg["generator"] = {"sigma_init": float(sigma_init)}
    if method == "ect":  # the boundary of the consistency function: the process's smallest noise level
        cfg["consistency"] = {"sigma_min": default_sigma_min(process_from_config(tcfg["process"]))}
    return cfg
