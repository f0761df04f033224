"""Training: the trainer, its components built from a config, and run directories."""

from dmlkit.training.batches import RandomBatchSampler
from dmlkit.training.build import resolve_config
from dmlkit.training.checkpoint import atomic_save, load_checkpoint
from dmlkit.training.rng import get_rng_state, rng_scope, set_rng_state
from dmlkit.training.run import (
    Run,
    RunResult,
    build_splits,
    embed,
    heldout_metrics,
    load_run,
    metrics_table,
    train_run,
)
from dmlkit.training.trainer import Trainer

__all__ = [
    "Trainer",
    "RandomBatchSampler",
    "resolve_config",
    "atomic_save",
    "load_checkpoint",
    "get_rng_state",
    "set_rng_state",
    "rng_scope",
    "Run",
    "RunResult",
    "build_splits",
    "embed",
    "heldout_metrics",
    "load_run",
    "metrics_table",
    "train_run",
]
