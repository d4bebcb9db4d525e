"""Int8 post-training quantization with temporal calibration (TFMQ-DM, Huang et al. 2024); docs/quantization.md.

    den = fewstep.load_model("bundled:fashion")
    quantize_denoiser(den, CalibrationSettings(solver="dpm++2m", nfe=10, n=64))
    save_quantized(den, "fashion-int8")          # later: fewstep.load_model("fashion-int8")
"""

from .calibrate import Calibration, CalibrationSettings, calibrate
from .io import WEIGHTS, is_quantized, load_quantized, save_quantized
from .layers import KERNELS, QuantConv2d, QuantLinear
from .maths import dequantize, fake_quantize, quantize, quantize_weight, weight_scales
from .network import QuantizedNetwork, is_time_path, quantizable_layers
from .quantize import quantize_denoiser, set_kernels

__all__ = ["CalibrationSettings", "Calibration", "calibrate", "quantize_denoiser", "set_kernels", "save_quantized",
           "load_quantized", "is_quantized", "WEIGHTS", "KERNELS", "QuantizedNetwork", "QuantConv2d", "QuantLinear",
           "quantizable_layers", "is_time_path", "quantize", "dequantize", "fake_quantize", "quantize_weight",
           "weight_scales"]
