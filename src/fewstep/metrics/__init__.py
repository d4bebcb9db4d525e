"""Metrics: Frechet distance, KID, precision/recall and Inception Score in float64, with the
feature extractors and streaming statistics they are computed from.  ``metrics.evaluate.evaluate``
scores any sample function ``sample_fn(seeds) -> images`` (:func:`solver_sample_fn` for a solver), and
with ``reference=`` its per-sample error to :func:`reference_solutions` (the near-exact ODE solution,
computed and cached by :mod:`fewstep.tuning`; re-exported here with :func:`model_fingerprint`)."""

from .extractors import get_extractor
from .features import FeatureExtractor, ModuleExtractor
from ..fingerprint import model_fingerprint
from ..tuning import NearExact, ReferenceSettings, reference_solutions
from .frechet import frechet_distance, frechet_distance_to_moments
from .inception_score import inception_score
from .kid import kernel_inception_distance, polynomial_mmd2
from .prdc import precision_recall
from .sampling import solver_sample_fn
from .solution_error import per_sample_rmse, psnr, summarize_errors
from .stats import FeatureStats

__all__ = ["frechet_distance", "frechet_distance_to_moments", "kernel_inception_distance", "polynomial_mmd2",
           "precision_recall", "inception_score", "FeatureStats", "FeatureExtractor", "ModuleExtractor",
           "get_extractor", "solver_sample_fn", "reference_solutions", "NearExact", "ReferenceSettings",
           "model_fingerprint", "per_sample_rmse", "psnr", "summarize_errors"]
