"""The quantized network: a fewstep UNet or DiT whose conv/linear layers are int8, behind a wrapper
that picks each evaluation's timestep group.

What stays float (TFMQ-DM, Huang et al. 2024, sec. 3-4: the *temporal features* - the time embedding
and its per-block projections - depend only on t, and quantizing them shifts every later layer at
that timestep; the paper reconstructs them with TIAR and calibrates them on the finite set of
sampling times, here they are simply kept in float): the ``embed`` module (sinusoid -> MLP),
each UNet ResBlock's ``emb`` projection and DiT's adaLN projections (``ada``, ``ada_out``).  Also
float: normalisations, activations, the attention product itself (``scaled_dot_product_attention``
and ``nn.MultiheadAttention``'s internal projections), residual additions.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ..context import StepContext
from ..denoisers import accepts_context
from ..nets import DiT, UNet
from ..nets._layers import broadcast_time
from .layers import KERNELS, GroupSelector, QuantConv2d, QuantLayer, QuantLinear

__all__ = ["SUPPORTED", "TIME_PATH_LEAVES", "is_time_path", "quantizable_layers", "check_supported",
           "QuantizedNetwork", "replace_layers"]

SUPPORTED = "fewstep UNet and DiT networks (a fewstep checkpoint folder, a run folder or bundled:fashion)"
TIME_PATH_LEAVES = ("emb", "ada", "ada_out")


def is_time_path(name: str) -> bool:
    """Whether layer ``name`` computes temporal features (kept float): ``embed.*``, ``*.emb``, ``*.ada``."""
    parts = name.split(".")
    return parts[0] == "embed" or parts[-1] in TIME_PATH_LEAVES


def check_supported(net: Any) -> None:
    """Raise a one-line TypeError unless ``net`` is a fewstep UNet or DiT."""
    if isinstance(net, QuantizedNetwork):
        raise TypeError("this model is already quantized; quantize its float checkpoint instead")
    if not isinstance(net, (UNet, DiT)):
        raise TypeError(f"cannot quantize a {type(net).__module__}.{type(net).__name__}: quantization supports "
                        f"{SUPPORTED}")


def quantizable_layers(net: nn.Module) -> dict[str, nn.Module]:
    """The ``nn.Conv2d`` / ``nn.Linear`` layers to quantize, by qualified name: all of them except the
    time-embedding path and the projections inside ``nn.MultiheadAttention``."""
    inside_mha = {f"{name}.{child}" for name, m in net.named_modules() if isinstance(m, nn.MultiheadAttention)
                  for child, _ in m.named_modules() if child}
    return {name: m for name, m in net.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not is_time_path(name) and name not in inside_mha}


def replace_layers(net: nn.Module, names: list[str], bits: int, groups: int, selector: GroupSelector) -> None:
    """Swap each named float layer of ``net`` for its int8 counterpart, in place."""
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        layer = getattr(parent, leaf)
        setattr(parent, leaf, QuantConv2d(layer, bits, groups, selector) if isinstance(layer, nn.Conv2d)
                else QuantLinear(layer, bits, groups, selector))


class QuantizedNetwork(nn.Module):
    """``net`` with int8 layers; before each call it sets the timestep group of its inputs' noise level.

    ``levels`` are the network noise levels (its ``noise_level`` input, e.g. the DDPM timestep) of
    the calibration evaluations, one per calibrated evaluation of the calibration solve.  An
    evaluation uses the ranges of the *nearest* calibrated level: with the calibration's solver,
    NFE and grid this is exactly the step's own ranges; at another NFE or grid each evaluation takes
    those of the closest calibrated time (activation statistics change smoothly with t, TFMQ-DM
    fig. 2).  A batch whose samples sit at different levels gets one group per sample.
    """

    accepts_step_context = True

    def __init__(self, net: nn.Module, levels: list[float], level_groups: list[int], selector: GroupSelector,
                 info: dict[str, Any]):
        super().__init__()
        if not levels or len(levels) != len(level_groups):
            raise ValueError("a quantized network needs one timestep group per calibrated noise level")
        self.net = net
        self.selector = selector
        self.register_buffer("levels", torch.tensor([float(v) for v in levels], dtype=torch.float64), persistent=False)
        self.register_buffer("level_groups", torch.tensor(level_groups, dtype=torch.long), persistent=False)
        self.info = info  # the config.json "quantization" record

    @property
    def config(self) -> Any:
        """The float network's config (``net_config`` rebuilds the float architecture)."""
        return self.net.config

    @property
    def kernels(self) -> str:
        return self.selector.kernels

    @kernels.setter
    def kernels(self, value: str) -> None:
        if value not in KERNELS:
            raise ValueError(f"unknown quantized kernels {value!r}; valid: {', '.join(KERNELS)}")
        self.selector.kernels = value

    def quant_layers(self) -> Iterator[tuple[str, QuantLayer]]:
        return ((n, m) for n, m in self.net.named_modules() if isinstance(m, QuantLayer))

    def group_of(self, noise_level: Tensor) -> Tensor:
        """The timestep group of the nearest calibrated level for each noise level, shape ``(batch,)``."""
        lv = noise_level.detach().to(device=self.levels.device, dtype=torch.float64).reshape(-1, 1)
        return self.level_groups[(lv - self.levels.reshape(1, -1)).abs().argmin(dim=1)]

    def forward(self, x: Tensor, noise_level: Tensor | float, *args: Any, ctx: StepContext | None = None,
                **kwargs: Any) -> Tensor:
        groups = self.group_of(broadcast_time(noise_level, x.shape[0], x.device))
        self.selector.group = int(groups[0]) if bool((groups == groups[0]).all()) else groups.to(x.device)
        try:
            if ctx is not None and accepts_context(self.net):
                return self.net(x, noise_level, *args, ctx=ctx, **kwargs)
            return self.net(x, noise_level, *args, **kwargs)
        finally:
            self.selector.group = None
