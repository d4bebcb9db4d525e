"""What every distillation objective shares: the frozen teacher, the student networks copied from
it, the config sections, and FID tracking as the run's preview."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch import Tensor, nn

from ..data import ImageData
from ..denoisers import Denoiser
from ..imagegrid import save_image_grid
from ..loading import load_model
from ..parametrization import Parametrization, network_output, parametrization
from ..training.config import check_positive, check_type
from ..processes import process_from_config
from ..training.denoising import DenoisingObjective
from ..training.objective import Objective
from ..latent import require_pixel_space
from .tracking import FIDTracker

if TYPE_CHECKING:
    from ..training.trainer import Trainer

__all__ = ["DistillObjective", "x0_of", "load_teacher"]


def x0_of(net: Callable[..., Tensor], param: Parametrization, x: Tensor, t: Tensor, **kw: Any) -> Tensor:
    """The data prediction of ``net`` at ``(x, t)`` (per-sample ``t``), whatever its prediction type."""
    return param.prediction(x, t, network_output(net, param, x, t, kw or None)).x0


def load_teacher(spec: str) -> tuple[nn.Module, dict[str, Any]]:
    """The network and config of the teacher ``spec`` (a fewstep checkpoint or ``bundled:...``), EMA weights."""
    den = load_model(spec)
    cfg = den.config or {}
    if not isinstance(den, Denoiser) or not isinstance(den.net, nn.Module) or "network" not in cfg:
        raise ValueError(f"teacher {spec}: distillation needs a fewstep diffusion model (a checkpoint folder with a "
                         f"network config, or bundled:fashion), not a one-step generator or a diffusers folder")
    require_pixel_space(den, "distillation (sid, sida, mmd, ect)")
    return den.net, cfg


class DistillObjective(Objective):
    """Base of the distillation objectives: ``teacher`` (frozen), copies of its network, FID tracking.

    The config names the teacher (``teacher``) and repeats its ``network``, ``process``,
    ``prediction`` and ``sigma_data`` (:func:`fewstep.distill.distill_config` fills them in), so
    a checkpoint is a model :func:`fewstep.load_model` reads like any other.
    """

    sections = ("teacher", "network", "process", "prediction", "sigma_data")
    identity = ("teacher", "network", "process", "prediction")

    def __init__(self, config: Mapping[str, Any], settings: Any, data: ImageData):
        super().__init__(config, settings, data)
        self.teacher, tcfg = load_teacher(config["teacher"])
        for key in ("network", "process", "prediction"):
            if tcfg.get(key) != config[key]:
                raise ValueError(f"config {key} differs from the teacher's ({config['teacher']}); a distillation run "
                                 f"uses the teacher's {key} (build the config with fewstep.distill.distill_config)")
        self.teacher.requires_grad_(False).eval()
        self.process = process_from_config(config["process"])
        self.prediction: str = config["prediction"]
        self.sigma_data = float(config.get("sigma_data", 0.5))
        self.param = parametrization(self.prediction, self.process, self.sigma_data)
        self.shape = tuple(int(v) for v in data.images.shape[1:])
        self.tracker = FIDTracker(settings.fid_n, settings.fid_extractor, settings.fid_ref)

    @classmethod
    def check_sections(cls, config: Mapping[str, Any]) -> None:
        if "teacher" not in config:
            raise ValueError("a distillation config needs 'teacher' (a model path or bundled:fashion)")
        check_type(config["teacher"], str, "teacher")
        DenoisingObjective.check_sections(config)

    def student(self) -> nn.Module:
        """A trainable copy of the teacher's network (its weights included)."""
        return copy.deepcopy(self.teacher).requires_grad_(True).train()

    def frozen(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher}

    def tracked_sample_fn(self, trainer: "Trainer") -> Callable[[list[int]], Tensor]:
        """``seeds -> images`` of the EMA student, the way it is meant to be sampled."""
        raise NotImplementedError

    @torch.no_grad()
    def preview(self, trainer: "Trainer"):
        """Sample grid of the EMA student, its FID (logged with the images seen) and ``fid_vs_images.png``."""
        fn = self.tracked_sample_fn(trainer)
        for m in trainer.emas.values():
            m.eval()
        grid = save_image_grid(fn(list(range(64))), trainer.out_dir / "samples" / f"step-{trainer.step:08d}.png")
        if self.settings.fid_n >= 2:
            result = self.tracker(fn, trainer.device)
            self.tracker.record(trainer.out_dir, trainer.step, trainer.step * trainer.settings.batch_size, result)
        return grid


def check_one_number_section(config: Mapping[str, Any], section: str, key: str, example: float) -> None:
    """Refuse a config ``section`` that is not exactly ``{key: <positive float>}`` (the ``generator`` section of SiD,
    the ``consistency`` section of ECT), naming the section."""
    sec = config.get(section)
    if not isinstance(sec, Mapping) or set(sec) != {key}:
        raise ValueError(f"config {section} must be {{\"{key}\": {example}}}, got {sec!r}")
    check_type(sec[key], float, f"{section}.{key}")
    check_positive(f"{section}.{key}", sec[key])
