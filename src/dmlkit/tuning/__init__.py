"""Hyperparameter search on class-disjoint folds (``dmlkit tune``; Optuna, optional)."""

from dmlkit.tuning.space import FixedTrial, trial_config
from dmlkit.tuning.study import TuneSummary, require_optuna, tune

__all__ = ["FixedTrial", "TuneSummary", "require_optuna", "trial_config", "tune"]
