"""Metrics: Frechet distance, KID, precision/recall and Inception Score in float64, with the
feature extractors and streaming statistics they are computed from."""

from .extractors import get_extractor
from .features import FeatureExtractor, ModuleExtractor
from .frechet import frechet_distance, frechet_distance_to_moments
from .inception_score import inception_score
from .kid import kernel_inception_distance, polynomial_mmd2
from .prdc import precision_recall
from .stats import FeatureStats

__all__ = ["frechet_distance", "frechet_distance_to_moments", "kernel_inception_distance", "polynomial_mmd2",
           "precision_recall", "inception_score", "FeatureStats", "FeatureExtractor", "ModuleExtractor",
           "get_extractor"]
