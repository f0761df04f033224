"""Model selection on class-disjoint folds of the training classes.

:func:`cross_validate` trains one model per fold of
:func:`~dmlkit.data.class_folds.class_folds` and scores it by the MAP@R of the fold's
held-out classes, after its last epoch (the model ``dmlkit train`` ends with) or at its
best epoch (the checkpoint early stopping keeps). The folds are
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
from dmlkit.data.class_folds import MIN_CLASSES, class_folds
from dmlkit.data.dataset import ArrayDataset
from dmlkit.data.splits import select_classes
from dmlkit.training.best_epoch import scored_best
from dmlkit.training.build import build_sampler, resolve_config
from dmlkit.training.class_rows import run_class_ids
from dmlkit.training.frozen_features import (
    FeatureData,
    check_frozen_config,
    frozen_feature_data,
)
from dmlkit.training.rng import get_rng_state, rng_scope, set_rng_state
from dmlkit.training.run import augmented, training_split
from dmlkit.training.trainer import Trainer

EpochCallback = Callable[[int, float], None]


@dataclass
class FoldResult:
    """One fold: its classes, its validation MAP@R after the last epoch trained and at its
    best epoch, and its per-epoch curve. A fold no epoch could score (NaN MAP@R: no
    validation class with two items) has no best: ``best_epoch`` None and
    ``best_map_at_r`` NaN."""

    train_classes: list[int]
    val_classes: list[int]
    final_map_at_r: float = float("nan")
    best_map_at_r: float = float("nan")
    raw_map_at_r: float = float("nan")
    best_epoch: int | None = None
    curve: list[float] = field(default_factory=list)


@dataclass
class CrossValResult:
    """Means over the folds: ``final_score`` of the models training ends with (what
    ``dmlkit train`` of the config gives), ``best_score`` at each fold's best epoch (what
    early stopping on held-out classes keeps); ``score`` is the one ``objective`` chose
    and ``curve`` its value after each epoch. ``raw_score``: the raw inputs' (flattened,
    each row L2-normalized), the baseline to beat."""

    score: float
    final_score: float
    best_score: float
    raw_score: float
    objective: str
    folds: list[FoldResult]
    curve: list[float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k != "folds"}
        out["seconds"] = round(self.seconds, 2)
        out["folds"] = [vars(f) for f in self.folds]
        return out


OBJECTIVES = ("final", "best_epoch")
DEFAULT_FOLDS = 3


def fold_config(config: Config, val_classes: list[int]) -> Config:
    """``config`` validating on ``val_classes`` (the ``dmlkit train`` run of one fold)."""
    config = copy.deepcopy(config)
    config.training.val_fraction = 0.0
    config.training.val_classes = list(val_classes)
    return config


def cross_validate(
    config: Config,
    folds: int | None = None,
    *,
    seed: int = 0,
    objective: str = "final",
    on_epoch: EpochCallback | None = None,
    log: Callable[[str], None] | None = None,
) -> CrossValResult:
    """Mean best validation MAP@R over ``folds`` class-disjoint folds of the training classes.

    Parameters
    ----------
    config : Config
        The run to score; its ``training.val_classes`` / ``val_fraction`` are replaced by
        each fold's classes, its held-out part is not used.
    folds : int, optional
        Number of folds (2 to ``num_training_classes // 2``); default
        ``DEFAULT_FOLDS`` (3), or fewer where the training classes allow fewer.
    seed : int
        Seed of the assignment of classes to folds.
    objective : {"final", "best_epoch"}
        ``"final"``: score each fold by its model after the last epoch, trained for all
        ``training.epochs`` (no early stopping), as ``dmlkit train`` trains the config.
        ``"best_epoch"``: by its best epoch (``patience`` may stop it early), as a run
        with ``training.val_classes`` keeps.
    on_epoch : callable, optional
        ``on_epoch(epoch, mean)`` after every epoch (1-based) of all folds, with the
        objective's mean over folds so far; an exception it raises (a tuner's prune
        signal) stops the whole run.
    log : callable, optional
        Receives one line per epoch.

    Returns
    -------
    CrossValResult
    """
    if config.data.kind != "labels":
        raise ValueError(f"class folds need class labels; data.kind is {config.data.kind!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    threads = torch.get_num_threads()
    if config.training.num_threads is not None:
        torch.set_num_threads(config.training.num_threads)
    try:
        with rng_scope(0):  # the caller's random state is restored afterwards
            return _cross_validate(
                config, folds, seed, objective, on_epoch, log or (lambda _m: None)
            )
    finally:
        torch.set_num_threads(threads)


def training_part(config: Config) -> ArrayDataset:
    """The training side of ``build_splits(config, for_training=True)``, checked alike
    (:func:`~dmlkit.training.run.training_split`): the held-out part is not read."""
    return training_split(config)[0]


def _cross_validate(
    config: Config,
    k: int | None,
    seed: int,
    objective: str,
    on_epoch: EpochCallback | None,
    log: Callable,
) -> CrossValResult:
    start = time.perf_counter()
    check_frozen_config(config)  # what dmlkit train refuses, folds refuse too
    train = training_part(config)  # the held-out part is never read
    if k is None:  # 3 folds, or as many as keep two classes on each side
        k = max(2, min(DEFAULT_FOLDS, len(train.classes) // MIN_CLASSES))
    # a frozen backbone's features of the whole training part, cached, as dmlkit train
    # uses them (not a forward pass of the whole network on every batch): one backbone
    # pass, one cache entry and one load of the weights for all folds
    # (a loss with one row per class: sized by the distinct classes, not the largest id)
    whole_config = resolve_config(config, train.x[0], run_class_ids(train.labels, None)[1])
    whole = frozen_feature_data(whole_config, train, None)
    results, trainers, states = [], [], []
    for train_classes, val_classes in class_folds(train.classes, k, seed,
                                                      class_names=train.class_names):
        fold_train = select_classes(train, train_classes)
        val = select_classes(train, val_classes)
        cfg = fold_config(config, val_classes)
        cfg.training.progress = False
        if objective == "final":  # the whole schedule, as dmlkit train runs it
            cfg.training.patience = None
        class_ids, num_classes = run_class_ids(fold_train.labels, None)
        resolved = resolve_config(cfg, fold_train.x[0], num_classes)
        features = _fold_features(whole, whole_config, resolved, fold_train, val)
        try:
            trainers.append(Trainer(resolved, augmented(features.train, cfg),
                                    val_data=features.val, log=None, model=features.model,
                                    model_rng=features.model_rng, class_ids=class_ids))
        except ValueError as err:
            if _batch_problem(resolved, fold_train) != str(err):
                raise  # a model or loss setting: not the folds' doing
            raise ValueError(  # e.g. a batch of more classes than a fold trains on
                f"a fold trains on {len(train_classes)} of the {len(train.classes)} training "
                f"classes (the others validate): {err} (set it for the folds, e.g. "
                f"dmlkit crossval --set sampler.batch_size=...)") from None
        with rng_scope(cfg.training.seed + 1):  # as Trainer.fit seeds an undivided run
            states.append(get_rng_state())
        results.append(FoldResult(train_classes, val_classes, raw_map_at_r=_raw_map_at_r(val)))
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
        if objective == "final":
            curve.append(sum(r.curve[-1] for r in results) / k)
        else:
            curve.append(sum(_best(t)[0] for t in trainers) / k)
        log(
            f"epoch {epoch}/{epochs}: fold MAP@R "
            + " ".join(f"{r.curve[-1]:.4f}" for r in results)
            + f"; mean {curve[-1]:.4f}"
            + (" (of bests)" if objective == "best_epoch" else "")
        )
        if on_epoch is not None:
            on_epoch(epoch, curve[-1])
        if not any(active):
            break
    for result, trainer in zip(results, trainers, strict=True):
        result.final_map_at_r = result.curve[-1]
        result.best_map_at_r, result.best_epoch = _best(trainer)
    final = sum(r.final_map_at_r for r in results) / k
    best = sum(r.best_map_at_r for r in results) / k
    raw = sum(r.raw_map_at_r for r in results) / k
    score = final if objective == "final" else best
    seconds = time.perf_counter() - start
    return CrossValResult(score, final, best, raw, objective, results, curve, seconds)


def _best(trainer: Trainer) -> tuple[float, int | None]:
    """A fold's best validation MAP@R and its epoch; ``(nan, None)`` while no epoch has
    been scored (the trainer's ``-inf`` and ``0`` stand for none)."""
    best = scored_best(trainer)
    return (float("nan"), None) if best is None else best


def _fold_features(whole: FeatureData, whole_config: Config, resolved: Config,
                   fold_train: ArrayDataset, val: ArrayDataset) -> FeatureData:
    """A fold's training items ``fold_train`` and validation items ``val`` as the frozen
    backbone's features, selected from those of the whole training part (``whole``, of
    ``whole_config``), with a copy of the model that computed them and the random state
    its seeded building left: the fold's trainer (of config ``resolved``) starts as one
    given :func:`frozen_feature_data` of the fold's own items would. The items as they
    are, and no model, where the model is no frozen backbone."""
    if whole.model is None:
        return FeatureData(fold_train, val)
    if (resolved.model != whole_config.model
            or resolved.training.seed != whole_config.training.seed):
        return frozen_feature_data(resolved, fold_train, val)  # (a model the folds change)
    return FeatureData(select_classes(whole.train, fold_train.classes),
                       select_classes(whole.train, val.classes),
                       copy.deepcopy(whole.model), copy.deepcopy(whole.model_rng))


def _batch_problem(config: Config, train: ArrayDataset) -> str | None:
    """Why the configured sampler cannot batch ``train`` (a fold's training items), as
    building it says; ``None`` when it can, or when it needs the model to be built."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_sampler(config, train.labels, len(train), train)
    except (ValueError, TypeError) as err:
        return str(err)
    return None


def _raw_map_at_r(val: Any) -> float:
    """MAP@R of the flattened, L2-normalized raw inputs of ``val`` (leave-one-out)."""
    from dmlkit.evaluation import retrieval_metrics
    from dmlkit.functional.distances import l2_normalize

    raw = l2_normalize(val.x.flatten(1).float())  # (n, C*H*W)
    return float(retrieval_metrics(raw, val.labels)["map_at_r"])


__all__ = [
    "CrossValResult", "FoldResult", "DEFAULT_FOLDS", "OBJECTIVES", "cross_validate", "fold_config",
    "training_part",
]
