"""Guidance: classifier-free guidance with a guidance interval, classifier guidance with a noise-aware
classifier, and its calibrated (EluCD) variant; all are denoiser wrappers, so every solver uses them.

See docs/guidance.md.
"""

from ..denoisers import ClassifierFreeGuidance, GuidanceInterval
from .build import GUIDANCE_METHODS, class_labels, guide, num_classes
from .calibration import (CalibrationRow, TemperatureCalibrated, calibrate, expected_calibration_error, fit_temperature,
                          load_calibration, save_calibration)
from .classifier import ClassifierGuidance, NoisyClassifier, guided_log_prob
from .loading import NetworkClassifier, load_classifier

__all__ = ["ClassifierFreeGuidance", "GuidanceInterval", "ClassifierGuidance", "NoisyClassifier", "guided_log_prob",
           "TemperatureCalibrated", "CalibrationRow", "calibrate", "fit_temperature", "expected_calibration_error",
           "save_calibration", "load_calibration", "NetworkClassifier", "load_classifier", "guide", "class_labels",
           "num_classes", "GUIDANCE_METHODS"]
