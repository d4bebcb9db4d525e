"""Structured pruning of fewstep UNets (docs/pruning.md): LD-Pruner's operator scores (Castells et al. 2024)
and Diff-Pruning's Taylor importance (Fang et al. 2023), a genuinely smaller network whose config records
the new widths, and the warm-started fine-tune on the shared trainer."""

from .api import METHODS, PruneResult, count_parameters, finetune_config, prune_denoiser, save_pruned
from .scores import ld_scores, output_statistics_distance, taylor_scores
from .select import BUDGETS, check_budget, check_ratio, select_global, select_per_block
from .structure import prune_unet
from .units import Unit, check_prunable, prunable_units, removed, unit_macs

__all__ = ["METHODS", "PruneResult", "count_parameters", "finetune_config", "prune_denoiser", "save_pruned",
           "ld_scores", "output_statistics_distance", "taylor_scores", "BUDGETS", "check_budget", "check_ratio",
           "select_global", "select_per_block", "prune_unet", "Unit", "check_prunable", "prunable_units", "removed",
           "unit_macs"]
