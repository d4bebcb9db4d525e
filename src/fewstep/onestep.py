"""One-step generators distilled from a diffusion model (:mod:`fewstep.distill`), and how fewstep samples them.

A Score identity Distillation generator (Zhou et al. 2024, sec. 3) is a copy of the teacher's
network evaluated at one fixed noise level: ``x_g = f_theta(sigma_init z, sigma_init)`` in EDM
units (``y = x / alpha``, noise level ``sigma_hat = sigma / alpha``), ``z ~ N(0, I)``,
``sigma_init = 2.5``.  On any process the input is ``x = sigma(t_init) z`` at the time
``t_init`` where ``sigma_hat = sigma_init``, and the output is the data prediction of the
network's own prediction type (:mod:`fewstep.parametrization`), so nothing depends on whether
the teacher predicts ``eps``, ``v``, ``x0``, a flow or an EDM ``F``.

:class:`OneStepGenerator` makes such a generator a :class:`~fewstep.DenoiserBase`: at ``t_max``
it reads the prior draw ``x_T = prior_std z`` as the generator's noise ``z`` and predicts
``x0 = x_g``, so one step of any solver from ``t_max`` to ``sigma = 0`` (``fewstep.sample(...,
nfe=1)``, ``fewstep sample --nfe 1``, ``eval``, ``bench model``) returns the generator's image
exactly.  It has no prediction at other times (the generator was not trained there); asking is
a ValueError that says to sample with ``nfe=1``.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from .context import StepContext
from .denoisers import DenoiserBase, NetworkTransform
from .parametrization import Parametrization, Prediction, network_output, parametrization
from .processes import NoiseProcess

__all__ = ["generator_time", "generate_x0", "OneStepGenerator", "DEFAULT_SIGMA_INIT"]

#: The generator's input noise level in EDM units (Zhou et al. 2024, sec. 4: ``sigma_init = 2.5``).
DEFAULT_SIGMA_INIT = 2.5


def generator_time(process: NoiseProcess, sigma_init: float) -> float:
    """The process time ``t_init`` at which ``sigma / alpha = sigma_init`` (inside ``[t_min, t_max]``)."""
    t = float(process.t_of_sigma_hat(torch.tensor(float(sigma_init), dtype=torch.float64)))
    return min(max(t, process.t_min), process.t_max)


def generate_x0(net: nn.Module, param: Parametrization, z: Tensor, t_init: float,
                cond: dict[str, Any] | None = None) -> Tensor:
    """``x_g = f_theta(sigma(t_init) z, t_init)``: the data prediction of ``net`` at pure noise ``z`` of level ``t_init``."""
    t = torch.full((z.shape[0],), t_init, dtype=torch.float64, device=z.device)
    _, s = param.alpha_sigma(z, t)
    x = s * z
    return param.prediction(x, t, network_output(net, param, x, t, cond)).x0


class OneStepGenerator(DenoiserBase):
    """A one-step generator as a denoiser: exact at ``t_max`` (see the module docstring), refused elsewhere."""

    def __init__(self, net: nn.Module, process: NoiseProcess, prediction: str, sigma_data: float = 0.5,
                 sigma_init: float = DEFAULT_SIGMA_INIT, *, sample_shape: Sequence[int] | None = None,
                 config: dict[str, Any] | None = None):
        self.net = net
        # the generator reads the prior draw at t_max itself: sampling starts there whatever the teacher's t_start
        self.process = process.set_start(process.t_max, "a one-step generator reads the prior draw at t_max")
        self.prediction = prediction
        self.param = parametrization(prediction, process, sigma_data)
        self.sigma_init = float(sigma_init)
        self.t_init = generator_time(process, sigma_init)
        self.sample_shape = tuple(int(v) for v in sample_shape) if sample_shape is not None else None
        self.config = config

    def networks(self) -> Iterator[nn.Module]:
        yield self.net

    def map_networks(self, transform: NetworkTransform) -> "OneStepGenerator":
        self.net = transform(self.net)
        return self

    def predict(self, x: Tensor, t: float | Tensor, *, ctx: StepContext | None = None, **cond: Any) -> Prediction:
        tt = torch.as_tensor(t, dtype=torch.float64)
        tol = 1e-6 * max(1.0, abs(self.process.t_max))
        if bool(((tt - self.process.t_max).abs() > tol).any()):
            raise ValueError(f"a one-step generator predicts only from the prior noise at t_max={self.process.t_max:g}, "
                             f"not at t={float(tt.reshape(-1)[0]):g}; sample it with nfe=1 (e.g. --nfe 1)")
        z = x / self.process.prior_std
        x0 = generate_x0(self.net, self.param, z, self.t_init, cond)
        a, s = self.param.alpha_sigma(x, self.process.t_max)
        return Prediction(x0, (x - a * x0) / s)
