"""The masking objective: learn MaskUNet's mask generator (Wang et al. 2025, sec. 4.1) over a frozen trained UNet.

The network (``"kind": "maskunet"``) starts from ``objective.init_from``'s weights, which stay frozen; only
the mask generator is trained, with the same denoising loss (process, parametrization, weighting) as
:class:`~fewstep.training.denoising.DenoisingObjective` (the paper supervises it with the diffusion loss).
"""

from __future__ import annotations

from typing import Any, Mapping

from ..data import ImageData
from .denoising import DenoisingObjective, DenoisingSettings
from .objective import register_objective

__all__ = ["MaskingObjective"]


@register_objective
class MaskingObjective(DenoisingObjective):
    """Denoising loss, network ``maskunet`` warm-started from ``init_from`` with everything but ``masker`` frozen."""

    kind = "masking"
    settings_class = DenoisingSettings

    def __init__(self, config: Mapping[str, Any], settings: DenoisingSettings, data: ImageData):
        if config["network"].get("kind") != "maskunet":
            raise ValueError(f"the masking objective trains a network of kind 'maskunet' (a UNet config plus "
                             f"mask_* settings), got {config['network'].get('kind')!r}")
        if not settings.init_from:
            raise ValueError("the masking objective needs objective.init_from: the trained model whose weights "
                             "are masked (e.g. bundled:fashion)")
        super().__init__(config, settings, data)
        self.model.freeze_base()
