"""Detection of generated images by multiLID (Lorenz, Durall & Keuper 2023): docs/detection.md."""

from .detector import (Detector, DetectorConfig, detection_metrics, fit_detector, load_detector, multilid_features,
                       roc_auc)
from .lid import knn_distances, lid_mle, lid_terms

__all__ = ["Detector", "DetectorConfig", "detection_metrics", "fit_detector", "load_detector", "multilid_features",
           "roc_auc", "knn_distances", "lid_mle", "lid_terms"]
