"""The median pruner of ``dmlkit tune``, its rule matched to ``tune.objective``.

A trial reports the mean fold MAP@R of every epoch (epochs 1-based). Pruning starts once
``startup_trials`` trials are complete and spares epochs ``<= warmup_epochs``; after
that, at epoch ``e``, the trial is compared with the median of the epoch-``e`` values of
the study's complete trials:

- ``objective: final`` (the score is the last epoch's): the trial's value at epoch ``e``
  itself, :class:`LatestMedianPruner`. A trial that peaked early and then fell below the
  median is pruned, as its score (its last epoch) would be poor too.
- ``objective: best_epoch`` (the score is the best epoch's): the trial's best value at
  epochs ``<= e``, Optuna's :class:`~optuna.pruners.MedianPruner`; a later fall does not
  lower that score, so it does not prune.

A trial strictly below the median is pruned; one at it, or at a NaN epoch, goes on.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState


class LatestMedianPruner(optuna.pruners.BasePruner):
    """Prune a maximized trial whose latest intermediate value is below the median of the
    complete trials' values at the same step.

    Parameters
    ----------
    n_startup_trials : int
        No pruning until this many trials of the study are complete.
    n_warmup_steps : int
        Steps below this are never pruned (the earliest pruned step is this one).
    """

    def __init__(self, n_startup_trials: int = 5, n_warmup_steps: int = 0) -> None:
        if n_startup_trials < 0 or n_warmup_steps < 0:
            raise ValueError(
                f"n_startup_trials and n_warmup_steps must be >= 0, got {n_startup_trials} "
                f"and {n_warmup_steps}")
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps

    def prune(self, study: Any, trial: Any) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete or len(complete) < self.n_startup_trials:
            return False
        values = [t.intermediate_values[step] for t in complete
                  if step in t.intermediate_values and not math.isnan(t.intermediate_values[step])]
        value = trial.intermediate_values[step]
        if not values or math.isnan(value):
            return False
        return bool(value < float(np.median(values)))


def make_pruner(kind: str, objective: str, startup_trials: int, warmup_epochs: int) -> Any:
    """The pruner of a study (module docstring): ``kind`` ``"median"`` or ``"none"``."""
    if kind != "median":
        return optuna.pruners.NopPruner()
    # epochs are reported 1-based and the pruners spare steps < n_warmup_steps
    if objective == "best_epoch":
        return optuna.pruners.MedianPruner(
            n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs + 1)
    return LatestMedianPruner(n_startup_trials=startup_trials,
                              n_warmup_steps=warmup_epochs + 1)


__all__ = ["LatestMedianPruner", "make_pruner"]
