"""The best validated epoch of a trainer, or none: one rule for every caller."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dmlkit.training.trainer import Trainer


def scored_best(trainer: Trainer) -> tuple[float, int] | None:
    """``(best validation MAP@R, its epoch)``, or None while no epoch has been scored
    (no validation data, or no validation class with two items so far): the trainer's
    ``-inf`` and epoch ``0`` stand for none."""
    if trainer.best_epoch > 0 and math.isfinite(trainer.best_metric):
        return float(trainer.best_metric), int(trainer.best_epoch)
    return None


def early_stop_line(patience: int, best_epoch: int, best_metric: float) -> str:
    """What a run stopped early by ``training.patience`` says: the stop, and the epoch
    whose weights it keeps (``model.pt``, the held-out metrics)."""
    return (f"early stop: no val MAP@R gain for {patience} epochs; the weights of epoch "
            f"{best_epoch} (val MAP@R {best_metric:.4f}, the best) are kept")


__all__ = ["early_stop_line", "scored_best"]
