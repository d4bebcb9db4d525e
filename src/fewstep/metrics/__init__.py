"""Metrics: Frechet distance and friends, computed in float64."""

from .frechet import frechet_distance, frechet_distance_to_moments

__all__ = ["frechet_distance", "frechet_distance_to_moments"]
