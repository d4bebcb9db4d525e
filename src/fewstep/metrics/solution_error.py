"""Per-sample error to reference images (RMSE, PSNR): defined in :mod:`fewstep.solution_error`, below the tuning
layer that scores candidates with it; re-exported here for the metrics."""

from ..solution_error import DATA_RANGE, per_sample_rmse, psnr, summarize_errors

__all__ = ["DATA_RANGE", "per_sample_rmse", "psnr", "summarize_errors"]
