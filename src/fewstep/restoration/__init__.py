"""Inverse problems with a diffusion prior: inpainting, super-resolution and denoising (docs/restoration.md).

Operators ``A(x) -> y`` (:mod:`.operators`, masks in :mod:`.masks`), measurements ``y = A(x) + sigma_y n``,
and three methods, each a stateless function like a solver: RePaint (:mod:`.repaint`), DPS (:mod:`.dps`) and
RED-diff (:mod:`.reddiff`), reached by name through :func:`restore`.
"""

from .api import restore, restore_nfe
from .dps import dps, dps_gradient
from .masks import MASKS, box_mask, half_mask, make_mask, random_mask
from .methods import METHODS, MethodSpec, get_method
from .operators import TASKS, Identity, Inpaint, SuperResolution, denoise, inpaint, measure, super_resolution
from .reddiff import reddiff, reddiff_loss
from .repaint import repaint, repaint_nfe

__all__ = ["restore", "restore_nfe", "dps", "dps_gradient", "reddiff", "reddiff_loss", "repaint", "repaint_nfe",
           "METHODS", "MethodSpec", "get_method", "MASKS", "box_mask", "half_mask", "random_mask", "make_mask",
           "TASKS", "Inpaint", "SuperResolution", "Identity", "inpaint", "super_resolution", "denoise", "measure"]
