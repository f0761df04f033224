"""A run directory as one object: load a trained run, embed data with it, evaluate it.

This layer sits above :mod:`dmlkit.training` and :mod:`dmlkit.evaluation`, so neither of
them imports the other. Applications, the service and the report reach runs through here.
"""

from dmlkit.runs.evaluate import evaluate_run
from dmlkit.training.run import (
    METRIC_KEYS,
    Run,
    build_splits,
    embed,
    load_run,
)

__all__ = ["METRIC_KEYS", "Run", "build_splits", "embed", "evaluate_run", "load_run"]
