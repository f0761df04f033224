"""Run directories: train one end to end, and reload, embed and split what it used.

A run directory holds ``config.yaml`` (resolved config), ``model.pt`` (weights only,
``torch.load(path, weights_only=True)``), ``checkpoint.pt`` (everything needed to
resume), ``metrics.json`` (held-out retrieval metrics of the learned metric; of the
L2-normalized raw inputs, the field's usual baseline, under ``"baseline"``, and of the
raw inputs as they are under ``"baseline_unnormalized"``; the per-epoch records under
``"history"``, and with validation the epoch kept under ``"validation"``) and
``train.log`` (one line per epoch).
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from dmlkit.config.schema import Config
from dmlkit.data.dataset import ArrayDataset
from dmlkit.data.load import (
    check_heldout,
    check_training_classes,
    check_training_data,
    split_dataset,
    training_dataset,
)
from dmlkit.data.splits import stratified_split
from dmlkit.models.modes import saved_state_follows
from dmlkit.training.best_epoch import scored_best
from dmlkit.training.build import build_model, channel_last_problem, resolve_config
from dmlkit.training.checkpoint import atomic_save, atomic_write_text, load_checkpoint, torch_load
from dmlkit.training.checks import check_model_settings, check_patience, check_training_inputs
from dmlkit.training.class_rows import run_class_ids
from dmlkit.training.data_fingerprint import LazyFingerprint, check_resume_data
from dmlkit.training.device import check_device
from dmlkit.training.distributed import init_from_env, is_main_process, world_size_from_env
from dmlkit.training.frozen_features import FeatureData, backbone_inputs, frozen_feature_data
from dmlkit.training.heldout import METRIC_KEYS, heldout_metrics, metrics_table
from dmlkit.training.optim import check_warmup
from dmlkit.training.positives import warn_single_items
from dmlkit.training.resumed_session import earlier_seconds, retire_finished_outputs
from dmlkit.training.rng import check_seed
from dmlkit.training.run_dir import (
    check_resume,
    claim_run_dir,
    created_here,
    no_checkpoint_error,
    resumed_config,
    saved_config_as_run,
)
from dmlkit.training.saved_weights import checkpoint_state, checkpoint_weights, read_metrics
from dmlkit.training.trainer import CHECKPOINT, Trainer

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
EMBED_PROGRESS_ROWS = 50_000  # embedding this many rows or more reports progress
PROGRESS_SECONDS = 10.0  # slow work of any size reports progress this often


@dataclass
class Run:
    """A trained run: its directory, resolved config and model (in eval mode).

    ``weights`` says where the model's weights came from: ``"model.pt"``, or for a run
    without it, its checkpoint (``"checkpoint of epoch 4 of 10 (unfinished run)"``)."""

    run_dir: Path
    config: Config
    model: nn.Module
    metrics: dict[str, Any] | None = None
    weights: str = MODEL_FILE


@dataclass
class RunResult:
    """What :func:`train_run` produced; ``seconds`` (``train_seconds`` in the metrics) is
    the run's total training time, a resumed run's earlier sessions included."""

    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def build_splits(config: Config, *, for_training: bool = False
                 ) -> tuple[ArrayDataset, ArrayDataset]:
    """The ``(train, heldout)`` datasets of a run (train before any validation carve-out).

    ``for_training``: also refuse data and model settings a new run must not train with
    (:func:`training_split`); a saved run's data is rebuilt as it was trained.

    A run trained from a tuple file has no labelled splits: a clear error, never the
    config's default dataset in their place.
    """
    if config.data.tuples is not None:
        raise ValueError(
            f"this run was trained from the {config.data.kind} in {config.data.tuples}, "
            "which have no labelled train/held-out split to rebuild; where a command takes "
            "data (--data), name it explicitly (a dataset name, a labelled .npz file, an "
            "IDX or image folder)"
        )
    if not for_training:
        return split_dataset(config.data)
    train, heldout = training_split(config, heldout=True)
    return train, cast(ArrayDataset, heldout)  # (read: heldout=True)


def training_split(config: Config, *, heldout: bool = False
                   ) -> tuple[ArrayDataset, ArrayDataset | None]:
    """``(train, heldout)`` of a new run, train before any validation carve-out, refusing
    data settings it must not train with (:func:`~dmlkit.data.load.check_training_data`),
    model settings that contradict each other, and inputs the model cannot take.

    ``heldout``: read the held-out part too (:func:`~dmlkit.data.load.split_dataset`);
    else it is never read (:func:`~dmlkit.data.load.training_dataset`) and is ``None``.
    """
    check_training_data(config.data)
    check_model_settings(config)
    if heldout:
        train, held = split_dataset(config.data)
    else:
        train, held = training_dataset(config.data), None
    check_training_inputs(config, train.x)
    return train, held


def augmented(train: ArrayDataset, config: Config) -> ArrayDataset:
    """``train`` with the augmentation ``config.data`` asks for (itself when none)."""
    cfg = config.data
    if cfg.augment_shift == 0 and not cfg.augment_hflip and not cfg.augment:
        return train
    from dmlkit.data.augment import AugmentedDataset

    # (whatever the model: a flip of (H, W, C) items would mirror the colour axis)
    problem = channel_last_problem(tuple(train.x.shape[1:]))
    if problem is not None:
        raise ValueError(problem)

    return AugmentedDataset(
        train, cfg.augment_shift, cfg.augment_hflip, seed=cfg.seed, policy=cfg.augment
    )


def validation_split(
    train: ArrayDataset, config: Config
) -> tuple[ArrayDataset, ArrayDataset | None]:
    """``(train, val)``: the validation items ``config.training`` holds back, if any.

    ``val_classes`` holds out whole classes (:func:`~dmlkit.data.class_folds.holdout_classes`),
    ``val_fraction`` a stratified share of every class; both seeded by ``data.seed + 1``.
    """
    tc = config.training
    if tc.val_classes is not None:
        from dmlkit.data.class_folds import holdout_classes

        train, val = holdout_classes(train, tc.val_classes, config.data.seed + 1)
        if not _scorable(val):
            raise ValueError(
                f"training.val_classes holds out classes {_named_classes(val, config)} of "
                "one item each: validation MAP@R needs a class with two items, so no epoch "
                "could be scored; hold out classes with two or more items (or set "
                "training.val_fraction instead)")
        return train, val
    if tc.val_fraction > 0:
        train, val = stratified_split(train, tc.val_fraction, config.data.seed + 1)
        if not _scorable(val):  # no query with a relevant reference
            raise ValueError(
                f"training.val_fraction {tc.val_fraction} holds out at most one item of each "
                f"class ({len(val)} items): validation MAP@R needs two of a class; raise "
                "val_fraction, or hold out whole classes with training.val_classes")
        return train, val
    return train, None


def _scorable(val: ArrayDataset) -> bool:
    """Whether ``val`` has a class of two or more items (a query MAP@R can score)."""
    counts = torch.unique(val.labels, dim=0, return_counts=True)[1] if len(val) else []
    return any(int(c) >= 2 for c in counts)


def embed(
    model: nn.Module,
    data: ArrayDataset | Tensor | tuple[Tensor, Tensor],
    batch_size: int = 512,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor | None]:
    """Embed ``data`` with ``model`` in eval mode, without gradients.

    Returns ``(embeddings, labels)``: a float32 CPU tensor ``(n, dim)`` and the labels
    (``None`` for a bare input tensor). The model's train/eval mode is restored after.
    A frozen pretrained backbone's features of the whole set are read from the feature
    cache where a run's training put them (:func:`backbone_inputs`), then the head is
    applied ``batch_size`` rows at a time.
    """
    if isinstance(data, np.ndarray):  # rows as numpy: the model's float32 inputs
        data = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    if isinstance(data, Tensor):
        x, labels = data, None
    elif isinstance(data, tuple):
        x, labels = data
    else:
        x, labels = data.x, data.labels
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = x.shape[0]
    show = n >= EMBED_PROGRESS_ROWS  # a bar on terminals, a line per ~10% in logs
    # a frozen backbone's features of the whole set, read from (or put in) the cache once
    x = backbone_inputs(model, x, log=_stderr_line if show else None)
    was_training = model.training
    model.eval()
    parts = []
    bar = None
    if show and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="embedding", unit="row", leave=False)
    next_line = n // 10
    start = last = time.perf_counter()
    with torch.no_grad():
        for i in range(0, n, batch_size):
            parts.append(model(x[i : i + batch_size].to(device)).float().cpu())  # (b, dim)
            done = min(n, i + batch_size)
            now = time.perf_counter()
            if bar is not None:
                bar.update(done - bar.n)
            elif done < n and ((show and done >= next_line) or now - last >= PROGRESS_SECONDS):
                # a line per ~10% of a large set, and one every PROGRESS_SECONDS of any
                print(f"embedding: {done}/{n} rows ({now - start:.0f} s)", file=sys.stderr,
                      flush=True)
                next_line, last = done + n // 10, now
    if bar is not None:
        bar.close()
    model.train(was_training)
    dim = getattr(model, "dim", 0)
    emb = torch.cat(parts) if parts else torch.empty(0, dim)
    return emb, labels


def _stderr_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train_run(
    config: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    log: Any = print,
    callbacks: tuple = (),
) -> RunResult:
    """Train as ``config`` says, writing a complete run directory to ``out_dir``.

    With ``resume`` the run continues from ``out_dir/checkpoint.pt``. The run holds
    ``out_dir`` alone while it trains (:func:`~dmlkit.training.run_dir.claim_run_dir`):
    a new run refuses a directory that holds files or another run's.
    """
    out_dir = Path(out_dir)
    check_device(config.training.device, "training.device")
    check_seed(config.training.seed, "training.seed")
    check_seed(config.data.seed, "data.seed")
    check_warmup(config.schedule, config.training.epochs)  # (a warning)
    if resume and not (out_dir / CHECKPOINT).is_file():
        raise no_checkpoint_error(out_dir)
    with claim_run_dir(out_dir, resume=resume):
        checkpoint = check_resume(config, out_dir) if resume else None  # (read once)
        threads = torch.get_num_threads()
        if config.training.num_threads is not None:
            torch.set_num_threads(config.training.num_threads)
        try:
            return _train_run(config, out_dir, resume, log, callbacks, checkpoint)
        finally:
            torch.set_num_threads(threads)


def _train_run(
    config: Config, out_dir: Path, resume: bool, log: Any, callbacks: tuple,
    checkpoint: dict[str, Any] | None,
) -> RunResult:
    if config.data.kind != "labels":  # pairs / triplets without class labels
        if world_size_from_env() > 1:
            raise ValueError("multi-process training (torchrun) needs class labels; tuple "
                             f"data (data.kind: {config.data.kind}) trains in one process")
        if config.training.val_classes is not None:
            raise ValueError(
                f"training.val_classes needs class labels; data.kind is {config.data.kind!r}"
            )
        from dmlkit.training.weak import train_weak_run

        return train_weak_run(config, out_dir, resume, log, callbacks, checkpoint=checkpoint)
    start = time.perf_counter()
    distributed = init_from_env(config.training.device)  # launched by torchrun: N processes
    # (on an error, no barrier: the other processes may be inside another collective,
    # which this one's barrier would pair with, hanging both; the launcher stops them once
    # this process exits with the error. The process group outlives the run: see
    # init_from_env)
    result = _train_labelled(config, out_dir, checkpoint, log, callbacks, start, distributed)
    if distributed:
        import torch.distributed as dist

        dist.barrier()  # every process done (rank 0 has written the run) before leaving
    return result


def _train_labelled(config: Config, out_dir: Path, checkpoint: dict[str, Any] | None,
                    log: Any, callbacks: tuple, start: float, distributed: bool) -> RunResult:
    check_patience(config)  # (cross-validation's folds validate: patience works there)
    train, heldout = build_splits(config, for_training=True)
    check_training_classes(train, config.data)
    check_heldout(heldout, train, config.data)
    # hashed where it is used: at the first checkpoint, or to compare with the resumed one,
    # by rank 0 alone (it writes the checkpoints; the others hold no reference to the data)
    fingerprint = LazyFingerprint({"the training items": train.x,
                                   "the training labels": train.labels,
                                   "the held-out split": [heldout.x, heldout.labels]}
                                  ) if is_main_process() else None
    resume = checkpoint is not None
    if resume:  # (before config.yaml is written again)
        check_resume_data(out_dir, fingerprint, checkpoint)
    train, val = validation_split(train, config)
    if resume:  # a run saved before a model setting existed goes on as it trained
        config = resumed_config(config, out_dir, checkpoint)
    # a loss with one row per class: as many rows as classes, each label given its row
    class_ids, num_classes = run_class_ids(train.labels, checkpoint)
    resolved = resolve_config(config, train.x[0], num_classes, new_run=not resume)
    # a frozen backbone's features, cached, and the model that computed them, which trains
    features = frozen_feature_data(resolved, train, val, log)
    train, val = augmented(features.train, config), features.val
    created = created_here(out_dir)  # (claimed by train_run; else made here)
    fresh = not out_dir.exists() if created is None else created
    if is_main_process():  # (only rank 0 writes: another rank's folder is not "fresh")
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(resolved.to_yaml(), out_dir / CONFIG_FILE)
    try:
        trainer = _trainer(resolved, train, val, out_dir, log, callbacks, distributed,
                           fingerprint, features, class_ids)
    except BaseException:  # a bad model or sampler setting: leave no half-made run behind
        if fresh and is_main_process():
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    from dmlkit.evaluation.evaluate import left_out_queries, query_count

    log(
        f"training on {len(train)} items ({train.num_classes} classes), "
        f"held out {len(heldout)} items ({heldout.num_classes} classes"
        f"{left_out_queries(len(heldout), query_count(heldout.labels))})"
        + (f", validating on {len(val)}" if val is not None else "")
        + (f" of classes {_named_classes(val, config)}"
           if config.training.val_classes is not None else "")
    )
    warn_single_items(trainer, train.labels)
    start -= earlier_seconds(checkpoint)  # (the total: before fit empties the checkpoint)
    if is_main_process():  # new epochs outdate a finished run's model.pt and metrics.json
        retire_finished_outputs(out_dir, checkpoint, resolved.training.epochs)
    history = trainer.fit(resume=resume, checkpoint=checkpoint)
    if not is_main_process():  # rank 0 writes the weights and metrics
        return RunResult(out_dir, {}, history, time.perf_counter() - start)
    atomic_save(trainer.model.state_dict(), out_dir / MODEL_FILE)
    metrics = heldout_metrics(trainer.model, heldout, device=trainer.device, log=log)
    seconds = time.perf_counter() - start  # (with the epochs of earlier sessions)
    metrics["train_seconds"] = round(seconds, 2)
    if val is not None:  # the per-epoch validation curve and the epoch kept
        best = scored_best(trainer)
        metrics["validation"] = {
            "classes": val.classes if config.training.val_classes is not None else None,
            "num_items": len(val),
            # (None when no epoch could be scored: strict JSON has no -Infinity, and no
            # epoch 0 ran)
            "best_epoch": best[1] if best else None,
            "best_map_at_r": best[0] if best else None,
        }
    metrics["history"] = history
    from dmlkit.evaluation.evaluate import write_json

    write_json(metrics, out_dir / METRICS_FILE)  # (atomic; an undefined metric is null)
    return RunResult(out_dir, metrics, history, seconds)


def _named_classes(data: ArrayDataset, config: Config) -> str:
    """The classes of ``data`` for a log line, with their names where the data has them
    (``[0 (circle), 6 (ring)]``), as cross-validation's fold lines show them."""
    from dmlkit.data.load import class_names
    from dmlkit.data.splits import named_ids

    if data.labels.dim() != 1:  # label-row tuples: no one name per row
        return str(data.classes)
    names = getattr(data, "class_names", None) or class_names(config.data)
    return named_ids(data.classes, names)


def _trainer(resolved: Config, train: Any, val: Any, out_dir: Path, log: Any,
             callbacks: tuple, distributed: bool, fingerprint: LazyFingerprint | None,
             features: FeatureData, class_ids: Any = None) -> Trainer:
    trainer_cls = Trainer
    if distributed:
        from dmlkit.training.distributed import DistributedTrainer

        trainer_cls = DistributedTrainer
    try:
        return trainer_cls(resolved, train, val_data=val, out_dir=out_dir, log=log,
                           callbacks=callbacks, data_fingerprint=fingerprint,
                           model=features.model, model_rng=features.model_rng,
                           class_ids=class_ids)
    except ValueError as err:  # e.g. a sampler wanting more classes than validation left
        if val is None or resolved.training.val_classes is None or "classes" not in str(err):
            raise
        held, left = val.num_classes, train.num_classes
        raise ValueError(f"{err} (training.val_classes held out {held} of the {held + left} "
                         f"training classes for validation, leaving {left} to train on)"
                         ) from None


def check_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` as a path, or a ``FileNotFoundError`` saying why it is no run
    directory: it does not exist, is a file, or holds no ``config.yaml``."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"{run_dir} does not exist: give the folder a dmlkit train "
                                "run wrote (its --out)")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a dmlkit run directory (it is a file): "
                                "give the folder a dmlkit train run wrote (its --out)")
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} is not a dmlkit run directory (no {CONFIG_FILE})")
    return run_dir


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", *,
             metrics: bool = True) -> Run:
    """Reload a run directory: its config and its model in eval mode.

    Uses ``model.pt``, or for a run without it the weights its checkpoint stands in with
    (:func:`~dmlkit.training.saved_weights.checkpoint_state`: the best epoch's of a run
    trained with validation, else the last's). ``metrics=False`` leaves ``metrics.json``
    unread (``Run.metrics`` is ``None``): for a use that never shows the held-out metrics,
    which a damaged file must not stop.
    """
    run_dir = check_run_dir(run_dir)
    config_path = run_dir / CONFIG_FILE
    config = saved_config_as_run(Config.from_yaml(config_path))  # (saved before a setting)
    saved = any((run_dir / name).is_file() for name in (MODEL_FILE, CHECKPOINT))
    with saved_state_follows(saved):  # (no pretrained weights file needed: the state has them)
        model = build_model(config)
    check_device(device)
    weights = MODEL_FILE
    if (run_dir / MODEL_FILE).is_file():
        state = torch_load(run_dir / MODEL_FILE, device, (
            f"delete it to load the weights of {run_dir / CHECKPOINT}" if
            (run_dir / CHECKPOINT).is_file() else "retrain the run or restore the file"))
    elif (run_dir / CHECKPOINT).is_file():
        checkpoint = load_checkpoint(run_dir / CHECKPOINT, map_location=device)
        state, weights = checkpoint_state(checkpoint), checkpoint_weights(checkpoint, config)
    else:
        raise FileNotFoundError(f"{run_dir} holds neither {MODEL_FILE} nor {CHECKPOINT}")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"the weights in {run_dir} do not fit the model of its "
                         f"{CONFIG_FILE}: {_state_dict_error(err)}") from None
    model.to(device).eval()
    return Run(run_dir, config, model,
               read_metrics(run_dir / METRICS_FILE) if metrics else None, weights)


def _state_dict_error(err: RuntimeError, lines: int = 4, width: int = 240) -> str:
    """``load_state_dict``'s error on one line: its heading and the first few of its
    missing / unexpected keys and size mismatches (each cut at ``width`` characters)."""
    head, *rest = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
    shown = [line if len(line) <= width else line[: width - 1] + "\u2026"
             for line in rest[:lines]]
    more = f" (and {len(rest) - lines} more)" if len(rest) > lines else ""
    return " ".join([head, *shown]) + more


__all__ = [
    "Run",
    "RunResult",
    "augmented",
    "build_splits",
    "check_run_dir",
    "embed",
    "heldout_metrics",
    "load_run",
    "metrics_table",
    "train_run",
    "training_split",
    "validation_split",
    "METRIC_KEYS",
]
