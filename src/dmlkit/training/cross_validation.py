"""Model selection on class-disjoint folds of the training classes.

:func:`cross_validate` trains one model per fold of
:func:`~dmlkit.data.class_folds.class_folds` and scores it by the MAP@R of the fold's
held-out classes at its best epoch (the checkpoint early stopping keeps). The folds are
trained epoch by epoch in turn, so after every epoch the mean curve over the folds is
known (what a tuner prunes on); each fold keeps its own random state, so its curve is
exactly that of ``dmlkit train`` with ``training.val_classes`` set to the fold's classes.
The held-out (test) part of the data is never read.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dmlkit.config.schema import Config
from dmlkit.data.class_folds import class_folds
from dmlkit.data.splits import select_classes
from dmlkit.training.build import resolve_config
from dmlkit.training.rng import get_rng_state, rng_scope, set_rng_state
from dmlkit.training.run import augmented, build_splits
from dmlkit.training.trainer import Trainer

EpochCallback = Callable[[int, float, list[float]], None]


@dataclass
class FoldResult:
    """One fold: its classes, its best validation MAP@R and epoch, its per-epoch curve."""

    train_classes: list[int]
    val_classes: list[int]
    best_map_at_r: float = float("nan")
    best_epoch: int = 0
    curve: list[float] = field(default_factory=list)


@dataclass
class CrossValResult:
    """``score``: mean over folds of the best validation MAP@R; ``curve``: its value after
    each epoch (mean of each fold's best so far); ``folds``: the per-fold results."""

    score: float
    folds: list[FoldResult]
    curve: list[float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "curve": self.curve,
            "seconds": round(self.seconds, 2),
            "folds": [vars(f) for f in self.folds],
        }


def fold_config(config: Config, val_classes: list[int]) -> Config:
    """``config`` validating on ``val_classes`` (the ``dmlkit train`` run of one fold)."""
    config = copy.deepcopy(config)
    config.training.val_fraction = 0.0
    config.training.val_classes = list(val_classes)
    return config


def cross_validate(
    config: Config,
    folds: int = 3,
    *,
    seed: int = 0,
    on_epoch: EpochCallback | None = None,
    log: Callable[[str], None] | None = None,
) -> CrossValResult:
    """Mean best validation MAP@R over ``folds`` class-disjoint folds of the training classes.

    Parameters
    ----------
    config : Config
        The run to score; its ``training.val_classes`` / ``val_fraction`` are replaced by
        each fold's classes, its held-out part is not used.
    folds : int
        Number of folds (2 to ``num_training_classes // 2``).
    seed : int
        Seed of the assignment of classes to folds.
    on_epoch : callable, optional
        ``on_epoch(epoch, mean_so_far, fold_bests)`` after every epoch (1-based) of all
        folds; an exception it raises (a tuner's prune signal) stops the whole run.
    log : callable, optional
        Receives one line per epoch.

    Returns
    -------
    CrossValResult
    """
    if config.data.kind != "labels":
        raise ValueError(f"class folds need class labels; data.kind is {config.data.kind!r}")
    threads = torch.get_num_threads()
    if config.training.num_threads is not None:
        torch.set_num_threads(config.training.num_threads)
    try:
        with rng_scope(0):  # the caller's random state is restored afterwards
            return _cross_validate(config, folds, seed, on_epoch, log or (lambda _m: None))
    finally:
        torch.set_num_threads(threads)


def _cross_validate(
    config: Config, k: int, seed: int, on_epoch: EpochCallback | None, log: Callable
) -> CrossValResult:
    start = time.perf_counter()
    train, _ = build_splits(config)
    results, trainers, states = [], [], []
    for train_classes, val_classes in class_folds(train.classes, k, seed):
        fold_train = select_classes(train, train_classes)
        val = select_classes(train, val_classes)
        cfg = fold_config(config, val_classes)
        cfg.training.progress = False
        resolved = resolve_config(cfg, fold_train.x[0], int(fold_train.labels.max()) + 1)
        trainers.append(Trainer(resolved, augmented(fold_train, cfg), val_data=val, log=None))
        with rng_scope(cfg.training.seed + 1):  # as Trainer.fit seeds an undivided run
            states.append(get_rng_state())
        results.append(FoldResult(train_classes, val_classes))
    active = [True] * k
    curve: list[float] = []
    epochs = config.training.epochs
    for epoch in range(1, epochs + 1):
        for i, trainer in enumerate(trainers):
            if not active[i]:
                continue
            set_rng_state(states[i])
            record, stop = trainer.run_epoch()
            states[i] = get_rng_state()
            results[i].curve.append(float(record["val_map_at_r"]))
            active[i] = not stop
        bests = [float(t.best_metric) for t in trainers]
        curve.append(sum(bests) / k)
        log(
            f"epoch {epoch}/{epochs}: fold MAP@R "
            + " ".join(f"{r.curve[-1]:.4f}" for r in results)
            + f"; mean of bests {curve[-1]:.4f}"
        )
        if on_epoch is not None:
            on_epoch(epoch, curve[-1], bests)
        if not any(active):
            break
    for result, trainer in zip(results, trainers, strict=True):
        result.best_map_at_r = float(trainer.best_metric)
        result.best_epoch = int(trainer.best_epoch)
    return CrossValResult(curve[-1], results, curve, time.perf_counter() - start)


__all__ = ["CrossValResult", "FoldResult", "cross_validate", "fold_config"]
